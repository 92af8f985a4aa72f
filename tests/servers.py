"""Helpers for tests that start real servers as processes on 127.0.0.1 and must leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from flows.stack import wait_ready as wait_for  # noqa: F401  (the one readiness wait, shared with make up)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def port_closed(port: int, seconds: float = 30) -> bool:
    """Whether nothing listens on ``port`` any more within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.5)
    return False
