"""Uncertainty and referral on crafted probabilities, against hand-computed values."""

import numpy as np
import pytest
from pydantic import ValidationError

from components.monitoring.referral import (
    ReferralSpec,
    disagreement,
    ensemble_uncertainty,
    prediction_frame,
    refer,
    referral_table,
    view_spread,
)

SPEC = ReferralSpec(margin=0.1, max_tta_std=0.1, max_member_std=0.15)


def test_view_spread_is_the_standard_deviation_over_views():
    views = np.array([[[0.2, 0.5, 0.9]], [[0.4, 0.5, 0.7]]])  # 2 views, 1 image
    assert view_spread(views) == pytest.approx(np.array([[0.1, 0.0, 0.1]]))
    assert view_spread(views[:1]) == pytest.approx(np.array([[0.0, 0.0, 0.0]]))  # one view: no spread
    with pytest.raises(ValueError, match="views, N, classes"):
        view_spread(views[0])


def test_disagreement_is_the_weighted_standard_deviation():
    a, b = np.array([[0.2, 0.6, 0.5]]), np.array([[0.8, 0.6, 0.5]])
    # weights 0.5/0.5: mean 0.5, deviations ±0.3 -> 0.3; weights 0.75/0.25: mean 0.35, sqrt(.75*.0225+.25*.2025)
    assert disagreement([a, b]) == pytest.approx(np.array([[0.3, 0.0, 0.0]]))
    assert disagreement([a, b], [3, 1])[0, 0] == pytest.approx(np.sqrt(0.75 * 0.15**2 + 0.25 * 0.45**2))
    with pytest.raises(ValueError, match="weights"):
        disagreement([a, b], [1.0])


def test_refer_on_margin_and_on_each_spread():
    probs = np.array([[0.95, 0.05, 0.05], [0.55, 0.05, 0.05], [0.95, 0.05, 0.05], [0.95, 0.05, 0.05]])
    thresholds = [0.5, 0.5, 0.3]
    tta = np.zeros((4, 3))
    member = np.zeros((4, 3))
    tta[2, 1] = 0.11  # above max_tta_std on G
    member[3, 2] = 0.16  # above max_member_std on A
    assert refer(probs, thresholds, tta, member, SPEC).tolist() == [0, 1, 1, 1]
    # exactly at a limit is not above it; 0.41 is 0.09 from 0.5: within the margin
    tta[2, 1], member[3, 2] = 0.1, 0.15
    assert refer(probs, thresholds, tta, member, SPEC).tolist() == [0, 1, 0, 0]
    assert refer(np.array([[0.41, 0.0, 1.0]]), thresholds, tta[:1], member[:1], SPEC).tolist() == [1]
    assert refer(probs, thresholds, tta, member, ReferralSpec(margin=0.0)).tolist() == [0, 0, 0, 0]


def test_referral_spec_refuses_nonsense_and_documents_defaults():
    assert ReferralSpec() == ReferralSpec(margin=0.1, max_tta_std=0.15, max_member_std=0.15)
    with pytest.raises(ValidationError):
        ReferralSpec(margin=-0.1)
    with pytest.raises(ValidationError):
        ReferralSpec(max_spread=0.2)  # unknown field


def test_ensemble_uncertainty_by_hand():
    # member 1: one model, two views (p 0.2 and 0.4 on D); member 2: two fold models, one view each (0.6, 1.0 on D)
    member_1 = np.array([[[[0.2, 0.5, 0.5]], [[0.4, 0.5, 0.5]]]])  # (F=1, V=2, N=1, 3)
    member_2 = np.array([[[[0.6, 0.5, 0.5]]], [[[1.0, 0.5, 0.5]]]])  # (F=2, V=1, N=1, 3)
    probs, tta_std, member_std = ensemble_uncertainty([member_1, member_2], [0.75, 0.25])
    # member probs 0.3 and 0.8 -> 0.75*0.3 + 0.25*0.8 = 0.425; tta: 0.75*0.1 + 0.25*0 = 0.075
    assert probs[0] == pytest.approx([0.425, 0.5, 0.5])
    assert tta_std[0] == pytest.approx([0.075, 0.0, 0.0])
    assert member_std[0, 0] == pytest.approx(np.sqrt(0.75 * 0.125**2 + 0.25 * 0.375**2))
    # one member with two folds: the folds' disagreement
    _, _, folds_std = ensemble_uncertainty([member_2], [1.0])
    assert folds_std[0] == pytest.approx([0.2, 0.0, 0.0])


def test_ensemble_uncertainty_applies_temperatures_to_each_member():
    member = np.array([[[[0.5, 0.5, 0.5]], [[0.9, 0.5, 0.5]]]])  # views 0.5 and 0.9 on D
    hot, spread, _ = ensemble_uncertainty([member], [1.0], np.array([[2.0, 1.0, 1.0]]))
    mean = 0.7  # mean of the views, then sigmoid(logit(0.7) / 2)
    assert hot[0, 0] == pytest.approx(1 / (1 + np.exp(-np.log(mean / (1 - mean)) / 2)))
    assert spread[0, 0] == pytest.approx(0.2)  # the views' spread stays on the network's scale: std(0.5, 0.9)


def test_prediction_frame_columns_and_labels():
    probs = np.array([[0.9, 0.2, 0.45]])
    frame = prediction_frame(probs, np.array([0.5, 0.5, 0.4]), np.zeros((1, 3)), np.zeros((1, 3)), SPEC)
    assert list(frame.columns) == [
        "D", "G", "A", "p_D", "p_G", "p_A", "tta_std_D", "tta_std_G", "tta_std_A",
        "member_std_D", "member_std_G", "member_std_A", "refer",
    ]  # fmt: skip
    assert frame.loc[0, ["D", "G", "A", "refer"]].tolist() == [1, 0, 1, 1]  # A: 0.45 is 0.05 above 0.4


def test_referral_table_counts_error_rates_in_and_out():
    errors = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    referred = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    table = referral_table(errors, referred)
    assert table["referred_share"] == pytest.approx(3 / 8)
    assert table["error_rate_referred"] == pytest.approx(2 / 3)
    assert table["error_rate_kept"] == pytest.approx(1 / 5)
    assert (table["n_referred"], table["n_kept"]) == (3, 5)
    assert np.isnan(referral_table(errors, np.zeros(8))["error_rate_referred"])
