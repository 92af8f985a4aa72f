"""Batched augmentation: each step's effect on crafted tensors, the fused resampling, the spec grammar."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from components.data.augment import (
    Affine,
    AugmentPipeline,
    Brightness,
    Contrast,
    Flips,
    Gamma,
    ResizedCrop,
    Rot90,
    Saturation,
    build_augment,
    parse_augment,
    rotation_scale_matrices,
    warp,
)

SIDE = 32


def _marked(row: int, col: int, count: int = 1) -> torch.Tensor:
    """A black uint8 batch with one white pixel (every channel) at ``(row, col)``."""
    images = torch.zeros(count, 3, SIDE, SIDE, dtype=torch.uint8)
    images[:, :, row, col] = 255
    return images


def _random(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 3, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    return AugmentPipeline((("affine", Affine(degrees=(degrees, degrees), scale=(1, 1), translate=0)),))(images)


def test_flips_draw_exactly_as_augment_true_always_did() -> None:
    def before(images: torch.Tensor) -> torch.Tensor:  # the training loop's flips (augment: true) as they were
        flip_h = torch.rand(images.shape[0], device=images.device) < 0.5
        flip_v = torch.rand(images.shape[0], device=images.device) < 0.5
        images = torch.where(flip_h.view(-1, 1, 1, 1), images.flip(-1), images)
        return torch.where(flip_v.view(-1, 1, 1, 1), images.flip(-2), images)

    images = _random(16)
    torch.manual_seed(5)
    expected = before(images)
    for value in (True, "flips", ["flips"]):
        torch.manual_seed(5)
        out = build_augment(value)(images)
        assert out.dtype == torch.uint8 and torch.equal(out, expected)


def test_rotation_by_90_degrees_moves_a_marked_pixel_where_expected() -> None:
    # pixel centres about the centre (15.5, 15.5): (x, y) = (4.5, -11.5); a quarter turn counter-clockwise on screen
    # (y down) takes it to (y, -x) = (-11.5, -4.5), i.e. row 11, column 4
    out = _rotate(_marked(4, 20), 90.0)
    assert out.dtype == torch.float32
    assert (out[0, 0] > 0.99).nonzero().tolist() == [[11, 4]]
    images = _random()
    torch.testing.assert_close(_rotate(images, 90.0), images.rot90(1, dims=(-2, -1)).float() / 255, atol=1e-5, rtol=0)
    assert torch.equal(TF.rotate(images, 90.0), images.rot90(1, dims=(-2, -1)))  # torchvision's sense, too


def test_rotation_by_45_degrees_moves_a_marked_blob_where_expected() -> None:
    images = torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8)
    images[:, :, 15:18, 22:25] = 255  # a 3x3 blob centred on pixel (16, 23): (x, y) = (7.5, 0.5) about the centre
    out = _rotate(images, 45.0)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(SIDE) + 0.5, torch.arange(SIDE) + 0.5, indexing="ij")
    x, y = (out * cols).sum() / out.sum() - 16, (out * rows).sum() / out.sum() - 16
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    assert x.item() == pytest.approx(7.5 * c + 0.5 * s, abs=0.05)
    assert y.item() == pytest.approx(-7.5 * s + 0.5 * c, abs=0.05)
    assert out.sum().item() == pytest.approx(9.0, rel=0.05)  # bilinear resampling about keeps the blob's mass


def test_geometric_steps_are_fused_into_one_resampling() -> None:
    images = _random()
    two_eighths = AugmentPipeline(tuple(("affine", Affine((45.0, 45.0), (1, 1), 0)) for _ in range(2)))(images)
    # one bilinear pass at 90 degrees is exact; two passes at 45 would blur
    torch.testing.assert_close(two_eighths, images.rot90(1, dims=(-2, -1)).float() / 255, atol=1e-5, rtol=0)


def test_scale_and_shift_by_hand() -> None:
    out = warp(
        _marked(16, 16).float() / 255,
        rotation_scale_matrices(torch.zeros(1), torch.ones(1), torch.tensor([[3.0, -5.0]])),
    )
    assert (out[0, 0] > 0.99).nonzero().tolist() == [[11, 19]]  # 3 px right, 5 px up
    # zoom x2 about the centre: the pixel centred at (x, y) = (2.5, 0.5) lands at (5, 1), between the centres of
    # rows 16-17 and columns 20-21; each of the four samples it at (0.25, 0.25) from its centre: 0.75 * 0.75
    out = warp(
        _marked(16, 18).float() / 255, rotation_scale_matrices(torch.zeros(1), torch.full((1,), 2.0), torch.zeros(1, 2))
    )
    assert out[0, 0, 16:18, 20:22].flatten().tolist() == pytest.approx([0.5625] * 4)
    assert out.sum().item() == pytest.approx(3 * 2**2)  # the pixel's mass, times the zoom squared, per channel


def test_identity_settings_change_nothing() -> None:
    images = _random()
    expected = images.float() / 255
    for step in (Affine(0, (1, 1), 0), ResizedCrop((1, 1), (1, 1))):
        torch.testing.assert_close(AugmentPipeline((("step", step),))(images), expected, atol=1e-6, rtol=0)
    for jitter in (Brightness(0), Contrast(0), Saturation(0), Gamma(0)):
        assert torch.equal(jitter(expected), expected)  # strength 0: the identity, exactly
        torch.testing.assert_close(jitter.apply(expected, torch.ones(4, 1, 1, 1)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("step", "reference"),
    [
        (Brightness, TF.adjust_brightness),
        (Contrast, TF.adjust_contrast),
        (Saturation, TF.adjust_saturation),
        (Gamma, TF.adjust_gamma),
    ],
)
def test_colour_jitter_matches_torchvision_per_image(step: type, reference: object) -> None:
    images = _random(3).float() / 255
    factors = torch.tensor([0.7, 1.0, 1.3])
    out = step.apply(images, factors.view(-1, 1, 1, 1))
    for i, factor in enumerate(factors.tolist()):
        torch.testing.assert_close(out[i], reference(images[i], factor), atol=1e-5, rtol=0)


def test_each_image_gets_its_own_draw() -> None:
    images = _random(1).expand(32, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    for step in (Brightness(0.5), Affine(), ResizedCrop((0.3, 0.6))):
        out = AugmentPipeline((("step", step),))(images)
        assert len({tuple(o.flatten()[:64].tolist()) for o in out}) == 32, step
    torch.manual_seed(1)
    turned = Rot90()(images)
    quarter_turns = {next(k for k in range(4) if torch.equal(t, images[0].rot90(k, dims=(-2, -1)))) for t in turned}
    assert quarter_turns == {0, 1, 2, 3}


def test_resized_crop_zooms_into_a_box_inside_the_image() -> None:
    torch.manual_seed(0)
    matrices = ResizedCrop((0.25, 0.25), (1.0, 1.0)).matrices(64, SIDE, SIDE, torch.device("cpu"))
    assert torch.allclose(matrices[:, 0, 0], torch.full((64,), 2.0)) and torch.allclose(
        matrices[:, 1, 1], matrices[:, 0, 0]
    )
    # the crop (16 px, centred within +-8 px of the centre) fills the output: shift = -2 * centre, within +-16
    assert matrices[:, :2, 2].abs().max() <= 16 + 1e-5 and matrices[:, :2, 2].abs().max() > 8


def test_uncovered_pixels_get_the_fill() -> None:
    images = torch.full((1, 3, SIDE, SIDE), 255, dtype=torch.uint8)
    out = AugmentPipeline((("affine", Affine((45.0, 45.0), (1, 1), 0)),), fill=128)(images)
    assert out[0, :, 0, 0].tolist() == pytest.approx([128 / 255] * 3)  # a corner, uncovered
    assert out[0, :, 16, 16].tolist() == pytest.approx([1.0] * 3)


def test_the_fundus_preset_keeps_shape_and_range_and_is_seeded() -> None:
    images = _random(6)
    pipeline = build_augment("fundus")
    torch.manual_seed(3)
    first = pipeline(images)
    torch.manual_seed(3)
    again = pipeline(images)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1 and torch.equal(first, again)
    assert [name for name, _ in pipeline.steps] == [
        "flips", "resized_crop", "affine", "brightness", "contrast", "saturation", "gamma",
    ]  # fmt: skip


def test_the_spec_grammar() -> None:
    assert build_augment(False) is None and build_augment("none") is None and build_augment([]) is None
    assert parse_augment(True) == parse_augment("flips") == (("flips", Flips()),)
    assert [n for n, _ in parse_augment(["flips", "rot90", "brightness"])] == ["flips", "rot90", "brightness"]
    tuned = parse_augment({"affine": {"degrees": 30, "scale": [0.9, 1.2]}, "gamma": None})
    assert tuned == (("affine", Affine(30, (0.9, 1.2))), ("gamma", Gamma()))
    assert parse_augment(["fundus"]) == parse_augment("fundus")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("spin", r"unknown augmentation 'spin'; valid: affine, .*, or a preset: none, flips, fundus"),
        ("rot9", "Did you mean 'rot90'"),
        ({"affine": {"degree": 30}}, "augmentation 'affine' has no parameter 'degree'; parameters: degrees, scale"),
        ({"brightness": {"strength": 1.5}}, r"'brightness': strength must be in \[0, 1\), got 1.5"),
        ({"affine": {"scale": [1.2, 0.9]}}, r"'affine': scale must be \[low, high\] with low <= high"),
        ({"resized_crop": {"scale": [0.5, 1.5]}}, r"'resized_crop': scale must be within \(0, 1\]"),
        ({"flips": {"p": 2}}, r"'flips': p must be in \[0, 1\]"),  # a step's name before a preset's
        ({"gamma": {"strength": "a lot"}}, "'gamma': strength must be a number"),
        ({"fundus": {}}, "preset 'fundus' takes no parameters"),
        (3, "augment must be true, false, a name, a list of names or a mapping"),
    ],
)
def test_bad_augmentation_is_refused_with_a_clear_message(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_augment(value)
