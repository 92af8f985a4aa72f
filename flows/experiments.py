"""The flow ``odir-experiments``: an experiment grid (the study's Tasks 1-4) as one Prefect run.

Trains every model of the grid (one after the other, so results reproduce; a model with the same spec already
trained on the same data is reused from MLflow), evaluates each on the labelled splits with and without TTA as the
rows need, then builds the results table and report. Running it again on the same data trains and evaluates
nothing and writes the same report.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import load_grid, resolve_grid_path
from components.inputs import check_checkpoints, check_splits
from flows.failures import failed_state
from flows.odir import DEMO_DATA, TrainPlan, demo_data_task, step_task, train_all
from steps import evaluate, ingest, report
from steps.report import evaluation_splits
from steps.support import pipeline_run, tracking
from steps.support.manifest import load_manifest


@dataclass(frozen=True)
class ExperimentsSummary:
    """The result of one run of ``odir-experiments``: the grid, where its report is, how many rows it has, each
    row's val f1_macro, the data's digest and the parent MLflow run."""

    grid: str
    report: str
    rows: int
    val_f1_macro: dict[str, float]
    data_digest: str
    pipeline_run_id: str


@flow(name="odir-experiments", flow_run_name="experiments {grid}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def odir_experiments(
    grid: str = "seed", data: str | None = None, out: str | None = None, force: bool = False,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
) -> ExperimentsSummary:  # fmt: skip
    """Runs an experiment grid and writes its results table.

    Args:
        grid: a grid name in ``configs/experiments/`` or a YAML path.
        data: the dataset root (default: the synthetic demo data).
        out: the report folder (default ``outputs/experiments-<grid>``).
        force: retrain and re-evaluate even where MLflow holds finished runs with the same inputs.
        experiment: the MLflow experiment.
    """
    try:
        return _experiments(grid, data, out, force, experiment)
    except Exception as error:
        if (state := failed_state(error)) is None:
            raise
        return state


def _experiments(grid: str, data: str | None, out: str | None, force: bool, experiment: str) -> ExperimentsSummary:
    """The flow ``odir-experiments``' work: what can be checked before it (the grid, its checkpoints), then the grid."""
    logger = get_run_logger()
    config = load_grid(grid)
    check_checkpoints(config, str(resolve_grid_path(grid)))
    data_root = data or demo_data_task(str(tracking.project_root() / DEMO_DATA))
    tags = {tracking.STEP_TAG: "experiments", "profile": config.name}
    pid = pipeline_run.start(experiment, f"experiments {config.name}", tags)
    with pipeline_run.ended(pid):
        common = {"experiment": experiment, "parent_run_id": pid, "reuse": not force}
        ing = step_task("ingest", ingest.run, ingest.IngestConfig(data_root=data_root, **common))
        manifest = load_manifest(ing.manifest_uri)
        check_splits(config, set(manifest.frame["split"]), manifest.data_root)  # before any training
        plan = TrainPlan(ing.manifest_uri, config.name, pid, experiment, force, "local")
        trained = train_all(plan, config.models)
        members = {m.name: result for m, result in zip(config.models, trained, strict=True)}
        needs = {(member, row.tta) for row in config.experiments for member in row.members}
        splits = evaluation_splits(manifest)
        evaluations = [
            step_task.submit(f"evaluate {members[name].model_uri} on {split}", evaluate.run, evaluate.EvaluateConfig(
                model_uri=members[name].model_uri, manifest_uri=ing.manifest_uri, split=split,
                views=tuple(config.tta_views) if tta else ("identity",), gradcam_gallery=config.gradcam_gallery,
                **common))
            for name, tta in sorted(needs) for split in splits
        ]  # fmt: skip
        for evaluation in evaluations:
            evaluation.result()
        report_config = report.ReportConfig(grid=config, manifest_uri=ing.manifest_uri, out_dir=out, **common)
        result = step_task("report", report.run, report_config)
    logger.info("experiments %s: report in %s", config.name, result.out_dir)
    return ExperimentsSummary(grid=config.name, report=result.out_dir, rows=result.rows, val_f1_macro=result.f1_macro,
                              data_digest=ing.data_digest, pipeline_run_id=pid)  # fmt: skip
