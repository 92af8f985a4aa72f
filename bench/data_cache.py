"""Data path: images/s with the decoded-image cache against decoding every image every epoch (goal >= 5x).

Both variants iterate the same batches (one seeded order) through the same DataLoader, up to the uint8 batch that
is handed to the training device. The cached variant's first epoch decodes and fills the cache; the ratio is
reported for the epochs after it (steady state, what every epoch but the first costs) and, separately, over all
epochs including the first. Batch normalisation (uint8 -> normalised float, done by the model itself on the
training device, :meth:`components.models.backbones.Classifier.normalise`) is reported on its own row, per image, since
it costs the same in both variants.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import HEADER, Goal, Row, dataset_root
from components.data.dataset import FundusDataset, ImageCache
from components.data.splits import load_split
from components.models.backbones import build_model


def _epoch_seconds(dataset: FundusDataset, batch_size: int, seed: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def _normalise_seconds_per_image(dataset: FundusDataset, batch_size: int, repeats: int = 10) -> float:
    batch = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
    model = build_model("tiny_cnn")
    started = time.perf_counter()
    for _ in range(repeats):
        model.normalise(batch)
    return (time.perf_counter() - started) / (repeats * batch.shape[0])


def run(root: Path, size: int = 256, epochs: int = 4, batch_size: int = 32, limit: int | None = None) -> list[Row]:
    """Measures both variants on the train split of ``root``; returns the table rows."""
    split = load_split(root, "train", check_images=False)
    paths, labels = split.paths[:limit], split.labels[:limit]
    cached = FundusDataset(paths, labels, size, ImageCache())
    uncached = FundusDataset(paths, labels, size, cache=None)
    cached_times = [_epoch_seconds(cached, batch_size, seed) for seed in range(epochs)]
    decode_times = [_epoch_seconds(uncached, batch_size, seed) for seed in range(epochs)]
    count = len(paths)
    warm = count * (epochs - 1) / sum(cached_times[1:])
    cold = count * (epochs - 1) / sum(decode_times[1:])
    overall = count * epochs / sum(cached_times)
    overall_decode = count * epochs / sum(decode_times)
    normalise = 1.0 / _normalise_seconds_per_image(cached, batch_size)
    return [
        Row(f"data path, cached epochs 2-{epochs} ({size}px)", warm, cold, "img/s", Goal(">=", 5.0)),
        Row(f"data path, all {epochs} epochs incl. cache fill", overall, overall_decode, "img/s"),
        Row("batch normalisation on the CPU (vs cached path)", normalise, warm, "img/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--synthetic", action="store_true", help="use synthetic data even where the real data exists")
    args = parser.parse_args()
    root, source = dataset_root(real=not args.synthetic)
    print(f"# {source}")
    print(HEADER)
    for row in run(root, args.size, args.epochs):
        print(row.format())


if __name__ == "__main__":
    main()
