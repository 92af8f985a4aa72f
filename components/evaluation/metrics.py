"""Per-class and macro metrics of multi-label predictions, named as docs/architecture.md names them.

- ``f1_macro``: mean over D, G, A of the positive-class F1.
- ``f1_course``: mean over D, G, A of scikit-learn ``f1_score(average="macro")`` on each binary column (F1 averaged
  over both classes of each disease), which is how the study's course evaluation scored.

Never report one under the other's name.

Clinical operating points (``sensitivity_at_specificity``, ``specificity_at_sensitivity``) are read off the full
ROC curve, one point per distinct score; ``clinical_report`` gathers them with AUROC, AP and the sensitivity and
specificity at the chosen thresholds.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

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


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (scikit-learn's step-wise area under the precision-recall curve) of one binary column.

    NaN with a warning when there is no positive: scikit-learn would return 0 there, a value that reads as a
    score but is not one.
    """
    if not np.any(np.asarray(y_true) == 1):
        warnings.warn("AP is undefined without positives; reporting NaN", stacklevel=2)
        return float("nan")
    return float(average_precision_score(y_true, scores))


def _roc_points(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at every distinct score used as a threshold (``score >= t``), plus the point
    where nothing is predicted positive.

    ``drop_intermediate=False``: scikit-learn's default drops points collinear with their neighbours, and such a
    point can be the best one that meets a specificity (or sensitivity) floor.
    """
    false_positive_rate, true_positive_rate, _ = roc_curve(y_true, scores, drop_intermediate=False)
    return true_positive_rate, 1.0 - false_positive_rate


def _check_floor(floor: float, name: str) -> None:
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {floor}")


def _best_at_floor(best: np.ndarray, held: np.ndarray, floor: float) -> float:
    """The largest ``best`` among ROC points whose ``held`` rate is at least ``floor`` (within 1e-12: ``1 - 0.1``
    is not 0.9 in floating point)."""
    return float(best[held >= floor - 1e-12].max())


def _both_classes(y_true: np.ndarray) -> bool:
    """Whether an operating point is defined; warns when it is not."""
    if len(np.unique(y_true)) < 2:
        warnings.warn("an operating point is undefined when only one class is present; reporting NaN", stacklevel=3)
        return False
    return True


def sensitivity_at_specificity(y_true: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The best sensitivity among the thresholds whose specificity is at least ``specificity``.

    Thresholds are the distinct scores (predict positive when ``score >= t``) plus one above every score (nothing
    positive, specificity 1), so the answer exists (0 at worst). Read off the ROC curve with no interpolation
    between its points: a sensitivity some threshold actually delivers. NaN with a warning when only one class
    is present.
    """
    _check_floor(specificity, "specificity")
    if not _both_classes(y_true):
        return float("nan")
    sensitivities, specificities = _roc_points(y_true, scores)
    return _best_at_floor(sensitivities, specificities, specificity)


def specificity_at_sensitivity(y_true: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The best specificity among the thresholds whose sensitivity is at least ``sensitivity``.

    The mirror of :func:`sensitivity_at_specificity`, same thresholds; the lowest threshold predicts everything
    positive (sensitivity 1), so the answer exists (0 at worst).
    """
    _check_floor(sensitivity, "sensitivity")
    if not _both_classes(y_true):
        return float("nan")
    sensitivities, specificities = _roc_points(y_true, scores)
    return _best_at_floor(specificities, sensitivities, sensitivity)


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Sensitivity and specificity of 0/1 predictions of one column; NaN where a class is absent (undefined, where
    ``recall_<C>`` of :func:`multilabel_report` reports 0 as scikit-learn does).
    """
    positive, predicted = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    positives, negatives = positive.sum(), (~positive).sum()
    sensitivity = (predicted & positive).sum() / positives if positives else float("nan")
    specificity = (~predicted & ~positive).sum() / negatives if negatives else float("nan")
    return float(sensitivity), float(specificity)


def multilabel_report(
    y_true: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """Every metric of one set of predictions, flat, with the class code in per-class names.

    Args:
        y_true: ``(N, 3)`` 0/1 labels in ``LABELS`` order.
        probs: ``(N, 3)`` probabilities.
        thresholds: one threshold or one per class; a label is predicted when ``prob >= threshold``.

    Returns:
        ``precision_<C>``, ``recall_<C>``, ``f1_<C>``, ``f1_course_<C>``, ``auroc_<C>``, ``ap_<C>``,
        ``sensitivity_<C>``, ``specificity_<C>``, ``support_<C>`` for each class ``C``, and ``f1_macro``,
        ``f1_course``, ``auroc_macro`` (mean over the classes where it is defined). ``sensitivity_<C>`` is
        ``recall_<C>`` except that it is NaN, not 0, without positives (see :func:`sensitivity_specificity`).
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
        report[f"ap_{label}"] = average_precision(truth, probs[:, column])
        report[f"sensitivity_{label}"], report[f"specificity_{label}"] = sensitivity_specificity(truth, pred)
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


OPERATING_POINTS: tuple[tuple[str, str, float], ...] = (
    ("sens_at_spec90", "specificity", 0.90),
    ("sens_at_spec95", "specificity", 0.95),
    ("spec_at_sens90", "sensitivity", 0.90),
)
"""The operating points of :func:`clinical_report`: its name, the rate held at a floor, the floor."""


def _operating_points(truth: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """:data:`OPERATING_POINTS` of one column from a single ROC curve (NaN, warned, with one class present)."""
    if not _both_classes(truth):
        return {name: float("nan") for name, _, _ in OPERATING_POINTS}
    sensitivities, specificities = _roc_points(truth, score)
    rates = {"sensitivity": sensitivities, "specificity": specificities}
    other = {"sensitivity": "specificity", "specificity": "sensitivity"}
    return {name: _best_at_floor(rates[other[held]], rates[held], floor) for name, held, floor in OPERATING_POINTS}


def clinical_report(y_true: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray) -> dict[str, float]:
    """What a screening reader asks of each class, flat with the class code in the names.

    Returns:
        per class ``C``: ``auroc_<C>``, ``ap_<C>``, ``sens_at_spec90_<C>``, ``sens_at_spec95_<C>``,
        ``spec_at_sens90_<C>`` (threshold-free, from the ROC curve), and ``sensitivity_<C>``,
        ``specificity_<C>`` at ``thresholds`` (one, or one per class). Undefined values are NaN with a warning.
    """
    y_true, probs = check_labels_and_scores(y_true, probs)
    y_pred = binarize(probs, thresholds)
    report: dict[str, float] = {}
    for column, label in enumerate(LABELS):
        truth, score = y_true[:, column], probs[:, column]
        report[f"auroc_{label}"] = auroc(truth, score)
        report[f"ap_{label}"] = average_precision(truth, score)
        report.update({f"{name}_{label}": value for name, value in _operating_points(truth, score).items()})
        sensitivity, specificity = sensitivity_specificity(truth, y_pred[:, column])
        report[f"sensitivity_{label}"], report[f"specificity_{label}"] = sensitivity, specificity
    return report
