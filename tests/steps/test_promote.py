"""Promotion by evidence: a paired bootstrap over patients on crafted predictions."""

from __future__ import annotations

import numpy as np
import pytest

from steps.promote import Scored, decide

PATIENTS = [f"p{i // 2}" for i in range(200)]  # two eyes each
THRESHOLDS = np.full(3, 0.5)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return (np.random.default_rng(0).random((200, 3)) < 0.4).astype(float)


def _model(labels: np.ndarray, correct: float, seed: int) -> Scored:
    """Probabilities that put each image on the right side of 0.5 with probability ``correct``."""
    rng = np.random.default_rng(seed)
    right = rng.random(labels.shape) < correct
    confident = 0.5 + rng.uniform(0.05, 0.45, labels.shape)
    probs = np.where(right == (labels == 1), confident, 1 - confident)
    return Scored(probs, THRESHOLDS)


def test_a_clearly_better_challenger_is_promoted(labels: np.ndarray) -> None:
    wins, evidence = decide(labels, PATIENTS, _model(labels, 0.7, 1), _model(labels, 0.95, 2), "f1_macro", 0.9)
    assert wins and evidence.prob_b_better > 0.99 and evidence.interval[0] > 0


def test_a_marginally_better_challenger_is_not(labels: np.ndarray) -> None:
    champion = _model(labels, 0.8, 1)
    probs = champion.probs.copy()
    right = (probs >= 0.5) == (labels == 1)
    fixed = np.flatnonzero(~right[:, 1])[:6]  # six images of G set right, five set wrong: a net win of one image
    broken = np.flatnonzero(right[:, 1])[:5]
    probs[fixed, 1] = np.where(labels[fixed, 1] == 1, 0.9, 0.1)
    probs[broken, 1] = np.where(labels[broken, 1] == 1, 0.1, 0.9)
    wins, evidence = decide(labels, PATIENTS, champion, Scored(probs, THRESHOLDS), "f1_macro", 0.9)
    assert evidence.difference > 0 and not wins and evidence.prob_b_better < 0.9
    assert evidence.interval[0] < 0 < evidence.interval[1]


def test_a_tie_keeps_the_champion(labels: np.ndarray) -> None:
    same = _model(labels, 0.8, 1)
    wins, evidence = decide(labels, PATIENTS, same, same, "f1_macro", 0.9)
    assert not wins and evidence.prob_b_better == pytest.approx(0.5) and evidence.difference == 0


@pytest.mark.parametrize("seed", range(5))
def test_a_worse_challenger_never_is(labels: np.ndarray, seed: int) -> None:
    wins, evidence = decide(labels, PATIENTS, _model(labels, 0.85, 1), _model(labels, 0.75, 10 + seed), "f1_macro",
                            0.9)  # fmt: skip
    assert not wins and evidence.difference < 0


def test_each_model_is_scored_at_its_own_thresholds(labels: np.ndarray) -> None:
    champion = _model(labels, 0.8, 1)
    shifted = Scored(np.clip(champion.probs - 0.2, 0, 1), np.full(3, 0.3))  # the same labels at shifted thresholds
    _, evidence = decide(labels, PATIENTS, champion, shifted, "f1_macro", 0.9)
    assert evidence.score_a == pytest.approx(evidence.score_b)
