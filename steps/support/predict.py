"""Running a registered model (evaluate, promote, submit, explain, ``odir predict``): a member version is its
checkpoints (:mod:`steps.support.members`), run with the given views, threshold 0.5 and the default referral limits;
the ensemble version runs as its pyfunc (:mod:`steps.support.ensemble_model`), with its own views, thresholds and
referral limits. Grad-CAM loads the same networks (:func:`load_cam_model`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components import LABELS
from components.evaluation.metrics import DEFAULT_THRESHOLD
from components.models.backbones import Classifier
from components.models.tta import STUDY_VIEWS
from components.monitoring.explain import CAM_LAYERS, CamModel, CamNetwork
from components.monitoring.referral import ReferralSpec, ensemble_uncertainty, prediction_frame
from components.training.checkpoints import load_trained
from components.training.spec import ModelSpec
from steps.support import integrity, registry
from steps.support.manifest import Manifest
from steps.support.members import member_checkpoints, member_view_probs
from steps.support.predictions import probabilities_of


@dataclass(frozen=True)
class Prediction:
    """Probabilities of a split, the thresholds that turn them into labels, and per image the full answer
    (labels, probabilities, spreads and referral: :func:`components.monitoring.referral.prediction_frame`)."""

    probs: np.ndarray
    thresholds: np.ndarray
    frame: pd.DataFrame


def is_ensemble(model_uri: str) -> bool:
    name, _ = registry.split_model_uri(model_uri)
    return name == registry.ENSEMBLE_MODEL


def predict_split(model_uri: str, manifest: Manifest, split: str, views: tuple[str, ...]) -> Prediction:
    """Runs a registered model (member or ensemble) over one split."""
    return predict_paths(model_uri, [str(p) for p in manifest.paths(split)], views)


def predict_paths(model_uri: str, paths: list[str], views: tuple[str, ...] = STUDY_VIEWS) -> Prediction:
    """Runs a registered model over image files: the ensemble pyfunc as registered (its own views, thresholds and
    referral limits), a member with ``views``, threshold 0.5 and the default referral limits."""
    if is_ensemble(model_uri):
        import mlflow

        model = mlflow.pyfunc.load_model(str(integrity.verified_model_dir(model_uri))).unwrap_python_model()
        output = model.predict_sources(paths)  # odir's own files: not confined
        return Prediction(probabilities_of(output), np.asarray(model.thresholds, dtype=np.float64), output)
    probs, tta_std, member_std = ensemble_uncertainty([member_view_probs(member_checkpoints(model_uri), paths, views)],
                                                      [1.0])  # fmt: skip
    thresholds = np.full(len(LABELS), DEFAULT_THRESHOLD)
    return Prediction(probs, thresholds, prediction_frame(probs, thresholds, tta_std, member_std, ReferralSpec()))


def load_cam_model(model_uri: str) -> CamModel:
    """A registered model's networks for Grad-CAM (:mod:`components.monitoring.explain`), loaded as
    :func:`predict_paths` runs them, files checked (:mod:`steps.support.integrity`): the ensemble's members (each its
    fold models) with its weights, or a member's one model or fold models."""
    if is_ensemble(model_uri):
        import mlflow

        model = mlflow.pyfunc.load_model(str(integrity.verified_model_dir(model_uri))).unwrap_python_model()
        members, weights = model.members, np.asarray(model.weights, dtype=np.float64)
    else:
        members, weights = [[load_trained(path) for path in member_checkpoints(model_uri)]], np.ones(1)
    networks = [[cam_network(network, spec) for network, spec in folds] for folds in members]
    return CamModel(networks, weights)


def cam_network(network: Classifier, spec: ModelSpec) -> CamNetwork:
    """A trained network with its backbone's CAM layer and the input it was trained on."""
    return CamNetwork(network, CAM_LAYERS.get(spec.backbone), spec.image_size, spec.fundus_preprocess())
