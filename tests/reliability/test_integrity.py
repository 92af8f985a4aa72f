"""Artifact integrity on a real embedded store: digests recorded at registration, a corrupted checkpoint named on
use with the recovery command, never reused, found and set aside by ``odir verify --fix``; registration is
idempotent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from mlflow import MlflowClient

from components.config import load_profile
from steps import ingest, train
from steps.support import integrity, tracking
from steps.support.members import member_checkpoints
from tests.store import odir_env

ODIR = str(Path(sys.executable).parent / "odir")


@pytest.fixture(scope="module")
def member(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> tuple[train.TrainStepConfig, train.TrainStepResult]:
    manifest = ingest.run(ingest.IngestConfig(data_root=str(tiny_data))).manifest_uri
    config = train.TrainStepConfig(manifest_uri=manifest, spec=load_profile(tiny_profile).model("tiny-a"),
                                   profile="tiny")  # fmt: skip
    return config, train.run(config)


def _stored_checkpoint(run_id: str) -> Path:
    return Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path) / "checkpoints" / "best.pt"


def test_registration_records_each_file_and_is_idempotent(member) -> None:
    _, result = member
    client = MlflowClient()
    tags = client.get_model_version(result.registered_model, result.version).tags
    stored = _stored_checkpoint(result.run_id)
    assert tags["odir.sha256.checkpoints/best.pt"] == integrity.sha256_of(stored)
    assert any(key.startswith("odir.sha256.model/") for key in tags)
    assert not any(key.startswith("odir.sha256.model/code/") for key in tags)  # bundled source is not hashed
    source = client.get_model_version(result.registered_model, result.version).source
    with mlflow.start_run(run_id=result.run_id):  # the same run registering again, as a retried step would
        again = integrity.register(source, result.registered_model, {})
    assert again == result.version
    assert len(client.search_model_versions(f"name = '{result.registered_model}'")) == 1


def test_a_corrupted_checkpoint_is_named_never_reused_and_set_aside(member, odir_home: Path) -> None:
    config, result = member
    client = MlflowClient()
    client.set_registered_model_alias(result.registered_model, "champion", result.version)
    stored = _stored_checkpoint(result.run_id)
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])  # truncated, as a full disk leaves it

    with pytest.raises(integrity.IntegrityError) as error:
        member_checkpoints(result.model_uri)
    assert f"{result.model_uri}: checkpoints/best.pt fails its SHA-256 check" in str(error.value)
    assert "odir verify --fix" in str(error.value)

    found = subprocess.run([ODIR, "verify"], env=odir_env(odir_home), capture_output=True, text=True, timeout=300)
    assert found.returncode == 1, found.stderr[-3000:]
    assert f"{result.model_uri} @champion: BROKEN: checkpoints/best.pt fails its SHA-256 check" in found.stdout

    fixed = subprocess.run([ODIR, "verify", "--fix"], env=odir_env(odir_home), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert fixed.returncode == 1 and "-> set aside" in fixed.stdout
    assert client.get_model_version(result.registered_model, result.version).aliases == []
    assert client.get_run(result.run_id).info.status == "FAILED"

    retrained = train.run(config)  # the same spec, data and code: not the broken run again
    assert retrained.run_id != result.run_id and retrained.version != result.version
    assert member_checkpoints(retrained.model_uri)  # sound


def test_reuse_checks_the_files_without_verify(member) -> None:
    config, _ = member
    current = train.run(config)  # reuses the sound retrained run
    stored = _stored_checkpoint(current.run_id)
    stored.write_bytes(b"not a checkpoint")
    again = train.run(config)
    assert again.run_id != current.run_id  # retrained
    assert MlflowClient().get_run(current.run_id).info.status == "FAILED"
    assert tracking.find_finished_run("odir", "train", {"odir.model": "tiny-a"}).info.run_id == again.run_id
