"""Synthetic fundus data: the real layout, deterministic, realistic prevalence, and learnable by a small CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from components.data.dataset import FundusDataset, ImageCache, to_model_input
from components.data.images import decode_image
from components.data.splits import load_split, patient_of
from components.evaluation.metrics import f1_macro
from components.models.backbones import build_model
from components.data.synth import SynthSizes, render_fundus, sample_labels, write_synthetic_dataset


def test_layout_is_the_real_one_and_valid(synthetic_root: Path) -> None:
    for name in ("train.csv", "val.csv", "offsite_test.csv", "onsite_test_submission.csv"):
        assert (synthetic_root / name).read_text().startswith("id,D,G,A\n")
    onsite = load_split(synthetic_root, "onsite_test")
    assert len(onsite) == 4 and onsite.labels.sum() == 0
    ids = load_split(synthetic_root, "train").ids
    assert all(i.endswith(("_left.jpg", "_right.jpg")) for i in ids)


def test_no_patient_in_two_splits(synthetic_root: Path) -> None:
    patients = {name: {patient_of(i) for i in load_split(synthetic_root, name).ids} for name in ("train", "val")}
    assert not patients["train"] & patients["val"]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    sizes = SynthSizes(3, 1, 1, 1)
    a = write_synthetic_dataset(tmp_path / "a", 32, sizes, seed=5)
    b = write_synthetic_dataset(tmp_path / "b", 32, sizes, seed=5)
    c = write_synthetic_dataset(tmp_path / "c", 32, sizes, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes() or any(
        (a / f).read_bytes() != (c / f).read_bytes() for f in files
    )


def test_prevalence_follows_odir() -> None:
    labels = sample_labels(np.random.default_rng(0), 20_000)
    prevalence = labels.mean(axis=0)
    assert prevalence[0] > prevalence[1] > 0.1 and prevalence[2] > 0.1  # DR most common
    assert prevalence.tolist() == pytest.approx([0.645, 0.21, 0.18], abs=0.02)
    two_labels = (labels.sum(axis=1) == 2).mean()
    assert 0.02 < two_labels < 0.06 and labels.sum(axis=1).min() == 1


def test_images_look_like_fundus_photographs() -> None:
    image = np.asarray(render_fundus(np.random.default_rng(0), 64, np.array([0, 0, 0]), "right"), dtype=np.float64)
    assert image[:3, :3].max() < 20  # dark surround
    centre = image[24:40, 24:40].mean(axis=(0, 1))
    assert centre[0] > centre[1] > centre[2]  # orange-red retina
    disc = image[24:40, 44:58]  # right eye: optic disc on the right
    assert disc.mean() > image[24:40, 6:20].mean()


def test_disease_signs_change_the_image() -> None:
    def render(labels: list[int]) -> np.ndarray:
        return np.asarray(render_fundus(np.random.default_rng(1), 64, np.array(labels), "left"), dtype=np.float64)

    healthy = render([0, 0, 0])
    for labels in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert (np.abs(render(labels) - healthy).max(axis=2) > 40).sum() >= 10, labels


def test_written_images_decode(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path, 48, SynthSizes(2, 0, 0, 0), seed=0)
    assert decode_image(next((root / "images" / "train").iterdir())).shape == (48, 48, 3)
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_dataset(tmp_path, 8)


def test_a_small_cnn_learns_the_synthetic_data(tmp_path: Path) -> None:
    """About 200 images at 64x64, a few epochs on the CPU: well above chance on the held-out offsite split."""
    root = write_synthetic_dataset(tmp_path, 64, SynthSizes(200, 0, 80, 0), seed=1)
    torch.manual_seed(0)
    train = FundusDataset.from_split(load_split(root, "train"), 64, ImageCache())
    test_split = load_split(root, "offsite_test")
    test_images = torch.stack([image for image, _ in FundusDataset.from_split(test_split, 64, ImageCache())])
    model = build_model("tiny_cnn")  # normalises its uint8 input itself
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    for _ in range(14):
        model.train()
        for images, labels in loader:
            loss = nn.functional.binary_cross_entropy_with_logits(model(to_model_input(images)), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(to_model_input(test_images))).numpy()
    score = f1_macro(test_split.labels, probs)
    assert score >= 0.6, score
