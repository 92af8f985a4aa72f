"""Per-class decision thresholds tuned on validation probabilities.

The study searched 0.30–0.65 in steps of 0.05 for the threshold that maximises each class's F1; that grid is the
default so its results can be reproduced. Ties (several thresholds with the same best F1) go to the threshold
closest to 0.5, then to the lower one: the simplest choice that the data cannot tell apart from the others.
Tune on validation predictions only, never on a test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components import LABELS
from components.metrics import DEFAULT_THRESHOLD, check_labels_and_scores

STUDY_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.30, 0.65 + 1e-9, 0.05), 2))


def fine_grid(step: float = 0.01, low: float = 0.05, high: float = 0.95) -> tuple[float, ...]:
    """An evenly spaced grid from ``low`` to ``high`` inclusive."""
    if not 0.0 < step <= high - low or not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1 and 0 < step <= high - low, got {low}, {high}, {step}")
    count = round((high - low) / step) + 1
    return tuple(float(t) for t in np.round(np.linspace(low, high, count), 6))


@dataclass(frozen=True)
class ThresholdResult:
    """Tuned thresholds and the per-class F1 they give, beside the F1 at the default 0.5.

    Attributes:
        thresholds: ``(3,)`` chosen threshold per class, ``LABELS`` order.
        f1: ``(3,)`` F1 of each class at its chosen threshold.
        f1_default: ``(3,)`` F1 of each class at 0.5.
    """

    thresholds: np.ndarray
    f1: np.ndarray
    f1_default: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """``{"D": t, "G": t, "A": t}``, for JSON."""
        return {label: float(t) for label, t in zip(LABELS, self.thresholds, strict=True)}

    @property
    def f1_gain(self) -> float:
        """Macro F1 gain over the default threshold."""
        return float(self.f1.mean() - self.f1_default.mean())


def f1_per_threshold(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Positive-class F1 of one binary column at each threshold of ``grid`` (0 where it is undefined)."""
    predicted = scores[None, :] >= grid[:, None]
    positive = y_true[None, :] == 1
    tp = (predicted & positive).sum(axis=1)
    fp = (predicted & ~positive).sum(axis=1)
    fn = (~predicted & positive).sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _pick(grid: np.ndarray, f1: np.ndarray) -> int:
    """Index of the best F1; ties go to the threshold closest to 0.5, then the lower one."""
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0.0, atol=1e-12))
    order = sorted(best, key=lambda i: (abs(grid[i] - DEFAULT_THRESHOLD), grid[i]))
    return int(order[0])


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, grid: tuple[float, ...] = STUDY_GRID) -> ThresholdResult:
    """The per-class threshold of ``grid`` that maximises each class's F1 on these (validation) predictions.

    Raises:
        ValueError: for mismatched shapes, non-0/1 labels, non-finite scores or an empty grid.
    """
    y_true, probs = check_labels_and_scores(y_true, probs)
    grid_array = np.asarray(grid, dtype=np.float64)
    if grid_array.ndim != 1 or grid_array.size == 0:
        raise ValueError("the threshold grid is empty")
    chosen, best_f1, default_f1 = [], [], []
    for column in range(len(LABELS)):
        f1 = f1_per_threshold(y_true[:, column], probs[:, column], grid_array)
        index = _pick(grid_array, f1)
        chosen.append(grid_array[index])
        best_f1.append(f1[index])
        default = f1_per_threshold(y_true[:, column], probs[:, column], np.array([DEFAULT_THRESHOLD]))
        default_f1.append(default[0])
    return ThresholdResult(np.array(chosen), np.array(best_f1), np.array(default_f1))
