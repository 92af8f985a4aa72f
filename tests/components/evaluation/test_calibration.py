"""ECE by hand, temperature scaling on synthetic over- and under-confident models, the reliability figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.special import expit

from components.evaluation.bootstrap import bootstrap_samples
from components.evaluation.calibration import (
    CalibrationMetrics,
    apply_temperature,
    calibration_errors,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    reliability_bins,
    reliability_figure,
)


def test_ece_by_hand() -> None:
    # 2 bins. (0, 0.5]: p 0.1, 0.2 with y 0, 0 -> conf 0.15, freq 0, weight 2/6
    #         (0.5, 1]: p 0.7, 0.8, 0.9, 0.6 with y 1, 1, 1, 0 -> conf 0.75, freq 0.75, gap 0
    # ECE = 2/6 * 0.15 = 0.05
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.7, 0.8, 0.9, 0.6])
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.05)
    # 10 bins: every probability alone in its bin, gaps 0.1 0.2 0.3 0.2 0.1 0.6 -> 1.5 / 6
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(1.5 / 6)
    count, confidence, frequency = reliability_bins(y, p, bins=2)
    assert count.tolist() == [2, 4] and confidence.tolist() == pytest.approx([0.15, 0.75])
    assert frequency.tolist() == pytest.approx([0.0, 0.75])


def test_bins_are_right_closed_and_cover_0_and_1() -> None:
    # 2 bins, right-closed: 0.5 joins 0.2 in (0, 0.5]: conf 0.35, freq 1/2 -> 2/3 * 0.15; 0.7 alone: 1/3 * 0.7.
    # (Left-closed bins would give 1/3 * 0.2 + 2/3 * 0.1 = 0.1333.)
    assert expected_calibration_error(np.array([1, 0, 0]), np.array([0.5, 0.7, 0.2]), 2) == pytest.approx(1 / 3)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([1, 0]), np.array([0.0, 1.0])) == 1.0


def _overconfident(scale: float, n: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), z ~ N(0, 1.5^2), and a model that reports sigmoid(scale * z): calibrated at
    scale 1, overconfident (its logits doubled) at scale 2, whose ideal temperature is then exactly 2."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    return (rng.random(n) < expit(z)).astype(int), expit(scale * z)


def test_doubled_logits_fit_a_temperature_of_two_and_ece_falls() -> None:
    y, p = _overconfident(2.0)
    temperature = fit_temperature(y, p)
    assert temperature == pytest.approx(2.0, abs=0.1)
    before = expected_calibration_error(y, p)
    after = expected_calibration_error(y, apply_temperature(p, temperature))
    assert before > 0.05 and after < 0.015 and after < before / 4


def test_temperatures_per_class() -> None:
    columns = [_overconfident(scale, seed=seed) for seed, scale in enumerate((2.0, 1.0, 0.5))]
    labels = np.stack([y for y, _ in columns], axis=1)
    probs = np.stack([p for _, p in columns], axis=1)
    temperatures = fit_temperatures(labels, probs)
    assert temperatures == pytest.approx([2.0, 1.0, 0.5], rel=0.06)
    scaled = apply_temperature(probs, temperatures)
    assert scaled[:, 1] == pytest.approx(apply_temperature(probs[:, 1], temperatures[1]))
    assert all(value < 0.015 for value in calibration_errors(labels, scaled).values())


def test_unit_temperature_changes_nothing() -> None:
    p = np.array([0.0, 1e-9, 0.2, 0.5, 0.77, 1.0 - 1e-9, 1.0])
    assert apply_temperature(p, 1.0) == pytest.approx(p, rel=1e-12, abs=0)
    assert apply_temperature(p, 3.0)[[0, 3, 6]].tolist() == [0.0, 0.5, 1.0]
    assert fit_temperature(np.array([0, 1, 1, 0]), np.full(4, 0.5)) == 1.0  # no scale to fit


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        apply_temperature(np.array([0.5]), 0.0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        fit_temperature(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="must both be"):
        fit_temperatures(np.zeros((3, 2)), np.zeros((3, 2)))


def test_vectorised_ece_equals_ece_on_every_resample() -> None:
    labels, probs = _overconfident(2.0, n=60)
    labels, probs = np.stack([labels] * 3, axis=1), np.stack([probs, probs**2, np.sqrt(probs)], axis=1)
    patients = [str(i // 2) for i in range(60)]
    fast = bootstrap_samples(CalibrationMetrics(10), labels, probs, patients, 50, 1)
    slow = bootstrap_samples(lambda y, p: calibration_errors(y, p, 10), labels, probs, patients, 50, 1)
    for key in ("ece_D", "ece_G", "ece_A"):
        np.testing.assert_allclose(fast[key], slow[key], atol=1e-12)


def test_reliability_figure() -> None:
    y, p = _overconfident(2.0, n=500)
    figure = reliability_figure(np.stack([y] * 3, axis=1), np.stack([p] * 3, axis=1))
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert [axis.get_title().split()[0] for axis in figure.axes] == ["D", "G", "A"]
    figure.savefig(io.BytesIO(), format="png")
