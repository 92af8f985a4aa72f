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
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components import LABELS
from components.data.splits import DatasetReport, Split, patient_of, validate_dataset
from components.errors import DataError
from steps.support import cli, storage, tracking
from steps.support.base import StepConfig, run_step
from steps.support.fingerprint import code_fingerprint
from steps.support.manifest import LABELLED_SPLITS, Manifest, log_dataset, log_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class IngestConfig(StepConfig):
    """Validate a dataset root and log its manifest."""

    data_root: str


@dataclass(frozen=True)
class IngestResult:
    """The manifest's URI and digest, and what the validation report found."""

    manifest_uri: str
    data_digest: str
    run_id: str
    counts: dict[str, int]
    shared_patients: dict[str, list[str]] = field(default_factory=dict)


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


def dataset_digest(root: str | Path) -> str:
    """The digest a dataset root would be ingested with (what the champion's ``data_digest`` tag is compared to).

    Raises:
        DataError: the dataset is not valid, with its problems.
    """
    report = validate_dataset(storage.localize(root))
    if not report.ok:
        raise DataError(report.problems)
    return manifest_digest(build_manifest(report))


def run(config: IngestConfig) -> IngestResult:
    """Validates ``config.data_root`` and logs the manifest, dataset and report; raises ``DataError`` when invalid.

    The data is read and hashed every time; with ``reuse``, a finished ingest of the same root and digest is
    returned instead of logging the same manifest again.
    """
    root = config.data_root if storage.is_s3(config.data_root) else str(Path(config.data_root).resolve())
    report = validate_dataset(storage.localize(root))
    frame = build_manifest(report) if report.ok else None
    digest = manifest_digest(frame) if frame is not None else "invalid"
    tags = {"data_root": root, "data_digest": digest, "code_fingerprint": code_fingerprint("ingest")}
    return run_step(config, "ingest", tags, "ingest", lambda run: _log(run, root, report, frame), _reused)


def _log(run, root: str, report: DatasetReport, frame: pd.DataFrame | None) -> IngestResult:
    import mlflow

    mlflow.log_param("data_root", root)
    if frame is None:
        mlflow.log_text("\n".join(str(p) for p in report.problems), "validation/problems.txt")
        raise DataError(report.problems)
    manifest = Manifest(frame, root, manifest_digest(frame))
    shared = shared_patients(frame)
    for pair, patients in shared.items():
        log.warning("%d patients have images in both %s (validation scores are optimistic)", len(patients), pair)
    manifest_uri = log_manifest(manifest)
    tracking.log_json(validation_report(frame, shared), "validation/report.json")
    log_dataset(manifest, context="ingest")
    counts = _counts(frame)
    mlflow.log_metrics({f"images_{k}": v for k, v in counts.items()})
    mlflow.set_tag("manifest_uri", manifest_uri)
    return IngestResult(manifest_uri, manifest.digest, run.info.run_id, counts, shared)


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["split"].value_counts(sort=False).items()}


def _reused(run) -> IngestResult:
    """The result of an earlier ingest of the same root and data."""
    from steps.support.manifest import load_manifest

    manifest = load_manifest(run.data.tags["manifest_uri"])
    frame = manifest.frame
    return IngestResult(run.data.tags["manifest_uri"], manifest.digest, run.info.run_id, _counts(frame),
                        shared_patients(frame))  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli.main(IngestConfig, run))
