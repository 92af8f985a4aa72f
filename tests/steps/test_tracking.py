"""Downloads from the store land in one scratch folder per process, gone when the process exits, or, when it was
killed, at the next download of another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store import odir_env

DOWNLOAD = """
import mlflow
from steps.support import tracking
tracking.setup()
with mlflow.start_run():
    uri = tracking.log_json({"a": 1}, "thresholds.json")
    print(tracking.download(uri))
    print(tracking.read_json(uri))
"""


def test_downloads_are_gone_when_their_process_exits_or_was_killed(tmp_path: Path) -> None:
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = system_tmp / f"odir-downloads-{gone.stdout.strip()}-abc"  # as a killed process leaves its folder
    (killed / "model").mkdir(parents=True)
    alive = system_tmp / f"odir-downloads-{os.getpid()}-abc"  # this process is alive: its folder stays
    alive.mkdir()
    env = {**odir_env(tmp_path / "home"), "TMPDIR": str(system_tmp)}
    done = subprocess.run([sys.executable, "-c", DOWNLOAD], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    downloaded, content = done.stdout.splitlines()[-2:]
    assert Path(downloaded).name == "thresholds.json" and Path(downloaded).is_relative_to(system_tmp)
    assert content == "{'a': 1}"
    # each check of a version used to leave its copy (tens of MB) here for good
    assert [path.name for path in system_tmp.iterdir()] == [alive.name]


def test_without_odir_home_the_project_root_is_the_checkout_whatever_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steps.support import tracking

    monkeypatch.delenv("ODIR_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tracking.project_root()
    assert root != tmp_path and (root / "pyproject.toml").is_file() and (root / "steps" / "support").is_dir()
