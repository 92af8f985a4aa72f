"""Multi-label losses on logits, by name: ``bce``, ``focal`` (Lin et al. 2017), ``class_balanced`` (Cui et al. 2019).

Each loss is a pure function with an explicit ``reduction`` behind a thin ``nn.Module`` that validates its
settings once, in ``__init__``. :func:`build_loss` makes one from a name, its parameters and the training labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components import LABELS
from components.registry import Registry

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    return reduction


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss ``-α_t (1 - p_t)^γ log p_t`` on each element.

    ``p_t`` is the predicted probability of the true value; ``α_t`` is ``alpha`` for positives and ``1 - alpha``
    for negatives (no weighting when ``alpha`` is None). With ``gamma=0`` and ``alpha=None`` it is BCE.
    """
    _check_shapes(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob = torch.sigmoid(logits)
    p_true = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_true) ** gamma
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def class_balanced_weights(positive_counts: np.ndarray | list[int], beta: float = 0.9999) -> np.ndarray:
    """Per-class weights ``(1 - β) / (1 - β^n_c)`` from the effective number of samples, scaled to sum to C.

    Args:
        positive_counts: positives per class in the training labels (``n_c``).
        beta: in ``[0, 1)``; 0 gives uniform weights, values near 1 approach inverse frequency.

    Raises:
        ValueError: for a beta outside ``[0, 1)`` or a class without positives (its weight would be infinite).
    """
    counts = np.asarray(positive_counts, dtype=np.float64)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if counts.ndim != 1 or np.any(counts < 1):
        raise ValueError(f"every class needs at least one positive training label, got counts {counts.tolist()}")
    raw = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return raw * len(counts) / raw.sum()


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """BCE on each element, each class's column multiplied by its weight."""
    _check_shapes(logits, targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * class_weights
    return _reduce(loss, reduction)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction=self.reduction)


class FocalLoss(nn.Module):
    """See :func:`sigmoid_focal_loss`."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma, self.reduction = alpha, gamma, _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)


class ClassBalancedLoss(nn.Module):
    """BCE with class-balanced weights (see :func:`class_balanced_weights`)."""

    def __init__(self, positive_counts: np.ndarray | list[int], beta: float = 0.9999, reduction: str = "mean") -> None:
        super().__init__()
        weights = class_balanced_weights(positive_counts, beta)
        self.register_buffer("class_weights", torch.as_tensor(weights, dtype=torch.float32))
        self.beta, self.reduction = beta, _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.class_weights.numel():
            raise ValueError(f"logits have {logits.shape[-1]} classes, weights {self.class_weights.numel()}")
        return weighted_bce(logits, targets, self.class_weights, self.reduction)


LossFactory = Callable[..., nn.Module]
LOSSES: Registry[LossFactory] = Registry("loss")


@LOSSES.register("bce")
def _bce(train_labels: np.ndarray | None = None, reduction: str = "mean") -> nn.Module:
    return BCELoss(reduction)


@LOSSES.register("focal")
def _focal(
    train_labels: np.ndarray | None = None, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean"
) -> nn.Module:
    return FocalLoss(alpha, gamma, reduction)


@LOSSES.register("class_balanced")
def _class_balanced(train_labels: np.ndarray | None = None, beta: float = 0.9999, reduction: str = "mean") -> nn.Module:
    if train_labels is None:
        raise ValueError("the class_balanced loss needs the training labels to count positives per class")
    labels = np.asarray(train_labels)
    if labels.ndim != 2 or labels.shape[1] != len(LABELS):
        raise ValueError(f"training labels must have shape (N, {len(LABELS)}), got {labels.shape}")
    return ClassBalancedLoss(labels.sum(axis=0), beta, reduction)


def build_loss(name: str, train_labels: np.ndarray | None = None, **params: float | str | None) -> nn.Module:
    """The loss registered as ``name``, built with ``params`` (and the training labels where it needs them).

    Raises:
        ValueError: for an unknown name (listing the valid ones) or a bad parameter.
    """
    factory = LOSSES.get(name)
    try:
        return factory(train_labels, **params)
    except TypeError as error:
        raise ValueError(f"bad parameters for loss {name!r}: {error}") from None
