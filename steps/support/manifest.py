"""The images steps are given: a dataset's manifest (and its folds), or a folder of images.

- **manifest** (written by ingest, read by every later step): ``manifest/manifest.csv`` (split, id, labels,
  patient, image SHA-256, path) and ``manifest/manifest.json`` (dataset root, digest);
- **folds** (train and ensemble, in cross-validation mode): the labelled pool (train + val) with each image's fold,
  a function of the manifest and the profile's ``cv`` alone, so every step and host computes the same folds;
- **image folders** (``odir predict``, ``explain``, ``check-drift``): the images of a folder or ``s3://`` prefix.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from components import LABELS
from components.data.dataset import FundusDataset
from components.data.folds import CVSpec, assign_folds
from components.errors import DataError, OdirError, Problem
from steps.support import storage, tracking

MANIFEST_DIR = "manifest"
LABELLED_SPLITS = ("train", "val", "offsite_test")
CV_POOL = ("train", "val")


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
