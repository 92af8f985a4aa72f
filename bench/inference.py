"""Inference: the registered-style ``odir-ensemble`` pyfunc (3 members, 5-view TTA) against calling the three raw
models with the same TTA in a loop (goal <= 1.10x wall), TTA as one batched forward against five forwards, and
a loaded model's prediction in its trained memory format (channels-last, ``load_trained``) against contiguous.

Both sides read the same images through the same decoded-image cache (warmed first) and return the same numbers;
the pyfunc side adds what serving adds: the DataFrame in and out, schema checks, the weighted mean, thresholds.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import Goal, Row, median_seconds
from components.config import parse_model_spec
from components.data.dataset import to_model_input
from components.data.splits import load_split
from components.evaluation.ensemble import weighted_mean
from components.models.backbones import build_model
from components.models.inference import predict_images
from components.models.tta import STUDY_VIEWS, VIEWS, predict_proba

MEMBERS = ("resnet18", "se_resnet18", "efficientnet_lite0")


def _checkpoints(folder: Path, size: int) -> list[Path]:
    paths = []
    for index, backbone in enumerate(MEMBERS):
        torch.manual_seed(index)
        spec = parse_model_spec({"name": f"m{index}", "backbone": backbone, "image_size": size, "batch_size": 32})
        path = folder / f"member_{index}.pt"
        torch.save({"model": build_model(backbone).state_dict(), "spec": spec.model_dump()}, path)
        paths.append(path)
    return paths


def _pyfunc(folder: Path, checkpoints: list[Path]):
    import mlflow

    from steps.support.ensemble_model import CONFIG_ARTIFACT, OdirEnsemble

    config = folder / "ensemble.json"
    thresholds = {"D": 0.5, "G": 0.5, "A": 0.5}
    config.write_text(json.dumps({"members": list(MEMBERS), "weights": [0.5, 0.2, 0.3], "views": list(STUDY_VIEWS),
                                  "thresholds": thresholds}))  # fmt: skip
    artifacts = {CONFIG_ARTIFACT: str(config), **{f"member_{i}": str(p) for i, p in enumerate(checkpoints)}}
    mlflow.pyfunc.save_model(str(folder / "model"), python_model=OdirEnsemble(), artifacts=artifacts)
    return mlflow.pyfunc.load_model(str(folder / "model"))


def run(root: Path, size: int = 128, limit: int = 100, repeats: int = 3) -> list[Row]:
    """Times the three comparisons on the first ``limit`` train images of ``root``."""
    from components.training.checkpoints import load_trained

    paths = [str(p) for p in load_split(root, "train", check_images=False).paths[:limit]]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = _checkpoints(Path(tmp), size)
        served = _pyfunc(Path(tmp), checkpoints)
        members = [load_trained(p) for p in checkpoints]
        frame = pd.DataFrame({"image_path": paths})

        def raw() -> np.ndarray:
            probs = [
                predict_images(
                    model, paths, spec.image_size, STUDY_VIEWS, spec.batch_size, preprocess=spec.fundus_preprocess()
                )
                for model, spec in members
            ]
            return weighted_mean(probs, [0.5, 0.2, 0.3])

        os.environ.setdefault("ODIR_SERVE_IMAGE_ROOT", str(root))  # as a server that reads the dataset's files
        served.predict(frame)  # warm: decodes every image once into the cache
        assert np.allclose(served.predict(frame)[["p_D", "p_G", "p_A"]].to_numpy(), raw(), atol=1e-6)
        pyfunc_seconds = median_seconds(lambda: served.predict(frame), repeats)
        raw_seconds = median_seconds(raw, repeats)
        model, _ = members[0]
        batch = torch.stack([torch.zeros(3, size, size, dtype=torch.uint8)] * 32)
        x = to_model_input(batch)

        def separate() -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([torch.sigmoid(model(VIEWS.get(v)(x))) for v in STUDY_VIEWS]).mean(0)

        batched_seconds = median_seconds(lambda: predict_proba(model, x, STUDY_VIEWS), repeats)
        separate_seconds = median_seconds(separate, repeats)
        lite0, _ = members[MEMBERS.index("efficientnet_lite0")]  # as loaded: in the memory format it trained in
        contiguous = copy.deepcopy(lite0).to(memory_format=torch.contiguous_format)
        layout_seconds = [median_seconds(lambda m=m: predict_proba(m, x, STUDY_VIEWS, 32), repeats)
                          for m in (lite0, contiguous)]  # fmt: skip
    count = len(paths)
    return [
        Row(f"ensemble pyfunc vs raw models, 3x5 views, {count} img", pyfunc_seconds, raw_seconds, "s",
            Goal("<=", 1.1)),
        Row(f"TTA one batched forward vs 5 forwards ({size}px, 32)", batched_seconds, separate_seconds, "s"),
        Row(f"Lite0 5-view prediction: channels-last vs contiguous ({size}px, 32)", *layout_seconds, "s",
            Goal("<", 1.0)),
    ]  # fmt: skip
