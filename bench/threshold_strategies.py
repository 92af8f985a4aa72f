"""Threshold strategies compared under nested patient-grouped CV, on the out-of-fold predictions of a
cross-validated member, over its seed repeats (issue 30).

    python -m bench.threshold_strategies --store sqlite:////path/to/store/mlruns/mlflow.db \\
        --profiles abl-19-224px abl-19-224px-s1 abl-19-224px-s2 [--grid fine]

Nested twice: fold k's image is predicted by the fold model that never trained on fold k (the member's out-of-fold
predictions), and its temperatures and thresholds are fit on the other folds' predictions only (the ensemble step's
own :func:`steps.ensemble.cross_fit`, one strategy at a time). Nothing is tuned on the scored images, so the
strategies' scores are estimates for new patients, each the mean over the seeds, with the difference to ``tuned``
paired over patient resamples and seeds (:func:`components.evaluation.bootstrap.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from bench.ablation_table import DEFAULT_STORE, finished
from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import paired_bootstrap, pick, report_metrics
from components.evaluation.ensemble import PROB_COLUMNS
from components.evaluation.metrics import DEFAULT_THRESHOLD
from components.evaluation.thresholds import STRATEGIES
from steps.ensemble import EnsembleConfig, cross_fit
from steps.support import tracking

STEP = EnsembleConfig(member_model_uris=("member",), member_val_predictions=("oof",), manifest_uri="-", grid="fine")
"""The ensemble step as the `cpu` profile runs it on one member (``threshold_grid: fine``, F1, calibrated)."""
METRICS = ("f1_macro", "f1_course")


def out_of_fold(client: MlflowClient, experiment_id: str, profile: str) -> pd.DataFrame:
    """The member's out-of-fold predictions (with ``fold``) of this profile's finished CV training, by id.

    Raises:
        SystemExit: when the profile has none.
    """
    run = finished(client, experiment_id, "train", profile)
    if run is None or "oof_predictions_uri" not in run.data.tags:
        raise SystemExit(f"{profile}: no finished cross-validated training in the store")
    path = client.download_artifacts(run.info.run_id, "predictions/oof.csv", tracking.scratch())
    return pd.read_csv(path, dtype={"id": str}).sort_values("id").reset_index(drop=True)


def strategy_predictions(frames: list[pd.DataFrame], grid: str) -> dict[str, list[np.ndarray]]:
    """Per strategy, per seed: the cross-fitted probabilities shifted so each fold's thresholds sit at 0.5."""
    shifted: dict[str, list[np.ndarray]] = {}
    for strategy in STRATEGIES:
        config = dataclasses.replace(STEP, grid=grid, threshold_strategy=strategy)
        shifted[strategy] = [
            cross_fit(config, frame.loc[:, list(LABELS)].to_numpy(), [frame.loc[:, list(PROB_COLUMNS)].to_numpy()],
                      frame["fold"].to_numpy())[1]
            for frame in frames
        ]  # fmt: skip
    return shifted


def table(store: str, profiles: list[str], grid: str = "fine") -> str:
    """The Markdown table: per strategy, per metric the mean over seeds [pooled 95% interval], and the paired
    difference against ``tuned``.

    Raises:
        SystemExit: when a profile has no CV training or the profiles' images differ.
    """
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("odir").experiment_id
    frames = [out_of_fold(client, experiment_id, profile) for profile in profiles]
    ids = list(frames[0]["id"])
    if any(list(frame["id"]) != ids for frame in frames):
        raise SystemExit("the profiles' out-of-fold predictions cover different images")
    labels = frames[0].loc[:, list(LABELS)].to_numpy()
    patients = [patient_of(i) for i in ids]
    shifted = strategy_predictions(frames, grid)
    lines = ["| strategy | " + " | ".join(f"{m} mean over seeds [95% CI] | {m} vs tuned (paired)" for m in METRICS)
             + " |", "|---|" + "---|---|" * len(METRICS)]  # fmt: skip
    for strategy in STRATEGIES:
        cells = [strategy]
        for metric in METRICS:
            score = pick(report_metrics((DEFAULT_THRESHOLD,) * len(LABELS)), metric)
            compared = paired_bootstrap(score, labels, shifted["tuned"], shifted[strategy], patients, 1000, seed=0)
            low, high = compared.interval_b
            cells.append(f"{compared.score_b:.3f} [{low:.3f}, {high:.3f}]")
            low, high = compared.interval
            cells.append(
                "-"
                if strategy == "tuned"
                else f"{compared.difference:+.3f} [{low:+.3f}, {high:+.3f}], P(better) {compared.prob_b_better:.2f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threshold_strategies", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"tracking URI (default {DEFAULT_STORE})")
    parser.add_argument("--profiles", nargs="+", required=True, help="one profile per seed of one recipe")
    parser.add_argument("--grid", default="fine", help="the threshold grid (default fine, as the cpu profile)")
    args = parser.parse_args()
    print(table(args.store, args.profiles, args.grid))


if __name__ == "__main__":
    main()
