"""Untrusted checkpoints: anything that would run code when loaded is refused, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.config import parse_model_spec
from components.data import FundusDataset, ImageCache, load_split
from components.models import WeightsError, build_model
from components.training import load_trained, train


class _Payload:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_malicious_best_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "spec": {}}, tmp_path / "best.pt")
    with pytest.raises(WeightsError, match=r"best.pt refused: not plain tensors"):
        load_trained(tmp_path / "best.pt")
    assert not marker.exists()


def test_a_malicious_last_checkpoint_is_refused_on_resume(tmp_path: Path, synthetic_root: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "last.pt")
    spec = parse_model_spec({"name": "x", "backbone": "tiny_cnn", "epochs": 1, "image_size": 32, "batch_size": 4})
    data = FundusDataset.from_split(load_split(synthetic_root, "train"), 32, ImageCache())
    with pytest.raises(WeightsError, match=r"last.pt refused"):
        train(spec, data, data, tmp_path)
    assert not marker.exists()


def test_a_malicious_weights_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), tmp_path / "weights.pt")
    with pytest.raises(WeightsError, match=r"cannot load checkpoint .* as plain tensors"):
        build_model("tiny_cnn", str(tmp_path / "weights.pt"))
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(WeightsError, match=r"best\.pt refused"):
        load_trained(tmp_path / "best.pt")
