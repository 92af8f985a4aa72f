"""``python -m bench``: every benchmark, one table of ratios."""

from __future__ import annotations

import platform
import time

import torch

from bench import cpu_inference, cpu_training, data_cache, end_to_end, head_only, inference, pipeline_overhead
from bench.common import HEADER, dataset_root


def main() -> None:
    root, source = dataset_root()
    print(f"# odir benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, {source}")  # fmt: skip
    print(HEADER)
    benchmarks = (data_cache.run, head_only.run, cpu_training.run, inference.run, cpu_inference.run,
                  pipeline_overhead.run, lambda _: end_to_end.run())  # fmt: skip
    for benchmark in benchmarks:
        for row in benchmark(root):
            print(row.format(), flush=True)


if __name__ == "__main__":
    main()
