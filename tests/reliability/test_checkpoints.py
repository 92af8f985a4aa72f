"""Checkpoints on disk: untrusted ones that would run code when loaded are refused (and nothing runs); concurrent
writers to one folder never collide."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from components.config import parse_model_spec
from components.data.dataset import FundusDataset, ImageCache
from components.data.splits import load_split
from components.models.backbones import build_model
from components.models.weight_files import WeightsError
from components.training.checkpoints import load_checkpoint, load_trained, save_checkpoint
from components.training.loop import train


class _Payload:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_malicious_best_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "spec": {}}, tmp_path / "best.pt")
    with pytest.raises(WeightsError, match=r"best.pt refused: it holds Python objects other than tensors"):
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
    with pytest.raises(WeightsError, match=r"refused: it holds Python objects other than tensors"):
        build_model("tiny_cnn", str(tmp_path / "weights.pt"))
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(WeightsError, match=r"best\.pt refused"):
        load_trained(tmp_path / "best.pt")


def test_concurrent_writers_to_one_checkpoint_never_collide(tmp_path: Path) -> None:
    # two processes training into one folder: each write goes through its own temporary file, so neither loses
    # its file to the other's rename, and the checkpoint is always one writer's whole payload
    path = tmp_path / "last.pt"
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(writer: int) -> None:
        start.wait()
        try:
            for step in range(40):
                save_checkpoint(path, {"model": {"w": torch.full((64,), float(writer))}, "spec": {}, "epoch": step})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    saved = load_checkpoint(path)
    assert saved["epoch"] == 39 and saved["model"]["w"].unique().tolist() in ([1.0], [2.0])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
