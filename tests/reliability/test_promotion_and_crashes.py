"""Promotion safety and crashed runs, against a real embedded store and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components.config import load_profile
from steps import ensemble, evaluate, ingest, promote, train
from steps.support import locks, registry, tracking
from steps.support.manifest import load_manifest
from tests.store import odir_env

WEIGHTS = ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))


@pytest.fixture(scope="module")
def versions(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> dict:
    """Three ensemble versions from two tiny members, scored on offsite, none promoted yet."""
    ing = ingest.run(ingest.IngestConfig(data_root=str(tiny_data)))
    profile = load_profile(tiny_profile)
    members = [
        train.run(train.TrainStepConfig(manifest_uri=ing.manifest_uri, spec=profile.model(m), profile="tiny"))
        for m in ("tiny-a", "tiny-b")
    ]
    val = [evaluate.run(evaluate.EvaluateConfig(model_uri=m.model_uri, manifest_uri=ing.manifest_uri)) for m in members]
    uris = []
    for weights in WEIGHTS:
        config = ensemble.EnsembleConfig(member_model_uris=tuple(m.model_uri for m in members),
                                         member_val_predictions=tuple(v.predictions_uri for v in val),
                                         manifest_uri=ing.manifest_uri, weights=weights)  # fmt: skip
        uri = ensemble.run(config).model_uri
        evaluate.run(evaluate.EvaluateConfig(model_uri=uri, manifest_uri=ing.manifest_uri, split="offsite_test"))
        uris.append(uri)
    client = MlflowClient()
    scores = {
        u: float(client.get_model_version(*registry.split_model_uri(u)).tags["score.offsite_test.f1_macro"])
        for u in uris
    }
    return {"manifest_uri": ing.manifest_uri, "uris": uris, "scores": scores}


def _champion() -> str | None:
    return promote.current_champion(registry.ENSEMBLE_MODEL)


def test_a_crash_before_the_alias_moves_keeps_the_champion(versions: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = versions["uris"][0], versions["uris"][1]
    promote.run(promote.PromoteConfig(model_uri=first, manifest_uri=versions["manifest_uri"]))
    before = _champion()

    def crash(*args: object) -> None:
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(ConnectionError):
        promote.run(promote.PromoteConfig(model_uri=second, manifest_uri=versions["manifest_uri"]))
    monkeypatch.undo()
    assert _champion() == before
    failed = mlflow.search_runs(
        experiment_names=["odir"], filter_string="attributes.status = 'FAILED'", output_format="list"
    )
    assert any(r.data.tags.get(tracking.STEP_TAG) == "promote" for r in failed)
    assert not [
        m for m in MlflowClient().search_registered_models() if m.name.startswith("odir-lock-")
    ]  # lock released


def test_concurrent_promotions_leave_the_best_champion(versions: dict, odir_home: Path) -> None:
    first = versions["uris"][0]
    if _champion() is None:  # the crash test makes it champion when it runs first
        promote.run(promote.PromoteConfig(model_uri=first, manifest_uri=versions["manifest_uri"]))
    env = odir_env(odir_home)
    command = [sys.executable, "-m", "steps.promote", "--manifest-uri", versions["manifest_uri"], "--model-uri"]
    racers = [
        subprocess.Popen([*command, uri], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for uri in versions["uris"][1:]
    ]  # fmt: skip
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-2000:]
    scores = versions["scores"]
    champion = _champion()
    assert scores[f"models:/{registry.ENSEMBLE_MODEL}/{champion}"] >= scores[first]  # never a worse one
    for uri in versions["uris"][1:]:  # whoever lost is challenger, with the evidence on its version
        tags = MlflowClient().get_model_version(*registry.split_model_uri(uri)).tags
        assert (tags["promotion.decision"] == "champion") == (float(tags["promotion.prob_better"]) >= 0.9)


def test_the_registry_lock_excludes_a_second_holder(versions: dict, odir_home: Path) -> None:
    from components.errors import OdirError

    with locks.registry_lock("promote-test"):
        other = subprocess.run(
            [sys.executable, "-c", "from steps.support import locks\n"
             "with locks.registry_lock('promote-test', timeout=2):\n    print('acquired')"],
            env=odir_env(odir_home), capture_output=True, text=True,
        )  # fmt: skip
        assert other.returncode != 0 and "could not acquire the promote-test lock within 2 s" in other.stderr
        with pytest.raises(OdirError, match="could not acquire"), locks.registry_lock("promote-test", timeout=0.5):
            pass
    with locks.registry_lock("promote-test", timeout=2):  # released: free again
        pass


def test_a_killed_step_is_marked_failed_by_the_next_one(versions: dict, odir_home: Path, tiny_profile: Path) -> None:
    script = (
        "import time\nfrom steps.support import tracking\n"
        "with tracking.step_run('train', 'odir', None, 'doomed', {'odir.model': 'doomed'}):\n"
        "    print('started', flush=True)\n    time.sleep(600)\n"
    )
    doomed = subprocess.Popen(
        [sys.executable, "-c", script], env=odir_env(odir_home), stdout=subprocess.PIPE, text=True
    )
    assert doomed.stdout.readline().strip() == "started"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    time.sleep(0.2)
    [running] = mlflow.search_runs(
        experiment_names=["odir"], filter_string="tags.`odir.model` = 'doomed'", output_format="list"
    )
    assert running.info.status == "RUNNING"
    evaluate.run(
        evaluate.EvaluateConfig(model_uri=versions["uris"][0], manifest_uri=versions["manifest_uri"], reuse=False)
    )
    after = MlflowClient().get_run(running.info.run_id)
    assert after.info.status == "FAILED"
    assert f"process {doomed.pid}" in after.data.tags["odir.failure"]


def test_runs_never_hold_secret_values(versions: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value-1234", "POSTGRES_PASSWORD": "pg-pass-98765"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    root = str(Path(load_manifest(versions["manifest_uri"]).data_root))
    ingest.run(ingest.IngestConfig(data_root=root, reuse=False))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("odir")
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in values for s in secrets.values() if s in v], run.info.run_id
