"""What an evaluation reports on labelled predictions: every metric with 95% intervals over patients.

``multilabel_report`` (F1s, precision, recall, AUROC, AP, sensitivity, specificity), ``clinical_report``
(operating points) and ``calibration_errors`` (ECE per class), plus ``<metric>_ci_low`` / ``<metric>_ci_high`` for
:data:`INTERVAL_METRICS` from a bootstrap that resamples *patients* (both eyes of one go together: images are not
independent), vectorised (``components.evaluation.bootstrap``: 1000 resamples of 200 images in about 0.1 s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components import LABELS
from components.evaluation.bootstrap import MetricSet, RankingMetrics, ThresholdMetrics, patient_bootstrap
from components.evaluation.calibration import CalibrationMetrics, calibration_errors
from components.evaluation.metrics import clinical_report, multilabel_report

# the metrics that get an interval: what a reader compares (the rest are logged as point estimates)
PER_CLASS_INTERVALS = ("f1", "auroc", "ap", "sensitivity", "specificity", "sens_at_spec90", "ece")
INTERVAL_METRICS = ("f1_macro", "f1_course", *(f"{m}_{c}" for m in PER_CLASS_INTERVALS for c in LABELS))
BOOTSTRAP_RESAMPLES = 1000
# what every model is compared on, members and ensembles alike (each with its interval): the logged models carry these
COMPARED_METRICS = ("f1_macro", "f1_course", *(f"f1_{c}" for c in LABELS), *(f"auroc_{c}" for c in LABELS))


def scored_report(
    labels: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], patients: Sequence[str], seed: int = 0
) -> dict[str, float]:
    """Every metric of the module docstring at ``thresholds`` (one per class), with the intervals."""
    thresholds = tuple(float(t) for t in thresholds)
    at = np.asarray(thresholds)
    report = {**multilabel_report(labels, probs, at), **clinical_report(labels, probs, at),
              **calibration_errors(labels, probs)}  # fmt: skip
    metrics = MetricSet((ThresholdMetrics(thresholds), RankingMetrics(operating_points=True), CalibrationMetrics()))
    intervals = patient_bootstrap(metrics, labels, probs, patients, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    for name in INTERVAL_METRICS:
        report[f"{name}_ci_low"], report[f"{name}_ci_high"] = intervals[name]
    return report


def compared_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """The ``prefix``-ed :data:`COMPARED_METRICS` of ``metrics`` with their ``_ci_low`` / ``_ci_high``, as present."""
    names = (f"{prefix}{name}{suffix}" for name in COMPARED_METRICS for suffix in ("", "_ci_low", "_ci_high"))
    return {name: metrics[name] for name in names if name in metrics}
