"""The pipeline through a real Prefect server: served deployments, scheduled retraining, work pools, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.data.synth import SynthSizes, write_synthetic_dataset
from steps.support import registry, tracking
from tests.flows.conftest import BIN, Stack
from tests.servers import stop

pytestmark = pytest.mark.slow


def _client(stack: Stack) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{stack.home / 'mlruns' / 'mlflow.db'}")


def _runs(stack: Stack, step: str, **tags: str) -> list:
    client = _client(stack)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    conditions = [f"tags.`{tracking.STEP_TAG}` = '{step}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
    return client.search_runs([experiment.experiment_id], " and ".join(conditions), max_results=1000)


def _champion(stack: Stack) -> str:
    return str(_client(stack).get_model_version_by_alias(registry.ENSEMBLE_MODEL, "champion").version)


def _deployment_run(stack: Stack, name: str, **params: str) -> subprocess.CompletedProcess:
    args = [str(BIN / "prefect"), "deployment", "run", name, "--watch"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return stack.run(*args)


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    """``odir serve`` against the test server, until the module's tests are done."""
    process = stack.start(str(BIN / "odir"), "serve", log=tmp_path_factory.mktemp("logs") / "serve.log")
    try:
        deadline = time.monotonic() + 120
        while stack.run(str(BIN / "prefect"), "deployment", "inspect", "odir-train/gpu").returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None, "odir serve did not register its deployments"
            time.sleep(2)
        yield process
    finally:
        stop(process)


def test_deployment_run_odir_full(stack: Stack, served, tiny_data: Path, tiny_profile: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    done = _deployment_run(stack, "odir/full", profile=str(tiny_profile), data=str(tiny_data), out=str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Completed" in done.stdout
    client = _client(stack)
    for name in ("odir-tiny-a", "odir-tiny-b", registry.ENSEMBLE_MODEL):
        assert client.search_model_versions(f"name = '{name}'"), name
    assert _champion(stack) == "1"
    assert out.read_text().startswith("id,D,G,A\n")


def test_retrain_trains_only_when_data_changes(
    stack: Stack, served, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    lines = (data / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1,1,0"  # other labels: another dataset digest than the full run's
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    first = _deployment_run(stack, "odir/retrain", profile=str(tiny_profile), data=str(data))
    assert first.returncode == 0, first.stdout[-3000:]
    trained, champion = len(_runs(stack, "train")), _champion(stack)
    second = _deployment_run(stack, "odir/retrain", profile=str(tiny_profile), data=str(data))
    assert second.returncode == 0, second.stdout[-3000:]
    assert len(_runs(stack, "train")) == trained and _champion(stack) == champion  # nothing trained, champion kept
    lines[2] = lines[2].split(",")[0] + ",0,0,1"
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    third = _deployment_run(stack, "odir/retrain", profile=str(tiny_profile), data=str(data))
    assert third.returncode == 0, third.stdout[-3000:]
    assert len(_runs(stack, "train")) == trained + 2
    [promotion] = _client(stack).search_runs(
        [_client(stack).get_experiment_by_name("odir").experiment_id], f"tags.`{tracking.STEP_TAG}` = 'promote'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    evidence = promotion.data.metrics["prob_better"]  # the challenger against the champion of the first run
    assert (promotion.data.params["decision"] == "champion") == (evidence >= 0.9)


def _quick_finished_and_slow_checkpointed(stack: Stack) -> bool:
    quick = _runs(stack, "train", **{"odir.model": "quick"})
    slow_checkpoints = list((stack.home / ".odir" / "work").glob("*/slow/slow/*/last.pt"))
    return bool(slow_checkpoints and quick and quick[0].info.status == "FINISHED")


def test_a_killed_run_resumes_without_repeating_finished_steps(stack: Stack, tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "data", 32, SynthSizes(40, 12, 12, 4), seed=21)
    profile = tmp_path / "slow.yaml"
    profile.write_text(
        "name: slow\ndefaults: {image_size: 32, batch_size: 8, lr: 0.001, seed: 2}\nmodels:\n"
        "  - {name: quick, backbone: tiny_cnn, epochs: 1}\n  - {name: slow, backbone: resnet18, epochs: 40}\n"
    )
    command = [str(BIN / "odir"), "full", "--profile", str(profile), "--data", str(data)]
    first = stack.start(*command, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while not _quick_finished_and_slow_checkpointed(stack):
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert len(_runs(stack, "train", **{"odir.model": "slow"})) == 1
    second = stack.run(*command)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(_runs(stack, "train", **{"odir.model": "quick"})) == 1  # finished: reused, not repeated
    slow_runs = _runs(stack, "train", **{"odir.model": "slow"})
    resumed = [r for r in slow_runs if r.info.status == "FINISHED"]
    assert len(slow_runs) == 2 and len(resumed) == 1
    assert int(resumed[0].data.tags["resumed_from_epoch"]) >= 1
    [killed] = [r for r in slow_runs if r.info.status != "FINISHED"]
    assert killed.info.status == "FAILED" and "died" in killed.data.tags["odir.failure"]  # not RUNNING forever


def test_prefect_yaml_deploys_and_a_worker_runs_odir_full(
    stack: Stack, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    prefect = str(BIN / "prefect")
    template = str(Path(__file__).resolve().parents[2] / "infra" / "k8s" / "gpu-job-template.json")
    pools = {"local": ["--type", "process"], "gpu": ["--type", "process"],
             "gpu-k8s": ["--type", "kubernetes", "--base-job-template", template]}  # fmt: skip
    for pool, options in pools.items():
        created = stack.run(prefect, "work-pool", "create", pool, *options, "--overwrite")
        assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], env={**stack.env, "ODIR_ROOT": str(Path.cwd())},
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for name in ("odir/full", "odir/retrain", "odir-train/gpu", "odir-train/gpu-k8s"):
        assert stack.run(prefect, "deployment", "inspect", name).returncode == 0, name
    worker = stack.start(
        prefect, "worker", "start", "--pool", "local", "--name", "test-worker", log=tmp_path / "worker.log"
    )
    try:
        done = _deployment_run(
            stack, "odir/full", profile=str(tiny_profile), data=str(tiny_data), out=str(tmp_path / "s.csv")
        )
        assert done.returncode == 0, done.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
        assert (tmp_path / "s.csv").exists()
    finally:
        stop(worker)


def test_a_cv_profile_runs_end_to_end_and_is_not_compared_with_a_champion_that_trained_on_its_pool(
    stack: Stack, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    """The real data's shape (no labelled offsite split): a given-splits champion trained on train and was tuned on
    val, so it has no fair score on the CV pool; the CV version stays challenger and says why."""
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    (data / "offsite_test.csv").unlink()
    shutil.rmtree(data / "images" / "offsite_test")
    own = Stack(stack.api, tmp_path / "store", {**stack.env, "ODIR_HOME": str(tmp_path / "store")})
    given = own.run(str(BIN / "odir"), "full", "--profile", str(tiny_profile), "--data", str(data))
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr[-3000:]
    profile = tmp_path / "cv.yaml"
    profile.write_text(
        "name: cvtiny\ndefaults: {image_size: 32, batch_size: 8, epochs: 1, lr: 0.003, seed: 3}\nmodels:\n"
        "  - {name: cv-tiny, backbone: tiny_cnn}\ntta_views: [identity, hflip]\ncv: {folds: 3, seed: 1}\n"
    )
    done = own.run(str(BIN / "odir"), "full", "--profile", str(profile), "--data", str(data))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cv (3 folds); 95% intervals: bootstrap over patients" in done.stdout
    assert (
        "members and ensemble on cross-fitted out-of-fold, paired over patients against the best member:" in done.stdout
    )
    assert "| cv-tiny v1 | " in done.stdout and "| ensemble v2 | " in done.stdout
    [member] = _client(own).search_model_versions("name = 'odir-cv-tiny'")
    assert "patient-grouped" in member.description.lower() or "out-of-fold" in member.description.lower()
    note = "no comparison: champion version 1 trained or was tuned on these images (cv) of the same data"
    assert f"decision: challenger ({note}, so its score there is not a fair one); champion is version 1" in done.stdout
    assert "Models > odir-ensemble > Version 2 > Aliases: champion" in done.stderr
    assert _client(own).get_model_version(registry.ENSEMBLE_MODEL, "2").tags["promotion.evidence"].startswith(note)
    assert _champion(own) == "1"
