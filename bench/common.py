"""Shared benchmark helpers: where the data comes from, timing, and the results table."""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.data.synth import SynthSizes, write_synthetic_dataset

# the real ODIR data: the dataset root named by ODIR_DATA (``make bench`` uses synthetic data when it is unset)
REAL_DATA = Path(os.environ["ODIR_DATA"]) if os.environ.get("ODIR_DATA") else None


@dataclass(frozen=True)
class Row:
    """One line of the results table: a measurement against its reference."""

    name: str
    value: float
    reference: float
    unit: str
    goal: str

    @property
    def ratio(self) -> float:
        """measured / reference."""
        return self.value / self.reference

    def format(self) -> str:
        numbers = f"{self.value:>10.1f} {self.reference:>10.1f} {self.unit:<8} {self.ratio:>7.2f}x"
        return f"{self.name:<54} {numbers}  {self.goal}"


HEADER = f"{'benchmark':<54} {'measured':>10} {'reference':>10} {'unit':<8} {'ratio':>8}  goal"


def dataset_root(real: bool = True, size: int = 128, count: int = 200) -> tuple[Path, str]:
    """The real ODIR data when ``ODIR_DATA`` names it (and it is asked for), else a synthetic dataset in a temporary
    folder."""
    if real and REAL_DATA is not None:
        if not (REAL_DATA / "train.csv").is_file():
            raise SystemExit(f"ODIR_DATA={REAL_DATA}: no train.csv there; unset ODIR_DATA to use synthetic data")
        return REAL_DATA, f"real ODIR data ({REAL_DATA})"
    root = Path(tempfile.mkdtemp(prefix="odir-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    write_synthetic_dataset(root, size=size, sizes=SynthSizes(count, 0, 0, 0), seed=0)
    return root, f"synthetic data ({count} images, {size} px)"


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
