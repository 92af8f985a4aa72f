"""Per-class and macro metrics of multi-label predictions, named as ARCHITECTURE.md names them.

- ``f1_macro``: mean over D, G, A of the positive-class F1.
- ``f1_course``: mean over D, G, A of scikit-learn ``f1_score(average="macro")`` on each binary column (F1 averaged
  over both classes of each disease), which is how the study's course evaluation scored.

Never report one under the other's name.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from components import LABELS

DEFAULT_THRESHOLD = 0.5


def check_labels_and_scores(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates ``(N, 3)`` 0/1 labels and ``(N, 3)`` finite scores; returns them as arrays.

    Raises:
        ValueError: naming the shapes or the bad values.
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape[1] != len(LABELS) or y_true.shape != scores.shape:
        raise ValueError(f"labels {y_true.shape} and scores {scores.shape} must both be (N, {len(LABELS)})")
    if y_true.shape[0] == 0:
        raise ValueError("no rows to score")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return y_true.astype(np.int64), scores


def binarize(probs: np.ndarray, thresholds: float | np.ndarray = DEFAULT_THRESHOLD) -> np.ndarray:
    """0/1 predictions: ``probs >= threshold`` per class (one threshold, or one per class)."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(LABELS),))
    return (np.asarray(probs) >= thresholds).astype(np.int64)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one binary column; NaN with a warning when only one class is present."""
    if len(np.unique(y_true)) < 2:
        warnings.warn("AUROC is undefined when only one class is present; reporting NaN", stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y_true, scores))


def multilabel_report(
    y_true: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """Every metric of one set of predictions, flat, with the class code in per-class names.

    Args:
        y_true: ``(N, 3)`` 0/1 labels in ``LABELS`` order.
        probs: ``(N, 3)`` probabilities.
        thresholds: one threshold or one per class; a label is predicted when ``prob >= threshold``.

    Returns:
        ``precision_<C>``, ``recall_<C>``, ``f1_<C>``, ``f1_course_<C>``, ``auroc_<C>``, ``support_<C>`` for each
        class ``C``, and ``f1_macro``, ``f1_course``, ``auroc_macro`` (mean over the classes where it is defined).
    """
    y_true, probs = check_labels_and_scores(y_true, probs)
    y_pred = binarize(probs, thresholds)
    report: dict[str, float] = {}
    for column, label in enumerate(LABELS):
        truth, pred = y_true[:, column], y_pred[:, column]
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, pred, average="binary", pos_label=1, zero_division=0
        )
        report[f"precision_{label}"] = float(precision)
        report[f"recall_{label}"] = float(recall)
        report[f"f1_{label}"] = float(f1)
        report[f"f1_course_{label}"] = float(f1_score(truth, pred, average="macro", zero_division=0))
        report[f"auroc_{label}"] = auroc(truth, probs[:, column])
        report[f"support_{label}"] = float(truth.sum())
    report["f1_macro"] = float(np.mean([report[f"f1_{label}"] for label in LABELS]))
    report["f1_course"] = float(np.mean([report[f"f1_course_{label}"] for label in LABELS]))
    aurocs = [report[f"auroc_{label}"] for label in LABELS]
    report["auroc_macro"] = float(np.nanmean(aurocs)) if not np.isnan(aurocs).all() else float("nan")
    return report


def f1_macro(y_true: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = DEFAULT_THRESHOLD) -> float:
    """Mean positive-class F1 over D, G, A."""
    y_true, probs = check_labels_and_scores(y_true, probs)
    y_pred = binarize(probs, thresholds)
    return float(np.mean([f1_score(y_true[:, c], y_pred[:, c], zero_division=0) for c in range(len(LABELS))]))
