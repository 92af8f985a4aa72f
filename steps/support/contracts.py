"""The formats steps hand each other, in one place: no step imports another step.

- **manifest** (written by ingest, read by every later step): ``manifest/manifest.csv`` (split, id, labels,
  patient, image SHA-256, path) and ``manifest/manifest.json`` (dataset root, digest);
- **predictions** (written by evaluate, read by tune_thresholds, ensemble and the report): ``id``, the true labels
  when known, ``p_D``, ``p_G``, ``p_A``;
- **thresholds** (tune_thresholds and ensemble): ``thresholds.json`` with the grid and the F1 before and after;
- **checkpoints** (train, read by evaluate and ensemble): ``checkpoints/best.pt`` of the train run, or one
  ``checkpoints/fold_<k>.pt`` per fold of a cross-validated member, whose probabilities are averaged: how a member
  version is run (:func:`predict_paths`; the ensemble version runs as its pyfunc);
- **folds** (train and ensemble, in cross-validation mode): the labelled pool (train + val) with each image's fold,
  a function of the manifest and the profile's ``cv`` alone, so every step and host computes the same folds;
- **tags**: the train run's reuse tags (train and the report), a version's score on a split (evaluate and promote);
- **drift reference** (ensemble writes, drift reads): ``drift_reference/reference.json`` and ``reference.npz`` of
  the ensemble run (:class:`components.monitoring.drift.Reference`), named by the version's tags ``drift_reference_uri``
  and ``drift_reference_sha256``; its embeddings come from the first member's first checkpoint, which it records.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components import LABELS
from components.config import ModelSpec
from components.data.dataset import FundusDataset
from components.data.folds import CVSpec, assign_folds
from components.errors import DataError, OdirError, Problem
from components.evaluation.ensemble import PROB_COLUMNS
from components.evaluation.metrics import DEFAULT_THRESHOLD
from components.evaluation.thresholds import STUDY_GRID, ThresholdResult, fine_grid
from components.models.backbones import Classifier
from components.models.inference import predict_image_views
from components.models.tta import STUDY_VIEWS
from components.monitoring.drift import Reference, build_reference, describe_images, embed_images, reference_sample
from components.monitoring.explain import CAM_LAYERS, GALLERY_PER_KIND, CamModel, CamNetwork
from components.monitoring.referral import ReferralSpec, ensemble_uncertainty, prediction_frame
from components.training.loop import load_trained
from steps.support import integrity, storage, tracking
from steps.support.fingerprint import code_fingerprint

if TYPE_CHECKING:
    from steps.support.ensemble_model import OdirEnsemble

MANIFEST_DIR = "manifest"
LABELLED_SPLITS = ("train", "val", "offsite_test")
CV_POOL = ("train", "val")
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_ARTIFACT = f"{CHECKPOINT_DIR}/best.pt"
THRESHOLD_GRIDS = {"study": STUDY_GRID, "fine": fine_grid()}


# --- manifest -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: the rows, the dataset root the paths are relative to (a folder or ``s3://`` URI), and
    the digest."""

    frame: pd.DataFrame
    data_root: str
    digest: str

    @cached_property
    def local_root(self) -> Path:
        """A local folder with the images (an ``s3://`` root is mirrored on first use on this host)."""
        return storage.localize(self.data_root)

    def split(self, name: str) -> pd.DataFrame:
        """The rows of one split in CSV order.

        Raises:
            DataError: when the dataset has no such split.
        """
        rows = self.frame[self.frame["split"] == name]
        if rows.empty:
            present = ", ".join(self.frame["split"].unique())
            raise DataError([Problem(str(self.data_root), f"the dataset has no {name} split (present: {present})")])
        return rows.reset_index(drop=True)

    def has_split(self, name: str) -> bool:
        return bool((self.frame["split"] == name).any())

    def paths(self, name: str) -> list[Path]:
        return [self.local_root / p for p in self.split(name)["path"]]

    def patients(self, splits: tuple[str, ...]) -> set[str]:
        """The patients with images in any of ``splits``."""
        return set(self.frame.loc[self.frame["split"].isin(splits), "patient"])

    def labels(self, name: str) -> np.ndarray:
        return self.split(name).loc[:, list(LABELS)].to_numpy(dtype=np.float32)

    def dataset(self, name: str, image_size: int) -> FundusDataset:
        return FundusDataset(self.paths(name), self.labels(name), image_size)

    def rows_dataset(self, rows: pd.DataFrame, image_size: int) -> FundusDataset:
        """A dataset of some manifest rows (e.g. the images of some folds)."""
        labels = rows.loc[:, list(LABELS)].to_numpy(dtype=np.float32)
        return FundusDataset([self.local_root / p for p in rows["path"]], labels, image_size)

    def cv_pool(self, cv: CVSpec) -> pd.DataFrame:
        """The labelled pool (train + val, in manifest order) with each image's ``fold``: both eyes of a patient in
        one fold, the labels stratified.

        Raises:
            OdirError: naming the profile field ``cv.folds`` when the pool has fewer patients than folds.
        """
        pool = self.frame[self.frame["split"].isin(CV_POOL)].reset_index(drop=True)
        try:
            folds = assign_folds(list(pool["id"]), pool.loc[:, list(LABELS)].to_numpy(), cv.folds, cv.seed)
        except OdirError as error:
            raise OdirError(f"profile field cv.folds: {error}") from None
        return pool.assign(fold=folds)


def log_manifest(manifest: Manifest) -> str:
    """Logs the manifest to the active run; returns its URI (what later steps are given)."""
    import mlflow

    mlflow.log_text(manifest.frame.to_csv(index=False), f"{MANIFEST_DIR}/manifest.csv")
    tracking.log_json({"data_root": manifest.data_root, "digest": manifest.digest}, f"{MANIFEST_DIR}/manifest.json")
    return mlflow.get_artifact_uri(MANIFEST_DIR)


def load_manifest(manifest_uri: str) -> Manifest:
    """Downloads and reads a manifest logged by :func:`log_manifest`."""
    local = Path(tracking.download(manifest_uri))
    meta = json.loads((local / "manifest.json").read_text())
    frame = pd.read_csv(local / "manifest.csv", dtype={"id": str, "patient": str, "path": str, "split": str})
    return Manifest(frame, meta["data_root"], meta["digest"])


def log_dataset(manifest: Manifest, context: str) -> None:
    """Logs the manifest as the active run's MLflow dataset input (name ``odir``, source the dataset root)."""
    import mlflow

    with warnings.catch_warnings():  # a local path as source is "ambiguous" and integer columns get a hint: both moot
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            manifest.frame, source=str(manifest.data_root), name="odir", digest=manifest.digest[:20]
        )
        mlflow.log_input(dataset, context=context)


# --- predictions ----------------------------------------------------------------------------------------------------


def predictions_frame(ids: list[str], labels: np.ndarray | None, probs: np.ndarray) -> pd.DataFrame:
    """``id``, the true labels when known, then ``p_D``, ``p_G``, ``p_A``."""
    frame = pd.DataFrame({"id": ids})
    if labels is not None:
        for column, label in enumerate(LABELS):
            frame[label] = labels[:, column].astype(int)
    for column, name in enumerate(PROB_COLUMNS):
        frame[name] = probs[:, column]
    return frame


def read_predictions(predictions_uri: str) -> pd.DataFrame:
    """A predictions artifact written by the evaluate step."""
    return pd.read_csv(tracking.download(predictions_uri), dtype={"id": str})


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    """The ``p_D``, ``p_G``, ``p_A`` columns of a predictions frame."""
    return frame.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float64)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """The true labels of a predictions frame."""
    missing = [label for label in LABELS if label not in frame.columns]
    if missing:
        raise OdirError(f"predictions have no true labels ({', '.join(missing)} missing): use a labelled split")
    return frame.loc[:, list(LABELS)].to_numpy()


# --- thresholds -----------------------------------------------------------------------------------------------------


def grid_of(name: str) -> tuple[float, ...]:
    if name not in THRESHOLD_GRIDS:
        raise ValueError(f"unknown threshold grid {name!r}; valid: {', '.join(THRESHOLD_GRIDS)}")
    return THRESHOLD_GRIDS[name]


def log_thresholds(result: ThresholdResult, grid: tuple[float, ...]) -> str:
    """Logs ``thresholds.json`` and the thresholds' metrics to the active run; returns the artifact URI."""
    import mlflow

    payload = {
        "thresholds": result.as_dict(), "grid": list(grid),
        "objectives": dict(zip(LABELS, result.objectives, strict=True)),
        "f1": dict(zip(LABELS, result.f1.tolist(), strict=True)),
        "f1_default": dict(zip(LABELS, result.f1_default.tolist(), strict=True)),
    }  # fmt: skip
    mlflow.log_metrics({f"threshold_{label}": t for label, t in result.as_dict().items()})
    mlflow.log_metrics({"f1_gain": result.f1_gain, "f1_macro_tuned": float(result.f1.mean())})
    return tracking.log_json(payload, "thresholds.json")


def read_thresholds(thresholds_uri: str) -> dict[str, float]:
    """Per-class thresholds of a ``thresholds.json`` written by :func:`log_thresholds`."""
    return tracking.read_json(thresholds_uri)["thresholds"]


# --- image folders --------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def image_files(folder: str | Path) -> list[Path]:
    """The images (by suffix: :data:`IMAGE_SUFFIXES`) of a folder or ``s3://`` prefix, sorted by name: what ``odir
    predict``, ``explain`` and ``check-drift`` take.

    Raises:
        DataError: the folder is missing, not a folder, or holds no images.
    """
    local = storage.localize(folder)
    if not local.is_dir():
        raise DataError([Problem(str(folder), "not found" if not local.exists() else "not a folder of images")])
    images = sorted(p for p in local.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError([Problem(str(folder), f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")])
    return images


# --- checkpoints ----------------------------------------------------------------------------------------------------


def member_checkpoints(model_uri: str) -> list[Path]:
    """The local checkpoints of a registered member model: ``[best.pt]``, or its fold models in fold order (tensors
    only, loadable with ``weights_only=True``)."""
    folder = integrity.verified_checkpoints(model_uri)
    if folder is None:
        raise OdirError(f"{model_uri} has no checkpoints: not a member model of odir")
    if (folder / "best.pt").exists():
        return [folder / "best.pt"]
    return sorted(folder.glob("fold_*.pt"), key=lambda path: int(path.stem.removeprefix("fold_")))


def member_view_probs(checkpoints: list[Path], paths: list[str], views: tuple[str, ...]) -> np.ndarray:
    """``(F, V, N, 3)`` probabilities of each of a member's F fold models (one for a plain model) and views."""
    probs = []
    for checkpoint in checkpoints:
        network, spec = load_trained(checkpoint)
        probs.append(predict_image_views(network, paths, spec.image_size, views, spec.batch_size,
                                         preprocess=spec.fundus_preprocess()))  # fmt: skip
    return np.stack(probs)


# --- registered models: a member is its checkpoint, the ensemble its pyfunc ---------------------------------------


@dataclass(frozen=True)
class Prediction:
    """Probabilities of a split, the thresholds that turn them into labels, and per image the full answer
    (labels, probabilities, spreads and referral: :func:`components.monitoring.referral.prediction_frame`)."""

    probs: np.ndarray
    thresholds: np.ndarray
    frame: pd.DataFrame


def is_ensemble(model_uri: str) -> bool:
    name, _ = tracking.split_model_uri(model_uri)
    return name == tracking.ENSEMBLE_MODEL


def predict_split(model_uri: str, manifest: Manifest, split: str, views: tuple[str, ...]) -> Prediction:
    """Runs a registered model (member or ensemble) over one split."""
    return predict_paths(model_uri, [str(p) for p in manifest.paths(split)], views)


def predict_paths(
    model_uri: str, paths: list[str], views: tuple[str, ...] = STUDY_VIEWS, backend: str | None = None
) -> Prediction:
    """Runs a registered model over image files: the ensemble pyfunc as registered (its own views, thresholds and
    referral limits; ``backend`` as :func:`load_ensemble`), a member (eager) with ``views``, threshold 0.5 and the
    default referral limits."""
    if is_ensemble(model_uri):
        model = load_ensemble(model_uri, backend)
        output = model.predict_sources(paths)  # odir's own files: not confined
        return Prediction(probabilities_of(output), np.asarray(model.thresholds, dtype=np.float64), output)
    probs, tta_std, member_std = ensemble_uncertainty([member_view_probs(member_checkpoints(model_uri), paths, views)],
                                                      [1.0])  # fmt: skip
    thresholds = np.full(len(LABELS), DEFAULT_THRESHOLD)
    return Prediction(probs, thresholds, prediction_frame(probs, thresholds, tta_std, member_std, ReferralSpec()))


def load_ensemble(model_uri: str, backend: str | None = None) -> OdirEnsemble:
    """A registered ensemble's pyfunc, its files checked (:mod:`steps.support.integrity`), running ``backend``
    (:data:`components.models.BACKENDS`; None: as registered, its exported networks where it has them)."""
    import mlflow

    config = None if backend is None else {"backend": backend}
    return mlflow.pyfunc.load_model(
        str(integrity.verified_model_dir(model_uri)), model_config=config
    ).unwrap_python_model()


def load_cam_model(model_uri: str) -> CamModel:
    """A registered model's networks for Grad-CAM (:mod:`components.monitoring.explain`), loaded as
    :func:`predict_paths` runs them, files checked (:mod:`steps.support.integrity`): the ensemble's members (each its
    fold models) with its weights, or a member's one model or fold models."""
    if is_ensemble(model_uri):
        model = load_ensemble(model_uri, "torch")  # Grad-CAM needs the eager networks' gradients
        members, weights = model.members, np.asarray(model.weights, dtype=np.float64)
    else:
        members, weights = [[load_trained(path) for path in member_checkpoints(model_uri)]], np.ones(1)
    networks = [[cam_network(network, spec) for network, spec in folds] for folds in members]
    return CamModel(networks, weights)


def cam_network(network: Classifier, spec: ModelSpec) -> CamNetwork:
    """A trained network with its backbone's CAM layer and the input it was trained on."""
    return CamNetwork(network, CAM_LAYERS.get(spec.backbone), spec.image_size, spec.fundus_preprocess())


# --- tags -----------------------------------------------------------------------------------------------------------


def registered_name(spec: ModelSpec) -> str:
    """The registered model a spec's trainings become versions of."""
    return f"{tracking.MODEL_PREFIX}{spec.name}"


def spec_key(spec: ModelSpec) -> str:
    """Identifies a spec: the same key means the same training recipe."""
    return tracking.content_key(spec.model_dump())


def train_tags(spec: ModelSpec, profile: str, digest: str) -> dict[str, str]:
    """The tags that identify a training: model, profile, data, recipe and the code that trains it."""
    return {"odir.model": spec.name, "profile": profile, "data_digest": digest, "spec_key": spec_key(spec),
            "code_fingerprint": code_fingerprint("train")}  # fmt: skip


def evaluate_key(
    model_uri: str, split: str, views: tuple[str, ...], thresholds_uri: str | None = None,
    exclude_shared_with: tuple[str, ...] = (), gradcam_gallery: int = GALLERY_PER_KIND,
) -> str:  # fmt: skip
    """Identifies an evaluation: the same key means the same predictions, scores and Grad-CAM gallery."""
    return tracking.content_key(model_uri, split, tuple(views), thresholds_uri, tuple(exclude_shared_with),
                                gradcam_gallery, code_fingerprint("evaluate"))  # fmt: skip


def record_score(model_uri: str, split: str, digest: str, f1_macro: float) -> None:
    """Tags a model version with its ``f1_macro`` on a split of the data with this digest (promotion reads it)."""
    from mlflow import MlflowClient

    name, version = tracking.split_model_uri(model_uri)
    client = MlflowClient()
    client.set_model_version_tag(name, version, f"score.{split}.f1_macro", f"{f1_macro:.6f}")
    client.set_model_version_tag(name, version, f"score.{split}.digest", digest)


def recorded_score(version_tags: dict[str, Any], split: str, digest: str) -> float | None:
    """The score :func:`record_score` left on a version for this split and data, or None."""
    if version_tags.get(f"score.{split}.digest") != digest:
        return None
    return float(version_tags[f"score.{split}.f1_macro"])


# --- drift reference ------------------------------------------------------------------------------------------------

DRIFT_REFERENCE_DIR = "drift_reference"
DRIFT_REFERENCE_TAG = "drift_reference_uri"
DRIFT_DIGEST_TAG = "drift_reference_sha256"


class NoDriftReference(OdirError):
    """A registered version that carries no drift reference."""


def embedding_checkpoint(member_model_uri: str, name: str | None = None) -> Path:
    """The checkpoint whose pooled features are a drift reference's embeddings: the member's model, or its first
    fold model (``name``: the one a reference recorded)."""
    checkpoints = member_checkpoints(member_model_uri)
    if name is None:
        return checkpoints[0]
    found = [path for path in checkpoints if path.name == name]
    if not found:
        raise OdirError(f"{member_model_uri} has no checkpoint {name}: the drift reference's embeddings came from it")
    return found[0]


def embed_paths(checkpoint: Path, paths: list[str]) -> np.ndarray:
    """``(N, num_features)`` pooled features of images under a member checkpoint, as it sees them (no TTA)."""
    network, spec = load_trained(checkpoint)
    return embed_images(network, paths, spec.image_size, spec.batch_size, spec.fundus_preprocess())


def build_drift_reference(manifest: Manifest, member_model_uri: str, ids: list[str], held_out: str) -> Reference:
    """The drift reference of the images ``ids`` (at most 500 of them, a fixed sample): their statistics and their
    embeddings under ``member_model_uri``'s first checkpoint.

    ``ids`` must be images that checkpoint never trained on (``held_out`` says which: val, or fold 0 in CV mode):
    a network embeds its own training images apart from new ones, so a reference of them would call any new data
    drifted."""
    by_id = manifest.frame.drop_duplicates("id").set_index("id")
    paths = [str(manifest.local_root / by_id.loc[image_id, "path"]) for image_id in ids]
    picked = [paths[i] for i in reference_sample(len(paths))]
    checkpoint = embedding_checkpoint(member_model_uri)
    _, spec = load_trained(checkpoint)
    source = {"member_model_uri": member_model_uri, "checkpoint": checkpoint.name, "image_size": spec.image_size,
              "preprocess": spec.fundus_preprocess().key, "split": held_out,
              "data_digest": manifest.digest}  # fmt: skip
    return build_reference(describe_images(picked), embed_paths(checkpoint, picked), source)


def _reference_digest(folder: Path) -> str:
    """One SHA-256 over a reference folder's files (names and contents)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{path.name}:{integrity.sha256_of(path)}\n".encode())
    return digest.hexdigest()


def log_drift_reference(reference: Reference) -> dict[str, str]:
    """Logs ``drift_reference/`` (``reference.json``, ``reference.npz``) to the active run; returns the version
    tags that name it: its artifact URI and SHA-256 (checked when it is loaded)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        reference.save(tmp)
        digest = _reference_digest(Path(tmp))
        mlflow.log_artifacts(tmp, DRIFT_REFERENCE_DIR)
    return {DRIFT_REFERENCE_TAG: mlflow.get_artifact_uri(DRIFT_REFERENCE_DIR), DRIFT_DIGEST_TAG: digest}


def load_drift_reference(model_uri: str) -> Reference:
    """The drift reference stored with a registered ensemble version, its files checked.

    Raises:
        NoDriftReference: the version has none (a member, or an ensemble registered before references existed).
        IntegrityError: its files are not those recorded at registration.
        OdirError: a URI or version the registry does not have; a reference this code cannot read.
    """
    from mlflow import MlflowClient

    name, version = tracking.registered_version(model_uri)
    tags = MlflowClient().get_model_version(name, version).tags
    if DRIFT_REFERENCE_TAG not in tags:
        why = ("registered before drift references existed (run `odir full` to register an ensemble that has one)"
               if name == tracking.ENSEMBLE_MODEL else f"not an ensemble: references are stored with "
               f"{tracking.ENSEMBLE_MODEL} versions")  # fmt: skip
        raise NoDriftReference(f"models:/{name}/{version} has no drift reference: {why}")
    local = Path(tracking.download(tags[DRIFT_REFERENCE_TAG]))
    if _reference_digest(local) != tags.get(DRIFT_DIGEST_TAG):
        raise integrity.IntegrityError(f"models:/{name}/{version}: its drift reference {tags[DRIFT_REFERENCE_TAG]} "
                                       "fails its SHA-256 check")  # fmt: skip
    try:
        return Reference.load(local)
    except ValueError as error:
        raise OdirError(f"models:/{name}/{version}: {error}") from None
