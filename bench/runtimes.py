"""CPU runtimes for one fold model of the `cpu` profile's shape (EfficientNet-Lite0 at 224 px, FOV crop, 5-view TTA)
on real images: eager PyTorch as ``load_trained`` runs it (channels-last, forwards of 32), its ONNX export under ONNX
Runtime (what the registered ensemble runs, :mod:`components.models.runtime`) with the views of 8 and of 32 images per
call, and the same ONNX file under OpenVINO (float32, and its default precision, bfloat16 on CPUs that have it) where
``openvino`` is installed (it is no dependency of odir: ``pip install openvino`` to compare).

The backends take turns on the same uint8 batches, ``rounds`` times; each row is a median of its rounds over eager's,
with the largest probability difference from eager. The network is a checkpoint's (``--checkpoint``, e.g. a fold
model of a registered ensemble), else Lite0 with its ImageNet weights and a random head (the same arithmetic).

    .venv/bin/python -m bench.runtimes --images /path/to/odir/images/val [--checkpoint fold_0.pt] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import Row
from components.config import parse_model_spec
from components.data.dataset import FundusDataset
from components.models.backbones import build_model
from components.models.runtime import ExportedNetwork, export_onnx
from components.models.tta import STUDY_VIEWS, predict_view_probs


def _network(checkpoint: Path | None):
    """A trained fold model and its spec, or Lite0 of the `cpu` recipe's shape with ImageNet weights."""
    from components.training.checkpoints import load_trained

    if checkpoint is not None:
        return load_trained(checkpoint, "cpu")
    spec = parse_model_spec({"name": "lite0", "backbone": "efficientnet_lite0", "image_size": 224, "batch_size": 32,
                             "preprocess": ["fov_crop"], "channels_last": True})  # fmt: skip
    model = build_model(spec.backbone, "imagenet").to(memory_format=torch.channels_last).eval()
    return model, spec


def _openvino(path: Path, precision: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        import openvino
    except ImportError:
        return None
    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    return lambda images: torch.from_numpy(compiled(images.numpy())[0].copy())


def compare(images: list[str], checkpoint: Path | None = None, rounds: int = 5) -> list[Row]:
    """The rows described in the module docstring for these image files."""
    model, spec = _network(checkpoint)
    dataset = FundusDataset(images, None, spec.image_size, preprocess=spec.fundus_preprocess())
    batch = torch.stack([image for image, _ in dataset])
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, spec.image_size, Path(tmp) / "model.onnx")
        exported = ExportedNetwork(path)
        candidates: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {
            "eager PyTorch, forwards of 32": (model, 32),
            "onnxruntime, views of 8 images per call": (exported, 8 * len(STUDY_VIEWS)),
            "onnxruntime, views of 32 images per call": (exported, 32 * len(STUDY_VIEWS)),
        }
        for name, precision in (("openvino f32", "f32"), ("openvino default precision", None)):
            runner = _openvino(path, precision)
            if runner is not None:
                candidates[f"{name}, views of 8 images per call"] = (runner, 8 * len(STUDY_VIEWS))
        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        probs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for _ in range(rounds):
                for name, (network, forwards) in candidates.items():
                    started = time.perf_counter()
                    probs[name] = torch.cat([predict_view_probs(network, part, STUDY_VIEWS, forwards)
                                             for part in torch.split(batch, 32)], dim=1)  # fmt: skip
                    seconds[name].append(time.perf_counter() - started)
    eager = next(iter(candidates))
    count = len(images) * len(STUDY_VIEWS)
    rows = []
    for name in candidates:
        rate = count / statistics.median(seconds[name])
        difference = float(np.abs(probs[name].numpy() - probs[eager].numpy()).max())
        rows.append(Row(f"{spec.backbone} {spec.image_size}px forwards/s: {name}", rate,
                        count / statistics.median(seconds[eager]), "fwd/s",
                        note=f"max |p - eager| {difference:.1e}"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of real fundus images")
    parser.add_argument("--checkpoint", type=Path, help="a fold model's checkpoint (default: ImageNet Lite0)")
    parser.add_argument("--limit", type=int, default=64, help="images (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every backend (default 5)")
    args = parser.parse_args()
    images = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for row in compare(images[: args.limit], args.checkpoint, args.rounds):
        print(row.format(), flush=True)


if __name__ == "__main__":
    main()
