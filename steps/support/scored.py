"""A registered version's predictions on labelled images it is compared on, found where the steps left them, and
whether it had a fair chance there: what promotion and comparisons of models (``odir compare``, the pipeline's
comparison table) share.

A version's predictions on a split are the evaluate step's on that split of this data (with the thresholds it scored
them at), else predicted now; in cross-validation mode (split ``cv``) a member's out-of-fold predictions at 0.5 and
an ensemble's cross-fitted ones (each fold's thresholds shifted to 0.5). :func:`fitted_on` says why a version has no
fair score on a split's images: it trained, picked an epoch or tuned a threshold on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.errors import OdirError
from steps.support import registry, tracking
from steps.support.manifest import CV_POOL, Manifest
from steps.support.predict import predict_paths, predict_split
from steps.support.predictions import labels_of, probabilities_of, read_predictions

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


@dataclass(frozen=True)
class Scored:
    """A version's probabilities on a split and the thresholds that make its labels."""

    probs: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class Images:
    """The images both versions are compared on."""

    ids: list[str]
    labels: np.ndarray
    patients: list[str]
    paths: list[str]


def images_of(manifest: Manifest, split: str, cv_frame: pd.DataFrame | None) -> Images:
    """A split's images, or the pool of a cross-validated ensemble's predictions (``cv``)."""
    if split != "cv":
        rows = manifest.split(split)
        return Images(list(rows["id"]), manifest.labels(split), list(rows["patient"]),
                      [str(p) for p in manifest.paths(split)])  # fmt: skip
    if cv_frame is None:
        raise OdirError("split cv: the version has no cross-fitted predictions (it was not built in CV mode)")
    pool = manifest.frame[manifest.frame["split"].isin(CV_POOL)].set_index("id").loc[cv_frame["id"]]
    return Images(list(cv_frame["id"]), labels_of(cv_frame).astype(float), list(pool["patient"]),
                  [str(manifest.local_root / p) for p in pool["path"]])  # fmt: skip


def cv_predictions(model_uri: str, experiment: str) -> pd.DataFrame | None:
    """A cross-validated version's predictions of the pool: an ensemble's cross-fitted ones (shifted so each fold's
    thresholds sit at 0.5) or a member's out-of-fold ones (scored at 0.5); None for a given-splits version."""
    for step, tag in (("ensemble", "cv_predictions_uri"), ("train", "oof_predictions_uri")):
        done = tracking.find_finished_run(experiment, step, {"registered_model_uri": model_uri})
        if done is not None:
            uri = done.data.tags.get(tag)
            return read_predictions(uri) if uri else None
    return None


def scored_on(model_uri: str, manifest: Manifest, split: str, experiment: str, images: Images) -> Scored:
    """A version's predictions on the compared images: its cross-validated ones (``cv``) or the evaluate step's on
    this split of this data, else predicted now."""
    name, version = registry.split_model_uri(model_uri)
    if split == "cv":
        frame = cv_predictions(f"models:/{name}/{version}", experiment)
        if frame is not None and list(frame["id"]) == images.ids:
            return Scored(probabilities_of(frame), np.full(3, 0.5))
        prediction = predict_paths(f"models:/{name}/{version}", images.paths)
        return Scored(prediction.probs, prediction.thresholds)
    tags = {"model_version": f"models:/{name}/{version}", "split": split, "data_digest": manifest.digest}
    done = tracking.find_finished_run(experiment, "evaluate", tags)
    if done is not None and "thresholds" in done.data.params:
        frame = read_predictions(done.data.tags["predictions_uri"])
        thresholds = np.array([float(t) for t in done.data.params["thresholds"].split(",")])
        return Scored(probabilities_of(frame), thresholds)
    prediction = predict_split(f"models:/{name}/{version}", manifest, split, views=("identity",))
    return Scored(prediction.probs, prediction.thresholds)


def cross_validated(model_uri: str) -> bool:
    """Whether a version was built in cross-validation mode (its run holds out-of-fold or cross-fitted predictions)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name, version = registry.split_model_uri(model_uri)
    tags = client.get_run(client.get_model_version(name, version).run_id).data.tags  # whatever experiment it was in
    return "cv_predictions_uri" in tags or "oof_predictions_uri" in tags


def fitted_on(model_uri: str, manifest: Manifest, split: str) -> str | None:
    """Why a version has no fair score on this split of this data: it trained, picked an epoch or tuned a threshold
    on those images (a cross-validated version on train and val, which its fold models trained on; a given-splits
    one on train, on val, which picked its epoch and tuned its thresholds, and on the CV pool, which holds both).
    None when it had no part in them, or was built on other data (not known to have used them)."""
    from mlflow import MlflowClient

    name, version = registry.split_model_uri(model_uri)
    if MlflowClient().get_model_version(name, version).tags.get("data_digest") != manifest.digest:
        return None
    if cross_validated(model_uri):
        return f"it trained on {split} in cross-validation (train + val)" if split in CV_POOL else None
    return {
        "train": "it trained on train",
        "val": "it picked its epoch (and the ensemble its thresholds) on val",
        "cv": "it trained on train and was tuned on val, which make up the CV pool",
    }.get(split)
