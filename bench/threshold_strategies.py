"""Threshold strategies compared under nested patient-grouped CV, on the out-of-fold predictions of a
cross-validated member, over its seed repeats (issue 30).

    python -m bench.threshold_strategies --store sqlite:////path/to/store/mlruns/mlflow.db \\
        --profiles cpu-seeds cpu-seeds-seed1 cpu-seeds-seed2 [--grid fine] [--held-out offsite_test]

Nested twice: fold k's image is predicted by the fold model that never trained on fold k (the member's out-of-fold
predictions), and its temperatures and thresholds are fit on the other folds' predictions only (the ensemble step's
own :func:`steps.ensemble.cross_fit`, one strategy at a time). Nothing is tuned on the scored images, so the
strategies' scores are estimates for new patients, each the mean over the seeds, with the difference to ``tuned``
paired over patient resamples and seeds (:func:`components.evaluation.bootstrap.paired_bootstrap`).

With ``--held-out SPLIT``, a second table scores the strategies on new patients: each seed's registered ensemble's
predictions of that split (its evaluate run's), at the thresholds each strategy fits on all of the pool's out-of-fold
predictions (:func:`steps.ensemble.fitted`, what registration fits).
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
from steps.ensemble import EnsembleConfig, cross_fit, fitted
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


def strategy_rows(labels: np.ndarray, patients: list[str], runs: dict[str, list[np.ndarray]],
                  thresholds: dict[str, list[np.ndarray]] | None = None) -> list[str]:  # fmt: skip
    """Markdown rows: per strategy and metric the mean over seeds [pooled 95% interval], and the paired difference
    against ``tuned`` (seeds pooled: :func:`components.evaluation.bootstrap.paired_bootstrap` with repeats). Each
    seed's predictions are scored at 0.5, or at ``thresholds[strategy][seed]``: shifted so that those sit at 0.5,
    which leaves every label as it was."""

    def shifted(strategy: str) -> list[np.ndarray]:
        if thresholds is None:
            return runs[strategy]
        return [np.clip(p - t + DEFAULT_THRESHOLD, 0.0, 1.0)
                for p, t in zip(runs[strategy], thresholds[strategy], strict=True)]  # fmt: skip

    lines = ["| strategy | " + " | ".join(f"{m} mean over seeds [95% CI] | {m} vs tuned (paired)" for m in METRICS)
             + " |", "|---|" + "---|---|" * len(METRICS)]  # fmt: skip
    for strategy in STRATEGIES:
        cells = [strategy]
        for metric in METRICS:
            score = pick(report_metrics((DEFAULT_THRESHOLD,) * len(LABELS)), metric)
            compared = paired_bootstrap(score, labels, shifted("tuned"), shifted(strategy), patients, 1000, seed=0)
            low, high = compared.interval_b
            cells.append(f"{compared.score_b:.3f} [{low:.3f}, {high:.3f}]")
            low, high = compared.interval
            cells.append(
                "-"
                if strategy == "tuned"
                else f"{compared.difference:+.3f} [{low:+.3f}, {high:+.3f}], P(better) {compared.prob_b_better:.2f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(store: str, profiles: list[str], grid: str = "fine", held_out: str | None = None) -> str:
    """The Markdown tables: the strategies under nested CV (cross-fitted), and with ``held_out`` on that split.

    Raises:
        SystemExit: when a profile has no CV training, the profiles' images differ, or a held-out evaluation is
            missing.
    """
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("odir").experiment_id
    frames = [out_of_fold(client, experiment_id, profile) for profile in profiles]
    ids = list(frames[0]["id"])
    if any(list(frame["id"]) != ids for frame in frames):
        raise SystemExit("the profiles' out-of-fold predictions cover different images")
    labels = frames[0].loc[:, list(LABELS)].to_numpy()
    lines = ["Nested patient-grouped CV (cross-fitted, each seed's out-of-fold predictions):", "",
             *strategy_rows(labels, [patient_of(i) for i in ids], strategy_predictions(frames, grid))]  # fmt: skip
    if held_out:
        lines += ["", f"Held out ({held_out}): each seed's registered ensemble at each strategy's thresholds:", "",
                  *_held_out_rows(client, experiment_id, profiles, frames, grid, held_out)]  # fmt: skip
    return "\n".join(lines)


def _held_out_rows(client, experiment_id: str, profiles: list[str], frames: list[pd.DataFrame], grid: str,
                   split: str) -> list[str]:  # fmt: skip
    predictions, thresholds = [], {strategy: [] for strategy in STRATEGIES}
    for profile, frame in zip(profiles, frames, strict=True):
        predictions.append(_evaluated(client, experiment_id, profile, split))
        pool_labels = frame.loc[:, list(LABELS)].to_numpy()
        for strategy in STRATEGIES:
            config = dataclasses.replace(STEP, grid=grid, threshold_strategy=strategy)
            thresholds[strategy].append(fitted(config, pool_labels, [frame.loc[:, list(PROB_COLUMNS)].to_numpy()])[2]
                                        .thresholds)  # fmt: skip
    ids = list(predictions[0]["id"])
    labels = predictions[0].loc[:, list(LABELS)].to_numpy()
    probs = [frame.loc[:, list(PROB_COLUMNS)].to_numpy() for frame in predictions]
    return strategy_rows(labels, [patient_of(i) for i in ids], {s: probs for s in STRATEGIES}, thresholds)


def _evaluated(client, experiment_id: str, profile: str, split: str) -> pd.DataFrame:
    """The predictions of ``split`` by the ensemble this profile registered (its evaluate run's), by id."""
    ensemble = finished(client, experiment_id, "ensemble", profile)
    model_uri = ensemble.data.tags["registered_model_uri"] if ensemble else None
    query = f"tags.`odir.step` = 'evaluate' and tags.model_version = '{model_uri}' and tags.split = '{split}'"
    runs = client.search_runs([experiment_id], query, max_results=1) if model_uri else []
    if not runs:
        raise SystemExit(f"{profile}: its ensemble has no evaluation on {split}")
    path = client.download_artifacts(runs[0].info.run_id, f"predictions/{split}.csv", tracking.scratch())
    return pd.read_csv(path, dtype={"id": str}).sort_values("id").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threshold_strategies", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"tracking URI (default {DEFAULT_STORE})")
    parser.add_argument("--profiles", nargs="+", required=True, help="one profile per seed of one recipe")
    parser.add_argument("--grid", default="fine", help="the threshold grid (default fine, as the cpu profile)")
    parser.add_argument("--held-out", help="also score the strategies on this labelled split (e.g. offsite_test)")
    args = parser.parse_args()
    print(table(args.store, args.profiles, args.grid, args.held_out))


if __name__ == "__main__":
    main()
