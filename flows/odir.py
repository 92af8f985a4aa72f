"""The Prefect flows: ``odir`` (the whole pipeline) and ``odir-train`` (one model, one MLflow run, one version).

Flows only orchestrate: every task calls a step's ``run`` with its config (one generic task, :func:`step_task`) and
passes URIs on; the profile is read here only, and each model's spec travels to ``odir-train`` as data. Work
already done is found in MLflow (same inputs and code fingerprint) and reused, so a re-run after a crash repeats
nothing that finished, and an interrupted training resumes from its checkpoint. Steps that talk to the tracking
store retry transient failures; bad input (``OdirError``) fails at once, since retrying cannot fix it, and a flow run
that fails for a reason its user can fix ends Failed with that one sentence as its message
(:func:`flows.failures.failed_state`). The flow's
own MLflow records (its parent run, the headline on it) go through :mod:`steps.support.pipeline_run`; it returns a
:class:`flows.summary.PipelineSummary`.
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

from components.config import Profile, load_profile, resolve_profile_path
from components.data.folds import CVSpec
from components.errors import OdirError
from components.inputs import check_checkpoints, check_splits
from components.models.tta import STUDY_VIEWS
from components.monitoring.referral import ReferralSpec
from components.training.spec import ModelSpec
from flows import freeze_startup_objects, without_heartbeats
from flows.artifacts import comparison_rows, per_class_rows, publish_summary, training_progress
from flows.failures import failed_state, raise_if_failed
from flows.summary import (
    BuiltEnsemble,
    Gallery,
    PipelineSummary,
    SeedScore,
    headline_metrics,
    headline_scores,
    headline_tags,
    referral_counts,
)
from steps import compare, ensemble, evaluate, ingest, model_card, promote, submit, train, tune_thresholds
from steps.support import pipeline_run, registry, tracking
from steps.support.base import StepConfig
from steps.support.manifest import Manifest, load_manifest

Result = TypeVar("Result")

TRAIN_DEPLOYMENT = os.environ.get("ODIR_TRAIN_DEPLOYMENT", "odir-train/gpu")  # odir-train/gpu-k8s on Kubernetes
DEMO_DATA = Path("data") / "demo"


def _transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task unless its error is bad input or a bad setting (``OdirError``, ``ValueError``, credentials
    the tracking server refuses), or a store that stayed unreachable: the steps' requests already retried it under
    the one policy (:class:`steps.support.tracking.RetryPolicy`), and a second round would only multiply the wait."""
    try:
        state.result()
    except (ValueError, TypeError):  # OdirError is a ValueError
        return False
    except Exception as error:  # anything else (a dropped connection, a file race) may pass on a retry
        return not (tracking.store_unreachable(error) or tracking.access_refused(error))
    return True


RETRY = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient, "cache_policy": NO_CACHE}


@task(name="demo data", cache_policy=NO_CACHE)
def demo_data_task(root: str) -> str:
    from components.data.synth import write_synthetic_dataset

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
    cv: CVSpec | None = None, views: tuple[str, ...] = STUDY_VIEWS,
) -> dict[str, Any]:  # fmt: skip
    """Trains one model spec: one MLflow run, one registered version (reused when already trained).

    Everything it needs travels as parameters (the spec itself, the manifest URI), so a worker on any host runs it
    with nothing but the tracking server and the data in common with the flow that dispatched it.
    """
    freeze_startup_objects()  # a worker's run process comes here first
    try:
        return _train_one(manifest_uri, spec, profile, parent_run_id, experiment, device, force, cv, views)
    except Exception as error:
        if (state := failed_state(error)) is None:
            raise
        return state


def _train_one(
    manifest_uri: str, spec: ModelSpec, profile: str, parent_run_id: str | None, experiment: str, device: str | None,
    force: bool, cv: CVSpec | None, views: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    """The flow ``odir-train``'s work."""
    config = train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile=profile, experiment=experiment,
                                   parent_run_id=parent_run_id, device=device, reuse=not force, cv=cv,
                                   views=tuple(views))  # fmt: skip
    progress = training_progress(spec.name)
    result = train.run(config, progress)
    progress(100.0)  # early stopping, or a training found done in MLflow
    return dataclasses.asdict(result)


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """How every model of a pipeline run is trained: where its results go, on which folds, where it runs."""

    manifest_uri: str
    profile: str
    parent_run_id: str
    experiment: str
    force: bool
    dispatch: str
    cv: CVSpec | None = None
    views: tuple[str, ...] = STUDY_VIEWS

    def config(self, spec: ModelSpec) -> train.TrainStepConfig:
        return train.TrainStepConfig(manifest_uri=self.manifest_uri, spec=spec, profile=self.profile,
                                     experiment=self.experiment, parent_run_id=self.parent_run_id, cv=self.cv,
                                     views=self.views)  # fmt: skip


@task(name="train", task_run_name="train {spec.name}", cache_policy=NO_CACHE)
def train_task(plan: TrainPlan, spec: ModelSpec) -> train.TrainStepResult:
    """Runs ``odir-train`` for one model: in this process, or as a run of the ``odir-train/gpu`` deployment."""
    if plan.dispatch == "local":
        with without_heartbeats():  # the parent flow's heartbeats cover this process
            result = odir_train(plan.manifest_uri, spec, plan.profile, plan.parent_run_id, plan.experiment, None,
                                plan.force, plan.cv, plan.views)  # fmt: skip
        return train.TrainStepResult(**result)
    from prefect.deployments import run_deployment

    parameters = {"manifest_uri": plan.manifest_uri, "spec": spec.model_dump(mode="json"), "profile": plan.profile,
                  "parent_run_id": plan.parent_run_id, "experiment": plan.experiment, "force": plan.force,
                  "cv": plan.cv.model_dump() if plan.cv else None, "views": list(plan.views)}  # fmt: skip
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, timeout=None, poll_interval=5)
    raise_if_failed(f"{TRAIN_DEPLOYMENT} run {child.name} for {spec.name}", child.state)
    # the child registered the model in MLflow; read its result from there rather than from Prefect's result storage
    return train.run(plan.config(spec))


def train_all(plan: TrainPlan, specs: list[ModelSpec]) -> list[train.TrainStepResult]:
    """Trains every model: one after the other in this process, all at once as deployment runs.

    In one process, concurrent trainings would share torch's global random generator (dropout, stochastic depth,
    augmentation draw from it), so their results would depend on thread timing and a re-run would not reproduce
    them; separate deployment runs are separate processes, each seeded on its own.
    """
    if plan.dispatch == "local":
        return [train_task(plan, spec) for spec in specs]
    futures = [train_task.submit(plan, spec) for spec in specs]
    return [future.result() for future in futures]


def _start_pipeline_run(experiment: str, profile: Profile, data_root: str) -> str:
    """The pipeline's parent run, with the resolved profile as its artifact (the only place the profile goes)."""
    tags = {tracking.STEP_TAG: "pipeline", "profile": profile.name, "profile_key": profile_key(profile),
            "odir.git_sha": tracking.git_sha()}  # fmt: skip
    profile_yaml = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
    return pipeline_run.start(experiment, f"pipeline {profile.name}", tags, params={"data_root": data_root},
                              texts={"config/profile.yaml": profile_yaml})  # fmt: skip


def profile_key(profile: Profile) -> str:
    """Identifies a profile's content (a renamed file with the same settings keeps its key).

    Left out: ``gradcam_gallery`` and ``member_figures`` (they shape no model), and ``referral``,
    ``threshold_strategy`` and ``seeds`` while they hold their defaults, so a profile keeps the key it had before
    those fields existed and its champion is not taken for out of date.
    """
    data = profile.model_dump(exclude={"gradcam_gallery", "member_figures"})
    defaults = {"referral": ReferralSpec().model_dump(), "threshold_strategy": "tuned", "seeds": ()}
    for field, default in defaults.items():
        if data[field] == default:
            del data[field]
    return tracking.content_key(data)


def _up_to_date(digest: str, key: str) -> str | None:
    """The champion's version when it was built from this data and profile, else None."""
    champion = promote.current_champion(registry.ENSEMBLE_MODEL)
    if champion is None:
        return None
    tags = pipeline_run.version_tags(registry.ENSEMBLE_MODEL, champion)
    return champion if tags.get("data_digest") == digest and tags.get("profile_key") == key else None


# the threads only wait: with dispatch=deployment each model's training is a run on a worker (see train_all)
@flow(name="odir", flow_run_name="odir {profile}", task_runner=ThreadPoolTaskRunner(max_workers=8))
def odir(
    profile: str = "demo", data: str | None = None, out: str | None = None, force: bool = False,
    only_if_changed: bool = False, dispatch: str = "local", experiment: str = tracking.DEFAULT_EXPERIMENT,
) -> PipelineSummary:  # fmt: skip
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
    try:
        return _odir(profile, data, out, force, only_if_changed, dispatch, experiment)
    except Exception as error:
        if (state := failed_state(error)) is None:
            raise
        return state


def _odir(
    profile: str, data: str | None, out: str | None, force: bool, only_if_changed: bool, dispatch: str,
    experiment: str,
) -> PipelineSummary:  # fmt: skip
    """The flow ``odir``'s work: what can be checked before it (the profile, its checkpoints), then the pipeline."""
    if dispatch not in ("local", "deployment"):
        raise OdirError(f"parameter dispatch: must be 'local' or 'deployment', got {dispatch!r}")
    logger = get_run_logger()
    config = load_profile(profile)
    check_checkpoints(config, str(resolve_profile_path(profile)))
    data_root = data or demo_data_task(str(tracking.project_root() / DEMO_DATA))
    pid = _start_pipeline_run(experiment, config, data_root)
    run = PipelineRun(config, {"experiment": experiment, "parent_run_id": pid, "reuse": not force}, dispatch)
    with pipeline_run.ended(pid):
        summary = _pipeline(run, data_root, out, only_if_changed)
        texts = {"comparison.md": summary.built.comparison_markdown} if summary.built else {}
        pipeline_run.record(pid, headline_metrics(summary), headline_tags(summary, tracking.setup(experiment)), texts)
        try:
            publish_summary(summary)
        except Exception as error:  # the work is done and recorded in MLflow: a missing artifact is no failure
            logger.warning("Prefect artifacts not published: %s", error)
    built = summary.built
    f1 = built.scores["f1_macro"].value if built else None
    logger.info("odir %s finished: %s%s, %s", config.name, built.model_uri if built else "nothing retrained",
                f" (f1_macro {f1:.3f} on {built.scored_split})" if f1 is not None else "",
                summary.decision)  # fmt: skip
    return summary


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What every step of one pipeline run shares: the profile, the steps' common fields, how training runs."""

    profile: Profile
    common: dict[str, Any]  # experiment, parent_run_id, reuse: the fields of every StepConfig
    dispatch: str

    def evaluate(self, model_uri: str, manifest_uri: str, split: str, member: bool) -> evaluate.EvaluateResult:
        """Scores a model on a split; its figures and Grad-CAM gallery are logged for the ensemble, and for a member
        only with the profile's ``member_figures``."""
        excluded = ("train",) if split == "val" and self.profile.exclude_shared_patients else ()
        config = evaluate.EvaluateConfig(model_uri=model_uri, manifest_uri=manifest_uri, split=split,
                                         views=self.profile.tta_views, exclude_shared_with=excluded,
                                         gradcam_gallery=self.gallery(member), figures=self.figures(member),
                                         **self.common)  # fmt: skip
        return step_task(f"evaluate {model_uri} on {split}", evaluate.run, config)

    def gallery(self, member: bool) -> int:
        """The gallery size of an evaluation of a member or of the ensemble (0: none)."""
        return self.profile.gradcam_gallery if self.figures(member) else 0

    def figures(self, member: bool) -> bool:
        """Whether an evaluation of a member or of the ensemble logs its figures (and its gallery)."""
        return self.profile.member_figures or not member

    def ensemble(
        self, members: list[train.TrainStepResult], predictions: list[str], manifest_uri: str
    ) -> ensemble.EnsembleResult:
        weights = self.profile.ensemble_weights
        config = ensemble.EnsembleConfig(
            member_model_uris=tuple(m.model_uri for m in members), member_val_predictions=tuple(predictions),
            manifest_uri=manifest_uri,
            weights=tuple(weights.get(m.name, 0.0) for m in self.profile.models) if weights else None,
            views=self.profile.tta_views, grid=self.profile.threshold_grid, objectives=self.profile.objectives(),
            calibrate=self.profile.calibrate, threshold_strategy=self.profile.threshold_strategy,
            referral=self.profile.referral, profile=self.profile.name,
            profile_key=profile_key(self.profile),
            **self.common,
        )  # fmt: skip
        return step_task("ensemble", ensemble.run, config)

    def with_profile(self, profile: Profile) -> PipelineRun:
        """The same run for another profile (a seed of this one)."""
        return dataclasses.replace(self, profile=profile)

    def train(self, manifest_uri: str) -> list[train.TrainStepResult]:
        plan = TrainPlan(manifest_uri, self.profile.name, self.common["parent_run_id"], self.common["experiment"],
                         not self.common["reuse"], self.dispatch, self.profile.cv, self.profile.tta_views)  # fmt: skip
        return train_all(plan, self.profile.models)


@dataclasses.dataclass(frozen=True)
class Built:
    """What one training of the recipe built: its members, its ensemble, and where both were scored."""

    members: list[train.TrainStepResult]
    test_split: str
    ensemble: ensemble.EnsembleResult
    evaluated: evaluate.EvaluateResult | None  # the ensemble on the test split (None: its cross-fitted CV scores)
    member_scores: dict[str, float | None]  # each member's f1_macro on the test split, by model URI
    member_evaluations: tuple[str, ...]  # the members' evaluate runs on the test split (none in CV mode)

    @property
    def scored(self) -> dict[str, float]:
        return self.ensemble.metrics if self.evaluated is None else self.evaluated.metrics


def _build(run: PipelineRun, manifest_uri: str, manifest: Manifest) -> Built:
    """Trains the members, fits thresholds, builds the ensemble and scores them all on the test split."""
    config, common = run.profile, run.common
    members = run.train(manifest_uri)
    # what the thresholds, temperatures and weights are fit on: out-of-fold predictions in CV mode, else val's
    on_val = [] if config.cv else [run.evaluate(m.model_uri, manifest_uri, "val", member=True) for m in members]
    fitted_on = [m.oof_predictions_uri for m in members] if config.cv else [e.predictions_uri for e in on_val]
    test_split = "offsite_test" if manifest.has_split("offsite_test") else "cv" if config.cv else "val"
    for member, predictions in zip(members, fitted_on, strict=True):
        tune = tune_thresholds.TuneConfig(predictions_uri=predictions, grid=config.threshold_grid,
                                          objectives=config.objectives(), strategy=config.threshold_strategy,
                                          name=member.registered_model, **common)  # fmt: skip
        step_task(f"tune thresholds {member.registered_model}", tune_thresholds.run, tune)
    if test_split == "cv":
        tested = []
        scores = {m.model_uri: m.metrics.get("cv_f1_macro") for m in members}
    else:
        tested = (
            on_val
            if test_split == "val"
            else [run.evaluate(m.model_uri, manifest_uri, test_split, member=True) for m in members]
        )
        prefix = tracking.split_prefix(test_split)
        scores = {m.model_uri: e.metrics.get(f"{prefix}f1_macro") for m, e in zip(members, tested, strict=True)}
    ens = run.ensemble(members, fitted_on, manifest_uri)
    # in CV mode without a test split, the ensemble's cross-fitted out-of-fold scores are the honest ones
    evaluated = None if test_split == "cv" else run.evaluate(ens.model_uri, manifest_uri, test_split, member=False)
    return Built(members, test_split, ens, evaluated, scores, tuple(e.run_id for e in tested))


def _seed_score(seed: int, built: Built) -> SeedScore:
    scores = headline_scores(built.scored, built.test_split)
    return SeedScore(seed, built.ensemble.model_uri, scores["f1_macro"], scores["f1_course"])


def _compare(run: PipelineRun, built: Built, manifest_uri: str) -> compare.CompareResult:
    """The members and the ensemble on the test split, the best member the reference."""
    ranked = sorted(built.members, key=lambda m: -(built.member_scores.get(m.model_uri) or 0.0))
    uris = (*(m.model_uri for m in ranked), built.ensemble.model_uri)
    config = compare.CompareConfig(model_uris=uris, manifest_uri=manifest_uri, split=built.test_split, **run.common)
    return step_task("compare", compare.run, config)


def _pipeline(run: PipelineRun, data_root: str, out: str | None, only_if_changed: bool) -> PipelineSummary:
    config, common = run.profile, run.common
    ing = step_task("ingest", ingest.run, ingest.IngestConfig(data_root=data_root, **common))
    key = profile_key(config)
    if only_if_changed and common["reuse"] and (champion := _up_to_date(ing.data_digest, key)):
        get_run_logger().info("nothing changed since champion version %s (same data and profile)", champion)
        return PipelineSummary(profile=config.name, data_digest=ing.data_digest,
                               pipeline_run_id=common["parent_run_id"], decision="up to date",
                               champion_version=champion)  # fmt: skip
    manifest = load_manifest(ing.manifest_uri)
    check_splits(config, set(manifest.frame["split"]), manifest.data_root)  # before any training
    seeds = config.seeds
    built = _build(run.with_profile(config.seeded(seeds[0], repeat=False)) if seeds else run, ing.manifest_uri,
                   manifest)  # fmt: skip
    repeats = [(seed, _build(run.with_profile(config.seeded(seed, repeat=True)), ing.manifest_uri, manifest))
               for seed in seeds[1:]]  # fmt: skip
    ens, test_split = built.ensemble, built.test_split
    submission = None
    if manifest.has_split("onsite_test"):
        target = out or str(tracking.project_root() / "outputs" / f"submission-{config.name}.csv")
        submit_config = submit.SubmitConfig(model_uri=ens.model_uri, manifest_uri=ing.manifest_uri, out_path=target,
                                            **common)  # fmt: skip
        submission = step_task("submit", submit.run, submit_config).out_path
    promote_config = promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=ing.manifest_uri, split=test_split,
                                           metric=config.promotion.metric,
                                           min_probability=config.promotion.min_probability, **common)  # fmt: skip
    decision = step_task("promote", promote.run, promote_config)
    compared = _compare(run, built, ing.manifest_uri)
    replaced = decision.champion_version if decision.decision == "champion" else None
    cards = (
        *(m.model_uri for m in built.members),
        ens.model_uri,
        *([f"models:/{registry.ENSEMBLE_MODEL}/{replaced}"] if replaced and replaced != ens.version else []),
    )
    step_task("model cards", model_card.publish_model_cards, cards)
    scored = built.scored
    summary_built = BuiltEnsemble(
        model_uri=ens.model_uri, run_id=ens.run_id, weights=ens.weights, thresholds=ens.thresholds,
        members=tuple(m.model_uri for m in built.members), member_runs=tuple(m.run_id for m in built.members),
        member_f1_macro={m.registered_model: built.member_scores[m.model_uri] for m in built.members},
        split_mode=f"cv ({config.cv.folds} folds)" if config.cv else "given splits", scored_split=test_split,
        scores=headline_scores(scored, test_split), per_class=tuple(per_class_rows(scored, test_split)),
        referral=referral_counts(scored, test_split),
        gallery=_gallery(built.evaluated.run_id if built.evaluated else None), submission=submission,
        member_evaluations=built.member_evaluations, comparison=tuple(comparison_rows(compared.rows)),
        comparison_run=compared.run_id, comparison_markdown=compared.markdown,
        seeds=tuple(_seed_score(seed, b) for seed, b in ([(seeds[0], built)] if seeds else []) + repeats),
    )  # fmt: skip
    return PipelineSummary(
        profile=config.name, data_digest=ing.data_digest, pipeline_run_id=common["parent_run_id"],
        decision=decision.decision,
        champion_version=decision.version if decision.decision == "champion" else decision.champion_version,
        prob_better=decision.prob_better, promotion_note=decision.note, built=summary_built,
    )  # fmt: skip


def _gallery(evaluate_run_id: str | None) -> Gallery | None:
    """Where the ensemble's Grad-CAM gallery on the scored split is (None without an evaluation there)."""
    if evaluate_run_id is None:
        return None
    uri = pipeline_run.run_tag(evaluate_run_id, "gradcam_uri")
    return Gallery(run_id=evaluate_run_id, uri=f"{uri}/gallery.html") if uri else None
