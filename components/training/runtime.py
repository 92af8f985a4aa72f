"""Where and how a network runs: the device, seeding, the memory format and mixed precision.

- CUDA, then Apple MPS, then CPU (:func:`select_device`).
- Channels-last memory format on CUDA and the CPU when the spec asks (``channels_last``, on by default): the same
  arithmetic in another order, faster convolutions; not on MPS.
- Mixed precision on CUDA (``amp``: bfloat16 where supported, else float16 with gradient scaling), and bfloat16
  autocast on a CPU with native bfloat16 when the spec asks (``cpu_bf16``).

The training loop (:mod:`components.training.loop`) runs under a :class:`Runtime`; a trained model is placed for
prediction in the memory format it was trained in (:func:`components.training.checkpoints.load_trained`).
"""

from __future__ import annotations

import functools
import logging
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from components.data.dataset import to_model_input
from components.training.spec import ModelSpec

log = logging.getLogger(__name__)


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA, then Apple MPS, then CPU."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seeds torch (all devices) and NumPy."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX): elsewhere it is emulated, slower than
    float32 and still changes the numbers, so ``cpu_bf16`` is ignored there, with a warning."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own check; no public API for it
    except (AttributeError, RuntimeError):
        native = False
    if not native:
        log.warning("cpu_bf16 is ignored: this CPU has no native bfloat16 (avx512_bf16 or AMX); training in float32")
    return native


def uses_channels_last(spec: ModelSpec, device: torch.device) -> bool:
    """Whether ``spec``'s network runs in channels-last memory format on ``device``."""
    # measured on CUDA and the CPU; MPS's channels-last backward had bugs in torch releases this project accepts
    return spec.channels_last and device.type in ("cuda", "cpu")


def place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` on ``device``, in channels-last memory format if asked (its convolutions then run in it whatever the
    input's layout)."""
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


class Runtime:
    """Device placement, autocast and gradient scaling for one run."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.channels_last = uses_channels_last(spec, device)
        self.amp_dtype = None
        if cuda and spec.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.type == "cpu" and spec.cpu_bf16 and _cpu_has_native_bf16():
            self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def in_effect(self) -> dict[str, bool]:
        """The spec's speed settings as this device applies them (what a run's params record)."""
        return {"amp": self.amp_dtype is not None, "channels_last": self.channels_last}

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.layout(to_model_input(batch.to(self.device, non_blocking=True)))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def speed_settings(spec: ModelSpec, device: str | None = None) -> dict[str, bool]:
    """Whether mixed precision (``amp``: CUDA's, or ``cpu_bf16``) and channels-last are in effect for ``spec``
    on ``device`` (None: the one training would pick)."""
    return Runtime(spec, select_device(device)).in_effect()
