"""The Prefect flows: ``odir`` (the whole pipeline) and ``odir-train`` (one model, one MLflow run, one version).

Flows only orchestrate: every task calls a step's ``run`` and passes URIs on. Work already done is found in MLflow
(same spec and data digest, same model and split) and reused, so a re-run after a crash repeats nothing that
finished, and an interrupted training resumes from its checkpoint. Steps that talk to the tracking store retry
transient failures; bad input (``OdirError``) fails at once, since retrying cannot fix it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import Profile, load_profile, resolve_profile_path
from flows import freeze_startup_objects, without_heartbeats
from steps import ensemble, evaluate, ingest, promote, submit, tracking, train, tune_thresholds

TRAIN_DEPLOYMENT = os.environ.get("ODIR_TRAIN_DEPLOYMENT", "odir-train/gpu")  # odir-train/gpu-k8s on Kubernetes
DEMO_DATA = Path("data") / "demo"


def _transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task unless its error is bad input or a bad setting (``OdirError``, ``ValueError``)."""
    try:
        state.result()
    except (ValueError, TypeError):  # OdirError is a ValueError
        return False
    except Exception:  # anything else (a server briefly unreachable, a dropped connection) may pass on a retry
        return True
    return True


RETRY = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient, "cache_policy": NO_CACHE}


@task(name="demo data", cache_policy=NO_CACHE)
def demo_data_task(root: str) -> str:
    from components.synth import write_synthetic_dataset

    if not (Path(root) / "train.csv").exists():
        get_run_logger().info("writing the synthetic demo dataset to %s", root)
        write_synthetic_dataset(root)
    return root


@task(name="ingest", **RETRY)
def ingest_task(data_root: str, parent_run_id: str, experiment: str) -> ingest.IngestResult:
    return ingest.run(ingest.IngestConfig(data_root, experiment, parent_run_id))


@task(name="evaluate", task_run_name="evaluate {model_uri} on {split}", **RETRY)
def evaluate_task(
    model_uri: str, manifest_uri: str, split: str, views: tuple[str, ...], parent_run_id: str, experiment: str,
    reuse: bool,
) -> evaluate.EvaluateResult:  # fmt: skip
    config = evaluate.EvaluateConfig(
        model_uri, manifest_uri, split, True, views, None, None, experiment, parent_run_id, reuse
    )
    return evaluate.run(config)


@task(name="tune thresholds", task_run_name="tune thresholds {name}", **RETRY)
def tune_task(
    predictions_uri: str, grid: str, name: str, parent_run_id: str, experiment: str
) -> tune_thresholds.TuneResult:
    return tune_thresholds.run(tune_thresholds.TuneConfig(predictions_uri, grid, name, experiment, parent_run_id))


@task(name="ensemble", **RETRY)
def ensemble_task(config: ensemble.EnsembleConfig) -> ensemble.EnsembleResult:
    return ensemble.run(config)


@task(name="submit", **RETRY)
def submit_task(
    model_uri: str, manifest_uri: str, out: str, parent_run_id: str, experiment: str
) -> submit.SubmitResult:
    return submit.run(submit.SubmitConfig(model_uri, manifest_uri, out, "onsite_test", experiment, parent_run_id))


@task(name="promote", **RETRY)
def promote_task(
    model_uri: str, manifest_uri: str, split: str, parent_run_id: str, experiment: str
) -> promote.PromoteResult:
    return promote.run(promote.PromoteConfig(model_uri, manifest_uri, split, experiment, parent_run_id))


@flow(name="odir-train", flow_run_name="train {model}")
def odir_train(
    manifest_uri: str, model: str, profile: str = "demo", parent_run_id: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT, device: str | None = None, force: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Trains one model spec of a profile: one MLflow run, one registered version (reused when already trained)."""
    freeze_startup_objects()  # a worker's run process comes here first
    config = train.TrainStepConfig(manifest_uri, model, profile, experiment, parent_run_id, device, None, not force)
    return dataclasses.asdict(train.run(config))


@task(name="train", task_run_name="train {model}", cache_policy=NO_CACHE)
def train_task(
    manifest_uri: str, model: str, profile: str, parent_run_id: str, experiment: str, force: bool, dispatch: str
) -> train.TrainStepResult:
    """Runs ``odir-train`` for one model: in this process, or as a run of the ``odir-train/gpu`` deployment."""
    if dispatch == "local":
        with without_heartbeats():  # the parent flow's heartbeats cover this process
            result = odir_train(manifest_uri, model, profile, parent_run_id, experiment, None, force)
        return train.TrainStepResult(**result)
    from prefect.deployments import run_deployment

    parameters = {"manifest_uri": manifest_uri, "model": model, "profile": profile, "parent_run_id": parent_run_id,
                  "experiment": experiment, "force": force}  # fmt: skip
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, timeout=None, poll_interval=5)
    if not child.state or not child.state.is_completed():
        raise RuntimeError(f"{TRAIN_DEPLOYMENT} run {child.name} for {model} ended {child.state and child.state.name}")
    # the child registered the model in MLflow; read its result from there rather than from Prefect's result storage
    return train.run(train.TrainStepConfig(manifest_uri, model, profile, experiment, parent_run_id, None, None, True))


def train_all(
    specs: list, manifest_uri: str, profile: str, pid: str, experiment: str, force: bool, dispatch: str
) -> list[train.TrainStepResult]:
    """Trains every model: one after the other in this process, all at once as deployment runs.

    In one process, concurrent trainings would share torch's global random generator (dropout, stochastic depth,
    augmentation draw from it), so their results would depend on thread timing and a re-run would not reproduce
    them; separate deployment runs are separate processes, each seeded on its own.
    """
    if dispatch == "local":
        return [train_task(manifest_uri, s.name, profile, pid, experiment, force, dispatch) for s in specs]
    futures = [train_task.submit(manifest_uri, s.name, profile, pid, experiment, force, dispatch) for s in specs]
    return [future.result() for future in futures]


def _start_pipeline_run(experiment: str, profile: Profile, data_root: str) -> str:
    from mlflow import MlflowClient

    experiment_id = tracking.setup(experiment)
    tags = {tracking.STEP_TAG: "pipeline", "profile": profile.name, "odir.git_sha": tracking.git_sha(),
            **tracking.process_tags()}  # fmt: skip
    run = MlflowClient().create_run(experiment_id, run_name=f"pipeline {profile.name}", tags=tags)
    MlflowClient().log_param(run.info.run_id, "data_root", data_root)
    return run.info.run_id


def profile_key(profile: Profile) -> str:
    """Identifies a profile's content (a renamed file with the same settings keeps its key)."""
    return tracking.content_key(profile.model_dump())


def _up_to_date(digest: str, key: str) -> str | None:
    """The champion's version when it was built from this data and profile, else None."""
    from mlflow import MlflowClient

    champion = promote.current_champion(tracking.ENSEMBLE_MODEL)
    if champion is None:
        return None
    tags = MlflowClient().get_model_version(tracking.ENSEMBLE_MODEL, champion).tags
    return champion if tags.get("data_digest") == digest and tags.get("profile_key") == key else None


# the threads only wait: with dispatch=deployment each model's training is a run on a worker (see train_all)
@flow(name="odir", flow_run_name="odir {profile}", task_runner=ThreadPoolTaskRunner(max_workers=8))
def odir(
    profile: str = "demo", data: str | None = None, out: str | None = None, force: bool = False,
    only_if_changed: bool = False, dispatch: str = "local", experiment: str = tracking.DEFAULT_EXPERIMENT,
) -> dict[str, Any]:  # fmt: skip
    """The whole pipeline: ingest, train every model of the profile, evaluate, tune thresholds, ensemble, evaluate
    the ensemble, submit, promote.

    Args:
        profile: a profile name in ``configs/`` or a YAML path.
        data: the dataset root; default: the synthetic demo data (generated on first use).
        out: the submission CSV; default ``outputs/submission-<profile>.csv``.
        force: retrain and re-evaluate even where MLflow has finished runs with the same inputs.
        only_if_changed: stop after ingest when the champion was built from the same data and profile (retraining).
        dispatch: ``local`` trains in this process, one model after the other (reproducibly); ``deployment`` runs
            every model at once as a run of ``odir-train/gpu`` (each on a worker, in its own process).
        experiment: the MLflow experiment.
    """
    if dispatch not in ("local", "deployment"):
        raise ValueError(f"dispatch must be 'local' or 'deployment', got {dispatch!r}")
    logger = get_run_logger()
    root = tracking.project_root()
    config = load_profile(profile)
    profile_path = str(resolve_profile_path(profile).resolve())
    data_root = data or demo_data_task(str(root / DEMO_DATA))
    pid = _start_pipeline_run(experiment, config, data_root)
    try:
        summary = _pipeline(config, profile_path, data_root, out, force, only_if_changed, dispatch, experiment, pid)
    except BaseException:
        from mlflow import MlflowClient

        MlflowClient().set_terminated(pid, "FAILED")
        raise
    from mlflow import MlflowClient

    MlflowClient().set_terminated(pid, "FINISHED")
    logger.info("odir %s: %s", config.name, summary)
    return summary


def _pipeline(
    config: Profile, profile_path: str, data_root: str, out: str | None, force: bool, only_if_changed: bool,
    dispatch: str, experiment: str, pid: str,
) -> dict[str, Any]:  # fmt: skip
    logger = get_run_logger()
    ing = ingest_task(data_root, pid, experiment)
    key = profile_key(config)
    if only_if_changed and not force and (champion := _up_to_date(ing.data_digest, key)):
        logger.info("nothing changed since champion version %s (same data and profile): no retraining", champion)
        return {"trained": [], "champion_version": champion, "decision": "up to date", "data_digest": ing.data_digest}
    manifest = ingest.load_manifest(ing.manifest_uri)
    members = train_all(config.models, ing.manifest_uri, profile_path, pid, experiment, force, dispatch)
    test_split = "offsite_test" if manifest.has_split("offsite_test") else "val"
    reuse = not force
    val = [
        evaluate_task(m.model_uri, ing.manifest_uri, "val", config.tta_views, pid, experiment, reuse) for m in members
    ]
    for member, evaluation in zip(members, val, strict=True):
        tune_task(evaluation.predictions_uri, config.threshold_grid, member.registered_model, pid, experiment)
        if test_split != "val":
            evaluate_task(member.model_uri, ing.manifest_uri, test_split, config.tta_views, pid, experiment, reuse)
    weights = (
        tuple(config.ensemble_weights.get(m.name, 0.0) for m in config.models) if config.ensemble_weights else None
    )
    ens = ensemble_task(
        ensemble.EnsembleConfig(
            tuple(m.model_uri for m in members),
            tuple(v.predictions_uri for v in val),
            ing.manifest_uri,
            weights,
            config.tta_views,
            config.threshold_grid,
            config.name,
            experiment,
            pid,
            reuse,
            key,
        )
    )
    scored = evaluate_task(ens.model_uri, ing.manifest_uri, test_split, config.tta_views, pid, experiment, reuse)
    submission = None
    if manifest.has_split("onsite_test"):
        target = out or str(tracking.project_root() / "outputs" / f"submission-{config.name}.csv")
        submission = submit_task(ens.model_uri, ing.manifest_uri, target, pid, experiment).out_path
    decision = promote_task(ens.model_uri, ing.manifest_uri, test_split, pid, experiment)
    prefix = tracking.split_prefix(test_split)
    return {
        "profile": config.name, "data_digest": ing.data_digest, "trained": [m.model_uri for m in members],
        "member_val_f1_macro": {m.registered_model: m.metrics.get("val_f1_macro") for m in members},
        "ensemble": ens.model_uri, "ensemble_weights": ens.weights, "thresholds": ens.thresholds,
        f"ensemble_{prefix}f1_macro": scored.metrics.get(f"{prefix}f1_macro"),
        f"ensemble_{prefix}f1_course": scored.metrics.get(f"{prefix}f1_course"),
        "decision": decision.decision, "champion_version": decision.version if decision.decision == "champion"
        else decision.champion_version, "submission": submission, "pipeline_run_id": pid,
    }  # fmt: skip
