"""A throwaway embedded MLflow store (``ODIR_HOME`` in a temporary folder) per test module, the environment of
subprocesses that use it, and ``odir`` run in the test's own process against one."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def odir_env(home: Path) -> dict[str, str]:
    """The environment of a subprocess that uses the store under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "ODIR_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database of an embedded store with MLflow's schema and nothing in it, made once by MLflow: each module's
    fresh store starts as a copy (MLflow's ~350 schema migrations cost seconds per new store). Stores that commands
    and servers make for themselves are made by MLflow as ever."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("empty-store")
    database = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{database}", (folder / "artifacts").as_uri()).engine.dispose()
    with sqlite3.connect(database) as db:  # MLflow makes its Default experiment in each copy, artifacts beside it
        db.execute("DELETE FROM experiment_tags")
        db.execute("DELETE FROM experiments")
    return database


@pytest.fixture(scope="module")
def odir_home(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[Path]:
    """A fresh embedded store for the tests of one module."""
    home = tmp_path_factory.mktemp("odir-home")
    (home / "mlruns").mkdir()
    shutil.copyfile(empty_store, home / "mlruns" / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODIR_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@contextmanager
def store_at(home: Path) -> Iterator[Path]:
    """Points this process at the embedded store under ``home`` for the block; then the environment is as before,
    and a module's store (``odir_home``) is connected again: for a test that needs a store of its own beside it."""
    from steps.support import tracking

    module_store = os.environ.get("ODIR_HOME")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODIR_HOME", str(home))
        # empty reads as unset (the store under ODIR_HOME); setting it makes the patch undo what MLflow sets there
        patch.setenv("MLFLOW_TRACKING_URI", "")
        yield home
    if module_store:
        tracking.connect()


@dataclass(frozen=True)
class Ran:
    """What ``odir`` ended with and printed: ``stderr`` holds what a terminal shows there, its log lines included."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def odir_here(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[..., Ran]:
    """``odir ARGS`` run by ``flows.cli.main`` in this process against the store under ``home`` (no process start,
    no imports per case), with what a subprocess with ``odir_env(home)`` would show: the exit status (argparse's
    included), stdout, and on stderr its own lines, then its log records (``main``'s ``logging.basicConfig`` sends
    them to stderr from INFO up; here pytest's handler catches them)."""
    from flows.cli import main

    def run(home: Path, *args: str) -> Ran:
        capfd.readouterr()
        caplog.clear()
        caplog.set_level(logging.INFO)
        with store_at(home):
            try:
                code = main(list(args))
            except SystemExit as stopped:  # argparse's usage errors
                code = stopped.code
        out, err = capfd.readouterr()
        logged = "".join(f"{caplog.handler.format(record)}\n" for record in caplog.records)
        return Ran(code, out, err + logged)

    return run
