"""The drift reference (ensemble writes it, drift reads it): ``drift_reference/reference.json`` and ``reference.npz``
of the ensemble run (:class:`components.monitoring.reference.Reference`), named by the version's tags
``drift_reference_uri`` and ``drift_reference_sha256``; its embeddings come from the first member's first checkpoint,
which it records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.errors import OdirError
from components.monitoring.image_stats import describe_images
from components.monitoring.reference import Reference, build_reference, embed_images, reference_sample
from components.training.checkpoints import load_trained
from steps.support import integrity, registry, tracking
from steps.support.manifest import Manifest
from steps.support.members import member_checkpoints

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

    name, version = registry.registered_version(model_uri)
    tags = MlflowClient().get_model_version(name, version).tags
    if DRIFT_REFERENCE_TAG not in tags:
        why = ("registered before drift references existed (run `odir full` to register an ensemble that has one)"
               if name == registry.ENSEMBLE_MODEL else f"not an ensemble: references are stored with "
               f"{registry.ENSEMBLE_MODEL} versions")  # fmt: skip
        raise NoDriftReference(f"models:/{name}/{version} has no drift reference: {why}")
    local = Path(tracking.download(tags[DRIFT_REFERENCE_TAG]))
    if _reference_digest(local) != tags.get(DRIFT_DIGEST_TAG):
        raise integrity.IntegrityError(f"models:/{name}/{version}: its drift reference {tags[DRIFT_REFERENCE_TAG]} "
                                       "fails its SHA-256 check")  # fmt: skip
    try:
        return Reference.load(local)
    except ValueError as error:
        raise OdirError(f"models:/{name}/{version}: {error}") from None
