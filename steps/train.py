"""Train: one model spec -> one MLflow run -> one registered model version ``odir-<name>``.

The spec arrives as data (a :class:`~components.training.spec.ModelSpec`, JSON on the command line), never as a profile
path, so a worker on another host needs nothing of the flow's files: only the tracking server and the data.

With ``cv`` (patient-grouped k-fold cross-validation), the labelled pool (train + val) is split into folds and one
model is trained per fold k: on the other folds but one, its best epoch chosen on that one (fold k+1), so fold k
never trains, picks an epoch or anything else for it. A spec whose ``monitor`` is ``last`` picks no epoch: its fold
model trains on every other fold and keeps its last epoch, and fold k's own scores are only reported per epoch. Each
image of the pool is then predicted (with the TTA ``views``) by the model of its own fold: the **out-of-fold
predictions** (``predictions/oof.csv``, with the fold), which later steps fit thresholds, temperatures and ensemble
weights on. Their scores at 0.5 are logged as ``cv_*`` with intervals. The registered version averages the fold
models' probabilities (``checkpoints/fold_<k>.pt``).

The run holds every spec field as a param, the hardware it ran on (``hardware_*``: CPU model and flags, GPU, torch
version and threads), per-epoch ``train_loss``, ``val_loss`` and validation metrics (both
F1s, per-class F1, AUROC; with ``validate_every``, the validated epochs' only), system metrics where
``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true`` (off unless set), the dataset input,
the best checkpoint (``checkpoints/best.pt``, tensors only) and the best model logged with ``mlflow.pytorch``. The
version is tagged with the dataset digest and the profile. An interrupted run resumes from its local checkpoint
folder (``last.pt`` stays there: resume state only).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from components import LABELS
from components.data.folds import CVSpec
from components.data.splits import patient_of
from components.evaluation.scoring import compared_metrics, scored_report
from components.models.backbones import FoldAverage, parameter_count, preprocessing_config
from components.models.inference import predict_images
from components.models.tta import STUDY_VIEWS
from components.training.hardware import hardware_record
from components.training.loop import Callback, TrainResult, train
from components.training.runtime import speed_settings
from components.training.spec import ModelSpec
from steps.support import cli, integrity, registry, tracking
from steps.support.base import StepConfig, run_step
from steps.support.manifest import Manifest, load_manifest, log_dataset
from steps.support.members import CHECKPOINT_ARTIFACT, CHECKPOINT_DIR
from steps.support.predictions import predictions_frame
from steps.support.tags import registered_name, train_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainStepConfig(StepConfig):
    """Train one model spec on a manifest's train split (best epoch chosen on val) and register it.

    Attributes:
        spec: the resolved model spec (``--spec`` takes its JSON, or a YAML/JSON file holding one spec).
        profile: the name of the profile the spec comes from, a label for tags and the checkpoint folder.
    """

    manifest_uri: str
    spec: ModelSpec
    profile: str = "adhoc"
    cv: CVSpec | None = None
    views: tuple[str, ...] = STUDY_VIEWS  # of the out-of-fold predictions (cv only)
    device: str | None = None
    workdir: str | None = None


@dataclass(frozen=True)
class TrainStepResult:
    """The registered version and the best epoch's validation metrics."""

    model_uri: str
    registered_model: str
    version: str
    run_id: str
    best_epoch: int
    checkpoint_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    oof_predictions_uri: str | None = None


class MlflowCallback(Callback):
    """Logs each epoch's metrics to the active run in one call (one round trip per epoch to a server)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(tracking.prefixed(metrics, self.prefix), step=epoch)


class ProgressCallback(Callback):
    """Reports the share of all epochs done (every fold's, in CV mode) to ``report``, in percent: how the flow
    shows a training's progress (a Prefect progress artifact) without the step knowing Prefect."""

    def __init__(self, report: Callable[[float], None], total_epochs: int, epochs_before: int = 0) -> None:
        self.report, self.total, self.before = report, max(total_epochs, 1), epochs_before

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.report(min(100.0, 100.0 * (self.before + epoch) / self.total))


def work_folder(config: TrainStepConfig, tags: dict[str, str]) -> Path:
    """Where checkpoints are kept for resuming: per dataset digest, profile, model and training (its reuse tags:
    spec, folds, code), so a changed spec or a code fix never resumes from another training's ``last.pt``."""
    if config.workdir:
        return Path(config.workdir)
    folder = tracking.store_files().work / tags["data_digest"][:12] / config.profile  # the store's own
    return folder / config.spec.name / tracking.content_key(tags)[:12]


def _signature(spec: ModelSpec):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, spec.image_size, spec.image_size), "images")])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3), "logits")]))


def _log_model(spec: ModelSpec, model: torch.nn.Module, tags: dict[str, str]) -> tuple[str, str, str]:
    """Logs the best checkpoint's model with ``mlflow.pytorch`` under the member's name and registers it with
    ``tags``; returns (registered name, version, logged model id)."""
    import mlflow

    mlflow.log_metric("parameters", parameter_count(model))
    info = mlflow.pytorch.log_model(
        model,
        name=spec.name,
        step=tracking.MODEL_STEP,
        signature=_signature(spec),
        serialization_format="pickle",  # the pt2 default needs a full-resolution input example (tens of MB)
        code_paths=[str(Path(__file__).resolve().parents[1] / "components")],
        pip_requirements=tracking.pinned_requirements("torch", "torchvision"),
        metadata={"odir_spec": spec.model_dump(), "preprocessing": preprocessing_config(spec.backbone)},
    )
    name = registered_name(spec)
    return name, integrity.register(info.model_uri, name, tags), info.model_id  # with its tags and files' SHA-256


def _reused(run) -> TrainStepResult:
    """The result of an earlier, finished training run of the same spec on the same data."""
    tags, metrics = run.data.tags, run.data.metrics
    oof = tags.get("oof_predictions_uri")
    prefix = "cv_" if oof else "best_"  # a cross-validated member's scores are its out-of-fold ones
    scores = {
        key.removeprefix("best_"): v for key, v in metrics.items()
        if key.startswith(prefix) and key != "best_epoch" and not key.endswith(("_ci_low", "_ci_high"))
    }  # fmt: skip
    name, version = registry.split_model_uri(tags["registered_model_uri"])
    return TrainStepResult(
        tags["registered_model_uri"], name, version, run.info.run_id, int(metrics["best_epoch"]),
        tags["checkpoint_uri"], scores, oof,
    )  # fmt: skip


def run(config: TrainStepConfig, progress: Callable[[float], None] | None = None) -> TrainStepResult:
    """Trains, logs and registers one model (or reuses a finished run of the same spec, data, folds and training
    code); see the module docstring. ``progress`` is given the percentage of epochs done after each epoch."""
    manifest = load_manifest(config.manifest_uri)
    tags = train_tags(config.spec, config.profile, manifest.digest)
    if config.cv:
        tags["cv"] = f"{config.cv.folds} folds, seed {config.cv.seed}, views {','.join(config.views)}"
    return run_step(
        config, "train", tags, f"train {config.spec.name}", lambda run: _train(config, manifest, tags, run, progress),
        _reused,
        system_metrics=None,  # MLflow's switch, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    )  # fmt: skip


def _train(
    config: TrainStepConfig, manifest: Manifest, tags: dict[str, str], run, progress: Callable[[float], None] | None
) -> TrainStepResult:
    import mlflow

    spec = config.spec
    in_effect = speed_settings(spec, config.device)  # amp: CUDA's mixed precision, or cpu_bf16 on a CPU
    mlflow.log_params(tracking.flat_params({**spec.model_dump(), **in_effect, "profile": config.profile}))
    mlflow.log_params({"data_digest": manifest.digest, "manifest_uri": config.manifest_uri,
                       "split_mode": "cv" if config.cv else "given"})  # fmt: skip
    mlflow.log_params(hardware_record())  # the same commit trains to other numbers on another CPU
    mlflow.log_text(yaml.safe_dump(spec.model_dump(), sort_keys=False), "config/spec.yaml")
    preprocessing = preprocessing_config(spec.backbone)  # applied by the model itself, recorded in best.pt too
    mlflow.log_params({"preprocessing_mean": preprocessing["mean"], "preprocessing_std": preprocessing["std"]})
    log_dataset(manifest, context="training")
    if config.cv:
        model, best_epoch, metrics, oof_uri = _train_folds(config, manifest, work_folder(config, tags), progress)
    else:
        train_data, val_data = manifest.dataset("train", spec.image_size), manifest.dataset("val", spec.image_size)
        result = train(spec, train_data, val_data, work_folder(config, tags),
                       callbacks=[MlflowCallback(), *_progress(progress, spec.epochs)],
                       device=config.device)  # fmt: skip
        _log_result(result)
        model, best_epoch, metrics, oof_uri = result.model, result.best_epoch, result.best_metrics, None
        mlflow.log_artifact(str(result.best_checkpoint), CHECKPOINT_DIR)
    version_tags = {**tags, "kind": "member", "image_size": str(spec.image_size)}
    name, version, model_id = _log_model(spec, model, version_tags)
    if oof_uri is not None:  # a given-splits member is compared by its evaluations, which link their own scores
        tracking.link_metrics(model_id, compared_metrics(metrics, "cv_"))
        metrics = {k: v for k, v in metrics.items() if not k.endswith(("_ci_low", "_ci_high"))}
    log.info("%s: registered %s version %s (best epoch %d)", spec.name, name, version, best_epoch)
    model_uri = f"models:/{name}/{version}"
    checkpoint_uri = mlflow.get_artifact_uri(CHECKPOINT_ARTIFACT if oof_uri is None else CHECKPOINT_DIR)
    mlflow.set_tags({"registered_model_uri": model_uri, "checkpoint_uri": checkpoint_uri})
    return TrainStepResult(model_uri, name, version, run.info.run_id, best_epoch, checkpoint_uri, metrics, oof_uri)


def _log_result(result: TrainResult, prefix: str = "") -> None:
    """A training's seconds, resume point and best-epoch metrics (``best_val_*``: what reuse reads back)."""
    import mlflow

    mlflow.log_metrics({f"{prefix}train_seconds": result.seconds, f"{prefix}best_epoch": result.best_epoch})
    if result.resumed_from:
        mlflow.set_tag(f"{prefix}resumed_from_epoch", str(result.resumed_from))
    mlflow.log_metrics(tracking.prefixed(result.best_metrics, f"{prefix}best_"))


def _progress(report: Callable[[float], None] | None, total: int, before: int = 0) -> list[Callback]:
    return [] if report is None else [ProgressCallback(report, total, before)]


def fold_rows(folds: np.ndarray, k: int, n_folds: int, monitor: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the rows fold k's model trains on and validates on: the folds but k and k+1, and k+1, which picks
    its epoch; with ``monitor`` ``last`` (no epoch picked) every fold but k, and k itself, only reported on."""
    if monitor == "last":
        return folds != k, folds == k
    inner = (k + 1) % n_folds
    return (folds != k) & (folds != inner), folds == inner


def _train_folds(
    config: TrainStepConfig, manifest: Manifest, workdir: Path, progress: Callable[[float], None] | None = None
) -> tuple[FoldAverage, int, dict[str, float], str]:
    """One model per fold (see the module docstring); returns their average, the median best epoch, the
    out-of-fold scores (``cv_*``, with intervals) and the out-of-fold predictions' URI."""
    import mlflow

    spec, pool = config.spec, manifest.cv_pool(config.cv)
    folds = pool["fold"].to_numpy()
    oof = np.zeros((len(pool), len(LABELS)))
    models, epochs, seconds = [], [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(config.cv.folds):
            held_out = folds == k
            fit, pick = fold_rows(folds, k, config.cv.folds, spec.monitor)
            fit, pick = pool[fit], pool[pick]
            result = train(spec, manifest.rows_dataset(fit, spec.image_size),
                           manifest.rows_dataset(pick, spec.image_size),
                           workdir / f"fold_{k}",
                           callbacks=[MlflowCallback(f"fold{k}_"),
                                      *_progress(progress, spec.epochs * config.cv.folds, spec.epochs * k)],
                           device=config.device)  # fmt: skip
            _log_result(result, f"fold{k}_")
            oof[held_out] = predict_images(result.model, manifest.rows_dataset(pool[held_out], spec.image_size),
                                           spec.image_size, config.views, spec.batch_size,
                                           preprocess=spec.fundus_preprocess())  # fmt: skip
            shutil.copyfile(result.best_checkpoint, Path(tmp) / f"fold_{k}.pt")
            models.append(result.model)
            epochs.append(result.best_epoch)
            seconds += result.seconds
        mlflow.log_artifacts(tmp, CHECKPOINT_DIR)
    labels = pool.loc[:, list(LABELS)].to_numpy()
    frame = predictions_frame(list(pool["id"]), labels, oof).assign(fold=folds)
    mlflow.log_text(frame.to_csv(index=False), "predictions/oof.csv")
    oof_uri = mlflow.get_artifact_uri("predictions/oof.csv")
    mlflow.set_tag("oof_predictions_uri", oof_uri)
    report = scored_report(labels, oof, (0.5,) * len(LABELS), [patient_of(i) for i in pool["id"]])
    metrics = tracking.prefixed(report, "cv_")
    best_epoch = int(np.median(epochs))
    mlflow.log_metrics({**metrics, "train_seconds": seconds, "best_epoch": best_epoch})
    return FoldAverage(models).eval(), best_epoch, metrics, oof_uri


if __name__ == "__main__":
    sys.exit(cli.main(TrainStepConfig, run))
