"""Downloads from the store land in one scratch folder per process, gone when the process exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.store import odir_env

DOWNLOAD = """
import mlflow
from steps import tracking
tracking.setup()
with mlflow.start_run():
    uri = tracking.log_json({"a": 1}, "thresholds.json")
    print(tracking.download(uri))
    print(tracking.read_json(uri))
"""


def test_a_downloaded_artifact_is_gone_when_the_process_exits(tmp_path: Path) -> None:
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    env = {**odir_env(tmp_path / "home"), "TMPDIR": str(system_tmp)}
    done = subprocess.run([sys.executable, "-c", DOWNLOAD], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    downloaded, content = done.stdout.splitlines()[-2:]
    assert Path(downloaded).name == "thresholds.json" and Path(downloaded).is_relative_to(system_tmp)
    assert content == "{'a': 1}"
    assert not list(system_tmp.iterdir())  # each check of a version used to leave its copy (tens of MB) here
