"""``odir up`` returns only when what it prints is usable: the users' next command is a deployment run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deployments import SERVED
from tests.servers import free_port

BIN = Path(sys.executable).parent
CHECKOUT = Path(__file__).resolve().parents[2]


def test_up_returns_when_every_served_deployment_exists(tmp_path: Path) -> None:
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    env.update({"ODIR_HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / ".prefect"), "DO_NOT_TRACK": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "PATH": f"{BIN}:{os.environ['PATH']}"})  # fmt: skip

    def odir(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "odir"), *args], env=env, cwd=CHECKOUT, capture_output=True, text=True,
                              timeout=400)  # fmt: skip

    try:
        started = odir("up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port))
        assert started.returncode == 0, started.stderr
        # at once, as the README says: no deployment may still be missing
        for name in SERVED:
            found = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", name], env=env,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert found.returncode == 0, f"{name}: {found.stdout}{found.stderr}"
        # a new shell in the project, without PREFECT_API_URL, finds the stack (prefect.toml), not a temporary server
        fresh = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        found = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", SERVED[0]], env=fresh, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert found.returncode == 0, f"{found.stdout}{found.stderr}"
        # asked for other ports while it runs: refused at once, naming the ports it runs on
        other = odir("up", "--prefect-port", str(free_port()), "--mlflow-port", str(mlflow_port))
        assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
        assert f"already running on other ports: Prefect {prefect_port}" in other.stderr, other.stderr
    finally:
        stopped = odir("down")
    assert stopped.stdout.strip() == "stopped: serve, mlflow, prefect"  # the reverse of their start: serve first
    assert not (tmp_path / "prefect.toml").exists()  # Prefect commands here no longer look for the stack


def test_up_refuses_at_once_when_the_stack_runs_on_other_ports(tmp_path: Path, monkeypatch) -> None:
    from components.errors import OdirError
    from flows import stack

    monkeypatch.setenv("ODIR_HOME", str(tmp_path))
    folder = stack.run_folder()
    folder.mkdir(parents=True)
    (folder / "prefect.pid").write_text(str(os.getpid()))  # a process that is alive: this one
    (folder / stack.PORTS_FILE).write_text('{"prefect": 4312, "mlflow": 5012}')
    with pytest.raises(
        OdirError,
        match=r"already running on other ports: Prefect 4312 .*MLflow 5012 \(pids prefect "
        rf"{os.getpid()}\); use it, or stop it with `odir down` before `odir up --prefect-port 4200",
    ):
        stack.up(4200, 5000)
    assert not (tmp_path / "prefect.toml").exists()  # nothing started, nothing written


def test_prefect_toml_points_a_shell_without_prefect_api_url_at_the_stack(tmp_path: Path, monkeypatch) -> None:
    from flows import stack

    monkeypatch.setenv("ODIR_HOME", str(tmp_path))
    assert stack.point_prefect_here("http://127.0.0.1:4312/api")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    said = subprocess.run(
        [sys.executable, "-c", "from prefect.settings import get_current_settings as s; print(s().api.url)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.stdout.strip().splitlines()[-1] == "http://127.0.0.1:4312/api", said.stderr
    (tmp_path / "prefect.toml").write_text('[api]\nurl = "http://mine/api"\n')  # the user's own: left alone
    assert not stack.point_prefect_here("http://127.0.0.1:4312/api")
    assert (tmp_path / "prefect.toml").read_text() == '[api]\nurl = "http://mine/api"\n'
