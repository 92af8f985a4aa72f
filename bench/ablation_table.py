"""The ablation table of issue 15 from the runs in a store: one row per profile, its member's out-of-fold scores
at 0.5 and the cross-fitted ensemble's (temperatures and thresholds fit on the other folds), with 95% intervals
(bootstrap over patients), per-class F1 and the pipeline's minutes.

    python -m bench.ablation_table [--store sqlite:///.odir/ablation/mlruns/mlflow.db] [--profiles a b ...]

Reads what the train (``cv_*``) and ensemble (``cv_*``) steps logged; the minutes are the pipeline run's wall time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow import MlflowClient

DEFAULT_STORE = f"sqlite:///{Path('.odir/ablation/mlruns/mlflow.db').resolve()}"


def _interval(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(f"cv_{name}")
    if value is None:
        return "-"
    low, high = metrics.get(f"cv_{name}_ci_low"), metrics.get(f"cv_{name}_ci_high")
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value:.3f}"


def _per_class(metrics: dict[str, float]) -> str:
    return " / ".join(f"{metrics.get(f'cv_f1_{c}', float('nan')):.2f}" for c in "DGA")


def rows(store: str, profiles: list[str] | None = None) -> list[str]:
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("odir")
    pipelines = client.search_runs([experiment.experiment_id], "tags.`odir.step` = 'pipeline'",
                                   order_by=["attributes.start_time ASC"])  # fmt: skip
    lines, seen = [], set()
    for pipeline in pipelines:  # the first pipeline run of a profile is the one that trained: its minutes count
        profile = pipeline.data.tags.get("profile") or pipeline.data.params.get("profile", "?")
        if (profiles and profile not in profiles) or profile in seen:
            continue
        children = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'"
        )
        step = {run.data.tags.get("odir.step"): run for run in children}
        train = _finished(client, experiment.experiment_id, "train", profile) or step.get("train")
        ensemble = _finished(client, experiment.experiment_id, "ensemble", profile) or step.get("ensemble")
        if train is None or ensemble is None or pipeline.info.end_time is None:
            continue
        seen.add(profile)
        minutes = (pipeline.info.end_time - pipeline.info.start_time) / 60000
        member, fitted = train.data.metrics, ensemble.data.metrics
        lines.append(
            f"| {profile} | {_interval(member, 'f1_macro')} | {_interval(member, 'f1_course')} | {_per_class(member)} "
            f"| {_interval(fitted, 'f1_macro')} | {_interval(fitted, 'f1_course')} | {_per_class(fitted)} "
            f"| {minutes:.0f} |"
        )
    return lines


def _finished(client: MlflowClient, experiment_id: str, step: str, profile: str):
    """The finished run of a step for this profile (a reused one is not a child of a later pipeline run)."""
    query = f"tags.`odir.step` = '{step}' and tags.profile = '{profile}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


HEADER = (
    "| profile | member OOF f1_macro | member OOF f1_course | member F1 D / G / A | ensemble cross-fitted f1_macro "
    "| ensemble f1_course | ensemble F1 D / G / A | minutes |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation_table", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"tracking URI (default {DEFAULT_STORE})")
    parser.add_argument("--profiles", nargs="*", help="only these profiles, in the store's order")
    parser.add_argument("--times", help="ignored (bench/ablation.sh passes its wall times file)")
    args = parser.parse_args()
    print(HEADER)
    print("\n".join(rows(args.store, args.profiles)))


if __name__ == "__main__":
    main()
