"""What a flow run shows in the Prefect UI besides its logs: a Markdown summary (scores with intervals, the champion
decision, links to the MLflow runs and model version), a table of per-class scores, and a training's progress.

Links point at the MLflow UI when its address is known (``ODIR_MLFLOW_UI_URL``; ``odir up`` sets it for the flow
runs it serves); otherwise the summary names the run ids and ``models:/`` URIs, which the MLflow UI's search finds.
Artifact keys are per profile (``odir-<profile>-summary``), so the Artifacts page keeps each profile's history.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from components import LABELS
from components.evaluation.comparison import Comparison
from flows.summary import PipelineSummary
from steps.support import registry, tracking

MLFLOW_UI_ENV = "ODIR_MLFLOW_UI_URL"
PER_CLASS = ("f1", "precision", "recall", "auroc", "ap")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _mlflow_ui() -> str | None:
    url = os.environ.get(MLFLOW_UI_ENV, "").rstrip("/")
    return url or None


def run_link(run_id: str, label: str) -> str:
    """A Markdown link to an MLflow run (or its id when the UI's address is unknown)."""
    ui = _mlflow_ui()
    return f"{label} (run `{run_id}`)" if ui is None else f"[{label}]({run_url(ui, run_id)})"


def run_url(ui: str, run_id: str) -> str:
    """An MLflow run's page in the UI at ``ui``."""
    return f"{ui}/#/experiments/{tracking.setup()}/runs/{run_id}"


def model_link(model_uri: str) -> str:
    """A Markdown link to a registered model version (or its ``models:/`` URI)."""
    ui = _mlflow_ui()
    if ui is None:
        return f"`{model_uri}`"
    name, version = registry.split_model_uri(model_uri)
    return f"[{model_uri}]({ui}/#/models/{name}/versions/{version})"


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "n/a"
    if low is None or low != low:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def rate(value: float) -> str:
    """An error rate for people: two decimals, or "n/a" for an empty group (NaN)."""
    return "n/a" if value != value else f"{value:.2f}"


def summary_markdown(summary: PipelineSummary) -> str:
    """The pipeline run's result as Markdown: what a reader of the Prefect UI wants first."""
    title = f"# odir {summary.profile}: {summary.decision}"
    built = summary.built
    if built is None:  # a retrain run that found nothing changed
        return f"{title}\n\nNothing changed since champion version {summary.champion_version} (same data, profile)."
    split = "cross-fitted out-of-fold" if built.scored_split == "cv" else built.scored_split
    lines = [
        title,
        "",
        f"Ensemble {model_link(built.model_uri)} scored on **{split}** ({built.split_mode}); 95% intervals from a "
        "bootstrap over patients.",
        "",
        "| metric | value [95% CI] |",
        "|---|---|",
        *(f"| {name} | {_interval(s.value, s.low, s.high)} |" for name, s in built.scores.items()),
        "",
    ]
    lines.append(f"**Decision:** {summary.decision}{summary.promotion_evidence()}; champion is version "
                 f"{summary.champion_version}.")  # fmt: skip
    if built.referral:
        referral = built.referral
        lines.append(f"\n**Referred to a grader:** {referral.n_referred} of {referral.n} images on {split} "
                     f"(error rate {rate(referral.error_rate_referred)} referred vs "
                     f"{rate(referral.error_rate_kept)} kept).")  # fmt: skip
    members = ", ".join(f"{name} {score:.3f}" for name, score in built.member_f1_macro.items() if score is not None)
    lines += [
        "",
        f"Members' f1_macro on {split}: {members}.",
        "",
        "**MLflow:** " + ", ".join(_run_links(summary)) + ".",
    ]
    if built.gallery:
        lines.append(f"\n**Grad-CAM gallery:** {run_link(built.gallery.run_id, 'evaluate run')}, Artifacts, "
                     f"`gradcam/` (`{built.gallery.uri}`)")  # fmt: skip
    if built.submission:
        lines.append(f"\nSubmission: `{built.submission}`")
    return "\n".join(lines)


def _run_links(summary: PipelineSummary) -> list[str]:
    built = summary.built
    links = [run_link(summary.pipeline_run_id, "pipeline run"), run_link(built.run_id, "ensemble run")]
    return links + [run_link(run_id, f"member run {i + 1}") for i, run_id in enumerate(built.member_runs)]


def per_class_rows(metrics: dict[str, float], split: str) -> list[dict[str, Any]]:
    """One row per class: F1, precision, recall, AUROC and AP on ``split``, each with its interval where logged."""
    prefix = tracking.split_prefix(split)
    rows = []
    for label in LABELS:
        row: dict[str, Any] = {"class": label}
        for name in PER_CLASS:
            key = f"{prefix}{name}_{label}"
            row[name] = _interval(metrics.get(key), metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high"))
        rows.append(row)
    return rows


def comparison_rows(rows: Sequence[Comparison]) -> list[dict[str, str]]:
    """The comparison of members and ensemble (:mod:`steps.compare`) as table rows of formatted cells."""
    table = []
    for row in rows:
        cells = {"model": row.name}
        for metric, score in row.scores.items():
            cells[metric] = str(score)
            cells[f"{metric} vs reference"] = (
                "reference" if row.differences is None else row.differences[metric].signed()
            )
            cells[f"P(reference better), {metric}"] = (
                "-" if row.prob_reference_better is None else f"{row.prob_reference_better[metric]:.2f}"
            )
        table.append({**cells, "note": row.note or ""})
    return table


def publish_summary(summary: PipelineSummary) -> None:
    """Publishes the Markdown summary and (when there are scores) the per-class and comparison tables of a pipeline
    run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    profile, built = summary.profile, summary.built
    create_markdown_artifact(summary_markdown(summary), key=artifact_key("odir", profile, "summary"),
                             description=f"odir {profile}: scores, decision and links")  # fmt: skip
    if built and built.per_class:
        create_table_artifact(list(built.per_class), key=artifact_key("odir", profile, "per-class"),
                              description=f"Per-class scores on {built.scored_split} (95% intervals)")  # fmt: skip
    if built and built.comparison:
        create_table_artifact(list(built.comparison), key=artifact_key("odir", profile, "comparison"),
                              description=f"Members and ensemble on {built.scored_split}, paired over patients against "
                              "the best member (95% intervals)")  # fmt: skip


def training_progress(model: str) -> Callable[[float], None]:
    """A progress artifact for one model's training; returns the function that updates it (percent done)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    try:
        artifact_id = create_progress_artifact(0.0, key=artifact_key("train", model, "progress"),
                                               description=f"training {model}: share of its epochs done")  # fmt: skip
    except Exception as error:  # a progress bar is not worth a training: say so and go on
        logging.getLogger(__name__).warning("no progress artifact for %s: %s", model, error)
        return lambda percent: None

    def update(percent: float) -> None:
        try:
            update_progress_artifact(artifact_id, percent)
        except Exception as error:
            logging.getLogger(__name__).warning("progress of %s not updated: %s", model, error)

    return update
