"""Both F1 definitions and the per-class metrics on a 6x3 example computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.metrics import (
    average_precision,
    clinical_report,
    f1_macro,
    multilabel_report,
    sensitivity_at_specificity,
    sensitivity_specificity,
    specificity_at_sensitivity,
)

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
#   AP: D ranks 0.9+ 0.7- 0.6+ 0.4+ -> precisions 1, 2/3, 3/4 at the positives -> 29/36; G and A rank both
#   positives first -> 1
#   sensitivity/specificity: D TP2 FN1 TN2 FP1 -> 2/3, 2/3; G TP1 FN1 TN4 -> 1/2, 1; A TP0 FN2 TN4 -> 0, 1


def test_report_matches_hand_computation() -> None:
    report = multilabel_report(Y_TRUE, PROBS)
    expected = {
        "precision_D": 2 / 3, "recall_D": 2 / 3, "f1_D": 2 / 3, "f1_course_D": 2 / 3, "auroc_D": 7 / 9,
        "precision_G": 1.0, "recall_G": 0.5, "f1_G": 2 / 3, "f1_course_G": 7 / 9, "auroc_G": 1.0,
        "precision_A": 0.0, "recall_A": 0.0, "f1_A": 0.0, "f1_course_A": 0.4, "auroc_A": 1.0,
        "ap_D": 29 / 36, "ap_G": 1.0, "ap_A": 1.0,
        "sensitivity_D": 2 / 3, "specificity_D": 2 / 3, "sensitivity_G": 0.5, "specificity_G": 1.0,
        "sensitivity_A": 0.0, "specificity_A": 1.0,
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
    with pytest.warns(UserWarning, match="AUROC is undefined"), pytest.warns(UserWarning, match="AP is undefined"):
        report = multilabel_report(y, PROBS)
    assert np.isnan(report["auroc_A"])
    assert np.isnan(report["ap_A"]) and np.isnan(report["sensitivity_A"])  # undefined, not 0
    assert report["recall_A"] == 0.0 and report["specificity_A"] == 1.0  # nothing reaches 0.5
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


# A crafted ROC: 4 positives (+), 10 negatives (-), scores descending.
#   score  0.95 0.90 0.85 0.80 0.75 0.70 0.65 0.60 0.50 0.40 0.30 0.20 0.10 0.05
#   label   +    +    -    +    -    -    +    -    -    -    -    -    -    -
# Predicting score >= t, the ROC points (sensitivity, specificity) are
#   t=inf (0, 1)  0.95 (1/4, 1)  0.90 (2/4, 1)  0.85 (2/4, 0.9)  0.80 (3/4, 0.9)  0.75 (3/4, 0.8)  0.70 (3/4, 0.7)
#   0.65 (1, 0.7)  then specificity falls by 0.1 per negative down to (1, 0).
#   sens at spec >= 0.90: 3/4 (t=0.80)     sens at spec >= 0.95: 2/4 (t=0.90, the last with no false positive)
#   spec at sens >= 0.90: 0.7 (t=0.65)     spec at sens >= 0.75: 0.9 (t=0.80)
#   AUROC: negatives below each positive 10, 10, 9, 7 -> 36/40 = 0.9
#   AP: precisions at the positives (ranks 1, 2, 4, 7) 1, 1, 3/4, 4/7 -> (2.75 + 4/7)/4 = 93/112
ROC_SCORES = np.array([0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.05])
ROC_LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])


def test_operating_points_by_hand() -> None:
    assert sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, 0.90) == pytest.approx(0.75)
    assert sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, 0.95) == pytest.approx(0.5)
    assert sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, 1.0) == pytest.approx(0.5)
    assert sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, 0.0) == pytest.approx(1.0)
    assert specificity_at_sensitivity(ROC_LABELS, ROC_SCORES, 0.90) == pytest.approx(0.7)
    assert specificity_at_sensitivity(ROC_LABELS, ROC_SCORES, 0.75) == pytest.approx(0.9)
    assert specificity_at_sensitivity(ROC_LABELS, ROC_SCORES, 0.0) == pytest.approx(1.0)
    assert average_precision(ROC_LABELS, ROC_SCORES) == pytest.approx(93 / 112)


def test_operating_points_keep_collinear_roc_points() -> None:
    # One positive tied with one negative at 0.9, the same at 0.8, eight negatives below: the ROC goes
    # (0, 0) -> (fpr 0.1, tpr 0.5) -> (0.2, 1) in a straight line. scikit-learn's default drops the middle point,
    # which is exactly the best one at specificity >= 0.9.
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    assert sensitivity_at_specificity(y, s, 0.9) == pytest.approx(0.5)
    assert specificity_at_sensitivity(y, s, 0.5) == pytest.approx(0.9)


def test_operating_points_undefined_or_bad_floor() -> None:
    with pytest.warns(UserWarning, match="only one class"):
        assert np.isnan(sensitivity_at_specificity(np.zeros(4), ROC_SCORES[:4], 0.9))
    with pytest.raises(ValueError, match=r"specificity must be in \[0, 1\]"):
        sensitivity_at_specificity(ROC_LABELS, ROC_SCORES, 1.5)
    with pytest.raises(ValueError, match=r"sensitivity must be in \[0, 1\]"):
        specificity_at_sensitivity(ROC_LABELS, ROC_SCORES, -0.1)
    with pytest.warns(UserWarning, match="AP is undefined"):
        assert np.isnan(average_precision(np.zeros(4), ROC_SCORES[:4]))
    assert sensitivity_specificity(np.array([1, 1, 0]), np.array([1, 0, 0])) == (0.5, 1.0)


def test_clinical_report_by_hand() -> None:
    labels = np.repeat(ROC_LABELS[:, None], 3, axis=1)
    probs = np.repeat(ROC_SCORES[:, None], 3, axis=1)
    report = clinical_report(labels, probs, np.array([0.80, 0.70, 0.50]))
    # at 0.80: TP3 FP1 -> sens 3/4, spec 9/10;  at 0.70: TP3 FP3 -> 3/4, 7/10;  at 0.50: TP4 FP5 -> 1, 5/10
    at_threshold = {"D": (0.75, 0.9), "G": (0.75, 0.7), "A": (1.0, 0.5)}
    expected = {}
    for label, (sensitivity, specificity) in at_threshold.items():
        expected |= {
            f"auroc_{label}": 0.9, f"ap_{label}": 93 / 112, f"sens_at_spec90_{label}": 0.75,
            f"sens_at_spec95_{label}": 0.5, f"spec_at_sens90_{label}": 0.7,
            f"sensitivity_{label}": sensitivity, f"specificity_{label}": specificity,
        }  # fmt: skip
    assert report == pytest.approx(expected, abs=1e-12)
