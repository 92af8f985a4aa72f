"""Test-time augmentation: deterministic views (the study's five by default), one batched forward, probabilities
averaged.

Views: ``identity``, ``hflip`` (mirror left-right), ``vflip`` (mirror top-bottom), ``rot90`` (rotate +90°,
counter-clockwise) and ``rot270`` (rotate −90°, clockwise); with ``rot180``, ``transpose`` (mirror about the main
diagonal) and ``antitranspose`` (about the other one), all eight symmetries of a square (:data:`DIHEDRAL_VIEWS`;
measured no better than the five on the `cpu` profile's fold models, docs/results.md). All act on the last two
(H, W) dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from components.registry import Registry

View = Callable[[torch.Tensor], torch.Tensor]
VIEWS: Registry[View] = Registry("TTA view")
VIEWS.register("identity")(lambda x: x)
VIEWS.register("hflip")(lambda x: torch.flip(x, dims=(-1,)))
VIEWS.register("vflip")(lambda x: torch.flip(x, dims=(-2,)))
VIEWS.register("rot90")(lambda x: torch.rot90(x, k=1, dims=(-2, -1)))
VIEWS.register("rot270")(lambda x: torch.rot90(x, k=-1, dims=(-2, -1)))
VIEWS.register("rot180")(lambda x: torch.rot90(x, k=2, dims=(-2, -1)))
VIEWS.register("transpose")(lambda x: x.transpose(-2, -1))
VIEWS.register("antitranspose")(lambda x: torch.rot90(x, k=2, dims=(-2, -1)).transpose(-2, -1))

STUDY_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot270")
DIHEDRAL_VIEWS: tuple[str, ...] = (*STUDY_VIEWS, "rot180", "transpose", "antitranspose")


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """The views as a tuple, each checked against the registry.

    Raises:
        ValueError: for an empty list or an unknown name.
    """
    if not views:
        raise ValueError(f"at least one TTA view is needed; valid: {', '.join(VIEWS.names())}")
    for name in views:
        VIEWS.get(name)
    return tuple(views)


def stack_views(images: torch.Tensor, views: Sequence[str] = STUDY_VIEWS) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(V·B, C, H, W)``: view 0 of every image, then view 1, and so on."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"TTA needs square (B, C, H, W) images, got {tuple(images.shape)}")
    return torch.cat([VIEWS.get(name)(images) for name in check_views(views)])


@torch.no_grad()
def predict_view_probs(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: Sequence[str] = STUDY_VIEWS,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Sigmoid probabilities of each view, ``(V, B, classes)``: their mean is the TTA prediction, their spread a
    measure of how sure the model is (``components.monitoring.referral``).

    Args:
        model: maps a float batch to logits.
        images: ``(B, C, H, W)`` model input.
        views: view names; ``("identity",)`` is plain prediction.
        max_batch: largest batch one forward may take; None runs all views of all images in one forward.
    """
    views = check_views(views)
    stacked = stack_views(images, views)
    chunk = max_batch or stacked.shape[0]
    logits = torch.cat([model(part) for part in torch.split(stacked, chunk)])
    return torch.sigmoid(logits.float()).view(len(views), images.shape[0], -1)


def predict_proba(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: Sequence[str] = STUDY_VIEWS,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Mean sigmoid probability over the views, ``(B, classes)`` (arguments as :func:`predict_view_probs`)."""
    return predict_view_probs(model, images, views, max_batch).mean(dim=0)
