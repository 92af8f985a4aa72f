"""Train: one model spec -> one MLflow run -> one registered model version ``odir-<name>``.

The spec arrives as data (a :class:`~components.config.ModelSpec`, JSON on the command line), never as a profile
path, so a worker on another host needs nothing of the flow's files: only the tracking server and the data.

The run holds every spec field as a param, per-epoch ``train_loss``, ``val_loss`` and validation metrics (both
F1s, per-class F1, AUROC), system metrics, the dataset input, the best checkpoint (``checkpoints/best.pt``, tensors
only) and the best model logged with ``mlflow.pytorch``. The version is tagged with the dataset digest and the
profile. An interrupted run resumes from its local checkpoint folder (``last.pt`` stays there: resume state only).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from components.config import ModelSpec
from components.models import Classifier, parameter_count, preprocessing_config
from components.training import Callback, train
from steps import cli, tracking
from steps.base import StepConfig, run_step
from steps.contracts import CHECKPOINT_ARTIFACT, Manifest, load_manifest, log_dataset, registered_name, train_tags

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


class MlflowCallback(Callback):
    """Logs each epoch's metrics to the active run in one call (one round trip per epoch to a server)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(tracking.prefixed(metrics, ""), step=epoch)


def work_folder(config: TrainStepConfig, digest: str) -> Path:
    """Where checkpoints are kept for resuming: per dataset digest, profile and model."""
    if config.workdir:
        return Path(config.workdir)
    return tracking.project_root() / ".odir" / "work" / digest[:12] / config.profile / config.spec.name


def _signature(spec: ModelSpec):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, spec.image_size, spec.image_size), "images")])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3), "logits")]))


def _log_model(spec: ModelSpec, model: Classifier, tags: dict[str, str]) -> tuple[str, str]:
    """Logs the best checkpoint's model with ``mlflow.pytorch`` and registers it with ``tags``; returns (name,
    version)."""
    import mlflow

    mlflow.log_metric("parameters", parameter_count(model))
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=_signature(spec),
        serialization_format="pickle",  # the pt2 default needs a full-resolution input example (tens of MB)
        code_paths=[str(Path(__file__).resolve().parents[1] / "components")],
        pip_requirements=tracking.pinned_requirements("torch", "torchvision"),
        metadata={"odir_spec": spec.model_dump(), "preprocessing": preprocessing_config(spec.backbone)},
    )
    version = mlflow.register_model(info.model_uri, registered_name(spec), tags=tags)  # the version with its tags
    return version.name, str(version.version)


def _reused(run) -> TrainStepResult:
    """The result of an earlier, finished training run of the same spec on the same data."""
    tags, metrics = run.data.tags, run.data.metrics
    best = {
        key.removeprefix("best_"): v for key, v in metrics.items() if key.startswith("best_") and key != "best_epoch"
    }
    name, version = tracking.split_model_uri(tags["registered_model_uri"])
    return TrainStepResult(
        tags["registered_model_uri"], name, version, run.info.run_id, int(metrics["best_epoch"]),
        tags["checkpoint_uri"], best,
    )  # fmt: skip


def run(config: TrainStepConfig) -> TrainStepResult:
    """Trains, logs and registers one model (or reuses a finished run of the same spec, data and training code);
    see the module docstring."""
    manifest = load_manifest(config.manifest_uri)
    tags = train_tags(config.spec, config.profile, manifest.digest)
    return run_step(
        config, "train", tags, f"train {config.spec.name}", lambda run: _train(config, manifest, tags, run), _reused,
        system_metrics=True,
    )  # fmt: skip


def _train(config: TrainStepConfig, manifest: Manifest, tags: dict[str, str], run) -> TrainStepResult:
    import mlflow

    spec = config.spec
    train_data, val_data = manifest.dataset("train", spec.image_size), manifest.dataset("val", spec.image_size)
    mlflow.log_params(tracking.flat_params({**spec.model_dump(), "profile": config.profile}))
    mlflow.log_params({"data_digest": manifest.digest, "manifest_uri": config.manifest_uri})
    mlflow.log_text(yaml.safe_dump(spec.model_dump(), sort_keys=False), "config/spec.yaml")
    preprocessing = preprocessing_config(spec.backbone)  # applied by the model itself, recorded in best.pt too
    mlflow.log_params({"preprocessing_mean": preprocessing["mean"], "preprocessing_std": preprocessing["std"]})
    log_dataset(manifest, context="training")
    result = train(spec, train_data, val_data, work_folder(config, manifest.digest), callbacks=[MlflowCallback()],
                   device=config.device)  # fmt: skip
    mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds})
    if result.resumed_from:
        mlflow.set_tag("resumed_from_epoch", str(result.resumed_from))
    mlflow.log_metrics(tracking.prefixed(result.best_metrics, "best_"))  # best_val_*: what reuse reads back
    mlflow.log_artifact(str(result.best_checkpoint), CHECKPOINT_ARTIFACT.rpartition("/")[0])
    version_tags = {**tags, "kind": "member", "image_size": str(spec.image_size)}
    name, version = _log_model(spec, result.model, version_tags)
    log.info("%s: registered %s version %s (best epoch %d)", spec.name, name, version, result.best_epoch)
    model_uri, checkpoint_uri = f"models:/{name}/{version}", mlflow.get_artifact_uri(CHECKPOINT_ARTIFACT)
    mlflow.set_tags({"registered_model_uri": model_uri, "checkpoint_uri": checkpoint_uri})
    return TrainStepResult(
        model_uri, name, version, run.info.run_id, result.best_epoch, checkpoint_uri, result.best_metrics
    )


if __name__ == "__main__":
    sys.exit(cli.main(TrainStepConfig, run))
