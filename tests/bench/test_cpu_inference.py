"""The CPU inference benchmarks run on a tiny registered ensemble and tiny networks (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import cpu_inference, runtimes
from components.config import parse_model_spec
from components.models.backbones import build_model
from tests.conftest import one_member_ensemble


@pytest.fixture(scope="module")
def ensemble_uri(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> str:
    return one_member_ensemble(tiny_data, tiny_profile)


def test_cpu_inference_measures_both_backends_in_odir_predict_and_served(
    ensemble_uri: str, tiny_data: Path, tmp_path: Path
) -> None:
    rows = cpu_inference.measure(ensemble_uri, tiny_data / "images" / "offsite_test", 1, tmp_path)
    assert [row.unit for row in rows] == ["img/s", "pairs", "MB", "img/s", "MB"]
    assert all(row.value > 0 and row.reference > 0 for row in rows)
    agreeing = rows[1]
    assert agreeing.reference == 12 * 3 and agreeing.value <= agreeing.reference


def test_agreement_counts_image_class_pairs(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "D": [1, 0], "G": [0, 0], "A": [1, 1]})
    frame.to_csv(tmp_path / "first.csv", index=False)
    frame.assign(G=[1, 0]).to_csv(tmp_path / "second.csv", index=False)
    assert cpu_inference.agreement(tmp_path / "first.csv", tmp_path / "second.csv") == (5, 6)


def test_runtimes_compare_eager_and_onnxruntime(synthetic_root: Path, tmp_path: Path) -> None:
    spec = parse_model_spec({"name": "tiny", "backbone": "tiny_cnn", "image_size": 32, "batch_size": 4})
    torch.save({"model": build_model("tiny_cnn").state_dict(), "spec": spec.model_dump()}, tmp_path / "tiny.pt")
    images = sorted(str(p) for p in (synthetic_root / "images" / "train").iterdir())[:4]
    rows = runtimes.compare(images, tmp_path / "tiny.pt", rounds=1)
    assert rows[0].name.endswith("eager PyTorch, forwards of 32") and rows[0].ratio == 1.0
    assert any("onnxruntime" in row.name for row in rows) and all(row.value > 0 for row in rows)
    for row in rows[1:3]:  # onnxruntime's: within the registration's tolerance of eager
        assert float(row.note.split()[-1]) <= 1e-4
