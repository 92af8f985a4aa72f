"""The ablation table of issue 15 from the runs in a store: one row per profile, its member's out-of-fold scores
at 0.5 and the cross-fitted ensemble's (temperatures and thresholds fit on the other folds), with 95% intervals
(bootstrap over patients), per-class F1 and the pipeline's minutes.

    python -m bench.ablation_table [--store sqlite:///.odir/ablation/mlruns/mlflow.db] [--profiles a b ...]

Reads what the train (``cv_*``) and ensemble (``cv_*``) steps logged; the minutes are the pipeline run's wall time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import paired_bootstrap, pick, report_metrics
from components.evaluation.ensemble import PROB_COLUMNS
from steps.support import tracking

DEFAULT_STORE = f"sqlite:///{Path('.odir/ablation/mlruns/mlflow.db').resolve()}"


def interval(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(f"cv_{name}")
    if value is None:
        return "-"
    low, high = metrics.get(f"cv_{name}_ci_low"), metrics.get(f"cv_{name}_ci_high")
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value:.3f}"


def per_class(metrics: dict[str, float]) -> str:
    return " / ".join(f"{metrics.get(f'cv_f1_{c}', float('nan')):.2f}" for c in "DGA")


def cross_fitted(client: MlflowClient, ensemble) -> pd.DataFrame | None:
    """The ensemble run's cross-fitted out-of-fold predictions (probabilities shifted so each fold's thresholds
    sit at 0.5), or None."""
    if "cv_predictions_uri" not in ensemble.data.tags:
        return None
    path = client.download_artifacts(ensemble.info.run_id, "predictions/cv.csv", tracking.scratch())
    return pd.read_csv(path, dtype={"id": str}).sort_values("id").reset_index(drop=True)


def paired(before: pd.DataFrame | None, after: pd.DataFrame | None) -> str:
    """f1_macro of ``after`` minus ``before`` on the same images, 95% interval and P(better) over patient resamples."""
    if before is None or after is None or list(before["id"]) != list(after["id"]):
        return "-"
    labels = after.loc[:, list(LABELS)].to_numpy()
    patients = [patient_of(i) for i in after["id"]]
    score = pick(report_metrics((0.5,) * len(LABELS)), "f1_macro")
    probs = [frame.loc[:, list(PROB_COLUMNS)].to_numpy() for frame in (before, after)]
    compared = paired_bootstrap(score, labels, probs[0], probs[1], patients, resamples=1000, seed=0)
    low, high = compared.interval
    return f"{compared.difference:+.3f} [{low:+.3f}, {high:+.3f}], P(better) {compared.prob_b_better:.2f}"


def rows(
    store: str, profiles: list[str] | None = None, baseline: str | None = None, against: dict[str, str] | None = None
) -> list[str]:
    """One table row per profile; ``baseline`` (``STORE#PROFILE``) is the row the first is compared with, each
    other row with the one before it, or with ``against[profile]`` (a row that builds on an earlier one, not on the
    row just above it)."""
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("odir")
    pipelines = client.search_runs([experiment.experiment_id], "tags.`odir.step` = 'pipeline'",
                                   order_by=["attributes.start_time ASC"])  # fmt: skip
    previous = None
    if baseline:
        base_store, base_profile = baseline.rsplit("#", 1)
        base_client = MlflowClient(tracking_uri=base_store)
        base_id = base_client.get_experiment_by_name("odir").experiment_id
        previous = cross_fitted(base_client, finished(base_client, base_id, "ensemble", base_profile))
    lines, seen, scored = [], set(), {}
    for pipeline in pipelines:  # the first pipeline run of a profile is the one that trained: its minutes count
        profile = pipeline.data.tags.get("profile") or pipeline.data.params.get("profile", "?")
        if (profiles and profile not in profiles) or profile in seen:
            continue
        children = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'"
        )
        step = {run.data.tags.get("odir.step"): run for run in children}
        train = finished(client, experiment.experiment_id, "train", profile) or step.get("train")
        ensemble = finished(client, experiment.experiment_id, "ensemble", profile) or step.get("ensemble")
        if train is None or ensemble is None or pipeline.info.end_time is None:
            continue
        seen.add(profile)
        minutes = (pipeline.info.end_time - pipeline.info.start_time) / 60000
        member, fitted = train.data.metrics, ensemble.data.metrics
        current = cross_fitted(client, ensemble)
        before = scored.get((against or {}).get(profile, ""), previous)
        change, previous, scored[profile] = paired(before, current), current, current
        lines.append(
            f"| {profile} | {interval(member, 'f1_macro')} | {interval(member, 'f1_course')} | {per_class(member)} "
            f"| {interval(fitted, 'f1_macro')} | {interval(fitted, 'f1_course')} | {per_class(fitted)} "
            f"| {change} | {minutes:.0f} |"
        )
    return lines


def finished(client: MlflowClient, experiment_id: str, step: str, profile: str):
    """The finished run of a step for this profile (a reused one is not a child of a later pipeline run)."""
    query = f"tags.`odir.step` = '{step}' and tags.profile = '{profile}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


HEADER = (
    "| profile | member OOF f1_macro | member OOF f1_course | member F1 D / G / A | ensemble cross-fitted f1_macro "
    "| ensemble f1_course | ensemble F1 D / G / A | ensemble f1_macro vs the row before (paired) | minutes |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation_table", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"tracking URI (default {DEFAULT_STORE})")
    parser.add_argument("--profiles", nargs="*", help="only these profiles, in the store's order")
    parser.add_argument("--baseline", help="STORE#PROFILE: the row the first one is compared with (paired)")
    parser.add_argument(
        "--against",
        nargs="*",
        default=[],
        metavar="ROW=BEFORE",
        help="compare ROW with the row of profile BEFORE instead of the one above it",
    )
    args = parser.parse_args()
    print(HEADER)
    against = dict(pair.split("=", 1) for pair in args.against)
    print("\n".join(rows(args.store, args.profiles, args.baseline, against)))


if __name__ == "__main__":
    main()
