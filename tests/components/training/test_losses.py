"""Losses against hand-computed values on a 2x3 tensor, and their identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.training.losses import LOSSES, build_loss, class_balanced_weights, sigmoid_focal_loss

LOGITS = torch.tensor([[0.0, 1.0, -2.0], [2.0, -1.0, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
# Per element, p = sigmoid(logit), p_t = p if y else 1 - p, bce = -ln p_t:
#   (0,0) p=0.5      bce=0.693147   (0,1) p=0.731059 bce=1.313262   (0,2) p=0.119203 bce=0.126928
#   (1,0) p=0.880797 bce=2.126928   (1,1) p=0.268941 bce=1.313262   (1,2) p=0.622459 bce=0.474077
BCE = [[0.693147, 1.313262, 0.126928], [2.126928, 1.313262, 0.474077]]
# focal = alpha_t (1 - p_t)^2 bce, alpha_t = 0.25 for y=1, 0.75 for y=0
FOCAL = [[0.043322, 0.526401, 0.001353], [1.237559, 0.175467, 0.016893]]


def test_bce_matches_hand_values() -> None:
    loss = build_loss("bce", reduction="none")(LOGITS, TARGETS)
    np.testing.assert_allclose(loss.numpy(), BCE, atol=1e-6)
    assert build_loss("bce")(LOGITS, TARGETS).item() == pytest.approx(np.mean(BCE), abs=1e-6)


def test_focal_matches_hand_values() -> None:
    loss = build_loss("focal", reduction="none")(LOGITS, TARGETS)
    np.testing.assert_allclose(loss.numpy(), FOCAL, atol=1e-6)
    assert build_loss("focal")(LOGITS, TARGETS).item() == pytest.approx(0.333499, abs=1e-6)
    assert build_loss("focal", reduction="sum")(LOGITS, TARGETS).item() == pytest.approx(6 * 0.333499, abs=1e-5)


def test_focal_with_gamma_zero_and_no_alpha_is_bce() -> None:
    focal = sigmoid_focal_loss(LOGITS, TARGETS, alpha=None, gamma=0.0)
    assert focal.item() == pytest.approx(build_loss("bce")(LOGITS, TARGETS).item(), abs=1e-7)


def test_class_balanced_weights_by_hand() -> None:
    # beta 0.5, counts (3, 1, 2): raw (1-b)/(1-b^n) = 4/7, 1, 2/3; sum 47/21; scaled to sum 3: 36/47, 63/47, 42/47
    weights = class_balanced_weights([3, 1, 2], beta=0.5)
    assert weights.tolist() == pytest.approx([36 / 47, 63 / 47, 42 / 47], abs=1e-12)


def test_class_balanced_loss_by_hand() -> None:
    labels = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 0]])  # positives per class: 3, 1, 2
    loss = build_loss("class_balanced", labels, beta=0.5)(LOGITS, TARGETS)
    expected = np.mean(np.array(BCE) * np.array([36 / 47, 63 / 47, 42 / 47]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_class_balanced_with_beta_zero_is_uniform_bce() -> None:
    labels = np.array([[1, 0, 0], [1, 1, 1]])
    assert class_balanced_weights([5, 1, 9], beta=0.0).tolist() == [1.0, 1.0, 1.0]
    loss = build_loss("class_balanced", labels, beta=0.0)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(np.mean(BCE), abs=1e-6)


def test_class_balanced_defaults_follow_the_paper() -> None:
    # the real train split's counts D 517, G 163, A 142 with beta 0.9999: rarer classes weigh more
    weights = class_balanced_weights([517, 163, 142])
    assert weights.sum() == pytest.approx(3.0)
    assert weights[0] < weights[1] < weights[2]
    assert weights.tolist() == pytest.approx([0.390116, 1.215774, 1.394110], abs=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_loss("focall"),
            r"unknown loss 'focall'; valid: bce, class_balanced, focal. Did you mean 'focal'",
        ),
        (lambda: build_loss("class_balanced"), "needs the training labels"),
        (lambda: build_loss("bce", reduction="avg"), "reduction 'avg' is not one of mean, sum, none"),
        (lambda: build_loss("focal", gamma=-1.0), "focal gamma must be >= 0"),
        (lambda: build_loss("focal", alpha=1.5), r"focal alpha must be in \[0, 1\]"),
        (lambda: build_loss("bce", beta=0.9), "bad parameters for loss 'bce'"),
        (lambda: class_balanced_weights([3, 0, 2]), "every class needs at least one positive"),
        (lambda: class_balanced_weights([3, 1, 2], beta=1.0), r"beta must be in \[0, 1\)"),
        (lambda: build_loss("bce")(LOGITS, TARGETS[:, :2]), r"logits \(2, 3\) and targets \(2, 2\)"),
    ],
)
def test_bad_loss_settings_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="loss 'bce' is already registered"):
        LOSSES.register("bce")(lambda *a: None)
