"""Report: the results table of an experiment grid, from what MLflow holds for it.

Finds each model's training run (same spec and data digest) and each evaluation the grid needs (same model,
split and TTA views), combines and scores every experiment with ``components.evaluation.report``, and writes
``results.md``, ``results.html``, ``results.csv`` and figures (per-class F1 bars, PR curves of the best experiments,
threshold curves) to an output folder, to its own run and to the parent run. The same store and grid give the same
report.

Every headline metric comes with its 95% interval from a bootstrap over the manifest's patients (1000 resamples,
seed 0), and the report's header says the protocol: the given splits scored, which rows fit thresholds or weights
on val (their val scores are optimistic), and how many scored images belong to patients who also have images in
train. Its last section links each member evaluation's Grad-CAM gallery (the evaluate run's ``gradcam/<split>``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.config import ExperimentGrid
from components.errors import OdirError
from components.evaluation.report import (
    ExperimentScores,
    figure_f1_bars,
    figure_pr_curves,
    figure_threshold_curves,
    protocol_notes,
    results_table,
    score_experiment,
    shared_with_train,
    to_html,
    to_markdown,
)
from steps.support import cli, tracking
from steps.support.base import StepConfig
from steps.support.manifest import Manifest, load_manifest
from steps.support.predictions import probabilities_of, read_predictions
from steps.support.tags import evaluate_key, train_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReportConfig(StepConfig):
    """Build the results table and figures of an experiment grid from the runs MLflow holds for it (``--grid``
    takes the grid's YAML file or its JSON; ``reuse`` does not apply: the report is always written)."""

    grid: ExperimentGrid
    manifest_uri: str
    out_dir: str | None = None


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and the table's headline numbers."""

    out_dir: str
    run_id: str
    rows: int
    f1_macro: dict[str, float] = field(default_factory=dict)


def evaluation_splits(manifest: Manifest) -> list[str]:
    """The labelled splits experiments are scored on: val, and offsite_test when the data has it."""
    return ["val"] + (["offsite_test"] if manifest.has_split("offsite_test") else [])


def _member_runs(grid: ExperimentGrid, manifest: Manifest, experiment: str) -> dict[str, object]:
    runs = {}
    for spec in grid.models:
        run = tracking.find_finished_run(experiment, "train", train_tags(spec, grid.name, manifest.digest))
        if run is None:
            raise OdirError(f"grid {grid.name!r}: model {spec.name!r} has no finished training run on this data")
        runs[spec.name] = run
    return runs


def _evaluation(model_uri: str, split: str, views: tuple[str, ...], experiment: str, gallery: int) -> object | None:
    """The finished evaluate run of a member on a split with these views, as the experiments flow keys it."""
    key = evaluate_key(model_uri, split, views, gradcam_gallery=gallery)
    return tracking.find_finished_run(experiment, "evaluate", {"evaluate_key": key})


def _predictions(
    model_uri: str, split: str, views: tuple[str, ...], experiment: str, ids: list[str], gallery: int
) -> np.ndarray:
    run = _evaluation(model_uri, split, views, experiment, gallery)
    if run is None:
        raise OdirError(f"no evaluation of {model_uri} on {split} with views {','.join(views)}")
    frame = read_predictions(run.data.tags["predictions_uri"])
    if list(frame["id"]) != ids:
        raise OdirError(f"predictions of {model_uri} on {split} do not cover the manifest's ids in order")
    return probabilities_of(frame)


def score_grid(grid: ExperimentGrid, manifest: Manifest, experiment: str) -> list[ExperimentScores]:
    """Every experiment of the grid, scored from saved predictions."""
    from components.evaluation.thresholds import STUDY_GRID, fine_grid

    runs = _member_runs(grid, manifest, experiment)
    splits = evaluation_splits(manifest)
    labels = {split: manifest.labels(split) for split in splits}
    ids = {split: list(manifest.split(split)["id"]) for split in splits}
    patients = {split: list(manifest.split(split)["patient"]) for split in splits}
    costs = {
        n: (r.data.metrics.get("train_seconds", 0.0), int(r.data.metrics.get("parameters", 0))) for n, r in runs.items()
    }
    thresholds_grid = STUDY_GRID if grid.threshold_grid == "study" else fine_grid()
    scores = []
    for row in grid.experiments:
        views = tuple(grid.tta_views) if row.tta else ("identity",)
        member_probs = {
            m: {
                s: _predictions(
                    runs[m].data.tags["registered_model_uri"], s, views, experiment, ids[s], grid.gradcam_gallery
                )
                for s in splits
            }
            for m in row.members
        }
        scores.append(score_experiment(row, member_probs, labels, costs, thresholds_grid, patients=patients))
    return scores


def gallery_links(grid: ExperimentGrid, manifest: Manifest, experiment: str) -> list[str]:
    """Markdown list items: per member, split and TTA setting the grid evaluates, where its Grad-CAM gallery is."""
    runs = _member_runs(grid, manifest, experiment)
    links = []
    for spec in grid.models:
        model_uri = runs[spec.name].data.tags["registered_model_uri"]
        for tta in sorted({row.tta for row in grid.experiments if spec.name in row.members}):
            views = tuple(grid.tta_views) if tta else ("identity",)
            for split in evaluation_splits(manifest):
                run = _evaluation(model_uri, split, views, experiment, grid.gradcam_gallery)
                if run is not None and (uri := run.data.tags.get("gradcam_uri")):
                    links.append(f"- {spec.name} on {split}{', TTA' if tta else ''}: `{uri}/gallery.html`")
    return links


def report_notes(grid: ExperimentGrid, manifest: Manifest) -> list[str]:
    """The protocol paragraphs of the report (``components.evaluation.report.protocol_notes``) for this grid and
    data."""
    splits = evaluation_splits(manifest)
    tuned = [e.name for e in grid.experiments if e.thresholds]
    weighted = [e.name for e in grid.experiments if e.weights is None and len(e.members) > 1]
    notes = protocol_notes(splits, {s: shared_with_train(manifest.frame, s) for s in splits}, tuned, weighted)
    if grid.cv is not None:
        notes[0] += " The grid's `cv` setting does not apply to experiments: they always use the given splits."
    return notes


def write_report(
    grid: ExperimentGrid,
    manifest: Manifest,
    scores: list[ExperimentScores],
    folder: Path,
    galleries: Sequence[str] = (),
) -> None:
    """results.md / .html / .csv and figures/ in ``folder``; ``galleries`` (:func:`gallery_links`) end results.md."""
    import matplotlib.pyplot as plt

    table = results_table(scores)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    test_split = "offsite_test" if manifest.has_split("offsite_test") else "val"
    plots = {"f1_by_class.png": figure_f1_bars(scores, test_split),
             "pr_curves_best.png": figure_pr_curves(scores, manifest.labels(test_split), test_split)}  # fmt: skip
    tuned = [s for s in scores if any(e.thresholds for e in grid.experiments if e.name == s.name)]
    if tuned:
        best = max(tuned, key=lambda s: s.reports["val"]["f1_macro"])
        plots["threshold_curves.png"] = figure_threshold_curves(best, manifest.labels("val"))
    for name, figure in plots.items():
        figure.savefig(figures / name, dpi=110)
        plt.close(figure)
    table.to_csv(folder / "results.csv", index=False)
    title = f"odir experiments: {grid.name}"
    notes = report_notes(grid, manifest)
    (folder / "results.html").write_text(to_html(table, title, notes))
    study = [c for c in table.columns if c.startswith("study_")]
    lines = [
        f"# {title}", "", grid.description, "",
        f"Data: `{manifest.data_root}` (digest `{manifest.digest[:12]}`); "
        f"scored on {', '.join(evaluation_splits(manifest))}.", "",
        *(line for note in notes for line in (note, "")),
        "`study_*` columns are the study's published numbers (its course scoring, comparable to our `f1_course`),"
        " not ours." if study else "", "",
        to_markdown(table), "",
        *(f"![{name}](figures/{name})" for name in plots), "",
        *(["## Grad-CAM galleries", "",
           "Per member evaluation, overlays of the most confident true and false positives and the most clearly "
           "missed positives per class (artifacts of its evaluate run):", "", *galleries, ""] if galleries else []),
    ]  # fmt: skip
    (folder / "results.md").write_text("\n".join(lines))


def run(config: ReportConfig) -> ReportResult:
    """Scores the grid and writes and logs the report; see the module docstring."""
    import mlflow

    grid = config.grid
    manifest = load_manifest(config.manifest_uri)
    folder = (
        Path(config.out_dir) if config.out_dir else tracking.project_root() / "outputs" / f"experiments-{grid.name}"
    )
    tags = {"profile": grid.name, "data_digest": manifest.digest}
    with tracking.step_run("report", config.experiment, config.parent_run_id, f"report {grid.name}", tags) as run:
        scores = score_grid(grid, manifest, config.experiment)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(grid, manifest, scores, Path(tmp), gallery_links(grid, manifest, config.experiment))
            folder.mkdir(parents=True, exist_ok=True)
            for path in Path(tmp).rglob("*"):
                if path.is_file():
                    target = folder / path.relative_to(tmp)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
            mlflow.log_artifacts(tmp, "report")
            if config.parent_run_id:
                mlflow.MlflowClient().log_artifacts(config.parent_run_id, tmp, "report")
        f1 = {s.name: s.reports["val"]["f1_macro"] for s in scores}
        mlflow.log_metric("experiments", len(scores))
        log.info("report of %s written to %s", grid.name, folder)
        return ReportResult(str(folder), run.info.run_id, len(scores), f1)


if __name__ == "__main__":
    sys.exit(cli.main(ReportConfig, run))
