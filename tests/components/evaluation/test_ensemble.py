"""Ensemble weights and the weighted mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.ensemble import align_members, normalise_weights, weighted_mean, weights_from_scores

A = np.array([[0.2, 0.4, 0.9], [0.6, 0.1, 0.3]])
B = np.array([[0.6, 0.0, 0.5], [0.2, 0.5, 0.7]])


def test_weighted_mean_by_hand() -> None:
    # 0.75 * A + 0.25 * B, e.g. first cell 0.75*0.2 + 0.25*0.6 = 0.3
    expected = [[0.3, 0.3, 0.8], [0.5, 0.2, 0.4]]
    np.testing.assert_allclose(weighted_mean([A, B], [3, 1]), expected, atol=1e-12)


def test_one_member_is_the_identity() -> None:
    np.testing.assert_array_equal(weighted_mean([A], [0.4]), A)


def test_study_weights_and_weights_from_scores() -> None:
    assert normalise_weights([0.5, 0.2, 0.3]).tolist() == pytest.approx([0.5, 0.2, 0.3])
    # validation F1 0.8, 0.6, 0.6 -> 0.8/2.0, 0.6/2.0, 0.6/2.0
    assert weights_from_scores([0.8, 0.6, 0.6]).tolist() == pytest.approx([0.4, 0.3, 0.3])
    assert weights_from_scores([0.0, 0.0]).tolist() == [0.5, 0.5]  # scores that say nothing: equal weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0.5, -0.1], "finite and >= 0"), ([0.0, 0.0], "sum to zero"), ([], "non-empty"), ([np.nan, 1], "finite")],
)
def test_bad_weights_raise(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_weights(weights)


def test_mismatched_members_raise() -> None:
    with pytest.raises(ValueError, match="2 weights for 1 members"):
        weighted_mean([A], [1, 1])
    with pytest.raises(ValueError, match="same shape"):
        weighted_mean([A, B[:1]], [1, 1])


def _frame(ids: list[str], probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "p_D": probs[:, 0], "p_G": probs[:, 1], "p_A": probs[:, 2]})


def test_align_members() -> None:
    ids, arrays = align_members({"a": _frame(["x", "y"], A), "b": _frame(["x", "y"], B)})
    assert ids == ["x", "y"]
    np.testing.assert_array_equal(arrays[1], B)
    with pytest.raises(ValueError, match=r"member 'b' predicted other ids than 'a': extra \['z'\], missing \['y'\]"):
        align_members({"a": _frame(["x", "y"], A), "b": _frame(["x", "z"], B)})
    with pytest.raises(ValueError, match="same ids, other order"):
        align_members({"a": _frame(["x", "y"], A), "b": _frame(["y", "x"], B)})
    with pytest.raises(ValueError, match="lack column"):
        align_members({"a": _frame(["x", "y"], A).drop(columns="p_G")})
