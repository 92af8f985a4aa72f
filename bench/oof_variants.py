"""Variants of a cross-validated member's prediction and thresholds, measured on its fold models and out-of-fold
predictions without training again (issue 15). Each variant is cross-fitted by the ensemble step's own
:func:`steps.ensemble.cross_fit` for one member (a temperature per class, then per-class thresholds, fit on the
other folds) and paired over patients with the step as a profile runs it (F1 thresholds on the fine grid).

    python -m bench.oof_variants --store sqlite:////path/to/abl-home/mlruns/mlflow.db --run "train abl19-lite0" \\
        [--data /path/to/odir]

Variants on the stored out-of-fold predictions: thresholds maximising the course F1 (macro over both classes of a
disease) instead of the positive class's (the ``f1_course`` objective), and pooling the fellow eye
(``p' = (1 - w) p + w p_fellow`` per class before calibration, ``w`` in 0..0.5 picked on the other folds; ODIR ids
are ``<patient>_<left|right>``). With ``--data``, each fold
model predicts its held-out fold again: as trained (which reproduces the stored predictions), under bfloat16
autocast, with all eight symmetries of the square as views instead of five, and at larger sizes than it trained at
(a model trained on random resized crops sees objects larger than a whole-image resize shows them at the same size:
the "FixRes" discrepancy of Touvron et al., 2019). ``--variants`` picks some of those by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import paired_bootstrap, pick, report_metrics
from components.evaluation.ensemble import PROB_COLUMNS
from components.evaluation.metrics import DEFAULT_THRESHOLD
from components.evaluation.scoring import scored_report
from components.evaluation.thresholds import tune_thresholds
from components.models.inference import predict_images
from components.models.tta import DIHEDRAL_VIEWS, STUDY_VIEWS
from steps.ensemble import EnsembleConfig, cross_fit
from steps.support.members import CHECKPOINT_DIR
from steps.support.thresholds import grid_of

FELLOW_WEIGHTS = np.round(np.arange(0.0, 0.55, 0.05), 2)
STEP = EnsembleConfig(member_model_uris=("member",), member_val_predictions=("oof",), manifest_uri="-", grid="fine")
"""The ensemble step as the `cpu` profile runs it on one member (``threshold_grid: fine``, F1, calibrated)."""


def fellow_index(ids: list[str]) -> np.ndarray:
    """For each id, the row of the same patient's other eye, -1 where it is not among ``ids``."""
    row = {image_id: index for index, image_id in enumerate(ids)}
    swap = {"_left": "_right", "_right": "_left"}
    fellows = []
    for image_id in ids:
        side = next((s for s in swap if s in image_id), None)
        fellows.append(row.get(image_id.replace(side, swap[side]), -1) if side else -1)
    return np.asarray(fellows)


def pool_fellow(probs: np.ndarray, fellow: np.ndarray, weights: np.ndarray | float) -> np.ndarray:
    """``(1 - w) p + w p_fellow`` per class for the images whose fellow eye is known; the others as they are."""
    pooled, has = probs.copy(), fellow >= 0
    pooled[has] = (1 - np.asarray(weights)) * probs[has] + np.asarray(weights) * probs[fellow[has]]
    return pooled


def fellow_pooled(config: EnsembleConfig, labels: np.ndarray, probs: np.ndarray, folds: np.ndarray,
                  fellow: np.ndarray) -> np.ndarray:  # fmt: skip
    """Cross-fitted as the step does, each fold's images pooled with their fellow eyes by weights picked on the
    other folds (a fellow eye is in its image's fold: folds group patients); the shifted probabilities."""
    shifted = np.zeros_like(probs)
    for fold in np.unique(folds):
        held_out = folds == fold
        pooled = pool_fellow(probs, fellow, _fellow_weights(config, labels, probs, fellow, ~held_out))
        shifted[held_out] = cross_fit(config, labels, [pooled], folds)[1][held_out]
    return shifted


def _fellow_weights(
    config: EnsembleConfig, labels: np.ndarray, probs: np.ndarray, fellow: np.ndarray, fit: np.ndarray
) -> np.ndarray:  # fmt: skip
    """Per class, the pooling weight whose best threshold gives the highest F1 on the ``fit`` rows."""
    grid = grid_of(config.grid)
    best_f1 = np.stack([tune_thresholds(labels[fit], pool_fellow(probs, fellow, w)[fit], grid).f1
                        for w in FELLOW_WEIGHTS])  # fmt: skip
    return FELLOW_WEIGHTS[best_f1.argmax(axis=0)]


def describe(name: str, labels: np.ndarray, shifted: np.ndarray, base: np.ndarray, patients: list[str]) -> str:
    """One line: f1_macro and f1_course with 95% intervals, per-class F1, and both paired against ``base``."""
    report = scored_report(labels, shifted, (DEFAULT_THRESHOLD,) * len(LABELS), patients)
    line = [f"{name:34s}"]
    for metric in ("f1_macro", "f1_course"):
        line.append(f"{metric} {report[metric]:.3f} [{report[f'{metric}_ci_low']:.3f}, "
                    f"{report[f'{metric}_ci_high']:.3f}]")  # fmt: skip
    line.append("F1 " + " / ".join(f"{report[f'f1_{c}']:.3f}" for c in LABELS))
    if shifted is not base:
        for metric in ("f1_macro", "f1_course"):
            score = pick(report_metrics((DEFAULT_THRESHOLD,) * len(LABELS)), metric)
            paired = paired_bootstrap(score, labels, base, shifted, patients, resamples=1000, seed=0)
            low, high = paired.interval
            line.append(f"{metric} {paired.difference:+.3f} [{low:+.3f}, {high:+.3f}]")
    return "  ".join(line)


@dataclasses.dataclass(frozen=True)
class Reprediction:
    """How the fold models predict their held-out folds again (``size`` None: the size they trained at)."""

    label: str
    views: tuple[str, ...] = STUDY_VIEWS
    bf16: bool = False
    size: int | None = None


PREDICTIONS = {
    "trained": Reprediction("again, as trained"),
    "bf16": Reprediction("again, bfloat16 autocast", bf16=True),
    "8views": Reprediction("again, 8 views", views=DIHEDRAL_VIEWS),
    "256px": Reprediction("again, at 256 px", size=256),
    "288px": Reprediction("again, at 288 px", size=288),
}


def repredict(oof: pd.DataFrame, checkpoints: Path, data: Path, how: Reprediction) -> np.ndarray:
    """Each fold model's probabilities for its held-out fold, read again from ``data``'s train and val images."""
    from components.training.checkpoints import load_trained

    probs = np.zeros((len(oof), len(LABELS)))
    for fold in sorted(oof["fold"].unique()):
        model, spec = load_trained(checkpoints / f"fold_{fold}.pt", device="cpu")  # where the bf16 autocast applies
        held_out = (oof["fold"] == fold).to_numpy()
        paths = [_image_path(data, image_id) for image_id in oof["id"][held_out]]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how.bf16):
            probs[held_out] = predict_images(model, paths, how.size or spec.image_size, how.views, spec.batch_size,
                                             preprocess=spec.fundus_preprocess())  # fmt: skip
    return probs


def _image_path(data: Path, image_id: str) -> Path:
    """Where a CV pool image is: the dataset's train or val images."""
    for split in ("train", "val"):
        if (path := data / "images" / split / image_id).exists():
            return path
    raise SystemExit(f"{image_id}: not in {data / 'images' / 'train'} or {data / 'images' / 'val'}")


def _member_run(store: str, run_name: str, folder: Path) -> tuple[pd.DataFrame, Path]:
    """The train run's out-of-fold predictions and its fold checkpoints' folder."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.mlflow.runName = '{run_name}' and attributes.status = 'FINISHED'",
                              order_by=["start_time DESC"], max_results=1)  # fmt: skip
    if not runs or "oof_predictions_uri" not in runs[0].data.tags:
        raise SystemExit(f"{store}: no finished cross-validated train run named {run_name!r}")
    run_id = runs[0].info.run_id
    oof = pd.read_csv(client.download_artifacts(run_id, "predictions/oof.csv", str(folder)), dtype={"id": str})
    return oof, Path(client.download_artifacts(run_id, CHECKPOINT_DIR, str(folder)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the MLflow tracking URI of the member's train run")
    parser.add_argument("--run", required=True, help="the train run's name, e.g. 'train abl19-lite0'")
    parser.add_argument("--data", type=Path, help="the dataset folder, to predict the held-out folds again")
    parser.add_argument("--variants", nargs="+", choices=list(PREDICTIONS), default=list(PREDICTIONS),
                        help="which predictions again with --data (default: all)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        oof, checkpoints = _member_run(args.store, args.run, Path(tmp))
        labels, folds = oof.loc[:, list(LABELS)].to_numpy(), oof["fold"].to_numpy()
        patients, stored = [patient_of(i) for i in oof["id"]], oof.loc[:, list(PROB_COLUMNS)].to_numpy()
        fellow = fellow_index(list(oof["id"]))
        course = dataclasses.replace(STEP, objectives=("f1_course",) * len(LABELS))
        base = cross_fit(STEP, labels, [stored], folds)[1]
        print(f"# {args.run}: {len(oof)} out-of-fold images, {int((fellow >= 0).sum())} with their fellow eye")
        print(describe("as the ensemble step (F1 thresholds)", labels, base, base, patients), flush=True)
        print(describe("course-F1 thresholds", labels, cross_fit(course, labels, [stored], folds)[1], base,
                       patients), flush=True)  # fmt: skip
        print(describe("fellow-eye pooling", labels, fellow_pooled(STEP, labels, stored, folds, fellow), base,
                       patients), flush=True)  # fmt: skip
        if args.data is None:
            return
        for key in args.variants:
            how = PREDICTIONS[key]
            probs = repredict(oof, checkpoints, args.data, how)
            name = f"{how.label} (max |diff| {np.abs(probs - stored).max():.0e})" if key == "trained" else how.label
            print(describe(name, labels, cross_fit(STEP, labels, [probs], folds)[1], base, patients), flush=True)


if __name__ == "__main__":
    main()
