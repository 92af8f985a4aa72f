"""Shared fixtures: tiny synthetic datasets made on the fly (tests never need the real data)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# Under pytest-xdist (make test runs two test processes on two cores) each process, and every command it starts,
# computes on one thread: two processes' thread pools (torch's, OpenBLAS's) of one thread per core each spin against
# each other, which made test_training.py and test_synth.py 4.6 times slower (181 s against 39 s wall, -n 2).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import yaml

from components.data.synth import SynthSizes, write_synthetic_dataset
from tests.store import empty_store, odir_here, odir_home  # noqa: F401  (fixtures for every test package)


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ONNX export's traced graphs (components.models.runtime.graph_cache) in a folder of the session, for the
    tests and the commands they start: tests write nothing into the user's cache."""
    folder = tmp_path_factory.mktemp("onnx-graphs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODIR_GRAPH_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (32 px) shared read-only by the tests of a session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), size=32, sizes=SynthSizes(12, 6, 6, 4), seed=3)


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the small synthetic dataset that a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))


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


def one_member_ensemble(tiny_data: Path, tiny_profile: Path) -> str:
    """The URI of an ensemble of one tiny member (``tiny-a``, 32 px), built by the real steps in the current store:
    for the tests of what a registered ensemble carries (exports, drift reference, requirements)."""
    from components.config import load_profile
    from steps import ensemble, evaluate, ingest, train

    manifest = ingest.run(ingest.IngestConfig(data_root=str(tiny_data))).manifest_uri
    member = train.run(train.TrainStepConfig(manifest_uri=manifest, spec=load_profile(tiny_profile).model("tiny-a"),
                                             profile="tiny"))  # fmt: skip
    val = evaluate.run(evaluate.EvaluateConfig(model_uri=member.model_uri, manifest_uri=manifest))
    return ensemble.run(
        ensemble.EnsembleConfig(member_model_uris=(member.model_uri,), member_val_predictions=(val.predictions_uri,),
                                manifest_uri=manifest, profile="tiny")
    ).model_uri  # fmt: skip
