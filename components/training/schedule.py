"""Optimisation pieces of a training run, each off by default: optimiser and parameter groups, the per-step
learning-rate schedule, label smoothing and an exponential moving average (EMA) of the weights.

- :func:`build_optimiser`: ``adam`` (L2 ``weight_decay`` on every parameter, one group: what training always did)
  or ``adamw`` (decoupled weight decay, not applied to biases and normalisation weights); ``backbone_lr_scale``
  gives the backbone's parameters ``lr * scale`` and the head ``lr``.
- :func:`lr_factor`: the multiplier of every group's learning rate at a global step: linear warmup over the first
  ``warmup`` steps, then ``constant`` (1) or ``cosine`` (half a cosine from 1 down to 0 at the end of training).
  A pure function of the step, so a resumed run needs no scheduler state.
- :func:`epoch_side` and :func:`resize_batch`: progressive resizing, the first epochs trained on smaller images
  (batches resized after augmentation), the later ones at the size the model predicts at.
- :func:`smooth_targets`: ``y (1 - s) + s / 2`` for the binary targets of BCE-type losses.
- :class:`WeightEMA`: ``ema = d * ema + (1 - d) * w`` after every optimiser step, on every floating-point tensor of
  the state dict (BatchNorm running statistics included; counters are copied).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from components.data.augment import to_float

SCHEDULES = ("constant", "cosine")
OPTIMISERS = ("adam", "adamw")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """The learning-rate multiplier for optimiser step ``step`` (0-based) of ``total_steps``.

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the last warmup step reaches 1).
    Then ``constant``: 1; ``cosine``: ``(1 + cos(pi * t)) / 2`` with ``t = (step - warmup) / (total - warmup)``.

    Raises:
        ValueError: for an unknown schedule or negative counts.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if step < 0 or total_steps < 0 or warmup_steps < 0:
        raise ValueError(f"steps must be >= 0, got step {step}, total {total_steps}, warmup {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_side(epoch: int, image_size: int, progressive_sizes: Sequence[int] | None) -> int:
    """The side of the square training images of ``epoch`` (from 1): ``progressive_sizes[epoch - 1]`` for the
    epochs it lists, ``image_size`` after them (and without it)."""
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    sizes = progressive_sizes or ()
    return sizes[epoch - 1] if epoch <= len(sizes) else image_size


def resize_batch(images: torch.Tensor, side: int) -> torch.Tensor:
    """A batch ``(N, C, H, W)`` resized to ``side x side`` (bilinear, antialiased when shrinking: within a grey
    level of PIL's resize of the cached image), as float in ``[0, 1]`` when it was uint8; the batch itself when it
    has that size."""
    if images.shape[-2:] == (side, side):
        return images
    return F.interpolate(to_float(images), size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary targets pulled towards 1/2: ``y (1 - s) + s / 2`` (1 -> 1 - s/2, 0 -> s/2); unchanged for ``s = 0``."""
    if not 0.0 <= smoothing <= 0.5:
        raise ValueError(f"label smoothing must be in [0, 0.5], got {smoothing}")
    return targets if smoothing == 0 else targets * (1.0 - smoothing) + smoothing / 2


def _no_decay(name: str, parameter: nn.Parameter) -> bool:
    """Biases and normalisation weights (every 1-d tensor) are not decayed under AdamW."""
    return parameter.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0, decoupled: bool = False
) -> list[dict]:
    """The optimiser's parameter groups over ``model``'s trainable parameters.

    One group, as before, unless the backbone (``model.features``) gets its own learning rate or the weight decay
    is decoupled (then biases and normalisation weights get none).
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if backbone_lr_scale == 1.0 and not decoupled:
        return [{"params": [p for _, p in trainable], "lr": lr, "weight_decay": weight_decay}]
    groups = []
    for part_lr, in_part in ((lr * backbone_lr_scale, True), (lr, False)):
        members = [(n, p) for n, p in trainable if n.startswith("features.") == in_part]
        decay = [p for n, p in members if not (decoupled and _no_decay(n, p))]
        rest = [p for n, p in members if decoupled and _no_decay(n, p)]
        for params, wd in ((decay, weight_decay), (rest, 0.0)):
            if params:
                groups.append({"params": params, "lr": part_lr, "weight_decay": wd})
    return groups


def build_optimiser(
    model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, backbone_lr_scale: float = 1.0
) -> torch.optim.Optimizer | None:
    """``adam`` or ``adamw`` over ``model``'s trainable parameters; None when nothing trains.

    Raises:
        ValueError: for an unknown optimiser.
    """
    if name not in OPTIMISERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMISERS)}")
    if not any(p.requires_grad for p in model.parameters()):
        return None
    groups = parameter_groups(model, lr, weight_decay, backbone_lr_scale, decoupled=name == "adamw")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if len(groups) == 1:  # exactly what training did before groups existed (the checkpoints' optimiser state too)
        return torch.optim.Adam(groups[0]["params"], lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def set_lr(optimiser: torch.optim.Optimizer, factor: float, base_lrs: Iterable[float]) -> None:
    """Sets every group's learning rate to its base times ``factor``."""
    for group, base in zip(optimiser.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


class WeightEMA:
    """An exponential moving average of a model's weights, kept in a copy of the model (in eval mode).

    Args:
        model: the model being trained; the average starts at its current weights.
        decay: ``d`` in ``ema = d * ema + (1 - d) * w``; the average spans about ``1 / (1 - d)`` steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        averaged, current = [], []
        ema_state = self.model.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if target.is_floating_point():
                averaged.append(target)
                current.append(value.detach())
            else:
                target.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
