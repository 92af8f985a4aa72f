"""Both F1 definitions and the per-class metrics on a 6x3 example computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from components.metrics import f1_macro, multilabel_report

Y_TRUE = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]])
PROBS = np.array(
    [[0.9, 0.1, 0.3], [0.6, 0.2, 0.1], [0.4, 0.3, 0.2], [0.7, 0.4, 0.2], [0.2, 0.8, 0.1], [0.1, 0.45, 0.49]]
)
# At 0.5 the predictions are D 1,1,0,1,0,0   G 0,0,0,0,1,0   A all 0.
#   D: TP 2 FP 1 FN 1 -> P 2/3 R 2/3 F1 2/3;  negative class: TP 2 FP 1 FN 1 -> F1 2/3;  course (2/3+2/3)/2 = 2/3
#   G: TP 1 FP 0 FN 1 -> P 1 R 1/2 F1 2/3;    negative class: TP 4 FP 1 FN 0 -> F1 8/9;  course (2/3+8/9)/2 = 7/9
#   A: TP 0 FN 2 -> P 0 R 0 F1 0;             negative class: TP 4 FP 2 FN 0 -> F1 4/5;  course (0+4/5)/2 = 2/5
#   f1_macro = (2/3 + 2/3 + 0)/3 = 4/9;  f1_course = (2/3 + 7/9 + 2/5)/3 = 83/135
#   AUROC: D 7 of 9 pairs ordered -> 7/9; G 8/8 -> 1; A 8/8 -> 1


def test_report_matches_hand_computation() -> None:
    report = multilabel_report(Y_TRUE, PROBS)
    expected = {
        "precision_D": 2 / 3, "recall_D": 2 / 3, "f1_D": 2 / 3, "f1_course_D": 2 / 3, "auroc_D": 7 / 9,
        "precision_G": 1.0, "recall_G": 0.5, "f1_G": 2 / 3, "f1_course_G": 7 / 9, "auroc_G": 1.0,
        "precision_A": 0.0, "recall_A": 0.0, "f1_A": 0.0, "f1_course_A": 0.4, "auroc_A": 1.0,
        "support_D": 3, "support_G": 2, "support_A": 2,
        "f1_macro": 4 / 9, "f1_course": 83 / 135, "auroc_macro": (7 / 9 + 2) / 3,
    }  # fmt: skip
    assert report == pytest.approx(expected, abs=1e-12)
    assert f1_macro(Y_TRUE, PROBS) == pytest.approx(4 / 9, abs=1e-12)


def test_per_class_thresholds_change_predictions() -> None:
    report = multilabel_report(Y_TRUE, PROBS, thresholds=np.array([0.5, 0.5, 0.25]))
    # A at 0.25 predicts rows 0 and 5 (0.3, 0.49): TP 2, FP 0 -> F1 1
    assert report["f1_A"] == pytest.approx(1.0)
    assert report["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_auroc_without_positives_is_nan_with_a_warning() -> None:
    y = Y_TRUE.copy()
    y[:, 2] = 0
    with pytest.warns(UserWarning, match="AUROC is undefined"):
        report = multilabel_report(y, PROBS)
    assert np.isnan(report["auroc_A"])
    assert report["auroc_macro"] == pytest.approx((7 / 9 + 1) / 2)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        (Y_TRUE[:, :2], PROBS[:, :2], "must both be"),
        (Y_TRUE, PROBS[:5], "must both be"),
        (Y_TRUE * 2, PROBS, "labels must be 0 or 1"),
        (Y_TRUE, np.where(PROBS > 0.8, np.nan, PROBS), "NaN or infinite"),
        (Y_TRUE[:0], PROBS[:0], "no rows"),
    ],
)
def test_bad_inputs_raise(y: np.ndarray, p: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multilabel_report(y, p)
