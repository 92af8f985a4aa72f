"""The pieces of bench/oof_variants.py against hand-computed values (the bench itself needs a store's train run)."""

from __future__ import annotations

import numpy as np

from bench.oof_variants import STEP, fellow_index, fellow_pooled, pool_fellow
from components.evaluation.metrics import f1_macro
from steps.ensemble import cross_fit


def test_the_fellow_eye_is_the_same_patients_other_side() -> None:
    ids = ["1_left.jpg", "2_right.jpg", "1_right.jpg", "3_left.jpg", "scan.jpg"]
    assert fellow_index(ids).tolist() == [2, -1, 0, -1, -1]


def test_pooling_mixes_in_the_fellow_eyes_probabilities_by_class() -> None:
    probs = np.array([[0.2, 0.4, 0.8], [0.6, 0.0, 0.4], [0.9, 0.9, 0.9]])
    pooled = pool_fellow(probs, np.array([1, 0, -1]), np.array([0.25, 0.5, 0.0]))
    # row 0: 0.75 * 0.2 + 0.25 * 0.6 = 0.3, 0.5 * 0.4 + 0.5 * 0.0 = 0.2, 0.8 unchanged (w 0); row 2 has no fellow
    np.testing.assert_allclose(pooled, [[0.3, 0.2, 0.8], [0.5, 0.2, 0.4], [0.9, 0.9, 0.9]])


def test_pooling_picks_no_weight_where_the_fellow_eye_only_blurs() -> None:
    rng = np.random.default_rng(0)
    labels = np.tile(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 1]]), (8, 1))
    probs = np.clip(labels * 0.6 + 0.2 + rng.uniform(-0.1, 0.1, labels.shape), 0, 1)  # 0.1-0.3 against 0.7-0.9
    folds = np.repeat(np.arange(4), 10)
    shifted = cross_fit(STEP, labels, [probs], folds)[1]
    fellow = fellow_index([f"{i // 2}_{'left' if i % 2 else 'right'}" for i in range(40)])
    pooled = fellow_pooled(STEP, labels, probs, folds, fellow)
    assert f1_macro(labels, shifted) == 1.0 and shifted.min() >= 0 and shifted.max() <= 1
    # a fellow eye of other labels only blurs the classes here: the other folds pick weight 0, pooling nothing
    assert np.array_equal(pooled, shifted)


def test_pooling_helps_where_both_eyes_share_their_labels() -> None:
    # 60 patients, both eyes with the patient's labels and independent noise: the mean of two eyes is less noisy
    rng = np.random.default_rng(1)
    labels = np.repeat(rng.integers(0, 2, (60, 3)), 2, axis=0)
    probs = np.clip(0.35 + 0.3 * labels + rng.uniform(-0.3, 0.3, labels.shape), 0, 1)
    ids = [f"{i // 2}_{'left' if i % 2 else 'right'}.jpg" for i in range(120)]
    folds = np.repeat(np.arange(4), 30)  # 15 patients each, both eyes in the patient's fold
    alone = cross_fit(STEP, labels, [probs], folds)[1]
    pooled = fellow_pooled(STEP, labels, probs, folds, fellow_index(ids))
    assert f1_macro(labels, pooled) > f1_macro(labels, alone) + 0.05
