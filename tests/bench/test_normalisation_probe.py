"""The normalisation probe's pieces on tiny synthetic data (the probe itself runs on the real data, by hand)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from bench import normalisation_probe as probe
from components.data.synth import SynthSizes, write_synthetic_dataset
from components.models.backbones import IMAGENET, Normalisation


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(40, 3))
    probs = np.clip(0.3 * y + rng.uniform(0, 0.7, size=(40, 3)), 0, 1).round(1)  # rounded: ties happen
    return y, probs


def test_weighted_metrics_match_scikit_learn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = predictions
    counts = np.random.default_rng(1).integers(0, 3, size=len(y)).astype(float)
    weights = np.stack([np.ones(len(y)), counts])
    f1, auroc = probe.weighted_f1(y, probs, weights), probe.weighted_auroc(y, probs, weights)
    copies = np.repeat(np.arange(len(y)), counts.astype(int))  # a weight of k is k copies of the row
    for c in range(3):
        assert f1[0, c] == pytest.approx(f1_score(y[:, c], probs[:, c] >= 0.5))
        assert auroc[0, c] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]))
        assert f1[1, c] == pytest.approx(f1_score(y[copies, c], probs[copies, c] >= 0.5))
        assert auroc[1, c] == pytest.approx(roc_auc_score(y[copies, c], probs[copies, c]))


def test_auroc_is_nan_without_both_labels() -> None:
    y = np.array([[1, 0, 1], [1, 1, 0]])
    assert np.isnan(probe.weighted_auroc(y, np.full((2, 3), 0.5), np.ones((1, 2)))[0, 0])


def test_bootstrap_draws_patients_not_images() -> None:
    patients = ["1", "1", "2", "3", "3", "4"]  # both eyes of 1 and 3
    weights = probe.patient_bootstrap_weights(patients, resamples=200, seed=7)
    assert weights.shape == (200, 6)
    assert np.array_equal(weights[:, 0], weights[:, 1]) and np.array_equal(weights[:, 3], weights[:, 4])
    assert (weights[:, [0, 2, 3, 5]].sum(axis=1) == 4).all()  # four patients drawn per resample
    assert np.array_equal(weights, probe.patient_bootstrap_weights(patients, resamples=200, seed=7))


def test_patients_seen_in_train_are_not_scored() -> None:
    mask = probe.unseen_patients(["913_left.jpg", "914_right.jpg"], ["913_right.jpg", "915_left.jpg", "914_left.jpg"])
    assert mask.tolist() == [False, True, False]


def test_probe_runs_end_to_end_on_synthetic_data(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "data", size=16, sizes=SynthSizes(24, 12, 0, 0), seed=11)
    shutil.copy(root / "images/train/1000_left.jpg", root / "images/val/1000_left.jpg")  # a patient in both
    with (root / "val.csv").open("a", newline="") as file:
        csv.writer(file).writerow(["1000_left.jpg", 1, 0, 0])
    variants = {"imagenet": IMAGENET, "same": IMAGENET, "half": Normalisation((0.5,) * 3, (0.5,) * 3, "test")}
    summary = probe.run(root, size=16, resamples=50, backbone="tiny_cnn", weights="none", normalisations=variants)
    assert (summary["scored_images"], summary["excluded_images"], summary["train_images"]) == (12, 1, 24)
    results = summary["results"]
    for name in variants:
        low, high = results[name]["f1_macro_ci"]
        assert 0 <= low <= high <= 1 and 0 <= results[name]["auroc_mean"] <= 1
    same = results["same"]["minus_imagenet"]  # identical features: the paired difference is exactly zero
    assert same["f1_macro"] == 0 and same["f1_macro_ci"] == [0, 0] and same["auroc_mean_ci"] == [0, 0]
    assert "minus_imagenet" not in results["imagenet"] and "minus_imagenet" in results["half"]
    table = probe.markdown(summary)
    assert "| half |" in table and table.count("\n") == 9
