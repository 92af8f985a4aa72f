"""Threshold search on crafted score vectors."""

from __future__ import annotations

import numpy as np
import pytest

from components.thresholds import STUDY_GRID, f1_per_threshold, fine_grid, tune_thresholds

# y = 0,0,1,1,1,0 with scores 0.32 0.41 0.44 0.52 0.61 0.58. On the study grid:
#   0.30: TP3 FP3 -> 6/9     0.35, 0.40: TP3 FP2 -> 6/8 = 0.75     0.45, 0.50: TP2 FP1 FN1 -> 4/6
#   0.55: TP1 FP1 FN2 -> 2/5  0.60: TP1 FN2 -> 2/4                  0.65: nothing predicted -> 0
# Best F1 0.75 at 0.35 and 0.40: the tie goes to 0.40, the one closer to 0.5.
Y = np.array([0, 0, 1, 1, 1, 0])
S = np.array([0.32, 0.41, 0.44, 0.52, 0.61, 0.58])


def test_study_grid() -> None:
    assert STUDY_GRID == (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)


def test_f1_per_threshold_by_hand() -> None:
    expected = [6 / 9, 0.75, 0.75, 4 / 6, 4 / 6, 2 / 5, 2 / 4, 0.0]
    assert f1_per_threshold(Y, S, np.array(STUDY_GRID)).tolist() == pytest.approx(expected)


def test_tuning_picks_best_and_breaks_ties_towards_half() -> None:
    y = np.stack([Y, Y, 1 - Y], axis=1)
    probs = np.stack([S, S, 1 - S], axis=1)
    result = tune_thresholds(y, probs)
    assert result.thresholds[0] == pytest.approx(0.40)
    assert result.f1[0] == pytest.approx(0.75)
    assert result.f1_default[0] == pytest.approx(4 / 6)
    assert result.as_dict()["D"] == pytest.approx(0.40)
    assert result.f1[2] == pytest.approx(f1_per_threshold(1 - Y, 1 - S, np.array(STUDY_GRID)).max())
    assert result.f1_gain == pytest.approx(result.f1.mean() - result.f1_default.mean())


def test_separable_scores_give_perfect_f1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(40, 3))
    probs = np.where(y == 1, rng.uniform(0.62, 0.9, y.shape), rng.uniform(0.05, 0.33, y.shape))
    result = tune_thresholds(y, probs)
    assert result.f1.tolist() == [1.0, 1.0, 1.0]
    assert result.thresholds.tolist() == pytest.approx([0.5, 0.5, 0.5])  # every perfect cut ties; 0.5 is chosen


def test_equidistant_tie_goes_to_the_lower_threshold() -> None:
    # positives at 0.9 and 0.5, negatives at 0.48 and 0.52:
    #   t=0.45 predicts all four: TP2 FP2 -> 4/6;  t=0.55 predicts 0.9 only: TP1 FN1 -> 2/3. Equal F1, equally far
    #   from 0.5: the lower threshold wins.
    y = np.repeat(np.array([[1], [1], [0], [0]]), 3, axis=1)
    probs = np.repeat(np.array([[0.9], [0.5], [0.48], [0.52]]), 3, axis=1)
    result = tune_thresholds(y, probs, grid=(0.55, 0.45))
    assert result.f1.tolist() == pytest.approx([2 / 3] * 3)
    assert result.thresholds.tolist() == [0.45, 0.45, 0.45]


def test_fine_grid() -> None:
    grid = fine_grid(0.05, 0.1, 0.3)
    assert grid == (0.1, 0.15, 0.2, 0.25, 0.3)
    assert len(fine_grid()) == 91
    with pytest.raises(ValueError, match="need 0 <= low < high <= 1"):
        fine_grid(0.0)


def test_empty_grid_raises() -> None:
    with pytest.raises(ValueError, match="grid is empty"):
        tune_thresholds(np.ones((2, 3)), np.ones((2, 3)), grid=())
