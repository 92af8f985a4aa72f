"""Shared benchmark helpers: where the data comes from, timing, and the results table."""

from __future__ import annotations

import atexit
import contextlib
import operator
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from components.data.synth import SynthSizes, write_synthetic_dataset

# the real ODIR data: the dataset root named by ODIR_DATA (``make bench`` uses synthetic data when it is unset)
REAL_DATA = Path(os.environ["ODIR_DATA"]) if os.environ.get("ODIR_DATA") else None


COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}  # fmt: skip


@dataclass(frozen=True)
class Goal:
    """A bound on a row's ratio (measured / reference) that ``make bench`` holds the row to."""

    comparison: str  # a key of COMPARISONS
    ratio: float

    def met(self, ratio: float) -> bool:
        return COMPARISONS[self.comparison](ratio, self.ratio)

    def __str__(self) -> str:
        return f"{self.comparison} {self.ratio:g}x"


@dataclass(frozen=True)
class Row:
    """One line of the results table: a measurement against its reference, with its goal when it has one.

    Attributes:
        goal: the bound its ratio must meet (None: a row that informs, as a variant tried or a memory figure).
        note: what else the row says (a condition, the settings, a cause).
        condition: a condition of the goal besides the ratio, stated in ``note`` (the head-only row's same
            validation F1 both ways); False misses the goal whatever the ratio.
    """

    name: str
    value: float
    reference: float
    unit: str
    goal: Goal | None = None
    note: str = ""
    condition: bool = True

    @property
    def ratio(self) -> float:
        """measured / reference."""
        return self.value / self.reference

    @property
    def misses(self) -> bool:
        """Whether the row has a goal and misses it."""
        return self.goal is not None and not (self.goal.met(self.ratio) and self.condition)

    @property
    def verdict(self) -> str:
        """``MISSES``, ``holds``, or empty for a row without a goal."""
        return "" if self.goal is None else "MISSES" if self.misses else "holds"

    @property
    def goal_text(self) -> str:
        return "; ".join(part for part in (str(self.goal or "-"), self.note) if part)

    def format(self) -> str:
        numbers = f"{self.value:>10.1f} {self.reference:>10.1f} {self.unit:<8} {self.ratio:>7.2f}x"
        return f"{self.name:<54} {numbers}  {self.verdict:<6}  {self.goal_text}"

    def markdown(self) -> str:
        verdict = f"**{self.verdict}**" if self.misses else self.verdict
        cells = (self.name, f"{self.value:,.1f}", f"{self.reference:,.1f}", self.unit, f"{self.ratio:.2f}x",
                 self.goal_text, verdict)  # fmt: skip
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


HEADER = f"{'benchmark':<54} {'measured':>10} {'reference':>10} {'unit':<8} {'ratio':>8}  {'goal':<6}  (goal; note)"
MARKDOWN_HEADER = "| benchmark | measured | reference | unit | ratio | goal | holds |\n|---|---|---|---|---|---|---|"


def dataset_root(real: bool = True, size: int = 128, count: int = 200) -> tuple[Path, str]:
    """The real ODIR data when ``ODIR_DATA`` names it (and it is asked for), else a synthetic dataset in a temporary
    folder."""
    if real and REAL_DATA is not None:
        if not (REAL_DATA / "train.csv").is_file():
            raise SystemExit(f"ODIR_DATA={REAL_DATA}: no train.csv there; unset ODIR_DATA to use synthetic data")
        return REAL_DATA, f"real ODIR data ({REAL_DATA})"
    root = Path(tempfile.mkdtemp(prefix="odir-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # a val split as large as train: head_only and pipeline_overhead validate on it, cpu_inference predicts it (an
    # empty val.csv is bad input since the dataset contract of 2026-12-08, and the bench failed on it)
    write_synthetic_dataset(root, size=size, sizes=SynthSizes(count, count, 0, 0), seed=0)
    return root, f"synthetic data ({count} train and {count} val images, {size} px)"


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tree_pss(process: psutil.Process) -> int:
    """The resident memory of a process tree: the sum of proportional set sizes, which splits each shared page
    among its sharers. A sum of RSS would count a page twice whenever a process forks (until the child execs), and
    MLflow and Prefect start helper processes that way: a 1.3 GB ``odir`` read as 2.7 GB for a moment."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that exited meanwhile
            total += member.memory_full_info().pss
    return total
