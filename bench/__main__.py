"""``python -m bench``: every benchmark, one table of ratios; each row with a goal is marked ``holds`` or ``MISSES``,
and the command exits 1 when any row misses its goal (after the whole table: one miss does not hide the others).

``--docs FILE`` (``make bench``: docs/benchmarks.md) replaces the part of ``FILE`` between :data:`BEGIN` and
:data:`END` with this run's table as Markdown, headed by the date, the commit, the machine, the data and the load
average before and after: the table in the docs is always one whole run's, never edited by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import cpu_inference, cpu_training, data_cache, end_to_end, head_only, inference, pipeline_overhead
from bench.common import HEADER, MARKDOWN_HEADER, Row, dataset_root

BEGIN = "<!-- make bench: begin (written by python -m bench --docs; edit around it, not in it) -->"
END = "<!-- make bench: end -->"


def _commit() -> str:
    """The checkout's commit, with ``+changes`` when its tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def markdown(rows: list[Row], started: str, source: str, load_before: str) -> str:
    """This run's table in Markdown, with what it ran on."""
    machine = f"{os.cpu_count()} cores ({platform.machine()}), {torch.get_num_threads()} torch threads"
    return "\n".join([
        f"Run of {started}, commit `{_commit()}`, {machine}, torch {torch.__version__}, {source}; load average "
        f"(1/5/15 min) {load_before} before, {_load()} after. Command: `make bench`.",
        "",
        MARKDOWN_HEADER,
        *(row.markdown() for row in rows),
    ])  # fmt: skip


def write_docs(path: Path, table: str) -> None:
    """Replaces what lies between :data:`BEGIN` and :data:`END` in ``path`` with ``table``."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN!r} ... {END!r} block to write the table into")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, help="write the table into this Markdown file's marked block")
    args = parser.parse_args()
    started, load_before = time.strftime("%Y-%m-%d %H:%M"), _load()
    root, source = dataset_root()
    print(f"# odir benchmarks, {started}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, {source}, load {load_before}")  # fmt: skip
    print(HEADER)
    benchmarks = (data_cache.run, head_only.run, cpu_training.run, inference.run, cpu_inference.run,
                  pipeline_overhead.run, lambda _: end_to_end.run())  # fmt: skip
    rows = []
    for benchmark in benchmarks:
        for row in benchmark(root):
            print(row.format(), flush=True)
            rows.append(row)
    table = markdown(rows, started, source, load_before)
    if args.docs:
        write_docs(args.docs, table)
        print(f"\nthe table is in {args.docs}")
    missed = [row.name for row in rows if row.misses]
    if missed:
        print(f"\n{len(missed)} rows miss their goal: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
