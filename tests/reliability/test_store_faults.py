"""A store that does not answer, outputs that cannot be written: one line, the right exit status, before the work.

Against a store that does not answer, every command runs as a real process on a real (throwaway) store; "nothing
listening" is a free port of 127.0.0.1. The output checks run ``odir`` in the test's process (``odir_here``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.store import odir_env

ODIR = str(Path(sys.executable).parent / "odir")
CHECKOUT = Path(__file__).resolve().parents[2]


def _odir(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ODIR, *args], env={**odir_env(home), **(env or {})}, cwd=CHECKOUT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_an_unreachable_tracking_server_is_reported_before_any_work(odir_home: Path, tiny_data: Path,
                                                                    tiny_profile: Path) -> None:  # fmt: skip
    uri = f"http://127.0.0.1:{free_port()}"
    done = _odir(odir_home, "full", "--profile", str(tiny_profile), "--data", str(tiny_data),
                 env={"MLFLOW_TRACKING_URI": uri})  # fmt: skip
    assert done.returncode == 3
    line = _one_line(done.stderr)
    assert line.startswith(f"odir full: tracking server {uri} unreachable: 5 attempts over ")
    assert "retry policy: 5 attempts, 8 s each" in line


def test_a_step_against_an_unreachable_server_exits_3_in_one_round(tiny_data: Path, odir_home: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**odir_env(odir_home), "MLFLOW_TRACKING_URI": uri, "ODIR_STORE_ATTEMPTS": "2"}
    done = subprocess.run([sys.executable, "-m", "steps.ingest", "--data-root", str(tiny_data)], env=env,
                          cwd=CHECKOUT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"python -m steps.ingest: tracking server {uri} stopped answering (retry policy: 2 attempts" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_object_store_is_reported(odir_home: Path, tiny_data: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = _odir(odir_home, "upload", str(tiny_data), "s3://bucket/data", env={"AWS_ENDPOINT_URL": endpoint})
    assert done.returncode == 3
    assert _one_line(done.stderr).startswith(f"odir upload: object store {endpoint} unreachable: 5 attempts")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["predict", "--images", "{images}", "--out", "{folder}"], "{folder}: output file is a folder"),
        (["predict", "--images", "{images}", "--out", "/proc/odir/x.csv"], "/proc/odir/x.csv: cannot be written"),
        (["full", "--profile", "{profile}", "--data", "{data}", "--out", "{folder}"], "output file is a folder"),
        (["experiments", "--out", "{file}"], "{file}: output folder is a file"),
        (["demo-data", "{file}"], "{file}: output folder is a file"),
        (["upload", "{missing}", "s3://bucket/x"], "{missing}: not found"),
    ],
    ids=["predict-folder", "predict-unwritable", "full", "experiments", "demo-data", "upload"],
)
def test_outputs_are_checked_before_the_work(command: list[str], message: str, tmp_path: Path, tiny_data: Path,
                                             tiny_profile: Path, odir_here) -> None:  # fmt: skip
    (tmp_path / "a-file.csv").write_text("x\n")
    names = {
        "images": str(tiny_data / "images" / "onsite_test"),
        "folder": str(tmp_path),
        "data": str(tiny_data),
        "profile": str(tiny_profile),
        "file": str(tmp_path / "a-file.csv"),
        "missing": str(tmp_path / "nope"),
    }
    home = tmp_path / "home"
    done = odir_here(home, *(part.format(**names) for part in command))
    assert done.returncode == 2
    assert message.format(**names) in _one_line(done.stderr)
    assert not (home / "mlruns").exists() or "predict" in command  # no run was opened


def test_two_embedded_stores_share_no_files(tmp_path: Path, odir_home: Path) -> None:
    """``MLFLOW_TRACKING_URI`` at another SQLite file moves the artifacts and checkpoints along with the runs."""
    from steps.support import tracking

    default, other = tracking.store_files(), tracking.store_files(f"sqlite:///{tmp_path / 'second.db'}")
    assert default.artifacts == odir_home / "mlruns" / "artifacts" and default.work == odir_home / ".odir" / "work"
    assert other.artifacts == tmp_path / "second-artifacts" and other.work == tmp_path / "second-work"
    script = (
        "import mlflow\nfrom steps.support import tracking\ntracking.setup()\n"
        "print(mlflow.get_experiment_by_name('odir').artifact_location)"
    )
    env = {**odir_env(odir_home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'second.db'}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == (tmp_path / "second-artifacts").as_uri(), done.stderr[-2000:]
