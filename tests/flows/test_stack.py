"""``odir up`` returns only when what it prints is usable: the users' next command is a deployment run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    finally:
        stopped = odir("down")
    assert stopped.stdout.strip() == "stopped: serve, mlflow, prefect"  # the reverse of their start: serve first
