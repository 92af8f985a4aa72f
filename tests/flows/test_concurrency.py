"""Two ``odir full`` at once on one store (a scheduled retrain overlapping a manual run): both end well, and the
store holds one version per member, one ensemble version and one champion, and neither leaves files in the system's
temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.flows.conftest import CHECKOUT, Stack

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_two_pipelines_at_once_train_each_model_once(stack: Stack, tiny_data: Path, tiny_profile: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    home = tmp_path / "store"
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    env = {**stack.env, "ODIR_HOME": str(home), "TMPDIR": str(system_tmp)}
    subprocess.run([sys.executable, "-c", "from steps.support import tracking; tracking.setup()"], env=env, check=True)
    command = [str(BIN / "odir"), "full", "--profile", str(tiny_profile), "--data", str(tiny_data)]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    pipelines = [stack.start(*command, log=log, env=env, cwd=CHECKOUT) for log in logs]
    for pipeline, log in zip(pipelines, logs, strict=True):
        assert pipeline.wait(timeout=900) == 0, log.read_text()[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    for name in ("odir-tiny-a", "odir-tiny-b", "odir-ensemble"):
        assert len(client.search_model_versions(f"name = '{name}'")) == 1, name
    assert str(client.get_model_version_by_alias("odir-ensemble", "champion").version) == "1"
    assert not [m.name for m in client.search_registered_models() if m.name.startswith("odir-lock-")]
    experiment = client.get_experiment_by_name("odir")
    trainings = client.search_runs([experiment.experiment_id], "tags.`odir.step` = 'train'")
    assert sorted(run.data.tags["odir.model"] for run in trainings) == ["tiny-a", "tiny-b"]
    left = [path.name for path in system_tmp.iterdir() if not path.name.startswith("torchinductor_")]
    assert not left  # torchinductor_<user>: torch.compile's cache, reused by the next run
