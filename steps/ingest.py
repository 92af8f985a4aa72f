"""Ingest: validate a dataset root and write the manifest every later step reads.

The manifest (``manifest/manifest.csv`` plus ``manifest/manifest.json`` in the ingest run's artifacts) has one row
per image: split, id, labels, patient id and the SHA-256 of the image file. Its digest covers splits, ids, labels
and image hashes, so the same digest means the same data. Invalid data fails the step (its run ends FAILED with the
problems logged) with the component's clear message; patients shared between the given splits are reported, not
rejected (the real data has 63 patients in both train and val).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from components import LABELS
from components.data import DatasetReport, FundusDataset, Split, patient_of, validate_dataset
from components.errors import DataError, Problem
from steps import cli, storage, tracking

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
LABELLED_SPLITS = ("train", "val", "offsite_test")


@dataclass(frozen=True)
class IngestConfig:
    """Validate a dataset root and log its manifest."""

    data_root: str
    experiment: str = tracking.DEFAULT_EXPERIMENT
    parent_run_id: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """The manifest's URI and digest, and what the validation report found."""

    manifest_uri: str
    data_digest: str
    run_id: str
    counts: dict[str, int]
    shared_patients: dict[str, list[str]] = field(default_factory=dict)


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

    def labels(self, name: str) -> np.ndarray:
        return self.split(name).loc[:, list(LABELS)].to_numpy(dtype=np.float32)

    def dataset(self, name: str, image_size: int) -> FundusDataset:
        return FundusDataset(self.paths(name), self.labels(name), image_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows(root: Path, split: Split) -> list[dict]:
    return [
        {
            "split": split.name,
            "id": image_id,
            **{label: int(v) for label, v in zip(LABELS, labels, strict=True)},
            "patient": patient_of(image_id),
            "sha256": _sha256(path),
            "path": str(path.relative_to(root)),
        }
        for image_id, labels, path in zip(split.ids, split.labels, split.paths, strict=True)
    ]


def build_manifest(report: DatasetReport) -> pd.DataFrame:
    """One row per image of every valid split."""
    rows = [row for split in report.splits.values() for row in _rows(report.root, split)]
    return pd.DataFrame(rows, columns=["split", "id", *LABELS, "patient", "sha256", "path"])


def manifest_digest(frame: pd.DataFrame) -> str:
    """SHA-256 over (split, id, labels, image hash) of every row, in order."""
    columns = ["split", "id", *LABELS, "sha256"]
    text = frame.loc[:, columns].to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def shared_patients(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Patients with images in two labelled splits, per pair of splits (``"train/val": [...]``)."""
    patients = {s: set(frame.loc[frame["split"] == s, "patient"]) for s in LABELLED_SPLITS}
    return {
        f"{a}/{b}": sorted(patients[a] & patients[b])
        for a, b in itertools.combinations(LABELLED_SPLITS, 2)
        if patients[a] & patients[b]
    }


def validation_report(frame: pd.DataFrame, shared: dict[str, list[str]]) -> dict:
    """Counts per split and class, multi-label counts, and the shared patients."""
    splits = {}
    for name, rows in frame.groupby("split", sort=False):
        labels = rows.loc[:, list(LABELS)].to_numpy()
        splits[name] = {
            "images": len(rows), "patients": int(rows["patient"].nunique()),
            "positives": {label: int(labels[:, c].sum()) for c, label in enumerate(LABELS)},
            "multi_label": int((labels.sum(axis=1) > 1).sum()), "no_label": int((labels.sum(axis=1) == 0).sum()),
        }  # fmt: skip
    return {"splits": splits, "shared_patients": {k: {"count": len(v), "patients": v} for k, v in shared.items()}}


def run(config: IngestConfig) -> IngestResult:
    """Validates ``config.data_root``, logs the manifest, dataset and report; raises ``DataError`` when invalid."""
    import mlflow

    root = config.data_root if storage.is_s3(config.data_root) else str(Path(config.data_root).resolve())
    with tracking.step_run("ingest", config.experiment, config.parent_run_id, "ingest", {"data_root": root}) as run:
        mlflow.log_param("data_root", root)
        report = validate_dataset(storage.localize(root))
        if not report.ok:
            mlflow.log_text("\n".join(str(p) for p in report.problems), "validation/problems.txt")
            raise DataError(report.problems)
        frame = build_manifest(report)
        digest = manifest_digest(frame)
        shared = shared_patients(frame)
        for pair, patients in shared.items():
            log.warning("%d patients have images in both %s (validation scores are optimistic)", len(patients), pair)
        mlflow.log_text(frame.to_csv(index=False), f"{MANIFEST_DIR}/manifest.csv")
        tracking.log_json({"data_root": root, "digest": digest}, f"{MANIFEST_DIR}/manifest.json")
        tracking.log_json(validation_report(frame, shared), "validation/report.json")
        log_dataset(Manifest(frame, root, digest), context="ingest")
        counts = {str(k): int(v) for k, v in frame["split"].value_counts(sort=False).items()}
        mlflow.log_metrics({f"images_{k}": v for k, v in counts.items()})
        mlflow.set_tags({"data_digest": digest})
        manifest_uri = mlflow.get_artifact_uri(MANIFEST_DIR)
        return IngestResult(manifest_uri, digest, run.info.run_id, counts, shared)


def log_dataset(manifest: Manifest, context: str) -> None:
    """Logs the manifest as the active run's MLflow dataset input (name ``odir``, source the dataset root)."""
    import mlflow

    with warnings.catch_warnings():  # a local path as source is "ambiguous" and integer columns get a hint: both moot
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            manifest.frame, source=str(manifest.data_root), name="odir", digest=manifest.digest[:20]
        )
        mlflow.log_input(dataset, context=context)


def load_manifest(manifest_uri: str) -> Manifest:
    """Downloads and reads a manifest logged by :func:`run`."""
    local = Path(tracking.download(manifest_uri))
    meta = json.loads((local / "manifest.json").read_text())
    frame = pd.read_csv(local / "manifest.csv", dtype={"id": str, "patient": str, "path": str, "split": str})
    return Manifest(frame, meta["data_root"], meta["digest"])


if __name__ == "__main__":
    sys.exit(cli.main(IngestConfig, run))
