"""A throwaway embedded MLflow store (``ODIR_HOME`` in a temporary folder) per test module, and the environment
of subprocesses that use it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def odir_env(home: Path) -> dict[str, str]:
    """The environment of a subprocess that uses the store under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "ODIR_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(scope="module")
def odir_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh embedded store for the tests of one module."""
    home = tmp_path_factory.mktemp("odir-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODIR_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home
