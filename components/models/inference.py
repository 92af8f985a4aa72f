"""Prediction with a trained model: images -> probabilities, with test-time augmentation, in batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from components.data.dataset import IMAGE_CACHE, FundusDataset, ImageCache, to_model_input
from components.data.fundus import FundusPreprocess
from components.data.images import ImageSource
from components.models.runtime import ExportedNetwork, Network, prepare
from components.models.tta import STUDY_VIEWS, predict_view_probs

EXPORTED_BATCH = 8
"""Images whose views an exported network takes in one call (40 forwards with the five study views): as fast as the
views of 32 within the noise of two runs on 2 shared cores (1.19x faster in one, 0.82x in the other;
docs/benchmarks.md, "CPU inference"), with a quarter of the activations in memory at once."""


def predict_images(
    model: Network,
    images: FundusDataset | Sequence[ImageSource],
    image_size: int,
    views: Sequence[str] = STUDY_VIEWS,
    batch_size: int = 32,
    cache: ImageCache | None = IMAGE_CACHE,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:
    """``(N, 3)`` mean sigmoid probabilities over ``views`` for image files (or a dataset), in order (arguments as
    :func:`predict_image_views`)."""
    return predict_image_views(model, images, image_size, views, batch_size, cache, preprocess).mean(axis=0)


def predict_image_views(
    model: Network,
    images: FundusDataset | Sequence[ImageSource],
    image_size: int,
    views: Sequence[str] = STUDY_VIEWS,
    batch_size: int = 32,
    cache: ImageCache | None = IMAGE_CACHE,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:
    """``(V, N, 3)`` sigmoid probabilities of each of ``views`` for image files (or a dataset), in order (arguments
    as :func:`predict_networks_views`)."""
    return predict_networks_views([model], images, image_size, views, batch_size, cache, preprocess)[0]


@torch.no_grad()
def predict_networks_views(
    networks: Sequence[Network],
    images: FundusDataset | Sequence[ImageSource],
    image_size: int,
    views: Sequence[str] = STUDY_VIEWS,
    batch_size: int = 32,
    cache: ImageCache | None = IMAGE_CACHE,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:
    """``(F, V, N, 3)`` sigmoid probabilities of each of F networks (an ensemble's fold models) and ``views`` for
    image files or bytes (or a dataset), in order; each batch of images is decoded once for all the networks.

    ``preprocess`` is the fundus preprocessing the networks were trained with (``ModelSpec.fundus_preprocess()``):
    the images are given it here as they were in training.

    On a GPU all views of a batch go through an eager network in one forward (``len(views) * batch_size`` images);
    on the CPU, where a batch five times larger only falls out of the caches (measured 1.4x slower, ``make bench``)
    and holds five times the activations, the views go through in forwards of ``batch_size``. An exported network
    (:class:`~components.models.runtime.ExportedNetwork`) takes the views of :data:`EXPORTED_BATCH` images per call.
    """
    dataset = images if isinstance(images, FundusDataset) else FundusDataset(list(images), None, image_size, cache)
    if preprocess is not None:  # None: the images as they are (a dataset keeps its own preprocessing)
        dataset = dataset.with_preprocess(preprocess)
    devices = [prepare(network) for network in networks]
    forwards = [_forward_batch(net, device, batch_size, views) for net, device in zip(networks, devices, strict=True)]
    chunks: list[list[torch.Tensor]] = [[] for _ in networks]
    for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = to_model_input(batch)
        for network, device, forward, outputs in zip(networks, devices, forwards, chunks, strict=True):
            outputs.append(predict_view_probs(network, batch.to(device), views, forward).cpu())
    if not len(dataset):
        return np.zeros((len(networks), len(views), 0, 3), dtype=np.float64)
    return np.stack([torch.cat(outputs, dim=1).double().numpy() for outputs in chunks])


def _forward_batch(network: Network, device: torch.device, batch_size: int, views: Sequence[str]) -> int | None:
    """The most images one forward of ``network`` takes (None: all views of a batch at once)."""
    if isinstance(network, ExportedNetwork):
        return EXPORTED_BATCH * len(views)
    return None if device.type == "cuda" else batch_size
