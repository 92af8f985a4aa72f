"""How sure a prediction is, and when to refer an image to a human grader.

Two measures of uncertainty per image and class, both standard deviations of probabilities:

- ``tta_std``: the spread of the test-time views' probabilities (a flipped or rotated copy of the same fundus
  should not change the answer; when it does, the model is reading noise). For an ensemble, the members' spreads
  averaged with the ensemble's weights.
- ``member_std``: the ensemble members' disagreement, the weighted standard deviation of their (calibrated)
  probabilities around the ensemble's, ``sqrt(Σ w_m (p_m - p)²)``. For a single member made of fold models, the
  fold models' disagreement; 0 for one model alone.

An image is referred (``refer`` = 1) when, for any class, its probability lies within ``margin`` of that class's
threshold, or either spread is above its limit (:class:`ReferralSpec`). The defaults are documented on the spec;
``docs/results.md`` shows on the real data that referred images are wrong far more often than the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components import LABELS
from components.evaluation.calibration import apply_temperature
from components.evaluation.ensemble import PROB_COLUMNS, normalise_weights
from components.evaluation.metrics import binarize

TTA_STD_COLUMNS: tuple[str, ...] = tuple(f"tta_std_{label}" for label in LABELS)
MEMBER_STD_COLUMNS: tuple[str, ...] = tuple(f"member_std_{label}" for label in LABELS)
UNCERTAINTY_COLUMNS: tuple[str, ...] = (*TTA_STD_COLUMNS, *MEMBER_STD_COLUMNS)


class ReferralSpec(BaseModel):
    """When an image goes to a human grader (a profile's ``referral``, carried by the registered ensemble).

    Attributes:
        margin: refer when a class's probability is within this distance of its threshold (default 0.1: a
            probability of 0.42 against a threshold of 0.5 is no decision).
        max_tta_std: refer when the test-time views' spread of a class is above this (default 0.15: on the real
            data's cross-fitted CV predictions, with margin 0.1, 0.1 referred half of the images and 0.15 a third,
            whose error rate was 3.7 times the rest's; docs/results.md, "Referral").
        max_member_std: refer when the members' (or fold models') disagreement on a class is above this
            (default 0.15).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float = Field(default=0.1, ge=0, le=0.5)
    max_tta_std: float = Field(default=0.15, gt=0, le=0.5)
    max_member_std: float = Field(default=0.15, gt=0, le=0.5)


def view_spread(view_probs: np.ndarray) -> np.ndarray:
    """``(N, 3)`` standard deviation over the views of ``(V, N, 3)`` per-view probabilities (0 for one view)."""
    view_probs = np.asarray(view_probs, dtype=np.float64)
    if view_probs.ndim != 3:
        raise ValueError(f"per-view probabilities must be (views, N, classes), got {view_probs.shape}")
    return view_probs.std(axis=0)


def disagreement(model_probs: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """``(N, 3)`` weighted standard deviation of the models' ``(N, 3)`` probabilities around their weighted mean.

    ``weights`` (default equal) are normalised to sum to one.
    """
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in model_probs])
    w = np.full(len(stacked), 1.0 / len(stacked)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stacked),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{len(stacked)} models need as many non-negative weights, got {np.asarray(weights)}")
    w = w / w.sum()
    mean = np.tensordot(w, stacked, axes=1)
    return np.sqrt(np.tensordot(w, (stacked - mean) ** 2, axes=1))


def refer(
    probs: np.ndarray, thresholds: Sequence[float], tta_std: np.ndarray, member_std: np.ndarray, spec: ReferralSpec
) -> np.ndarray:
    """``(N,)`` 0/1: 1 where any class is near its threshold or too uncertain (see the module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    near = np.abs(probs - np.asarray(thresholds, dtype=np.float64)) < spec.margin
    unsure = (np.asarray(tta_std) > spec.max_tta_std) | (np.asarray(member_std) > spec.max_member_std)
    return (near | unsure).any(axis=1).astype(np.int64)


def referral_table(errors: np.ndarray, referred: np.ndarray) -> dict[str, float]:
    """How referral splits the errors: share referred, and the error rate among referred and other images.

    Args:
        errors: ``(N,)`` 1 where an image has any wrong label (0 otherwise).
        referred: ``(N,)`` 0/1 referral flags.

    Returns ``referred_share``, ``error_rate_referred``, ``error_rate_kept`` (NaN where a group is empty) and the
    counts ``n_referred``, ``n_kept``.
    """
    errors, referred = np.asarray(errors, dtype=bool), np.asarray(referred, dtype=bool)
    kept = ~referred

    def rate(mask: np.ndarray) -> float:
        return float(errors[mask].mean()) if mask.any() else float("nan")

    return {
        "referred_share": float(referred.mean()) if referred.size else float("nan"),
        "error_rate_referred": rate(referred),
        "error_rate_kept": rate(kept),
        "n_referred": int(referred.sum()),
        "n_kept": int(kept.sum()),
    }


def ensemble_uncertainty(
    member_views: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray, temperatures: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ensemble's probabilities with both spreads, from every model's per-view probabilities.

    Args:
        member_views: per member, ``(F, V, N, 3)``: its F fold models' (1 for a plain model) probabilities of each
            of the V test-time views.
        weights: the members' ensemble weights.
        temperatures: ``(members, 3)`` per-class temperatures applied to each member's probabilities (None: 1).

    Returns ``(probs, tta_std, member_std)``, each ``(N, 3)``: the weighted mean of the members' calibrated
    probabilities (each the mean over its folds and views), the members' view spreads (of their uncalibrated
    probabilities) averaged with the weights, and the members' disagreement on the calibrated scale (with one member,
    its fold models').
    """
    w = normalise_weights(weights)
    if len(member_views) != len(w):
        raise ValueError(f"{len(w)} weights for {len(member_views)} members")
    temperatures = np.ones((len(w), len(LABELS))) if temperatures is None else np.asarray(temperatures)
    # the views' spread on the network's own scale: a temperature below 1 (a sharpening) would stretch it, and the
    # limits were measured on raw spreads (docs/results.md, "Referral")
    views_of = [np.mean(v, axis=0) for v in member_views]  # (V, N, 3): fold-averaged
    member_probs = [
        apply_temperature(np.mean(v, axis=(0, 1)), t) for v, t in zip(member_views, temperatures, strict=True)
    ]
    probs = np.tensordot(w, np.stack(member_probs), axes=1)
    tta_std = np.tensordot(w, np.stack([view_spread(v) for v in views_of]), axes=1)
    if len(member_views) > 1:
        member_std = disagreement(member_probs, w)
    else:
        member_std = disagreement([apply_temperature(fold.mean(axis=0), temperatures[0]) for fold in member_views[0]])
    return probs, tta_std, member_std


def prediction_frame(
    probs: np.ndarray, thresholds: np.ndarray, tta_std: np.ndarray, member_std: np.ndarray, referral: ReferralSpec
) -> pd.DataFrame:
    """Per image: ``D, G, A`` (0/1 at the thresholds), ``p_*``, ``tta_std_*``, ``member_std_*`` and ``refer``: what
    ``odir predict`` writes and the served ensemble answers."""
    labels = binarize(probs, thresholds)
    frame = pd.DataFrame({label: labels[:, c] for c, label in enumerate(LABELS)})
    for values, columns in ((probs, PROB_COLUMNS), (tta_std, TTA_STD_COLUMNS), (member_std, MEMBER_STD_COLUMNS)):
        for c, column in enumerate(columns):
            frame[column] = values[:, c]
    frame["refer"] = refer(probs, thresholds, tta_std, member_std, referral)
    return frame
