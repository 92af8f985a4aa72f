"""Variants of a cross-validated member's prediction and thresholds, measured on its fold models and out-of-fold
predictions without training again (issue 15). Each variant is cross-fitted fold by fold as the ensemble step does
for one member (a temperature per class, then per-class F1 thresholds, fit on the other folds) and paired over
patients with the step's own way on the same images.

    python -m bench.oof_variants --store sqlite:////work/abl-home/mlruns/mlflow.db --run "train abl19-lite0" \\
        [--data ../shared/data/odir]

Variants on the stored out-of-fold predictions: thresholds maximising the course F1 (macro over both classes of a
disease) instead of the positive class's, and pooling the fellow eye (``p' = (1 - w) p + w p_fellow`` per class,
``w`` in 0..0.5 picked on the other folds; ODIR ids are ``<patient>_<left|right>``). With ``--data``, each fold
model predicts its held-out fold again: as trained (which reproduces the stored predictions), under bfloat16
autocast, and with all eight symmetries of the square as views instead of five.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import LABELS
from components.bootstrap import paired_bootstrap, pick, report_metrics
from components.calibration import apply_temperature, fit_temperatures
from components.data import patient_of
from components.ensemble import PROB_COLUMNS
from components.inference import predict_images
from components.metrics import DEFAULT_THRESHOLD
from components.scoring import scored_report
from components.thresholds import fine_grid, tune_thresholds
from components.tta import DIHEDRAL_VIEWS, STUDY_VIEWS
from steps.contracts import CHECKPOINT_DIR

FELLOW_WEIGHTS = np.round(np.arange(0.0, 0.55, 0.05), 2)
Thresholds = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def f1_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The ensemble step's: per class, the threshold of the fine grid with the best positive-class F1."""
    return tune_thresholds(labels, probs, fine_grid()).thresholds


def course_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class, the threshold of the fine grid with the best F1 averaged over both classes (the course's)."""
    return tune_thresholds(labels, probs, fine_grid(), ("f1_course",) * len(LABELS)).thresholds


def cross_fitted(
    labels: np.ndarray, probs: np.ndarray, folds: np.ndarray, thresholds: Thresholds = f1_thresholds,
    fellow: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Each fold's probabilities calibrated, pooled (with ``fellow``) and thresholded by what the other folds fit,
    shifted so that its thresholds sit at 0.5: the ensemble step's ``_cross_fitted`` for one member, with the two
    variants' hooks (the step's own logs to MLflow and knows neither)."""
    shifted = np.zeros_like(probs)
    for fold in np.unique(folds):
        fit, held_out = folds != fold, folds == fold
        calibrated = apply_temperature(probs, fit_temperatures(labels[fit], probs[fit]))
        if fellow is not None:
            calibrated = pool_fellow(calibrated, fellow, _fellow_weights(labels, calibrated, fellow, fit))
        chosen = thresholds(labels[fit], calibrated[fit])
        shifted[held_out] = np.clip(calibrated[held_out] - chosen + DEFAULT_THRESHOLD, 0.0, 1.0)
    return shifted


def _fellow_weights(labels: np.ndarray, probs: np.ndarray, fellow: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Per class, the pooling weight whose best threshold gives the highest F1 on the ``fit`` rows (a fellow eye is
    in its image's fold: folds group patients)."""
    best_f1 = np.stack([tune_thresholds(labels[fit], pool_fellow(probs, fellow, w)[fit], fine_grid()).f1
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


def repredict(
    oof: pd.DataFrame, checkpoints: Path, data: Path, views: tuple[str, ...], bf16: bool
) -> np.ndarray:  # fmt: skip
    """Each fold model's probabilities for its held-out fold, read again from ``data``'s train and val images."""
    from components.training import load_trained

    probs = np.zeros((len(oof), len(LABELS)))
    for fold in sorted(oof["fold"].unique()):
        model, spec = load_trained(checkpoints / f"fold_{fold}.pt", device="cpu")  # where the bf16 autocast applies
        held_out = (oof["fold"] == fold).to_numpy()
        paths = [_image_path(data, image_id) for image_id in oof["id"][held_out]]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            probs[held_out] = predict_images(model, paths, spec.image_size, views, spec.batch_size,
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        oof, checkpoints = _member_run(args.store, args.run, Path(tmp))
        labels, folds = oof.loc[:, list(LABELS)].to_numpy(), oof["fold"].to_numpy()
        patients, stored = [patient_of(i) for i in oof["id"]], oof.loc[:, list(PROB_COLUMNS)].to_numpy()
        fellow = fellow_index(list(oof["id"]))
        base = cross_fitted(labels, stored, folds)
        print(f"# {args.run}: {len(oof)} out-of-fold images, {int((fellow >= 0).sum())} with their fellow eye")
        print(describe("as the ensemble step (F1 thresholds)", labels, base, base, patients), flush=True)
        print(describe("course-F1 thresholds", labels, cross_fitted(labels, stored, folds, course_thresholds), base,
                       patients), flush=True)  # fmt: skip
        print(describe("fellow-eye pooling", labels, cross_fitted(labels, stored, folds, fellow=fellow), base,
                       patients), flush=True)  # fmt: skip
        if args.data is None:
            return
        variants = {"again, as trained": (STUDY_VIEWS, False), "again, bfloat16 autocast": (STUDY_VIEWS, True),
                    "again, 8 views": (DIHEDRAL_VIEWS, False)}  # fmt: skip
        for name, (views, bf16) in variants.items():
            probs = repredict(oof, checkpoints, args.data, views, bf16)
            name = f"{name} (max |diff| {np.abs(probs - stored).max():.0e})" if name.endswith("trained") else name
            print(describe(name, labels, cross_fitted(labels, probs, folds), base, patients), flush=True)


if __name__ == "__main__":
    main()
