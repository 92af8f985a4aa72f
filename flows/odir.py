"""The Prefect flows: ``odir`` (the whole pipeline) and ``odir-train`` (one model, one MLflow run, one version).

Flows only orchestrate: every task calls a step's ``run`` with its config (one generic task, :func:`step_task`) and
passes URIs on; the profile is read here only, and each model's spec travels to ``odir-train`` as data. Work
already done is found in MLflow (same inputs and code fingerprint) and reused, so a re-run after a crash repeats
nothing that finished, and an interrupted training resumes from its checkpoint. Steps that talk to the tracking
store retry transient failures; bad input (``OdirError``) fails at once, since retrying cannot fix it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import ModelSpec, Profile, load_profile
from flows import freeze_startup_objects, without_heartbeats
from steps import ensemble, evaluate, ingest, promote, submit, tracking, train, tune_thresholds
from steps.base import StepConfig
from steps.contracts import load_manifest

Result = TypeVar("Result")

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


@task(name="step", task_run_name="{label}", **RETRY)
def step_task(label: str, run: Callable[[StepConfig], Result], config: StepConfig) -> Result:
    """Runs one step (``run`` is a step module's ``run``) as a Prefect task named ``label``."""
    return run(config)


@flow(name="odir-train", flow_run_name="train {spec.name}")
def odir_train(
    manifest_uri: str, spec: ModelSpec, profile: str = "adhoc", parent_run_id: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT, device: str | None = None, force: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Trains one model spec: one MLflow run, one registered version (reused when already trained).

    Everything it needs travels as parameters (the spec itself, the manifest URI), so a worker on any host runs it
    with nothing but the tracking server and the data in common with the flow that dispatched it.
    """
    freeze_startup_objects()  # a worker's run process comes here first
    config = train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile=profile, experiment=experiment,
                                   parent_run_id=parent_run_id, device=device, reuse=not force)  # fmt: skip
    return dataclasses.asdict(train.run(config))


@task(name="train", task_run_name="train {spec.name}", cache_policy=NO_CACHE)
def train_task(
    manifest_uri: str, spec: ModelSpec, profile: str, parent_run_id: str, experiment: str, force: bool, dispatch: str
) -> train.TrainStepResult:
    """Runs ``odir-train`` for one model: in this process, or as a run of the ``odir-train/gpu`` deployment."""
    if dispatch == "local":
        with without_heartbeats():  # the parent flow's heartbeats cover this process
            result = odir_train(manifest_uri, spec, profile, parent_run_id, experiment, None, force)
        return train.TrainStepResult(**result)
    from prefect.deployments import run_deployment

    parameters = {"manifest_uri": manifest_uri, "spec": spec.model_dump(mode="json"), "profile": profile,
                  "parent_run_id": parent_run_id, "experiment": experiment, "force": force}  # fmt: skip
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, timeout=None, poll_interval=5)
    if not child.state or not child.state.is_completed():
        raise RuntimeError(
            f"{TRAIN_DEPLOYMENT} run {child.name} for {spec.name} ended {child.state and child.state.name}"
        )
    # the child registered the model in MLflow; read its result from there rather than from Prefect's result storage
    config = train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile=profile, experiment=experiment,
                                   parent_run_id=parent_run_id)  # fmt: skip
    return train.run(config)


def train_all(
    specs: list[ModelSpec], manifest_uri: str, profile: str, pid: str, experiment: str, force: bool, dispatch: str
) -> list[train.TrainStepResult]:
    """Trains every model: one after the other in this process, all at once as deployment runs.

    In one process, concurrent trainings would share torch's global random generator (dropout, stochastic depth,
    augmentation draw from it), so their results would depend on thread timing and a re-run would not reproduce
    them; separate deployment runs are separate processes, each seeded on its own.
    """
    if dispatch == "local":
        return [train_task(manifest_uri, s, profile, pid, experiment, force, dispatch) for s in specs]
    futures = [train_task.submit(manifest_uri, s, profile, pid, experiment, force, dispatch) for s in specs]
    return [future.result() for future in futures]


def _start_pipeline_run(experiment: str, profile: Profile, data_root: str) -> str:
    """The pipeline's parent run, with the resolved profile as its artifact (the only place the profile goes)."""
    from mlflow import MlflowClient

    experiment_id = tracking.setup(experiment)
    tags = {tracking.STEP_TAG: "pipeline", "profile": profile.name, "profile_key": profile_key(profile),
            "odir.git_sha": tracking.git_sha(), **tracking.process_tags()}  # fmt: skip
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=f"pipeline {profile.name}", tags=tags)
    client.log_param(run.info.run_id, "data_root", data_root)
    client.log_text(run.info.run_id, yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False),
                    "config/profile.yaml")  # fmt: skip
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
    config = load_profile(profile)
    data_root = data or demo_data_task(str(tracking.project_root() / DEMO_DATA))
    pid = _start_pipeline_run(experiment, config, data_root)
    run = PipelineRun(config, {"experiment": experiment, "parent_run_id": pid, "reuse": not force}, dispatch)
    try:
        summary = _pipeline(run, data_root, out, only_if_changed)
    except BaseException:
        from mlflow import MlflowClient

        MlflowClient().set_terminated(pid, "FAILED")
        raise
    from mlflow import MlflowClient

    MlflowClient().set_terminated(pid, "FINISHED")
    logger.info("odir %s: %s", config.name, summary)
    return summary


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What every step of one pipeline run shares: the profile, the steps' common fields, how training runs."""

    profile: Profile
    common: dict[str, Any]  # experiment, parent_run_id, reuse: the fields of every StepConfig
    dispatch: str

    def evaluate(self, model_uri: str, manifest_uri: str, split: str) -> evaluate.EvaluateResult:
        config = evaluate.EvaluateConfig(model_uri=model_uri, manifest_uri=manifest_uri, split=split,
                                         views=self.profile.tta_views, **self.common)  # fmt: skip
        return step_task(f"evaluate {model_uri} on {split}", evaluate.run, config)

    def ensemble(
        self, members: list[train.TrainStepResult], val: list[evaluate.EvaluateResult], manifest_uri: str
    ) -> ensemble.EnsembleResult:
        weights = self.profile.ensemble_weights
        config = ensemble.EnsembleConfig(
            member_model_uris=tuple(m.model_uri for m in members),
            member_val_predictions=tuple(v.predictions_uri for v in val), manifest_uri=manifest_uri,
            weights=tuple(weights.get(m.name, 0.0) for m in self.profile.models) if weights else None,
            views=self.profile.tta_views, grid=self.profile.threshold_grid, profile=self.profile.name,
            profile_key=profile_key(self.profile), **self.common,
        )  # fmt: skip
        return step_task("ensemble", ensemble.run, config)

    def train(self, manifest_uri: str) -> list[train.TrainStepResult]:
        force, common = not self.common["reuse"], self.common
        return train_all(self.profile.models, manifest_uri, self.profile.name, common["parent_run_id"],
                         common["experiment"], force, self.dispatch)  # fmt: skip


def _pipeline(run: PipelineRun, data_root: str, out: str | None, only_if_changed: bool) -> dict[str, Any]:
    config, common = run.profile, run.common
    ing = step_task("ingest", ingest.run, ingest.IngestConfig(data_root=data_root, **common))
    key = profile_key(config)
    if only_if_changed and common["reuse"] and (champion := _up_to_date(ing.data_digest, key)):
        get_run_logger().info("nothing changed since champion version %s (same data and profile)", champion)
        return {"trained": [], "champion_version": champion, "decision": "up to date", "data_digest": ing.data_digest}
    manifest = load_manifest(ing.manifest_uri)
    members = run.train(ing.manifest_uri)
    test_split = "offsite_test" if manifest.has_split("offsite_test") else "val"
    val = [run.evaluate(m.model_uri, ing.manifest_uri, "val") for m in members]
    for member, evaluation in zip(members, val, strict=True):
        tune = tune_thresholds.TuneConfig(predictions_uri=evaluation.predictions_uri, grid=config.threshold_grid,
                                          name=member.registered_model, **common)  # fmt: skip
        step_task(f"tune thresholds {member.registered_model}", tune_thresholds.run, tune)
        if test_split != "val":
            run.evaluate(member.model_uri, ing.manifest_uri, test_split)
    ens = run.ensemble(members, val, ing.manifest_uri)
    scored = run.evaluate(ens.model_uri, ing.manifest_uri, test_split)
    submission = None
    if manifest.has_split("onsite_test"):
        target = out or str(tracking.project_root() / "outputs" / f"submission-{config.name}.csv")
        submit_config = submit.SubmitConfig(model_uri=ens.model_uri, manifest_uri=ing.manifest_uri, out_path=target,
                                            **common)  # fmt: skip
        submission = step_task("submit", submit.run, submit_config).out_path
    promote_config = promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=ing.manifest_uri, split=test_split,
                                           **common)  # fmt: skip
    decision = step_task("promote", promote.run, promote_config)
    prefix = tracking.split_prefix(test_split)
    return {
        "profile": config.name, "data_digest": ing.data_digest, "trained": [m.model_uri for m in members],
        "member_val_f1_macro": {m.registered_model: m.metrics.get("val_f1_macro") for m in members},
        "ensemble": ens.model_uri, "ensemble_weights": ens.weights, "thresholds": ens.thresholds,
        f"ensemble_{prefix}f1_macro": scored.metrics.get(f"{prefix}f1_macro"),
        f"ensemble_{prefix}f1_course": scored.metrics.get(f"{prefix}f1_course"),
        "decision": decision.decision, "champion_version": decision.version if decision.decision == "champion"
        else decision.champion_version, "submission": submission, "pipeline_run_id": common["parent_run_id"],
    }  # fmt: skip
