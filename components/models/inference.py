"""Prediction with a trained model: images -> probabilities, with test-time augmentation, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from components.data.dataset import IMAGE_CACHE, FundusDataset, ImageCache, to_model_input
from components.data.fundus import FundusPreprocess
from components.models.backbones import Classifier
from components.models.tta import STUDY_VIEWS, predict_view_probs


def predict_images(
    model: Classifier,
    images: FundusDataset | Sequence[Path | str],
    image_size: int,
    views: Sequence[str] = STUDY_VIEWS,
    batch_size: int = 32,
    cache: ImageCache | None = IMAGE_CACHE,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:
    """``(N, 3)`` mean sigmoid probabilities over ``views`` for image files (or a dataset), in order (arguments as
    :func:`predict_image_views`)."""
    return predict_image_views(model, images, image_size, views, batch_size, cache, preprocess).mean(axis=0)


@torch.no_grad()
def predict_image_views(
    model: Classifier,
    images: FundusDataset | Sequence[Path | str],
    image_size: int,
    views: Sequence[str] = STUDY_VIEWS,
    batch_size: int = 32,
    cache: ImageCache | None = IMAGE_CACHE,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:
    """``(V, N, 3)`` sigmoid probabilities of each of ``views`` for image files (or a dataset), in order.

    ``preprocess`` is the fundus preprocessing the model was trained with (``ModelSpec.fundus_preprocess()``): the
    images are given it here as they were in training.

    On a GPU all views of a batch go through the network in one forward (``len(views) * batch_size`` images); on
    the CPU, where a batch five times larger only falls out of the caches (measured 1.4x slower, ``make bench``)
    and holds five times the activations, the views go through in forwards of ``batch_size``.
    """
    dataset = images if isinstance(images, FundusDataset) else FundusDataset(list(images), None, image_size, cache)
    if preprocess is not None:  # None: the images as they are (a dataset keeps its own preprocessing)
        dataset = dataset.with_preprocess(preprocess)
    device = next(model.parameters()).device
    model.eval()
    max_batch = None if device.type == "cuda" else batch_size
    chunks = []
    for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        chunks.append(predict_view_probs(model, to_model_input(batch.to(device)), views, max_batch).cpu())
    if not chunks:
        return np.zeros((len(views), 0, 3), dtype=np.float64)
    return torch.cat(chunks, dim=1).double().numpy()
