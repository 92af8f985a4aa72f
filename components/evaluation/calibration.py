"""How far predicted probabilities are from observed frequencies, and temperature scaling to bring them closer.

Each class (D, G, A) is its own binary problem: its probability is the model's confidence that the disease is
present, and calibration asks whether, among images given probability p, a share p have the disease.

- **ECE**, the expected calibration error (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., *On Calibration
  of Modern Neural Networks*, ICML 2017, eq. 3): ``ECE = sum_b |B_b| / n * |freq(B_b) - conf(B_b)|`` over ``bins``
  equal-width bins of [0, 1], ``freq`` the share of positives and ``conf`` the mean probability in the bin; for
  one class at a time this is the class-wise ECE of Kull et al. (NeurIPS 2019). Bins are right-closed
  (``(0.4, 0.5]``; 0 falls in the first), as scikit-learn's ``calibration_curve`` bins them.
- **Temperature scaling** (Guo et al. 2017): ``sigmoid(logit(p) / T)`` with one ``T > 0`` per class fit by
  minimising the negative log-likelihood on held-out (validation or out-of-fold) predictions. It changes no
  ranking (AUROC, AP and the operating points stay put), only how confident the probabilities are; ``T > 1``
  softens an overconfident model. Thresholds tuned before scaling must be re-tuned after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from components import LABELS

CLIP = 1e-7
"""Probabilities are clipped to ``[CLIP, 1 - CLIP]`` before taking logits to fit a temperature: a saturated
probability only says its logit is large (about 16 stands in for it), and an infinite one would dominate the fit."""

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The temperatures the fit searches; far wider than any real model needs, tight enough to stop a degenerate set
(one class only) from running to 0 or infinity."""


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One binary column and its probabilities as 1-D arrays.

    Raises:
        ValueError: naming what is wrong.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 1 or y_true.shape != probs.shape or y_true.size == 0:
        raise ValueError(f"need two non-empty 1-D arrays of one length, got {y_true.shape} and {probs.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not ((probs >= 0) & (probs <= 1)).all():
        raise ValueError("probabilities must be in [0, 1]")
    return y_true.astype(np.float64), probs


def bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    """Each probability's equal-width bin ``0..bins-1``; right-closed bins as scikit-learn's ``calibration_curve``."""
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    return np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], probs)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[np.ndarray, ...]:
    """Per bin: image count, mean probability and share of positives (NaN for an empty bin)."""
    y_true, probs = _check(y_true, probs)
    index = bin_index(probs, bins)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=probs, minlength=bins) / count
        frequency = np.bincount(index, weights=y_true, minlength=bins) / count
    return count, confidence, frequency


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of one class: the count-weighted mean gap between the share of positives and the mean probability in
    each of ``bins`` equal-width bins (see the module docstring for the definition and its sources).

    Computed as ``sum_b |positives_b - sum of p_b| / n``, the same sum with the bin counts cancelled.
    """
    y_true, probs = _check(y_true, probs)
    index = bin_index(probs, bins)
    gap = np.bincount(index, weights=y_true, minlength=bins) - np.bincount(index, weights=probs, minlength=bins)
    return float(np.abs(gap).sum() / len(probs))


def calibration_errors(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, float]:
    """``ece_<C>`` for each class of ``(N, 3)`` labels and probabilities."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    return {
        f"ece_{label}": expected_calibration_error(labels[:, c], probs[:, c], bins) for c, label in enumerate(LABELS)
    }


@dataclass(frozen=True)
class CalibrationMetrics:
    """``ece_<C>`` per class, vectorised over patient resamples for ``components.evaluation.bootstrap``.

    A resample weights each image by how often its patient was drawn; each image keeps its bin, so the per-bin
    sums of every resample are one matrix product.
    """

    bins: int = 15

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return calibration_errors(labels, probs, self.bins)

    def resampled(
        self, labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, counts: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``{name: (resamples,) values}`` (see ``components.evaluation.bootstrap.Resampled``)."""
        weights = counts[:, patients].astype(np.float64)
        labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
        out = {}
        for column, label in enumerate(LABELS):
            in_bin = np.eye(self.bins)[bin_index(probs[:, column], self.bins)]  # (N, bins) one-hot
            gap = weights @ (in_bin * (labels[:, column] - probs[:, column])[:, None])
            out[f"ece_{label}"] = np.abs(gap).sum(axis=1) / weights.sum(axis=1)
        return out


def apply_temperature(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """``sigmoid(logit(p) / T)``; ``T`` one value or one per class (the last axis). 0 and 1 stay 0 and 1, and
    ``T = 1`` gives ``p`` back (to rounding)."""
    temperature = np.asarray(temperature, dtype=np.float64)
    if not (np.isfinite(temperature) & (temperature > 0)).all():
        raise ValueError(f"temperatures must be finite and positive, got {temperature}")
    return expit(logit(np.asarray(probs, dtype=np.float64)) / temperature)


def _nll(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / T)``, in the overflow-free form ``log(1 + e^z) - y z``."""
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y_true * z))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature ``T`` that minimises the NLL of ``sigmoid(logit(p) / T)`` on one class.

    scipy's bounded ``minimize_scalar`` (Brent's method on an interval) over ``log T`` within
    :data:`TEMPERATURE_BOUNDS`: one parameter needs no gradient, the NLL has a single minimum in ``T`` (it is convex
    in ``1/T``), and searching ``log T`` spends the same effort on 0.1-1 as on 1-10. Probabilities are clipped by
    :data:`CLIP`. All-0.5 predictions carry no scale to fit: 1.
    """
    y_true, probs = _check(y_true, probs)
    logits = logit(np.clip(probs, CLIP, 1.0 - CLIP))
    if not logits.any():
        return 1.0
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: _nll(logits, y_true, np.exp(log_t)), bounds=(low, high), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(result.x))


def fit_temperatures(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(3,)`` temperatures, one per class of ``(N, 3)`` held-out labels and probabilities."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.ndim != 2 or labels.shape[1] != len(LABELS) or labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (N, {len(LABELS)})")
    return np.array([fit_temperature(labels[:, c], probs[:, c]) for c in range(len(LABELS))])


TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fixed: matplotlib's tick locators cost a third of drawing a figure


def reliability_figure(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> Figure:
    """Reliability diagrams of the three classes side by side: share of positives against mean probability per
    non-empty bin (on the diagonal when calibrated), the share of images in each bin as grey bars, the ECE in each
    title.

    Built with matplotlib's object API (``matplotlib.figure.Figure``): no pyplot state, safe in threads, nothing
    left open; save it with ``figure.savefig`` or ``mlflow.log_figure``.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    figure = Figure(figsize=(12, 4))
    axes = figure.subplots(1, len(LABELS), sharey=True)
    centres = (np.arange(bins) + 0.5) / bins
    for column, (label, axis) in enumerate(zip(LABELS, axes, strict=True)):
        count, confidence, frequency = reliability_bins(labels[:, column], probs[:, column], bins)
        filled = count > 0
        axis.bar(centres, count / count.sum(), width=1.0 / bins, color="0.85", label="share of images")
        axis.plot((0, 1), (0, 1), linestyle="--", color="0.5", linewidth=1)
        axis.plot(confidence[filled], frequency[filled], marker="o", label="observed")
        ece = expected_calibration_error(labels[:, column], probs[:, column], bins)
        axis.set(xlim=(0, 1), ylim=(0, 1), xticks=TICKS, yticks=TICKS, xlabel="mean predicted probability",
                 title=f"{label}  ECE {ece:.3f} ({bins} bins)")  # fmt: skip
    axes[0].set_ylabel("share of positives")
    axes[0].legend(loc="upper left")
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.9, wspace=0.08)
    return figure
