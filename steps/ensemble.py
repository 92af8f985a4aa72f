"""Ensemble: member models + their validation predictions -> weights, thresholds and a registered pyfunc.

Weights are given or derived from each member's validation ``f1_macro`` (normalised). The ensemble's validation
probabilities are the weighted mean of the saved member predictions (no network runs), and its per-class
thresholds are tuned on them. The result is registered as ``odir-ensemble``: an MLflow pyfunc that holds the
member checkpoints, the weights, the TTA views and the thresholds, and predicts labels from image paths or bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.ensemble import align_members, normalise_weights, weighted_mean, weights_from_scores
from components.metrics import f1_macro, multilabel_report
from components.thresholds import tune_thresholds
from components.tta import STUDY_VIEWS, check_views
from steps import cli, tracking
from steps.base import StepConfig, code_fingerprint, run_step
from steps.contracts import (
    grid_of,
    labels_of,
    load_manifest,
    log_thresholds,
    member_checkpoint,
    read_predictions,
    read_thresholds,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(StepConfig):
    """Combine registered members into the registered odir-ensemble pyfunc."""

    member_model_uris: tuple[str, ...]
    member_val_predictions: tuple[str, ...]
    manifest_uri: str
    weights: tuple[float, ...] | None = None
    views: tuple[str, ...] = STUDY_VIEWS
    grid: str = "study"
    profile: str = "demo"
    profile_key: str = ""


@dataclass(frozen=True)
class EnsembleResult:
    """The registered ensemble version, its weights and thresholds, and its validation metrics."""

    model_uri: str
    version: str
    run_id: str
    weights: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _weights(config: EnsembleConfig, labels: np.ndarray, member_probs: list[np.ndarray]) -> np.ndarray:
    if config.weights is not None:
        if len(config.weights) != len(config.member_model_uris):
            raise ValueError(f"{len(config.weights)} weights for {len(config.member_model_uris)} members")
        return normalise_weights(config.weights)
    return weights_from_scores([f1_macro(labels, probs) for probs in member_probs])


def _register(config: EnsembleConfig, names: list[str], weights: np.ndarray, thresholds: dict, tags: dict) -> str:
    """Logs the pyfunc with the member checkpoints and registers it; returns the new version."""
    import mlflow

    from steps.ensemble_model import CONFIG_ARTIFACT, OdirEnsemble, input_schema, output_schema

    code = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "ensemble.json"
        payload = {"members": names, "model_uris": list(config.member_model_uris), "weights": weights.tolist(),
                   "views": list(config.views), "thresholds": thresholds}  # fmt: skip
        config_path.write_text(json.dumps(payload, indent=2))
        artifacts = {CONFIG_ARTIFACT: str(config_path)}
        for index, uri in enumerate(config.member_model_uris):
            artifacts[f"member_{index}"] = str(member_checkpoint(uri))
        with warnings.catch_warnings():  # no input example on purpose: it would have to be an image file
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=OdirEnsemble(),
                artifacts=artifacts,
                code_paths=[str(code / "components"), str(code / "steps")],
                signature=mlflow.models.ModelSignature(inputs=input_schema(), outputs=output_schema()),
                pip_requirements=tracking.pinned_requirements(
                    "torch", "torchvision", "timm", "numpy", "pandas", "pillow"
                ),
            )
    return str(mlflow.register_model(info.model_uri, tracking.ENSEMBLE_MODEL, tags=tags).version)  # with its tags


def _reused(run) -> EnsembleResult:
    """The result of an earlier, finished ensemble run with the same members, predictions and settings."""
    uri = run.data.tags["registered_model_uri"]
    weights = tracking.read_json(run.data.tags["weights_uri"])
    thresholds = read_thresholds(run.data.tags["thresholds_uri"])
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("val_")}
    return EnsembleResult(uri, tracking.split_model_uri(uri)[1], run.info.run_id, weights, thresholds, metrics)


def run(config: EnsembleConfig) -> EnsembleResult:
    """Weights, thresholds, metrics and the registered pyfunc; see the module docstring."""
    if len(config.member_model_uris) != len(config.member_val_predictions):
        raise ValueError("one validation predictions artifact is needed per member")
    check_views(config.views)
    grid_of(config.grid)  # an unknown grid fails before any work
    names = [tracking.split_model_uri(uri)[0].removeprefix(tracking.MODEL_PREFIX) for uri in config.member_model_uris]
    frames = {name: read_predictions(uri) for name, uri in zip(names, config.member_val_predictions, strict=True)}
    _, member_probs = align_members(frames)
    labels = labels_of(frames[names[0]])
    digest = load_manifest(config.manifest_uri).digest
    key = tracking.content_key(config.member_model_uris, config.member_val_predictions, config.weights, config.views,
                               config.grid, code_fingerprint("ensemble"))  # fmt: skip
    tags = {"profile": config.profile, "profile_key": config.profile_key, "data_digest": digest, "ensemble_key": key}
    work = functools.partial(_combine, config, names, labels, member_probs, tags)
    return run_step(config, "ensemble", tags, "ensemble", work, _reused)


def _combine(
    config: EnsembleConfig, names: list[str], labels: np.ndarray, member_probs: list[np.ndarray],
    tags: dict[str, str], run,
) -> EnsembleResult:  # fmt: skip
    import mlflow

    grid = grid_of(config.grid)
    weights = _weights(config, labels, member_probs)
    probs = weighted_mean(member_probs, weights)
    tuned = tune_thresholds(labels, probs, grid)
    mlflow.log_params({"members": ",".join(names), "tta_views": ",".join(config.views), "grid": config.grid})
    weights_uri = tracking.log_json(dict(zip(names, weights.tolist(), strict=True)), "weights.json")
    mlflow.set_tags({"weights_uri": weights_uri, "thresholds_uri": log_thresholds(tuned, grid)})
    metrics = tracking.prefixed(multilabel_report(labels, probs, tuned.thresholds), "val_")
    mlflow.log_metrics(metrics)
    version_tags = {**tags, "kind": "ensemble", "members": ",".join(config.member_model_uris)}
    version = _register(config, names, weights, tuned.as_dict(), version_tags)
    mlflow.set_tag("registered_model_uri", f"models:/{tracking.ENSEMBLE_MODEL}/{version}")
    log.info("registered %s version %s (weights %s)", tracking.ENSEMBLE_MODEL, version, np.round(weights, 3))
    return EnsembleResult(
        f"models:/{tracking.ENSEMBLE_MODEL}/{version}", version, run.info.run_id,
        dict(zip(names, weights.tolist(), strict=True)), tuned.as_dict(), metrics,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli.main(EnsembleConfig, run))
