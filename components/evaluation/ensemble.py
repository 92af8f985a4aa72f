"""Weighted ensembles of member probabilities.

Members are combined in probability space: ``p = Σ w_m p_m`` with weights that are non-negative and sum to one.
Weights are given explicitly (the study: SE 0.50, MHA 0.20, class-balanced ResNet18 0.30) or derived from each
member's validation F1, normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from components import LABELS

PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{label}" for label in LABELS)


def normalise_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights scaled to sum to one.

    Raises:
        ValueError: for an empty list, a negative or non-finite weight, or weights that sum to zero.
    """
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("ensemble weights must be a non-empty list")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"ensemble weights must be finite and >= 0, got {array.tolist()}")
    if array.sum() <= 0:
        raise ValueError(f"ensemble weights sum to zero: {array.tolist()}")
    return array / array.sum()


def weights_from_scores(scores: Sequence[float]) -> np.ndarray:
    """Weights proportional to each member's validation score (e.g. ``f1_macro``).

    When every score is zero (no member finds any positive yet) the scores say nothing: the weights are equal.
    """
    array = np.asarray(scores, dtype=np.float64)
    if array.size and np.isfinite(array).all() and (array == 0).all():
        return np.full(array.size, 1.0 / array.size)
    return normalise_weights(array)


def weighted_mean(member_probs: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``Σ w_m p_m`` over members, each ``(N, 3)``.

    Raises:
        ValueError: when members differ in shape or the weights do not match the members.
    """
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    shapes = [np.shape(p) for p in member_probs]
    if len(set(shapes)) != 1:
        raise ValueError(f"members' probabilities must all have the same shape, got {shapes}")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])
    normalised = normalise_weights(weights)
    if normalised.size != stacked.shape[0]:
        raise ValueError(f"{normalised.size} weights for {stacked.shape[0]} members")
    return np.tensordot(normalised, stacked, axes=1)


def align_members(predictions: Mapping[str, pd.DataFrame]) -> tuple[list[str], list[np.ndarray]]:
    """Checks that every member predicted the same ids in the same order; returns the ids and probabilities.

    Args:
        predictions: member name -> frame with an ``id`` column and ``p_D``, ``p_G``, ``p_A``.

    Raises:
        ValueError: naming the member and the ids that differ from the first member's.
    """
    if not predictions:
        raise ValueError("an ensemble needs at least one member")
    names = list(predictions)
    reference = list(predictions[names[0]]["id"])
    arrays = []
    for name in names:
        frame = predictions[name]
        missing_columns = [c for c in ("id", *PROB_COLUMNS) if c not in frame.columns]
        if missing_columns:
            raise ValueError(f"member {name!r} predictions lack column(s) {', '.join(missing_columns)}")
        ids = list(frame["id"])
        if ids != reference:
            only_here = sorted(set(ids) - set(reference))[:5]
            only_there = sorted(set(reference) - set(ids))[:5]
            detail = f"extra {only_here}, missing {only_there}" if only_here or only_there else "same ids, other order"
            raise ValueError(f"member {name!r} predicted other ids than {names[0]!r}: {detail}")
        arrays.append(frame.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float64))
    return reference, arrays
