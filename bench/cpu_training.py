"""CPU training throughput: the settings before issue 15 measured them (float32, contiguous tensors, torch's default
threads) against the CPU options it asked about, side by side in one run.

One training step (forward, backward, Adam) of EfficientNet-Lite0 at 160 px, batch 32, on fixed random tensors: the
data path is measured elsewhere (``bench/data_cache.py``), so the rows compare compute only. Variants: channels-last
memory format (training's setting since this measurement, ``ModelSpec.channels_last``), bfloat16 autocast
(``ModelSpec.cpu_bf16``: this CPU has avx512_bf16; without AMX it runs on AVX-512), both, and ``torch.compile``
(``ODIR_BENCH_COMPILE=1``: its compilation takes minutes on 2 cores and is reported apart). Each variant is timed
right after its own measurement of the reference, so that a machine's drift over the run (warm-up, another process)
falls on both. A last row measures glibc keeping freed memory (:func:`components.training.heap.freed_memory_kept`, what
training does on the CPU) against its default, both in channels-last at the `cpu` profile's 224 px whatever
``size`` says (glibc always unmaps blocks above 32 MB, which a batch of 32 at 224 px has).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from bench.common import Row
from components.models.backbones import build_model
from components.training.heap import freed_memory_kept

STEPS, WARMUP = 8, 2
PROFILE_SIZE = 224  # the `cpu` profile's image size


def _throughput(
    channels_last: bool, bf16: bool, compiled: bool, size: int, batch: int, backbone: str
) -> tuple[float, float]:
    """(images per second over the timed steps, seconds of warm-up including any compilation)."""
    torch.manual_seed(0)
    model = build_model(backbone).train()  # random weights: the speed is the same
    images = torch.rand(batch, 3, size, size)
    targets = (torch.rand(batch, 3) > 0.7).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(step_model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(WARMUP):
        step()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS * batch / (time.perf_counter() - started), warmup


def run(_root: Path | None = None, size: int = 160, batch: int = 32, backbone: str = "efficientnet_lite0") -> list[Row]:
    variants = {"channels_last": (True, False, False), "bf16 autocast": (False, True, False),
                "bf16 + channels_last": (True, True, False)}  # fmt: skip
    if os.environ.get("ODIR_BENCH_COMPILE") == "1":
        variants["torch.compile"] = (False, False, True)
    _throughput(False, False, False, size, batch, backbone)  # warms the allocator and oneDNN's primitive caches
    rows = []
    for name, (channels_last, bf16, compiled) in variants.items():
        reference, _ = _throughput(False, False, False, size, batch, backbone)
        value, warmup = _throughput(channels_last, bf16, compiled, size, batch, backbone)
        note = f"compiling took {warmup:.0f} s" if compiled else ""
        note = f"kept if > 1x; {torch.get_num_threads()} threads {note}".rstrip()
        rows.append(Row(f"cpu training images/s: {name} vs float32 contiguous", value, reference, "img/s", note=note))
    reference, _ = _throughput(True, False, False, PROFILE_SIZE, batch, backbone)
    with freed_memory_kept() as applies:
        value, _ = _throughput(True, False, False, PROFILE_SIZE, batch, backbone)
    if applies:
        name = f"freed memory kept vs glibc's default ({PROFILE_SIZE} px, channels_last)"
        rows.append(Row(f"cpu training images/s: {name}", value, reference, "img/s", note="kept if > 1x"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row.format(), flush=True)
