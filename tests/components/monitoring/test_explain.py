"""Grad-CAM (components.monitoring.explain): it points at the lesion a model learnt, maps are normalised and combined as
documented, every backbone names a layer it has, and the overlay and gallery helpers do what they say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from components import LABELS
from components.models.backbones import BACKBONES, build_model
from components.monitoring.explain import (
    CAM_LAYERS,
    CamModel,
    CamNetwork,
    cam_module,
    caption,
    explain_images,
    gallery_cases,
    grad_cam,
    input_square,
    normalise_maps,
    overlay,
    place,
    weighted_cams,
    write_overlay_png,
)

SIDE = 32
LESION, DISTRACTOR = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A tiny network trains 20x faster on one thread than on two cores that other work keeps busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blob(image: np.ndarray, row: float, column: float, colour: tuple[float, float, float]) -> None:
    rows, columns = np.mgrid[0:SIDE, 0:SIDE]
    spot = np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * 2.0**2))
    image += spot[None] * np.asarray(colour, dtype=np.float32)[:, None, None]


def _lesion_images(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise, a blue distractor in the bottom-right quadrant of every image (it says nothing), and in every second
    image a red lesion in the top-left quadrant (class 0)."""
    images = rng.uniform(0.0, 0.25, (count, 3, SIDE, SIDE)).astype(np.float32)
    labels = (np.arange(count) % 2).astype(np.float32)
    quarter = SIDE // 4
    for image, label in zip(images, labels, strict=True):
        _blob(image, *rng.uniform(2.5 * quarter, 3.5 * quarter, 2), DISTRACTOR)
        if label:
            _blob(image, *rng.uniform(0.5 * quarter, 1.5 * quarter, 2), LESION)
    return torch.from_numpy(np.clip(images, 0, 1)), torch.from_numpy(labels)


class TinyConvNet(nn.Module):
    """Two convolutions (a 16x16 map at 32 px, a receptive field of 7 px) and a linear head on the pooled map: the
    smallest net whose maps can be told apart by quadrant."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(8, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _top_left_share(cams: torch.Tensor) -> torch.Tensor:
    """Per map, the share of its mass in the top-left quadrant."""
    half = SIDE // 2
    return cams[:, :half, :half].sum(dim=(1, 2)) / cams.sum(dim=(1, 2)).clamp_min(1e-12)


def test_the_map_of_a_learnt_lesion_lies_in_its_quadrant(one_thread: None) -> None:
    """A broken map fails this: with the sign flipped the lesion's quadrant holds ~0.1 of the mass, with every
    channel weighted 1 (no gradients) ~0.35, with |.| instead of ReLU ~0.6; the real one 0.78-0.86 per image."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyConvNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        images, labels = _lesion_images(32, rng)
        loss = nn.functional.binary_cross_entropy_with_logits(model(images)[:, 0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    images, labels = _lesion_images(16, np.random.default_rng(1))
    with torch.no_grad():
        assert ((torch.sigmoid(model(images)[:, 0]) > 0.5).float() == labels).all()  # it learnt the lesion
    cams = grad_cam(model, images[labels == 1], "features")[:, 0]
    assert (_top_left_share(cams) > 0.7).all(), _top_left_share(cams)


def test_maps_are_per_class_at_input_size_in_0_1_and_need_no_weight_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn").train()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # a frozen model: the maps need gradients of activations only
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    cams = grad_cam(model, images, CAM_LAYERS.get("tiny_cnn"))
    assert cams.shape == (2, len(LABELS), 40, 40) and cams.dtype == torch.float32
    assert cams.min() >= 0 and cams.max() <= 1
    peaks = cams.amax(dim=(2, 3))
    assert ((peaks == 1) | (peaks == 0)).all()
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, no weights touched


def test_a_map_without_positive_evidence_stays_zero() -> None:
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 0, 1, 2] = 3.0
    normalised = normalise_maps(cams)
    assert normalised[0, 0].max() == 1 and normalised[0, 0, 1, 2] == 1
    assert (normalised[0, 1] == 0).all()


def test_a_layer_the_model_lacks_is_named() -> None:
    with pytest.raises(ValueError, match=r"'features\.body\.layer9' is not a module"):
        grad_cam(build_model("tiny_cnn"), torch.zeros(1, 3, 32, 32), "features.body.layer9")


def test_weighted_cams_is_the_weighted_mean_of_hand_made_maps() -> None:
    left = np.zeros((3, 4, 4), np.float32)
    left[:, :, :2] = 1.0
    top = np.zeros((3, 4, 4), np.float32)
    top[:, :2, :] = 1.0
    combined = weighted_cams([left, top], [3.0, 1.0])  # normalised: 0.75 and 0.25
    assert combined[0, 0, 0] == pytest.approx(1.0) and combined[0, 3, 3] == 0
    assert combined[0, 3, 0] == pytest.approx(0.75) and combined[0, 0, 3] == pytest.approx(0.25)
    assert np.allclose(weighted_cams([left, top], [1, 1]), (left + top) / 2)  # a member's folds: the plain mean
    with pytest.raises(ValueError, match="2 weights for 1 maps"):
        weighted_cams([left], [1, 1])
    with pytest.raises(ValueError, match="same shape"):
        weighted_cams([left, top[:, :2]], [1, 1])


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_names_a_cam_layer_it_has(name: str) -> None:
    model = build_model(name, weights="none")
    layer = CAM_LAYERS.get(name)
    assert isinstance(cam_module(model, layer), nn.Module)
    cams = grad_cam(model, torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), layer)
    assert cams.shape == (1, len(LABELS), 64, 64) and torch.isfinite(cams).all()


def test_attention_backbones_are_explained_after_their_attention() -> None:
    for name in ("se_resnet18", "mha_resnet18"):
        model = build_model(name)
        assert cam_module(model, CAM_LAYERS.get(name)) is model.features.attention["layer4"]


def test_a_cropped_input_is_placed_where_it_lies_in_the_photo() -> None:
    # a 60 x 100 photo padded to 100 x 100 (20 rows above); its field of view rows 10-50, columns 20-80 (40 x 60),
    # which the crop pads to 60 x 60 (10 rows above): the input square starts at row 20 + 10 - 10, column 20
    assert input_square((60, 100), (10, 50, 20, 80)) == pytest.approx((0.2, 0.2, 0.6))
    assert input_square((60, 100), None) == (0.0, 0.0, 1.0)  # no crop: the whole padded photo
    placed = place(torch.ones(3, 8, 8), (0.2, 0.2, 0.6), 50)
    assert placed.shape == (3, 50, 50)
    assert torch.allclose(placed[:, 10:40, 10:40], torch.ones(1)) and placed.sum() == pytest.approx(3 * 30 * 30)
    beyond = place(torch.ones(1, 8, 8), (-0.1, 0.5, 0.6), 50)  # a square reaching past the photo is clipped
    assert beyond.sum() == pytest.approx(25 * 25) and torch.allclose(beyond[0, :25, 25:], torch.ones(1))


def test_explain_images_averages_members_by_weight_and_skips_weight_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = []
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 256, (24, 40, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    layer = CAM_LAYERS.get("tiny_cnn")
    first, second = (CamNetwork(build_model("tiny_cnn").eval(), layer, 32) for _ in range(2))
    alone = explain_images(CamModel([[first]], np.ones(1)), paths, 48, cache=None)
    assert alone.images.shape == (2, 48, 48, 3) and alone.cams.shape == (2, len(LABELS), 48, 48)
    assert (alone.images[:, :4] == 0).all()  # the 24 x 40 photo padded to a square: black rows above
    skipped = explain_images(CamModel([[first], [second]], np.array([1.0, 0.0])), paths, 48, cache=None)
    assert np.array_equal(skipped.cams, alone.cams)
    other = explain_images(CamModel([[second]], np.ones(1)), paths, 48, cache=None)
    mixed = explain_images(CamModel([[first], [second]], np.array([3.0, 1.0])), paths, 48, cache=None)
    assert np.allclose(mixed.cams, 0.75 * alone.cams + 0.25 * other.cams, atol=1e-6)
    folds = explain_images(CamModel([[first, second]], np.ones(1)), paths, 48, cache=None)
    assert np.allclose(folds.cams, (alone.cams + other.cams) / 2, atol=1e-6)


def test_gallery_cases_pick_the_most_telling_images() -> None:
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]])
    probs = np.array([[0.9, 0, 0], [0.7, 0, 0], [0.8, 0, 0], [0.6, 0, 0], [0.2, 0, 0], [0.1, 0, 0]])
    cases = gallery_cases(labels, probs, np.array([0.5, 0.5, 0.5]), per_kind=1)
    assert cases[("D", "tp")] == [0] and cases[("D", "fp")] == [2] and cases[("D", "fn")] == [5]
    assert cases[("G", "tp")] == [] and set(cases) == {(c, k) for c in LABELS for k in ("tp", "fp", "fn")}
    assert gallery_cases(labels, probs, np.array([0.5, 0.5, 0.5]), per_kind=4)[("D", "tp")] == [0, 1]


def test_overlay_blends_and_the_png_has_its_caption(tmp_path: Path) -> None:
    image = np.full((64, 64, 3), 100, np.uint8)
    cam = np.zeros((64, 64), np.float32)
    cam[:32] = 1.0
    assert np.array_equal(overlay(image, cam, alpha=0.0), image)
    blended = overlay(image, cam)
    assert blended[0, 0, 0] > blended[63, 0, 0]  # jet: red where the map is 1, blue where it is 0
    text = caption("G", 0.8123, 0.4)
    assert text == "G: glaucoma\np 0.812  threshold 0.40: positive"
    path = write_overlay_png(tmp_path / "x_G.png", image, cam, text)
    with Image.open(path) as written:
        assert written.format == "PNG" and written.width == 64 and written.height > 64
