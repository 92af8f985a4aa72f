"""Mutexes held in the model registry, shared by every process and host that uses the same tracking store.

Creating a registered model is atomic in every MLflow backend (names are unique), so the process that creates
``odir-lock-<name>`` holds the lock until it deletes it. The lock's description names its owner (host, PID and a
token of the acquisition) and a heartbeat thread rewrites it every ``lease / 4`` seconds, which moves the registered
model's ``last_updated_timestamp``. A waiter breaks the lock:

- **at once** when the owner is on the waiter's host and its process is gone (killed with SIGKILL, crashed);
- after the **lease** without a heartbeat otherwise (an owner on another host that died, or lost the store):
  ``ODIR_LOCK_LEASE_S``, default 60 s. A live owner, however long its work, keeps the lock.

Breaking deletes the lock only if it is still the one that was found stale (same owner token), so a lock taken
meanwhile by another waiter is not broken by mistake; a tiny window remains between that check and the delete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from components.errors import OdirError
from steps.support import processes, tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

log = logging.getLogger(__name__)

LOCK_PREFIX = "odir-lock-"
WAIT_REPORT_S = 30.0  # how often a waiter says whom it waits for


def lease_seconds() -> float:
    """``ODIR_LOCK_LEASE_S`` (default 60): how long a lock without a heartbeat stays valid for other hosts."""
    return float(os.environ.get("ODIR_LOCK_LEASE_S", "60"))


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: host, PID, the acquisition's token and when it was taken (epoch seconds)."""

    host: str
    pid: int
    token: str
    since: float

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(8), time.time())

    @classmethod
    def parse(cls, description: str | None) -> Owner | None:
        try:
            data = json.loads(description or "")
            return cls(str(data["host"]), int(data["pid"]), str(data["token"]), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None  # a lock of an older odir (plain text): only the lease can break it

    def describe(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "token": self.token, "since": self.since})

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def _stale_reason(owner: Owner | None, last_beat: float, lease: float) -> str | None:
    """Why a lock found held may be broken now, or None while its owner may still be working."""
    if owner and owner.host == socket.gethostname() and not processes.process_alive(owner.pid):
        return f"its owner {owner} is no longer running"
    silent = time.time() - last_beat
    if silent > lease:
        return f"no heartbeat from {owner or 'its owner'} for {silent:.0f} s (lease {lease:.0f} s)"
    return None


@contextmanager
def registry_lock(name: str, timeout: float | None = 300, waiting_for: str = "") -> Iterator[None]:
    """Holds ``odir-lock-<name>`` for the ``with`` block (see the module docstring).

    Args:
        name: what is locked (letters, digits, ``-``).
        timeout: seconds to wait for a live owner; None waits as long as the owner is alive.
        waiting_for: what the owner is doing, for the line a waiter logs every 30 s.

    Raises:
        OdirError: when the lock cannot be had within ``timeout`` seconds.
    """
    from mlflow import MlflowClient

    tracking.connect()
    client, lock, me = MlflowClient(), f"{LOCK_PREFIX}{name}", Owner.me()
    deadline = None if timeout is None else time.monotonic() + timeout
    next_report = time.monotonic() + WAIT_REPORT_S
    while not _try_acquire(client, lock, me):
        holder = _held_by(client, lock)
        if holder is None:  # released meanwhile
            continue
        owner, last_beat = holder
        if reason := _stale_reason(owner, last_beat, lease_seconds()):
            _break(client, lock, owner, reason)
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise OdirError(f"could not acquire the {name} lock within {timeout:.0f} s: held by {owner or 'unknown'} "
                            f"(registered model {lock})")  # fmt: skip
        if time.monotonic() > next_report:
            log.info("waiting for %s, which holds the %s lock%s", owner or "another process", name,
                     f" ({waiting_for})" if waiting_for else "")  # fmt: skip
            next_report = time.monotonic() + WAIT_REPORT_S
        time.sleep(0.2 + random.random() * 0.3)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(client, lock, me, stop), name=f"lock {name}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _release(client, lock, me)


def _try_acquire(client, lock: str, me: Owner) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(lock, description=me.describe())
        return True
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def _held_by(client, lock: str) -> tuple[Owner | None, float] | None:
    """(owner, last heartbeat in epoch seconds) of a held lock, or None when it is gone."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(lock)
    except MlflowException:
        return None
    return Owner.parse(model.description), (model.last_updated_timestamp or model.creation_timestamp) / 1000


def _break(client, lock: str, owner: Owner | None, reason: str) -> None:
    from mlflow.exceptions import MlflowException

    held = _held_by(client, lock)
    if held is None or held[0] != owner:  # gone, or taken by someone else since it was found stale
        return
    log.warning("breaking the lock %s: %s", lock, reason)
    with suppress(MlflowException):  # broken by another waiter meanwhile
        client.delete_registered_model(lock)


def _heartbeat(client, lock: str, me: Owner, stop: threading.Event) -> None:
    """Rewrites the lock's description every lease / 4 s, which moves its ``last_updated_timestamp``."""
    while not stop.wait(lease_seconds() / 4):
        try:
            client.update_registered_model(lock, description=me.describe())
        except Exception as error:  # the store briefly unreachable: the next beat tries again
            log.debug("lock %s heartbeat: %s", lock, error)


def _release(client, lock: str, me: Owner) -> None:
    """Deletes the lock if this acquisition still holds it (a lock broken as stale may belong to another now)."""
    from mlflow.exceptions import MlflowException

    held = _held_by(client, lock)
    if held is None or (held[0] is not None and held[0].token != me.token):
        log.warning("the lock %s was no longer held by this process when it finished", lock)
        return
    with suppress(MlflowException):
        client.delete_registered_model(lock)
