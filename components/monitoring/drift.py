"""Drift and data-quality checks: how new images compare with the training reference.

The per-image statistics are :mod:`components.monitoring.image_stats`'s, the reference (statistics and embeddings
of training images) :mod:`components.monitoring.reference`'s.

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.monitoring.image_stats import FEATURES, MIN_FOV_SHARE
from components.monitoring.reference import SEED, Reference, reference_sample

PERMUTATIONS = 999
MMD_IMAGES = 500
"""New images beyond this many are subsampled (fixed seed) for the MMD test; the KS tests use them all."""
TINY_SHARE = 0.5
"""An image whose shorter side is under this share of the reference's smallest (1st percentile) is tiny."""
CORNER_LIMIT = 0.5
"""A FOV that fills more than this share of its box's corners is no disc."""
ROTATED_DEGREES = 50.0
"""A disc this far (in degrees) above or below the horizontal, beyond the reference's fence, says the photo is
turned."""


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


def image_reasons(reference: Reference, row: np.ndarray, distance: float | None) -> tuple[str, ...]:
    """Why one image (its statistics, its embedding's distance; None: not embedded) is out of the reference's
    distribution."""
    if _value(row, "border_share") > 1 - MIN_FOV_SHARE:
        return ("black frame: nothing brighter than the black border",)
    reasons = []
    side = min(_value(row, "width"), _value(row, "height"))
    smallest = float(np.quantile(np.minimum(reference.column("width"), reference.column("height")), 0.01))
    if side < TINY_SHARE * smallest:
        reasons.append(f"tiny image: {_value(row, 'width'):.0f}x{_value(row, 'height'):.0f} px, the reference's "
                       f"shorter side is at least {smallest:.0f} px")  # fmt: skip
    reasons += _shape_reasons(reference, row)
    if distance is not None and distance > (limit := reference.embedding_threshold):
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


def screen_images(reference: Reference, stats: np.ndarray, names: Sequence[str]) -> tuple[ImageCheck, ...]:
    """:func:`flag_images` from the statistics alone (black frame, tiny, not a fundus, turned), with no network to run:
    what ``odir predict`` checks on every call. The distances are NaN (not measured)."""
    return tuple(ImageCheck(name, float("nan"), image_reasons(reference, row, None))
                 for name, row in zip(names, stats, strict=True))  # fmt: skip


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
