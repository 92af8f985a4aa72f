"""Drift and data-quality checks: per-image statistics, the training reference, and how new images compare with it.

**Statistics** (:func:`image_stats`, :data:`FEATURES`): size and aspect; inside the field of view (FOV,
:func:`components.data.fundus.fov_mask`) the mean and standard deviation of the luminance (brightness, contrast), the
mean HSV saturation and the red share ``R / (R + G + B)``; the share of black border outside the FOV; how much of
the corners of the FOV's box the FOV fills (a disc leaves them dark, a rectangular photo does not); the sharpness
(variance of the Laplacian on a 128 px grey thumbnail of the FOV, inside it: it falls when an image is blurred);
and the optic disc's elevation (the angle of the brightest smoothed spot above or below the horizontal through the
FOV's centre: the disc sits near that line in a macula-centred photo, far from it in one turned by 90°).

**Reference** (:class:`Reference`): the statistics of up to 500 training images, and their pooled embeddings (one
member network's :meth:`~components.models.backbones.Classifier.forward_features`) under a fixed random projection to 32
dimensions: mean, a Ledoit-Wolf covariance, the 99th percentile of the images' out-of-fold Mahalanobis distances,
and a sample of 200 projected embeddings for the two-sample test. Saved as ``reference.json`` (what it is, readable)
and ``reference.npz`` (the arrays).

**Comparison** (:func:`compare`): per feature a two-sample Kolmogorov-Smirnov test, and on the embeddings an MMD
test (RBF kernel, median-heuristic bandwidth, permutation p-value at a fixed seed); Holm's correction over the whole
family keeps the chance of a false alarm on same-distribution images at ``alpha``. Drift is any test rejected; the
drift score is the largest KS statistic (the largest gap between the reference's and the new images' distribution
of one feature, 0 to 1).

**Out of distribution** (:func:`flag_images`), per image, each with its reason: a black frame, a tiny image, not a
fundus (no circular FOV, or colour far outside the reference), turned by 90° (portrait where the reference is
landscape; the optic disc above or below the centre), an embedding far from the reference's.

What these checks cannot see: a rotation by 180° or a mirror image (the disc stays on the horizontal line; a
mirrored right eye looks like a left one), a rotation under about 45°, a rotation of a square photo whose disc
cannot be found (disc-centred photos, a disc no brighter than the lesions); a change of labels or of disease
prevalence with the same look (no labels here); a small shift on a small batch (the tests' power grows with the
number of images); a shift the chosen member's embedding ignores and no statistic measures.
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
from PIL import Image
from torch.utils.data import DataLoader

from components.data.dataset import IMAGE_CACHE, FundusDataset, ImageSource, decode_image, to_model_input
from components.data.fundus import FundusPreprocess, fov_box, fov_mask
from components.models.runtime import Network, prepare

FEATURES: tuple[str, ...] = (
    "width", "height", "aspect", "brightness", "contrast", "saturation", "red_share", "border_share", "corner_fill",
    "sharpness", "disc_elevation",
)  # fmt: skip
"""The per-image statistics, in the column order of every statistics array."""
WORK_SIDE = 512
"""Statistics other than the size are measured on a copy whose longer side is at most this (a 12 MP photo and its
512 px copy give the same means, and the copy takes milliseconds)."""
THUMBNAIL = 128
"""Side of the grey thumbnail of the FOV that sharpness and the disc are measured on: a fixed size, so that the
sharpness of photos of different resolutions compares."""
LUMA = np.array([0.299, 0.587, 0.114])
MIN_FOV_SHARE = 0.01
"""An image with less of its area inside a FOV has none: a black frame."""
CORNER = 0.1
"""Side of each corner patch of the FOV's box, as a share of the box's side."""
DISC_MIN_RADIUS = 0.15
"""A brightest spot nearer the FOV's centre than this share of its radius gives no direction (elevation 0)."""

REFERENCE_IMAGES = 500
EMBEDDING_DIMS = 32
EMBEDDING_SAMPLE = 200
EMBEDDING_QUANTILE = 0.99
EMBEDDING_MARGIN = 1.25
"""An embedding is far when its Mahalanobis distance exceeds the reference's 99th percentile times this: exactly
at the percentile, 1 in 100 images of the training distribution would be flagged, and any flag fails a check (for
Gaussian embeddings in 32 dimensions, 1.25 times the percentile is a tail of about 2 in a million)."""
MIN_REFERENCE_IMAGES = 8
PERMUTATIONS = 999
MMD_IMAGES = 500
"""New images beyond this many are subsampled (fixed seed) for the MMD test; the KS tests use them all."""
SEED = 0

TINY_SHARE = 0.5
"""An image whose shorter side is under this share of the reference's smallest (1st percentile) is tiny."""
CORNER_LIMIT = 0.5
"""A FOV that fills more than this share of its box's corners is no disc."""
FENCE_WIDTH = {"saturation": 1.0, "red_share": 1.0, "aspect": 0.0, "disc_elevation": 0.5}
"""How far outside the reference's 1st-99th percentile range a value must lie to be "far": this many times the
range's own width, at least :data:`FENCE_FLOOR`. Colours vary between cameras and eyes: a wide margin. Aspects come
in a few fixed values (a reference of square and 3:2 photos must not take 2:3 for one of them): none."""
FENCE_FLOOR = {"saturation": 0.1, "red_share": 0.05, "aspect": 0.05, "disc_elevation": 15.0}
ROTATED_DEGREES = 50.0
"""A disc this far (in degrees) above or below the horizontal, beyond the reference's fence, says the photo is
turned."""


# --- statistics -----------------------------------------------------------------------------------------------------


def _working_copy(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = WORK_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _thumbnail(values: np.ndarray, resample: Image.Resampling) -> np.ndarray:
    """A ``(THUMBNAIL, THUMBNAIL)`` float copy of a 2-D array."""
    image = Image.fromarray(values.astype(np.float32))  # mode F
    return np.asarray(image.resize((THUMBNAIL, THUMBNAIL), resample), dtype=np.float64)


def _colour(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, saturation and red share of ``(n, 3)`` float RGB pixels."""
    luminance = pixels @ LUMA
    peak, low, total = pixels.max(axis=1), pixels.min(axis=1), pixels.sum(axis=1)
    saturation = np.where(peak > 0, (peak - low) / np.maximum(peak, 1e-9), 0.0)
    red = np.where(total > 0, pixels[:, 0] / np.maximum(total, 1e-9), 1 / 3)
    return {"brightness": float(luminance.mean()), "contrast": float(luminance.std()),
            "saturation": float(saturation.mean()), "red_share": float(red.mean())}  # fmt: skip


def _corner_fill(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the four corner patches of the FOV's box inside the FOV: 0 for a disc (also one cut off at the
    top and bottom: the box's corners stay outside it), 1 for a rectangle."""
    top, bottom, left, right = box
    inside = mask[top:bottom, left:right]
    rows, cols = max(1, round(CORNER * inside.shape[0])), max(1, round(CORNER * inside.shape[1]))
    corners = [inside[:rows, :cols], inside[:rows, -cols:], inside[-rows:, :cols], inside[-rows:, -cols:]]
    return float(np.mean([patch.mean() for patch in corners]))


def _thumbnail_measures(grey: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, float]:
    """Sharpness and disc elevation, on a square thumbnail of the FOV's box."""
    from scipy import ndimage

    top, bottom, left, right = box
    thumb = _thumbnail(grey[top:bottom, left:right], Image.Resampling.BILINEAR)
    inside = _thumbnail(mask[top:bottom, left:right].astype(np.float32), Image.Resampling.NEAREST) > 0.5
    # the FOV's rim is an edge of the camera, not of the retina: leave it out of both measures
    inner = ndimage.binary_erosion(inside, iterations=4)
    laplacian = ndimage.laplace(thumb)
    sharpness = float(laplacian[inner].var()) if inner.sum() >= 64 else float(laplacian[2:-2, 2:-2].var())
    core = ndimage.binary_erosion(inside, iterations=round(0.08 * THUMBNAIL))
    if core.sum() < 16:
        return {"sharpness": sharpness, "disc_elevation": 0.0}
    smooth = ndimage.gaussian_filter(thumb, 0.03 * THUMBNAIL)
    y, x = np.unravel_index(np.argmax(np.where(core, smooth, -np.inf)), smooth.shape)
    cy, cx = ndimage.center_of_mass(inside)
    # thumbnail pixels back to the box's proportions: a box cut off at the top is wider than high
    dy, dx = (y - cy) * (bottom - top) / THUMBNAIL, (x - cx) * (right - left) / THUMBNAIL
    radius = math.sqrt(inside.sum() / math.pi) * max(bottom - top, right - left) / THUMBNAIL
    if math.hypot(dy, dx) < DISC_MIN_RADIUS * radius:
        return {"sharpness": sharpness, "disc_elevation": 0.0}
    return {"sharpness": sharpness, "disc_elevation": math.degrees(math.atan2(abs(dy), abs(dx)))}


def image_stats(rgb: np.ndarray) -> dict[str, float]:
    """The :data:`FEATURES` of one ``(H, W, 3)`` uint8 RGB image (see the module docstring).

    An image without a FOV (a black frame) is measured over all its pixels, with a border share of 1 and corner
    fill and disc elevation 0.
    """
    height, width = rgb.shape[:2]
    work = _working_copy(rgb)
    mask = fov_mask(work)
    stats = {"width": float(width), "height": float(height), "aspect": width / height}
    has_fov = mask.mean() >= MIN_FOV_SHARE
    region = mask if has_fov else np.ones_like(mask)
    stats.update(_colour(work[region].astype(np.float64)))
    stats["border_share"] = float(1.0 - mask.mean())
    box = fov_box(work) if has_fov else None
    grey = work.astype(np.float64) @ LUMA
    if box is None:
        box = (0, work.shape[0], 0, work.shape[1])
        stats.update(_thumbnail_measures(grey, np.ones_like(mask), box), corner_fill=0.0, disc_elevation=0.0)
    else:
        stats.update(corner_fill=_corner_fill(mask, box), **_thumbnail_measures(grey, mask, box))
    return {name: stats[name] for name in FEATURES}


def stats_row(stats: dict[str, float]) -> np.ndarray:
    return np.array([stats[name] for name in FEATURES], dtype=np.float64)


def describe_images(sources: Sequence[ImageSource]) -> np.ndarray:
    """``(N, len(FEATURES))`` statistics of image files (or bytes), decoded at full resolution.

    Raises:
        DataError: naming an image that cannot be read or decoded.
    """
    rows = [stats_row(image_stats(decode_image(source))) for source in sources]
    return np.stack(rows) if rows else np.zeros((0, len(FEATURES)))


@torch.no_grad()
def embed_images(
    model: Network, sources: Sequence[ImageSource], image_size: int, batch_size: int = 32,
    preprocess: FundusPreprocess | None = None,
) -> np.ndarray:  # fmt: skip
    """``(N, num_features)`` pooled features of images as the model sees them (resized, preprocessed, no TTA)."""
    dataset = FundusDataset(list(sources), None, image_size, IMAGE_CACHE, preprocess)
    device = prepare(model)
    chunks = [
        model.forward_features(to_model_input(batch.to(device))).float().cpu()
        for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ]
    return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, model.num_features))


# --- reference ------------------------------------------------------------------------------------------------------


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


# --- comparison -----------------------------------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate): reject where ``adjusted <= alpha``."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def mmd_test(
    reference: np.ndarray, sample: np.ndarray, permutations: int = PERMUTATIONS, seed: int = SEED
) -> tuple[float, float]:
    """Squared maximum mean discrepancy (biased estimate, RBF kernel whose bandwidth is the median distance between
    the pooled points) and its permutation p-value ``(1 + #{permuted >= observed}) / (1 + permutations)``."""
    pooled = np.concatenate([reference, sample])
    squared = np.maximum(np.sum(pooled**2, axis=1)[:, None] + np.sum(pooled**2, axis=1)[None, :]
                         - 2 * pooled @ pooled.T, 0.0)  # fmt: skip
    median = np.median(squared[np.triu_indices(len(pooled), k=1)]) if len(pooled) > 1 else 1.0
    kernel = np.exp(-squared / (2 * (median if median > 0 else 1.0)))
    rng = np.random.default_rng(seed)
    labels = np.zeros((len(pooled), permutations + 1), dtype=bool)
    labels[len(reference) :, 0] = True  # column 0: the observed split; the others: random relabellings
    for column in range(1, permutations + 1):
        labels[rng.permutation(len(pooled))[: len(sample)], column] = True
    # MMD² of a split is w' K w, with weights 1/m on one side and -1/n on the other: all splits in one product
    weights = np.where(labels, 1.0 / len(sample), -1.0 / len(reference))
    statistics = np.einsum("ij,ij->j", weights, kernel @ weights)
    observed = float(statistics[0])
    return max(observed, 0.0), float((1 + np.sum(statistics[1:] >= observed)) / (1 + permutations))


@dataclass(frozen=True)
class FeatureShift:
    """The KS test of one feature: statistic, raw and Holm-adjusted p-value, the medians it compared, whether it
    moved (adjusted p at most alpha)."""

    feature: str
    statistic: float
    p_value: float
    p_adjusted: float
    reference_median: float
    median: float
    moved: bool


@dataclass(frozen=True)
class ImageCheck:
    """One image: its name, the Mahalanobis distance of its embedding, and why it is out of distribution (empty
    when it is not)."""

    image: str
    embedding_distance: float
    reasons: tuple[str, ...] = ()

    @property
    def out_of_distribution(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class DriftReport:
    """The outcome of a check: the verdict, the tests and the images.

    Attributes:
        drift: whether any test (a feature's KS, the embedding's MMD) rejected at ``alpha`` after Holm's correction.
        drift_score: the largest KS statistic over the features (0 to 1).
        moved: the features whose distribution moved, largest statistic first.
        mmd, mmd_p_value, mmd_p_adjusted: the embedding test; ``embedding_moved`` its verdict.
        images: every image checked, in order; ``ood_count`` of them out of distribution.
        model_uri, run_id: filled by the step that ran the check (the model whose reference it used, its run).
    """

    alpha: float
    reference_images: int
    images_checked: int
    drift: bool
    drift_score: float
    moved: tuple[str, ...]
    features: tuple[FeatureShift, ...]
    mmd: float
    mmd_p_value: float
    mmd_p_adjusted: float
    embedding_moved: bool
    embedding_threshold: float
    ood_count: int
    images: tuple[ImageCheck, ...]
    model_uri: str = ""
    run_id: str = ""

    @property
    def out_of_distribution(self) -> list[ImageCheck]:
        return [image for image in self.images if image.out_of_distribution]


def _value(stats: np.ndarray, feature: str) -> float:
    return float(stats[FEATURES.index(feature)])


def _shape_reasons(reference: Reference, row: np.ndarray) -> list[str]:
    """Why one image with a FOV is no fundus photo of the reference's kind, or is turned."""
    reasons = []
    corner_fill = _value(row, "corner_fill")
    if corner_fill > CORNER_LIMIT:
        reasons.append(f"not a fundus: no circular field of view (its box's corners are {corner_fill:.0%} inside it)")
    far = [
        f"{feature} {_value(row, feature):.2f}, reference {reference.quantiles[feature][0]:.2f}-"
        f"{reference.quantiles[feature][2]:.2f}"
        for feature in ("red_share", "saturation")
        if not reference.fence(feature)[0] <= _value(row, feature) <= reference.fence(feature)[1]
    ]
    if far:
        reasons.append(f"not a fundus: colour far outside the reference ({'; '.join(far)})")
    if reasons:
        return reasons
    low, high = reference.fence("aspect")
    aspect = _value(row, "aspect")
    if not low <= aspect <= high and low <= 1 / aspect <= high:
        reasons.append(f"rotated by 90 degrees? aspect {aspect:.2f}, the reference's is "
                       f"{reference.quantiles['aspect'][1]:.2f}")  # fmt: skip
    elevation = _value(row, "disc_elevation")
    if elevation > max(ROTATED_DEGREES, reference.fence("disc_elevation")[1]):
        usual = reference.quantiles["disc_elevation"][2]
        reasons.append(f"rotated? the optic disc is {elevation:.0f} degrees above or below the horizontal through "
                       f"the centre (the reference's at most {usual:.0f})")  # fmt: skip
    return reasons


def image_reasons(reference: Reference, row: np.ndarray, distance: float) -> tuple[str, ...]:
    """Why one image (its statistics, its embedding's distance) is out of the reference's distribution."""
    if _value(row, "border_share") > 1 - MIN_FOV_SHARE:
        return ("black frame: nothing brighter than the black border",)
    reasons = []
    side = min(_value(row, "width"), _value(row, "height"))
    smallest = float(np.quantile(np.minimum(reference.column("width"), reference.column("height")), 0.01))
    if side < TINY_SHARE * smallest:
        reasons.append(f"tiny image: {_value(row, 'width'):.0f}x{_value(row, 'height'):.0f} px, the reference's "
                       f"shorter side is at least {smallest:.0f} px")  # fmt: skip
    reasons += _shape_reasons(reference, row)
    if distance > (limit := reference.embedding_threshold):
        reasons.append(f"embedding far from the reference (Mahalanobis distance {distance:.1f} > {limit:.1f})")
    return tuple(reasons)


def flag_images(
    reference: Reference, stats: np.ndarray, embeddings: np.ndarray, names: Sequence[str]
) -> tuple[ImageCheck, ...]:
    """Per image its embedding distance and the reasons it is out of distribution (see the module docstring)."""
    distances = reference.distances(embeddings) if len(embeddings) else np.zeros(0)
    return tuple(
        ImageCheck(name, float(distance), image_reasons(reference, row, float(distance)))
        for name, row, distance in zip(names, stats, distances, strict=True)
    )


def compare(
    reference: Reference, stats: np.ndarray, embeddings: np.ndarray, names: Sequence[str], alpha: float = 0.05,
    seed: int = SEED,
) -> DriftReport:  # fmt: skip
    """New images (their statistics and unprojected embeddings, in the order of ``names``) against the reference.

    Raises:
        ValueError: for no images, ``alpha`` outside (0, 1), or arrays that do not match the names.
    """
    from scipy.stats import ks_2samp

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if not len(names):
        raise ValueError("no images to check")
    if len(stats) != len(names) or len(embeddings) != len(names):
        raise ValueError(f"{len(names)} images, {len(stats)} rows of statistics, {len(embeddings)} embeddings")
    tests = [ks_2samp(reference.stats[:, column], stats[:, column]) for column in range(len(FEATURES))]
    projected = reference.project(embeddings)
    mmd, mmd_p = mmd_test(reference.embedding_sample, projected[reference_sample(len(projected), MMD_IMAGES, seed)],
                          seed=seed)  # fmt: skip
    adjusted = holm([test.pvalue for test in tests] + [mmd_p])
    features = tuple(
        FeatureShift(name, float(test.statistic), float(test.pvalue), float(p), float(np.median(reference.stats[:, c])),
                     float(np.median(stats[:, c])), bool(p <= alpha))
        for c, (name, test, p) in enumerate(zip(FEATURES, tests, adjusted[:-1], strict=True))
    )  # fmt: skip
    moved = tuple(f.feature for f in sorted(features, key=lambda f: -f.statistic) if f.moved)
    images = flag_images(reference, stats, embeddings, names)
    embedding_moved = bool(adjusted[-1] <= alpha)
    return DriftReport(
        alpha=alpha, reference_images=reference.size, images_checked=len(names),
        drift=bool(moved) or embedding_moved, drift_score=max(f.statistic for f in features), moved=moved,
        features=features, mmd=mmd, mmd_p_value=mmd_p, mmd_p_adjusted=float(adjusted[-1]),
        embedding_moved=embedding_moved, embedding_threshold=reference.embedding_threshold,
        ood_count=sum(image.out_of_distribution for image in images), images=images,
    )  # fmt: skip
