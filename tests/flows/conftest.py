"""A real Prefect server on a free port of 127.0.0.1 with a throwaway PREFECT_HOME, and an odir store beside it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CHECKOUT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen | None, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} not ready after {seconds} s")


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """Stops a process started with ``start_new_session=True`` and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # children of the group that outlive the leader
        os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Stack:
    """The test server's API URL and the environment a client process needs."""

    api: str
    home: Path
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout)

    def start(self, *command: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            return subprocess.Popen(command, env=self.env, cwd=CHECKOUT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("flows-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    env.update({
        "PREFECT_HOME": str(home / ".prefect"), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "ODIR_HOME": str(home),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "components,steps",
    })  # fmt: skip
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(f"{api}/health", server)
        # the store's schema is created once, before flow runs in several processes open it
        subprocess.run([sys.executable, "-c", "from steps import tracking; tracking.setup()"], env=env, check=True)
        yield Stack(api, home, env)
    finally:
        stop(server)
