"""The drift reference: what the training images looked like, as :func:`components.monitoring.drift.compare`
needs it.

**Reference** (:class:`Reference`): the statistics (:mod:`components.monitoring.image_stats`) of up to 500 training
images, and their pooled embeddings (:func:`embed_images`: one member network's
:meth:`~components.models.backbones.Classifier.forward_features`) under a fixed random projection to 32 dimensions:
mean, a Ledoit-Wolf covariance, the 99th percentile of the images' out-of-fold Mahalanobis distances, and a sample of
200 projected embeddings for the two-sample test. Saved as ``reference.json`` (what it is, readable) and
``reference.npz`` (the arrays).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from components.data.dataset import IMAGE_CACHE, FundusDataset, to_model_input
from components.data.fundus import FundusPreprocess
from components.data.images import ImageSource
from components.models.backbones import Classifier
from components.monitoring.image_stats import FEATURES

REFERENCE_IMAGES = 500
EMBEDDING_DIMS = 32
EMBEDDING_SAMPLE = 200
EMBEDDING_QUANTILE = 0.99
EMBEDDING_MARGIN = 1.25
"""An embedding is far when its Mahalanobis distance exceeds the reference's 99th percentile times this: exactly
at the percentile, 1 in 100 images of the training distribution would be flagged, and any flag fails a check (for
Gaussian embeddings in 32 dimensions, 1.25 times the percentile is a tail of about 2 in a million)."""
MIN_REFERENCE_IMAGES = 8
SEED = 0
FENCE_WIDTH = {"saturation": 1.0, "red_share": 1.0, "aspect": 0.0, "disc_elevation": 0.5}
"""How far outside the reference's 1st-99th percentile range a value must lie to be "far": this many times the
range's own width, at least :data:`FENCE_FLOOR`. Colours vary between cameras and eyes: a wide margin. Aspects come
in a few fixed values (a reference of square and 3:2 photos must not take 2:3 for one of them): none."""
FENCE_FLOOR = {"saturation": 0.1, "red_share": 0.05, "aspect": 0.05, "disc_elevation": 15.0}


@torch.no_grad()
def embed_images(
    model: Classifier, sources: Sequence[ImageSource], image_size: int, batch_size: int = 32,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:  # fmt: skip
    """``(N, num_features)`` pooled features of images as the model sees them (resized, preprocessed, no TTA)."""
    dataset = FundusDataset(list(sources), None, image_size, IMAGE_CACHE, preprocess)
    device = next(model.parameters()).device
    model.eval()
    chunks = [
        model.forward_features(to_model_input(batch.to(device))).float().cpu()
        for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ]
    return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, model.num_features))


def _fit_gaussian(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf covariance: shrunk towards a multiple of the identity, so it stays invertible with fewer
    images than dimensions."""
    from sklearn.covariance import LedoitWolf

    fitted = LedoitWolf().fit(points)
    return fitted.location_, fitted.covariance_


def _mahalanobis(points: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    centred = points - mean
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", centred @ np.linalg.inv(covariance), centred), 0.0))


def _out_of_fold_distances(points: np.ndarray, rng: np.random.Generator, folds: int = 5) -> np.ndarray:
    """Each point's distance from a fit on the others (5 folds): what an unseen image of the training distribution
    gets, where a point's distance from a fit that includes it is smaller."""
    order = rng.permutation(len(points))
    distances = np.empty(len(points))
    for held_out in np.array_split(order, min(folds, len(points))):
        rest = np.setdiff1d(order, held_out)
        mean, covariance = _fit_gaussian(points[rest])
        distances[held_out] = _mahalanobis(points[held_out], mean, covariance)
    return distances


@dataclass(frozen=True)
class Reference:
    """What the training images looked like, as :func:`compare` needs it.

    Attributes:
        stats: ``(N, len(FEATURES))`` statistics of the reference images.
        projection: ``(num_features, dims)`` the fixed random projection of the embeddings.
        embedding_mean: ``(dims,)`` mean of the projected embeddings.
        embedding_covariance: ``(dims, dims)`` their Ledoit-Wolf covariance.
        embedding_sample: ``(<= 200, dims)`` projected embeddings for the MMD test.
        embedding_threshold: the Mahalanobis distance beyond which an image's embedding is far.
        source: how the embeddings were made (model, checkpoint, image size, preprocessing) and anything else the
            caller records; JSON-serialisable.
    """

    stats: np.ndarray
    projection: np.ndarray
    embedding_mean: np.ndarray
    embedding_covariance: np.ndarray
    embedding_sample: np.ndarray
    embedding_threshold: float
    source: dict[str, Any] = field(default_factory=dict)

    ARRAYS = ("stats", "projection", "embedding_mean", "embedding_covariance", "embedding_sample")

    @property
    def size(self) -> int:
        return len(self.stats)

    def column(self, feature: str) -> np.ndarray:
        return self.stats[:, FEATURES.index(feature)]

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.projection

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of (unprojected) embeddings from the reference's."""
        return _mahalanobis(self.project(embeddings), self.embedding_mean, self.embedding_covariance)

    @cached_property
    def quantiles(self) -> dict[str, tuple[float, float, float]]:
        """Per feature the 1st, 50th and 99th percentile."""
        return {name: tuple(float(q) for q in np.quantile(self.column(name), (0.01, 0.5, 0.99))) for name in FEATURES}

    def fence(self, feature: str) -> tuple[float, float]:
        """The range outside which a value of ``feature`` is far from the reference (see :data:`FENCE_WIDTH`)."""
        low, _, high = self.quantiles[feature]
        margin = max(FENCE_WIDTH.get(feature, 1.0) * (high - low), FENCE_FLOOR.get(feature, 0.0))
        return low - margin, high + margin

    def save(self, folder: Path | str) -> None:
        """Writes ``reference.json`` and ``reference.npz`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "reference.npz", **{name: getattr(self, name) for name in self.ARRAYS})
        summary = {
            "features": list(FEATURES), "images": self.size, "embedding_dims": int(self.projection.shape[1]),
            "embedding_sample": len(self.embedding_sample), "embedding_threshold": self.embedding_threshold,
            "quantiles_1_50_99": self.quantiles, "source": self.source,
        }  # fmt: skip
        (folder / "reference.json").write_text(json.dumps(summary, indent=2))

    @classmethod
    def load(cls, folder: Path | str) -> Reference:
        """The reference :meth:`save` wrote into ``folder``.

        Raises:
            ValueError: when its features are not this code's (a reference from another version of odir).
        """
        folder = Path(folder)
        summary = json.loads((folder / "reference.json").read_text())
        if tuple(summary["features"]) != FEATURES:
            raise ValueError(f"the drift reference in {folder} measures {', '.join(summary['features'])}; this "
                             f"version of odir measures {', '.join(FEATURES)}")  # fmt: skip
        with np.load(folder / "reference.npz", allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in cls.ARRAYS}
        return cls(**loaded, embedding_threshold=float(summary["embedding_threshold"]), source=summary["source"])


def build_reference(stats: np.ndarray, embeddings: np.ndarray, source: dict[str, Any], seed: int = SEED) -> Reference:
    """The reference of training images from their statistics and (unprojected) embeddings, in the same order.

    Raises:
        ValueError: for fewer than :data:`MIN_REFERENCE_IMAGES` images or statistics and embeddings that differ in
            number.
    """
    if len(stats) != len(embeddings):
        raise ValueError(f"{len(stats)} rows of statistics for {len(embeddings)} embeddings")
    if len(stats) < MIN_REFERENCE_IMAGES:
        raise ValueError(f"a drift reference needs at least {MIN_REFERENCE_IMAGES} images, got {len(stats)}")
    rng = np.random.default_rng(seed)
    dims = min(EMBEDDING_DIMS, embeddings.shape[1])
    projection = rng.standard_normal((embeddings.shape[1], dims)) / math.sqrt(dims)
    projected = embeddings @ projection
    mean, covariance = _fit_gaussian(projected)
    threshold = float(np.quantile(_out_of_fold_distances(projected, rng), EMBEDDING_QUANTILE)) * EMBEDDING_MARGIN
    keep = np.sort(rng.choice(len(projected), min(EMBEDDING_SAMPLE, len(projected)), replace=False))
    return Reference(np.asarray(stats, dtype=np.float64), projection, mean, covariance, projected[keep], threshold,
                     dict(source))  # fmt: skip


def reference_sample(count: int, cap: int = REFERENCE_IMAGES, seed: int = SEED) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``count`` images, the same for the same arguments."""
    if count <= cap:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, cap, replace=False))
