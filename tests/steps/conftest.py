"""A throwaway embedded MLflow store (``ODIR_HOME`` in a temporary folder), tiny data and a two-member profile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.synth import SynthSizes, write_synthetic_dataset

TINY_PROFILE = {
    "name": "tiny",
    "defaults": {"image_size": 32, "batch_size": 8, "epochs": 2, "lr": 0.003, "seed": 1},
    "models": [{"name": "tiny-a", "backbone": "tiny_cnn"}, {"name": "tiny-b", "backbone": "tiny_cnn", "loss": "focal"}],
    "tta_views": ["identity", "hflip", "vflip", "rot90", "rot270"],
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("tiny-data"), 32, SynthSizes(24, 12, 12, 6), seed=11)


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    return path


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
