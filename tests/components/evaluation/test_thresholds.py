"""Threshold search on crafted score vectors."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.thresholds import (
    OBJECTIVES,
    STUDY_GRID,
    Objective,
    f1_per_threshold,
    fine_grid,
    fit_thresholds,
    parse_objective,
    tune_thresholds,
)

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


# Objectives on a custom grid. Positives score 0.3 0.5 0.7 0.9, negatives 0.1 0.25 0.35 0.45 0.65 0.85.
#   t     TP FP FN TN   sensitivity  specificity   F1          Youden  F1 of the negatives  f1_course
#   0.20   4  5  0  1   1            1/6           8/13 0.615  1/6     2/7                  0.451
#   0.40   3  3  1  3   3/4          1/2           6/10 0.6    1/4     6/10                 0.6
#   0.60   2  2  2  4   1/2          2/3           4/8  0.5    1/6     8/12                 0.583
#   0.80   1  1  3  5   1/4          5/6           2/6         1/12    10/14                0.524
#   0.87   1  0  3  6   1/4          1             2/5         1/4     12/15                0.6
OBJ_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
OBJ_S = np.array([0.3, 0.5, 0.7, 0.9, 0.1, 0.25, 0.35, 0.45, 0.65, 0.85])
OBJ_GRID = (0.2, 0.4, 0.6, 0.8, 0.87)


def _tune(objective: str) -> float:
    labels, probs = np.repeat(OBJ_Y[:, None], 3, axis=1), np.repeat(OBJ_S[:, None], 3, axis=1)
    return float(tune_thresholds(labels, probs, OBJ_GRID, objective).thresholds[0])


@pytest.mark.parametrize(
    ("objective", "threshold"),
    [
        ("f1", 0.2),  # 8/13 beats 6/10
        ("f1_course", 0.4),  # 0.6 at 0.40 and 0.87: the tie goes to 0.40, closer to 0.5
        ("youden", 0.4),  # 1/4 at 0.40 and 0.87: the tie goes to 0.40, closer to 0.5
        ("sens_at_spec:0.6", 0.6),  # specificity >= 0.6 at 0.6, 0.8, 0.87; sensitivity 1/2 beats 1/4
        ("sens_at_spec:0.8", 0.87),  # 0.8 and 0.87 both give 1/4; 0.87 has more specificity (1 > 5/6)
        ("spec_at_sens:0.7", 0.4),  # sensitivity >= 0.7 at 0.2 and 0.4; specificity 1/2 beats 1/6
        ("spec_at_sens:0.9", 0.2),  # only 0.2 reaches it
    ],
)
def test_objectives_by_hand(objective: str, threshold: float) -> None:
    assert _tune(objective) == threshold


def test_unreachable_floor_warns_and_takes_the_closest() -> None:
    y, s = OBJ_Y[:4].copy(), OBJ_S[:4].copy()  # no negative: specificity counts as 0 at every threshold
    labels, probs = np.repeat(y[:, None], 3, axis=1), np.repeat(s[:, None], 3, axis=1)
    with pytest.warns(UserWarning, match="class D: no threshold of the grid reaches specificity 0.9"):
        result = tune_thresholds(labels, probs, OBJ_GRID, {"D": "sens_at_spec:0.9"})
    assert result.thresholds[0] == 0.2  # all equally (un)specific: the most sensitive, 1 at 0.2
    # positives 0.3 and 0.6, negatives 0.1 and 0.2; on the grid 0.5, 0.9 sensitivity is 1/2 and 0: never 0.95
    labels = np.repeat(np.array([[1], [1], [0], [0]]), 3, axis=1)
    probs = np.repeat(np.array([[0.3], [0.6], [0.1], [0.2]]), 3, axis=1)
    with pytest.warns(UserWarning, match="reaches sensitivity 0.95"):
        assert tune_thresholds(labels, probs, (0.9, 0.5), "spec_at_sens:0.95").thresholds.tolist() == [0.5] * 3


def test_objectives_per_class_and_recorded() -> None:
    labels, probs = np.repeat(OBJ_Y[:, None], 3, axis=1), np.repeat(OBJ_S[:, None], 3, axis=1)
    result = tune_thresholds(labels, probs, OBJ_GRID, {"G": "youden", "A": parse_objective("sens_at_spec:0.8")})
    assert result.thresholds.tolist() == [0.2, 0.4, 0.87]
    assert result.objectives == ("f1", "youden", "sens_at_spec:0.8")
    assert result.f1.tolist() == pytest.approx([8 / 13, 6 / 10, 2 / 5])  # F1 at each chosen threshold
    listed = tune_thresholds(labels, probs, OBJ_GRID, ["f1", "youden", "sens_at_spec:0.8"])
    assert listed.thresholds.tolist() == result.thresholds.tolist()
    default = tune_thresholds(labels, probs, OBJ_GRID)
    assert default.objectives == ("f1",) * 3 and default.thresholds.tolist() == [0.2] * 3


def test_parse_objective() -> None:
    assert parse_objective("f1") == Objective("f1")
    assert parse_objective(" youden ") == Objective("youden")
    assert parse_objective("sens_at_spec:0.9") == Objective("sens_at_spec", 0.9)
    assert str(parse_objective("spec_at_sens:0.95")) == "spec_at_sens:0.95"
    assert set(OBJECTIVES) == {"f1", "f1_course", "youden", "sens_at_spec", "spec_at_sens"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "f2",
            "unknown threshold objective 'f2'; valid: f1, f1_course, youden, sens_at_spec:<level>, "
            "spec_at_sens:<level>",
        ),
        ("sens_at_spec", "needs a level in \\(0, 1\\), e.g. sens_at_spec:0.9"),
        ("sens_at_spec:high", "needs a level"),
        ("sens_at_spec:1.0", "must be in \\(0, 1\\), got 1.0"),
        ("spec_at_sens:0", "must be in \\(0, 1\\), got 0.0"),
        ("spec_at_sens:nan", "must be in \\(0, 1\\)"),
        ("youden:0.5", "takes no level"),
    ],
)
def test_bad_objectives_raise(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objective(text)


def test_bad_objective_lists_raise() -> None:
    labels, probs = np.repeat(OBJ_Y[:, None], 3, axis=1), np.repeat(OBJ_S[:, None], 3, axis=1)
    with pytest.raises(ValueError, match="one threshold objective per class"):
        tune_thresholds(labels, probs, OBJ_GRID, ["f1", "youden"])
    with pytest.raises(ValueError, match="unknown classes \\['X'\\]"):
        tune_thresholds(labels, probs, OBJ_GRID, {"X": "f1"})


# --- strategies ---------------------------------------------------------------------------------------------------


def _three_classes(labels: list[int], scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The same column for D, G and A."""
    return np.repeat(np.array(labels)[:, None], 3, axis=1), np.repeat(np.array(scores)[:, None], 3, axis=1)


def test_prevalence_predicts_as_many_positives_as_the_fitting_set_has() -> None:
    y, p = _three_classes([1, 0, 1, 0, 0], [0.9, 0.7, 0.4, 0.2, 0.1])  # 2 positives: the 2nd highest, 0.7
    result = fit_thresholds(y, p, strategy="prevalence")
    assert result.thresholds.tolist() == [0.7, 0.7, 0.7]
    assert result.f1 == pytest.approx([0.5] * 3)  # predicts 0.9 and 0.7: tp 1, fp 1, fn 1 -> 2/4
    assert result.objectives == ("prevalence",) * 3


def test_prevalence_without_positives_predicts_none() -> None:
    y, p = _three_classes([0, 0], [0.9, 0.2])
    threshold = fit_thresholds(y, p, strategy="prevalence").thresholds[0]
    assert threshold > 0.9 and not (np.array([0.9, 0.2]) >= threshold).any()


def test_shrunk_keeps_half_the_tuned_distance_from_one_half() -> None:
    y, p = _three_classes([1, 1, 0, 0], [0.42, 0.38, 0.31, 0.1])  # F1 1.0 at 0.35 (the study grid's best, ties none)
    tuned = fit_thresholds(y, p, strategy="tuned")
    assert tuned.thresholds.tolist() == [0.35] * 3
    shrunk = fit_thresholds(y, p, strategy="shrunk")
    assert shrunk.thresholds == pytest.approx([0.425] * 3)  # 0.5 + 0.5 * (0.35 - 0.5)
    assert shrunk.f1 == pytest.approx([0.0] * 3)  # no probability reaches 0.425: nothing predicted, F1 0
    assert shrunk.objectives == ("shrunk f1",) * 3


def test_fixed_is_one_half_and_an_unknown_strategy_is_refused() -> None:
    y, p = _three_classes([1, 0], [0.6, 0.4])
    assert fit_thresholds(y, p, strategy="fixed").thresholds.tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="unknown threshold strategy 'best'; valid: tuned, shrunk, fixed, prevalence"):
        fit_thresholds(y, p, strategy="best")
