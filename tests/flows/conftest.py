"""A real Prefect server on a free port of 127.0.0.1 with a throwaway PREFECT_HOME, and an odir store beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, stop, wait_for

BIN = Path(sys.executable).parent
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stack:
    """The test server's API URL and the environment a client process needs."""

    api: str
    home: Path
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout)

    def start(
        self, *command: str, log: Path, env: dict[str, str] | None = None, cwd: Path = CHECKOUT
    ) -> subprocess.Popen:
        with log.open("wb") as out:
            return subprocess.Popen(command, env=env or self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip


@contextmanager
def prefect_server(home: Path) -> Iterator[Stack]:
    """A Prefect server of its own on a free port, with PREFECT_HOME and ODIR_HOME under ``home``."""
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
        subprocess.run(
            [sys.executable, "-c", "from steps.support import tracking; tracking.setup()"], env=env, check=True
        )
        yield Stack(api, home, env)
    finally:
        stop(server)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with prefect_server(tmp_path_factory.mktemp("flows-home")) as server:
        yield server
