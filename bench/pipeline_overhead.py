"""Pipeline overhead: one model trained through the ``odir-train`` flow with MLflow tracking, against a bare
PyTorch loop on the same model, data, batches, seeds and epochs with no tracking (goal <= 1.05x wall).

The bare loop is what a user would write: Adam, BCE, the same shuffled batches, a validation pass per epoch. The
pipeline adds the MLflow run (params, per-epoch metrics, system metrics, dataset input), checkpoints, the logged
and registered model, and the Prefect flow run, started as the ``odir`` flow starts it (without heartbeats: see
``flows.without_heartbeats``). Ingest, the Prefect server's start and one warm-up run (the first run of a process
imports ``mlflow.pytorch`` and more) are outside the timing; the two sides alternate which goes first.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import Goal, Row
from components.data.dataset import FundusDataset, to_model_input
from components.data.splits import load_split
from components.models.backbones import build_model
from components.training.loop import epoch_seed

SPEC = {"name": "bench-overhead", "backbone": "resnet18", "epochs": 4, "lr": 1e-4, "batch_size": 32, "seed": 0}


def _subset(root: Path, folder: Path, limit: int) -> Path:
    """A dataset of the first ``limit`` train and val images of ``root`` (CSV only; images stay where they are)."""
    for split in ("train", "val"):
        source = load_split(root, split, check_images=False)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        link = folder / "images" / split
        if not link.exists():
            link.symlink_to(source.image_dir)
        lines = ["id,D,G,A"] + [f"{i},{','.join(str(int(v)) for v in row)}"
                                for i, row in zip(source.ids[:limit], source.labels[:limit], strict=True)]  # fmt: skip
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def bare_loop(train: FundusDataset, val: FundusDataset, spec: dict) -> float:
    """The reference: a plain training loop; returns its wall time."""
    started = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = build_model(spec["backbone"])
    optimiser = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    for epoch in range(1, spec["epochs"] + 1):
        torch.manual_seed(epoch_seed(spec["seed"], epoch))
        model.train()
        generator = torch.Generator().manual_seed(epoch_seed(spec["seed"], epoch))
        for images, labels in DataLoader(train, batch_size=spec["batch_size"], shuffle=True, generator=generator):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(to_model_input(images)), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            for images, _ in DataLoader(val, batch_size=spec["batch_size"]):
                torch.sigmoid(model(to_model_input(images)))
    return time.perf_counter() - started


def run(root: Path, size: int = 128, limit: int = 200, repeats: int = 5) -> list[Row]:
    """Medians of ``repeats`` runs of each, alternating, on a subset of ``root``."""
    spec = {**SPEC, "image_size": size}
    with tempfile.TemporaryDirectory() as tmp:
        data = _subset(root, Path(tmp) / "data", limit)
        os.environ["ODIR_HOME"] = str(Path(tmp) / "home")
        (Path(tmp) / "home").mkdir()
        from components.training.spec import ModelSpec
        from flows import without_heartbeats
        from flows.odir import odir_train
        from steps import ingest
        from steps.support.manifest import load_manifest

        model_spec = ModelSpec.model_validate(spec)
        manifest = ingest.run(ingest.IngestConfig(data_root=str(data))).manifest_uri
        loaded = load_manifest(manifest)
        train, val = loaded.dataset("train", size), loaded.dataset("val", size)
        for dataset in (train, val):  # both sides start with a warm image cache
            [dataset[i] for i in range(len(dataset))]

        def through_the_pipeline() -> float:
            shutil.rmtree(Path(tmp) / "home" / ".odir" / "work", ignore_errors=True)  # train afresh, no resume
            started = time.perf_counter()
            with without_heartbeats():
                odir_train(manifest, model_spec, "bench", force=True)
            return time.perf_counter() - started

        through_the_pipeline()  # warm-up
        pipeline, bare = [], []
        for repeat in range(repeats):
            if repeat % 2:
                bare.append(bare_loop(train, val, spec))
                pipeline.append(through_the_pipeline())
            else:
                pipeline.append(through_the_pipeline())
                bare.append(bare_loop(train, val, spec))
        del os.environ["ODIR_HOME"]
    name = f"odir-train flow + MLflow vs bare loop ({spec['epochs']} ep, {limit} img)"
    return [Row(name, statistics.median(pipeline), statistics.median(bare), "s", Goal("<=", 1.05))]
