"""Ensemble: member models + their validation predictions -> weights, thresholds and a registered pyfunc.

Weights are given or derived from each member's validation ``f1_macro`` (normalised). With ``calibrate``, each
member's probabilities are first temperature-scaled per class (temperatures fit on its validation predictions:
focal and class-balanced losses do not give calibrated probabilities, and a weighted mean of uncalibrated members
over-weights the overconfident one); the ECE before and after is logged. The ensemble's validation probabilities
are the weighted mean of the saved (calibrated) member predictions (no network runs), and its per-class
thresholds are fit on them for each class's objective, as the profile's ``threshold_strategy`` says.

Given out-of-fold member predictions (cross-validation: the frames carry each image's ``fold``), the registered
ensemble is fit on all of them, and its honest CV score is **cross-fitted**: for each fold k, temperatures, weights
and thresholds are fit on the other folds' predictions and applied to fold k, so no image is scored by anything
fit on its own patient. Those scores (``cv_*``, with intervals over patients) and the cross-fitted predictions
(``predictions/cv.csv``; probabilities shifted so that each fold's threshold sits at 0.5) are logged; promotion in
CV mode compares them. The result is registered as ``odir-ensemble``: an MLflow
pyfunc that holds the member checkpoints, the weights, the temperatures, the TTA views and the thresholds, and
predicts labels from image paths or bytes.

Each fold model is also exported to ONNX (:mod:`components.models.runtime`) and checked against its eager network on
up to :data:`EXPORT_CHECK_IMAGES` of the first member's validation (or out-of-fold) images, with every TTA view: the
exports go into the pyfunc, which runs them under ONNX Runtime, only when every fold model's probabilities are within
:data:`~components.models.runtime.TOLERANCE` of eager; otherwise the version runs eager PyTorch, and the run says so
(tag ``export``, metric ``export_largest_difference``).

The ensemble's run also logs ``drift_reference/`` (:func:`steps.support.drift_reference.log_drift_reference`):
statistics and pooled embeddings (first member, first fold model) of up to 500 images that model never trained on
(val, or fold 0 in CV mode); the registered version names it in its tags ``drift_reference_uri`` and
``drift_reference_sha256``, so every version carries the reference that new images are checked against
(``odir check-drift``).
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
import pandas as pd
import torch

from components import LABELS
from components.data.dataset import FundusDataset
from components.data.splits import patient_of
from components.evaluation.calibration import apply_temperature, calibration_errors, fit_temperatures
from components.evaluation.ensemble import align_members, normalise_weights, weighted_mean, weights_from_scores
from components.evaluation.metrics import DEFAULT_THRESHOLD, f1_macro, multilabel_report
from components.evaluation.scoring import compared_metrics, scored_report
from components.evaluation.thresholds import ThresholdResult, fit_thresholds
from components.models import DEFAULT_BACKEND
from components.models.runtime import TOLERANCE, ExportedNetwork, export_onnx, largest_difference
from components.models.tta import STUDY_VIEWS, check_views
from components.monitoring.reference import MIN_REFERENCE_IMAGES, reference_sample
from components.monitoring.referral import ReferralSpec
from components.training.checkpoints import load_trained
from steps.support import cli, integrity, registry, tracking
from steps.support.base import StepConfig, run_step
from steps.support.drift_reference import build_drift_reference, log_drift_reference
from steps.support.fingerprint import code_fingerprint
from steps.support.manifest import load_manifest
from steps.support.members import member_checkpoints
from steps.support.predictions import labels_of, predictions_frame, read_predictions
from steps.support.thresholds import grid_of, log_thresholds, read_thresholds

log = logging.getLogger(__name__)

EXPORT_CHECK_IMAGES = 16
"""Real images on which each exported fold model is checked against its eager network (all TTA views of each)."""


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(StepConfig):
    """Combine registered members into the registered odir-ensemble pyfunc."""

    member_model_uris: tuple[str, ...]
    member_val_predictions: tuple[str, ...]
    manifest_uri: str
    weights: tuple[float, ...] | None = None
    views: tuple[str, ...] = STUDY_VIEWS
    grid: str = "study"
    objectives: tuple[str, ...] = ("f1", "f1", "f1")
    threshold_strategy: str = "tuned"  # components.evaluation.thresholds.STRATEGIES
    calibrate: bool = True
    referral: ReferralSpec = field(default_factory=ReferralSpec)
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


def _register(
    config: EnsembleConfig, names: list[str], weights: np.ndarray, thresholds: dict, temperatures: np.ndarray,
    tags: dict, check_images: list[str],
) -> str:  # fmt: skip
    """Logs the pyfunc with the member checkpoints (and their checked exports) and registers it; returns the new
    version."""
    import mlflow

    from steps.support.ensemble_model import CONFIG_ARTIFACT, OdirEnsemble, input_schema, output_schema

    code = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "ensemble.json"
        artifacts, keys = {}, []
        for index, uri in enumerate(config.member_model_uris):  # one checkpoint, or one per fold model
            checkpoints = {f"member_{index}_{k}": str(path) for k, path in enumerate(member_checkpoints(uri))}
            artifacts.update(checkpoints)
            keys.append(list(checkpoints))
        exports, exported = _exports(config, artifacts, check_images, Path(tmp))
        artifacts.update(exports)
        payload = {"members": names, "model_uris": list(config.member_model_uris), "weights": weights.tolist(),
                   "views": list(config.views), "thresholds": thresholds, "temperatures": temperatures.tolist(),
                   "checkpoints": keys, "referral": config.referral.model_dump(), "exported": exported}  # fmt: skip
        config_path.write_text(json.dumps(payload, indent=2))
        artifacts[CONFIG_ARTIFACT] = str(config_path)
        with warnings.catch_warnings():  # no input example on purpose: it would have to be an image file
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                step=tracking.MODEL_STEP,
                python_model=OdirEnsemble(),
                artifacts=artifacts,
                code_paths=[str(code / "components"), str(code / "steps")],
                signature=mlflow.models.ModelSignature(inputs=input_schema(), outputs=output_schema()),
                pip_requirements=tracking.pinned_requirements(
                    "torch", "torchvision", "timm", "numpy", "pandas", "pillow", "onnxruntime"
                ),
                model_config={"backend": DEFAULT_BACKEND},
            )
    return integrity.register(info.model_uri, registry.ENSEMBLE_MODEL, tags)  # with its tags and files' SHA-256


def _check_images(config: EnsembleConfig, frame: pd.DataFrame) -> list[str]:
    """Up to :data:`EXPORT_CHECK_IMAGES` of the first member's validation (or out-of-fold) images, a fixed sample."""
    manifest = load_manifest(config.manifest_uri)
    by_id = manifest.frame.drop_duplicates("id").set_index("id")
    ids = [frame["id"].iloc[i] for i in reference_sample(len(frame), EXPORT_CHECK_IMAGES)]
    return [str(manifest.local_root / by_id.loc[image_id, "path"]) for image_id in ids]


def _exports(
    config: EnsembleConfig, checkpoints: dict[str, str], images: list[str], folder: Path
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Each fold model exported to ONNX in ``folder`` and checked against its eager network on ``images`` (every TTA
    view). Returns the pyfunc artifacts of the exports and, per checkpoint key, its export's artifact and the
    checkpoint's file name; both empty (the version runs eager) when an export fails or differs by more than
    :data:`~components.models.runtime.TOLERANCE`, which the log and the run's tag ``export`` say."""
    import mlflow

    artifacts, exported, largest = {}, {}, 0.0
    for key, checkpoint in checkpoints.items():
        model, spec = load_trained(checkpoint, "cpu")  # the reference: eager float32 on the CPU
        batch = torch.stack([image for image, _ in FundusDataset(images, None, spec.image_size,
                                                                  preprocess=spec.fundus_preprocess())])  # fmt: skip
        try:
            path = export_onnx(model, spec.image_size, folder / f"{key}.onnx")
            difference = largest_difference(model, ExportedNetwork(path), batch, config.views)
        except Exception as error:
            return _no_exports(f"{key} ({Path(checkpoint).name}) could not be exported: {error}")
        largest = max(largest, difference)
        if difference > TOLERANCE:
            return _no_exports(f"{key} ({Path(checkpoint).name}): its export's probabilities differ from eager by "
                               f"up to {difference:.2g} on {len(images)} images, over {TOLERANCE:g}")  # fmt: skip
        artifacts[f"{key}_onnx"] = str(path)
        exported[key] = {"artifact": f"{key}_onnx", "checkpoint": Path(checkpoint).name}
    mlflow.log_metric("export_largest_difference", largest)
    mlflow.log_param("export_check_images", len(images))
    mlflow.set_tag("export", "onnx")
    log.info("exported %d fold models to ONNX: probabilities within %.2g of eager on %d images", len(exported),
             largest, len(images))  # fmt: skip
    return artifacts, exported


def _no_exports(reason: str) -> tuple[dict, dict]:
    """No exports: the version runs eager PyTorch; the log and the run's tag ``export`` say why."""
    import mlflow

    log.warning("no ONNX exports, the ensemble runs eager PyTorch: %s", reason)
    mlflow.set_tag("export", f"none: {reason}"[:5000])
    return {}, {}


def _temperatures(config: EnsembleConfig, labels: np.ndarray, member_probs: list[np.ndarray]) -> np.ndarray:
    """``(members, 3)`` temperatures fit on these predictions, all 1 without ``calibrate``."""
    if not config.calibrate:
        return np.ones((len(member_probs), len(LABELS)))
    return np.stack([fit_temperatures(labels, probs) for probs in member_probs])


def _calibrate(
    config: EnsembleConfig, names: list[str], labels: np.ndarray, member_probs: list[np.ndarray]
) -> np.ndarray:
    """``(members, 3)`` temperatures fit on the validation predictions (all 1 without ``calibrate``), logged with
    each member's ECE before and after (on the predictions they were fit on: the evaluate step's test-split ECE of
    the ensemble is the out-of-sample figure)."""
    import mlflow

    temperatures = _temperatures(config, labels, member_probs)
    if not config.calibrate:
        return temperatures
    for name, probs, member_t in zip(names, member_probs, temperatures, strict=True):
        before = calibration_errors(labels, probs)
        after = calibration_errors(labels, apply_temperature(probs, member_t))
        mlflow.log_metrics({f"{name}.temperature_{c}": float(t) for c, t in zip(LABELS, member_t, strict=True)})
        mlflow.log_metrics({f"{name}.val_{k}_before": v for k, v in before.items()})
        mlflow.log_metrics({f"{name}.val_{k}_after": v for k, v in after.items()})
    tracking.log_json({n: dict(zip(LABELS, t.tolist(), strict=True)) for n, t in zip(names, temperatures, strict=True)},
                      "temperatures.json")  # fmt: skip
    return temperatures


def _reused(run) -> EnsembleResult:
    """The result of an earlier, finished ensemble run with the same members, predictions and settings."""
    uri = run.data.tags["registered_model_uri"]
    weights = tracking.read_json(run.data.tags["weights_uri"])
    thresholds = read_thresholds(run.data.tags["thresholds_uri"])
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(("val_", "cv_"))}
    return EnsembleResult(uri, registry.split_model_uri(uri)[1], run.info.run_id, weights, thresholds, metrics)


def run(config: EnsembleConfig) -> EnsembleResult:
    """Weights, thresholds, metrics and the registered pyfunc; see the module docstring."""
    if len(config.member_model_uris) != len(config.member_val_predictions):
        raise ValueError("one validation predictions artifact is needed per member")
    check_views(config.views)
    grid_of(config.grid)  # an unknown grid fails before any work
    names = [registry.split_model_uri(uri)[0].removeprefix(registry.MODEL_PREFIX) for uri in config.member_model_uris]
    frames = {name: read_predictions(uri) for name, uri in zip(names, config.member_val_predictions, strict=True)}
    _, member_probs = align_members(frames)
    folds = frames[names[0]]["fold"].to_numpy() if "fold" in frames[names[0]].columns else None
    digest = load_manifest(config.manifest_uri).digest
    key = tracking.content_key(
        config.member_model_uris, config.member_val_predictions, config.weights, config.views, config.grid,
        config.objectives, config.calibrate, code_fingerprint("ensemble"), config.referral.model_dump(),
        config.threshold_strategy,
    )  # fmt: skip
    tags = {"profile": config.profile, "profile_key": config.profile_key, "data_digest": digest, "ensemble_key": key}
    work = functools.partial(_combine, config, names, frames[names[0]], member_probs, folds, tags)
    return run_step(config, "ensemble", tags, "ensemble", work, _reused)


def _fit(
    config: EnsembleConfig, labels: np.ndarray, member_probs: list[np.ndarray], temperatures: np.ndarray
) -> tuple[np.ndarray, np.ndarray, ThresholdResult]:
    """Weights and thresholds on (calibrated) member predictions; returns the weights, the ensemble's probabilities
    and the tuned thresholds."""
    calibrated = [apply_temperature(p, t) for p, t in zip(member_probs, temperatures, strict=True)]
    weights = _weights(config, labels, calibrated)
    probs = weighted_mean(calibrated, weights)
    return weights, probs, fit_thresholds(labels, probs, grid_of(config.grid), config.objectives,
                                          config.threshold_strategy)  # fmt: skip


def fitted(
    config: EnsembleConfig, labels: np.ndarray, member_probs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, ThresholdResult]:
    """Temperatures, weights and thresholds fit on these member predictions as the step fits them (without logging)."""
    temperatures = _temperatures(config, labels, member_probs)
    weights, _, tuned = _fit(config, labels, member_probs, temperatures)
    return temperatures, weights, tuned


def cross_fit(
    config: EnsembleConfig, labels: np.ndarray, member_probs: list[np.ndarray], folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cross-fitted ensemble probabilities (see the module docstring), and the same shifted so that each fold's
    thresholds sit at 0.5."""
    probs, shifted = np.zeros_like(member_probs[0]), np.zeros_like(member_probs[0])
    for fold in np.unique(folds):
        fit, held_out = folds != fold, folds == fold
        temperatures, weights, tuned = fitted(config, labels[fit], [p[fit] for p in member_probs])
        calibrated = [apply_temperature(p[held_out], t) for p, t in zip(member_probs, temperatures, strict=True)]
        probs[held_out] = weighted_mean(calibrated, weights)
        shifted[held_out] = np.clip(probs[held_out] - tuned.thresholds + DEFAULT_THRESHOLD, 0.0, 1.0)
    return probs, shifted


def _cross_fitted(
    config: EnsembleConfig, frame: pd.DataFrame, member_probs: list[np.ndarray], folds: np.ndarray
) -> dict[str, float]:
    """The cross-fitted CV scores and predictions, logged; returns the ``cv_`` metrics."""
    import mlflow

    labels = labels_of(frame)
    probs, shifted = cross_fit(config, labels, member_probs, folds)
    patients = [patient_of(i) for i in frame["id"]]
    at_threshold = scored_report(labels, shifted, (DEFAULT_THRESHOLD,) * len(LABELS), patients)
    ranked = scored_report(labels, probs, (DEFAULT_THRESHOLD,) * len(LABELS), patients)  # same resamples (seed)
    report = {k: (at_threshold if _at_threshold(k) else ranked)[k] for k in at_threshold}
    metrics = tracking.prefixed(report, "cv_")
    mlflow.log_metrics(metrics)
    cross_fitted = predictions_frame(list(frame["id"]), labels, shifted).assign(fold=folds)
    mlflow.log_text(cross_fitted.to_csv(index=False), "predictions/cv.csv")
    mlflow.set_tag("cv_predictions_uri", mlflow.get_artifact_uri("predictions/cv.csv"))
    return metrics


def _at_threshold(metric: str) -> bool:
    """Whether a metric depends on the thresholds (scored on the shifted probabilities), not on the ranking."""
    return metric.startswith(("f1", "precision", "recall", "sensitivity_", "specificity_", "support"))


def _drift_reference(config: EnsembleConfig, frame: pd.DataFrame) -> dict[str, str]:
    """Logs ``drift_reference/``: image statistics and pooled embeddings under the first member (its first fold
    model) of images it never trained on, what ``odir check-drift`` compares new images with: the first member's
    validation images (``frame``), or in CV mode its fold-0 images, which its first fold model held out. Returns the
    version tags naming it (none when there are too few images for one)."""
    import mlflow

    held_out = "fold 0" if "fold" in frame.columns else "val"
    ids = list(frame.loc[frame["fold"] == 0, "id"] if "fold" in frame.columns else frame["id"])
    if len(ids) < MIN_REFERENCE_IMAGES:
        log.warning("no drift reference: %d %s images, at least %d needed", len(ids), held_out, MIN_REFERENCE_IMAGES)
        return {}
    reference = build_drift_reference(load_manifest(config.manifest_uri), config.member_model_uris[0], ids, held_out)
    tags = log_drift_reference(reference)
    mlflow.set_tags(tags)
    mlflow.log_params({"drift_reference_images": reference.size, "drift_reference_member": config.member_model_uris[0],
                       "drift_reference_split": held_out})  # fmt: skip
    return tags


def _combine(
    config: EnsembleConfig, names: list[str], frame: pd.DataFrame, member_probs: list[np.ndarray],
    folds: np.ndarray | None, tags: dict[str, str], run,
) -> EnsembleResult:  # fmt: skip
    import mlflow

    grid = grid_of(config.grid)
    labels = labels_of(frame)
    temperatures = _calibrate(config, names, labels, member_probs)
    weights, probs, tuned = _fit(config, labels, member_probs, temperatures)
    mlflow.log_params({"members": ",".join(names), "tta_views": ",".join(config.views), "grid": config.grid,
                       "objectives": ",".join(config.objectives), "threshold_strategy": config.threshold_strategy,
                       "calibrate": config.calibrate,
                       **{f"referral_{k}": v for k, v in config.referral.model_dump().items()}})  # fmt: skip
    weights_uri = tracking.log_json(dict(zip(names, weights.tolist(), strict=True)), "weights.json")
    mlflow.set_tags({"weights_uri": weights_uri, "thresholds_uri": log_thresholds(tuned, grid)})
    metrics = tracking.prefixed(multilabel_report(labels, probs, tuned.thresholds), "val_")
    mlflow.log_metrics(metrics)
    if folds is not None:
        metrics.update(_cross_fitted(config, frame, member_probs, folds))
    version_tags = {**tags, "kind": "ensemble", "members": ",".join(config.member_model_uris),
                    **_drift_reference(config, frame)}  # fmt: skip
    check_images = _check_images(config, frame)
    version = _register(config, names, weights, tuned.as_dict(), temperatures, version_tags, check_images)
    model_uri = f"models:/{registry.ENSEMBLE_MODEL}/{version}"
    mlflow.set_tag("registered_model_uri", model_uri)
    # the cross-fitted CV scores compare it with its members' out-of-fold ones; val_* were fit on val: not linked
    tracking.link_metrics(registry.logged_model_id(model_uri), compared_metrics(metrics, "cv_"))
    log.info("registered %s version %s (weights %s)", registry.ENSEMBLE_MODEL, version, np.round(weights, 3))
    return EnsembleResult(
        model_uri, version, run.info.run_id,
        dict(zip(names, weights.tolist(), strict=True)), tuned.as_dict(), metrics,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli.main(EnsembleConfig, run))
