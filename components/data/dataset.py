"""Images as the model is given them: the decoded-image cache and the torch Dataset of a split's images and labels.

A dataset is made from image files and labels (:meth:`FundusDataset.from_split` for a checked split of
:mod:`components.data.splits`); each image is decoded (:mod:`components.data.images`) once per process and kept,
resized and preprocessed, in :data:`IMAGE_CACHE`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from components import LABELS
from components.data.fundus import FundusPreprocess
from components.data.images import ImageSource, load_image
from components.data.splits import Split

def _active(preprocess: FundusPreprocess | None) -> FundusPreprocess | None:
    return preprocess if preprocess is not None and preprocess.active else None


class ImageCache:
    """Decoded, resized (and preprocessed) uint8 images kept in memory so that epochs after the first never decode
    a JPEG again.

    Keys are ``(path, size, preprocessing)`` (:attr:`~components.data.fundus.FundusPreprocess.key`, ``""`` for none);
    images are assumed not to change on disk while a process runs. uint8 keeps the footprint at ``3·size²`` bytes
    per image (the 1,450 real ODIR images at 256² take about 285 MB).
    """

    def __init__(self) -> None:
        self._images: dict[tuple[str, int, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, path: Path | str, size: int, preprocess: FundusPreprocess | None = None) -> torch.Tensor:
        """The ``(3, size, size)`` uint8 image at ``path``, decoded (and preprocessed) on first use."""
        preprocess = _active(preprocess)
        key = (str(path), size, preprocess.key if preprocess else "")
        image = self._images.get(key)
        if image is None:
            image = load_image(path, size) if preprocess is None else load_image(path, size, preprocess)
            with self._lock:
                self._images.setdefault(key, image)
        return image

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached pixels."""
        return sum(image.numel() for image in self._images.values())

    def clear(self) -> None:
        """Forgets every image."""
        with self._lock:
            self._images.clear()


IMAGE_CACHE = ImageCache()
"""The process-wide cache: every dataset of a process shares it, so each image is decoded once per process."""


class FundusDataset(Dataset):
    """Images as ``(3, size, size)`` uint8 tensors with their ``(3,)`` float labels.

    Augmentation happens on whole uint8 batches on the training device, and conversion to float with the
    backbone's normalisation inside the model (see :func:`to_model_input`), once per batch rather than per image.

    Args:
        paths: image files (or encoded image bytes, which are never cached).
        labels: ``(N, 3)`` 0/1 labels, or None for unlabelled images (labels are then all zero).
        size: side of the square the images are resized to.
        cache: where decoded images are kept; None decodes every image on every access.
        preprocess: fundus preprocessing applied once per decoded image (None: none); a model trained with one
            must be given images preprocessed the same way (``ModelSpec.fundus_preprocess()``).
    """

    def __init__(
        self,
        paths: Sequence[ImageSource],
        labels: np.ndarray | None,
        size: int,
        cache: ImageCache | None = IMAGE_CACHE,
        preprocess: FundusPreprocess | None = None,
    ) -> None:
        if labels is None:
            labels = np.zeros((len(paths), len(LABELS)), dtype=np.float32)
        if labels.shape != (len(paths), len(LABELS)):
            raise ValueError(f"labels have shape {labels.shape}, expected ({len(paths)}, {len(LABELS)})")
        if size < 8:
            raise ValueError(f"image size {size} is too small; use at least 8")
        self.paths = [path if isinstance(path, bytes) else Path(path) for path in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.size = size
        self.cache = cache
        self.preprocess = _active(preprocess)

    @classmethod
    def from_split(
        cls, split: Split, size: int, cache: ImageCache | None = IMAGE_CACHE, preprocess: FundusPreprocess | None = None
    ) -> FundusDataset:
        """The dataset of a validated split."""
        return cls(split.paths, split.labels, size, cache, preprocess)

    def with_preprocess(self, preprocess: FundusPreprocess | None) -> FundusDataset:
        """The same images and labels under ``preprocess`` (this dataset when it already has it)."""
        if _active(preprocess) == self.preprocess:
            return self
        return FundusDataset(self.paths, self.labels.numpy(), self.size, self.cache, preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.paths[index]
        cached = self.cache is not None and not isinstance(path, bytes)
        if self.preprocess is None:  # the calls as they were, for code that wraps load_image or the cache
            image = self.cache.get(path, self.size) if cached else load_image(path, self.size)
        elif cached:
            image = self.cache.get(path, self.size, self.preprocess)
        else:
            image = load_image(path, self.size, self.preprocess)
        return image, self.labels[index]


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """A uint8 ``(B, 3, H, W)`` batch, checked, as the model takes it: unchanged, on whatever device it is on.

    The model normalises for its backbone itself (see :class:`components.models.backbones.Classifier`), so conversion to
    float happens once, inside the model, fused with the normalisation; batches stay uint8 (a quarter of the
    bytes) through device transfer, augmentation and TTA stacking.

    Raises:
        ValueError: for anything but a uint8 batch of shape ``(B, 3, H, W)``, naming what it got.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images
