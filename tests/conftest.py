"""Shared fixtures: tiny synthetic datasets made on the fly (tests never need the real data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.synth import SynthSizes, write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (32 px) shared read-only by the tests of a session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), size=32, sizes=SynthSizes(12, 6, 6, 4), seed=3)


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the small synthetic dataset that a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))
