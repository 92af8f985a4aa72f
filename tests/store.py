"""A throwaway embedded MLflow store (``ODIR_HOME`` in a temporary folder) per test module, the environment of
subprocesses that use it, and ``odir`` run in the test's own process against one."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
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
    """Points this process at the embedded store under ``home`` for the block, then back at the store before it (a
    module's ``odir_home``): for a test that needs a store of its own beside its module's."""
    from steps.support import tracking

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODIR_HOME", str(home))
        # empty reads as unset (the store under ODIR_HOME); setting it makes the patch undo what MLflow sets there
        patch.setenv("MLFLOW_TRACKING_URI", "")
        yield home
    tracking.connect()


@dataclass(frozen=True)
class Ran:
    """What ``odir`` ended with and printed: ``stderr`` holds what a terminal shows there, its log lines included."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def odir_here(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator:
    """``odir ARGS`` as ``flows.cli.main`` runs it, in this process (no 5-15 s of imports per case) against the
    store under ``home``, as a subprocess with ``odir_env(home)`` would: the exit status (argparse's included), stdout,
    and on stderr what the process would print there: its own lines, then its log records (``main``'s
    ``logging.basicConfig`` sends those to stderr from INFO up; here pytest's handler catches them)."""
    from flows.cli import main

    def run(home: Path, *args: str) -> Ran:
        capfd.readouterr()
        caplog.clear()
        with monkeypatch.context() as patch:
            patch.setenv("ODIR_HOME", str(home))
            # empty reads as unset (the store under ODIR_HOME); setting it makes the patch undo what MLflow sets there
            patch.setenv("MLFLOW_TRACKING_URI", "")
            caplog.set_level(logging.INFO)
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's usage errors
                code = exit.code
        out, err = capfd.readouterr()
        logged = "".join(f"{caplog.handler.format(record)}\n" for record in caplog.records)
        return Ran(code, out, err + logged)

    yield run
