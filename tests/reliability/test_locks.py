"""Registry locks (steps/support/locks.py) with real processes on a real embedded store: a dead owner's lock is broken
at once on its host, a live owner's is kept however long it works, and a lock without heartbeats expires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps.support import locks, tracking
from tests.store import odir_env

HOLD = (
    "import sys, time\nfrom steps.support import locks\n"
    "with locks.registry_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


@pytest.fixture(autouse=True)
def store(odir_home: Path) -> None:
    tracking.connect()


def _holder(home: Path, name: str, **env: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, name], env={**odir_env(home), **env},
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_lock_whose_owner_was_killed_is_taken_at_once(odir_home: Path) -> None:
    holder = _holder(odir_home, "promote-kill")
    owner = locks.Owner.parse(MlflowClient().get_registered_model("odir-lock-promote-kill").description)
    assert owner is not None and owner.pid == holder.pid  # the lock names its owner
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with locks.registry_lock("promote-kill", timeout=5):  # 5 s: far below the lease, so only the PID check frees it
        waited = time.monotonic() - started
    assert waited < 5


def test_a_live_owner_keeps_its_lock_past_the_lease(odir_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.errors import OdirError

    monkeypatch.setenv("ODIR_LOCK_LEASE_S", "1")
    holder = _holder(odir_home, "long-work", ODIR_LOCK_LEASE_S="1")  # beats every 0.25 s
    try:
        with pytest.raises(OdirError, match=rf"held by .*:{holder.pid}"), locks.registry_lock("long-work", timeout=3):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_without_heartbeat_expires_after_the_lease(odir_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner on another host cannot be checked: its lock lasts one lease past its last heartbeat."""
    other_host = locks.Owner("elsewhere", 1, "t0", time.time())
    MlflowClient().create_registered_model("odir-lock-remote", description=other_host.describe())
    monkeypatch.setenv("ODIR_LOCK_LEASE_S", "2")
    started = time.monotonic()
    with locks.registry_lock("remote", timeout=10):
        waited = time.monotonic() - started
    assert 1.0 < waited < 10  # not before the lease, not only at the timeout


def test_release_leaves_a_lock_taken_over_by_someone_else(odir_home: Path) -> None:
    client = MlflowClient()
    with locks.registry_lock("taken-over"):
        client.delete_registered_model("odir-lock-taken-over")  # as a waiter breaking it as stale would
        other = locks.Owner("elsewhere", 1, "t1", time.time())
        client.create_registered_model("odir-lock-taken-over", description=other.describe())
    assert locks.Owner.parse(client.get_registered_model("odir-lock-taken-over").description) == other
