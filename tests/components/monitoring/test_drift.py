"""Drift and data-quality checks on synthetic fundus images: statistics, the reference, KS/MMD tests, OOD flags."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from components.data.synth import render_fundus, sample_labels
from components.models.backbones import build_model
from components.monitoring import drift
from components.monitoring.drift import compare
from components.monitoring.image_stats import FEATURES, LUMA, image_stats, stats_row
from components.monitoring.reference import EMBEDDING_DIMS, Reference, build_reference, embed_images

SIZE = 64


def _fundus(seed: int, count: int, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = sample_labels(rng, count)
    return [np.asarray(render_fundus(rng, size, labels[i], "left" if i % 2 else "right")) for i in range(count)]


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    """A randomly initialised tiny CNN: fixed features that still respond to what the images look like."""
    torch.manual_seed(0)
    return build_model("tiny_cnn")


def _stats(images: list[np.ndarray]) -> np.ndarray:
    return np.stack([stats_row(image_stats(image)) for image in images])


def _embed(network: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    return embed_images(network, [_png(image) for image in images], SIZE)


@pytest.fixture(scope="module")
def reference(network: torch.nn.Module) -> Reference:
    """120 synthetic training images."""
    images = _fundus(0, 120)
    return build_reference(_stats(images), _embed(network, images), {"member_model_uri": "models:/odir-test/1"})


@pytest.fixture(scope="module")
def same() -> list[np.ndarray]:
    """60 new images from the same generator (another seed)."""
    return _fundus(1, 60)


def _check(reference: Reference, network: torch.nn.Module, images: list[np.ndarray]) -> drift.DriftReport:
    return compare(reference, _stats(images), _embed(network, images), [f"{i}.png" for i in range(len(images))])


# --- statistics -----------------------------------------------------------------------------------------------------


def test_a_constant_image_has_its_value_as_brightness_and_no_contrast() -> None:
    stats = image_stats(np.full((40, 60, 3), 120, np.uint8))
    assert stats["brightness"] == pytest.approx(120.0) and stats["contrast"] == pytest.approx(0.0)
    assert (stats["width"], stats["height"], stats["aspect"]) == (60, 40, 1.5)
    assert stats["border_share"] == 0.0 and stats["saturation"] == 0.0 and stats["red_share"] == pytest.approx(1 / 3)


def test_border_share_of_a_disc_of_known_radius() -> None:
    side, radius = 200, 80
    image = Image.new("RGB", (side, side))
    ImageDraw.Draw(image).ellipse((100 - radius, 100 - radius, 100 + radius, 100 + radius), fill=(190, 80, 40))
    stats = image_stats(np.asarray(image))
    assert stats["border_share"] == pytest.approx(1 - np.pi * radius**2 / side**2, abs=0.01)
    assert stats["corner_fill"] == 0.0  # a disc leaves its box's corners dark


def test_a_synthetic_fundus_of_known_radius_has_that_border(same: list[np.ndarray]) -> None:
    # render_fundus draws the retina with a radius of 0.44-0.48 of the side: 30-36 % of the square is border
    shares = _stats(same)[:, FEATURES.index("border_share")]
    assert ((1 - np.pi * 0.48**2 - 0.02 < shares) & (shares < 1 - np.pi * 0.44**2 + 0.02)).all()


def test_sharpness_falls_after_a_gaussian_blur(same: list[np.ndarray]) -> None:
    for image in same[:5]:
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
        assert image_stats(blurred)["sharpness"] < 0.5 * image_stats(image)["sharpness"]


def test_a_turned_fundus_has_its_disc_above_or_below_the_centre(same: list[np.ndarray]) -> None:
    upright = _stats(same[:10])[:, FEATURES.index("disc_elevation")]
    turned = _stats([np.rot90(image).copy() for image in same[:10]])[:, FEATURES.index("disc_elevation")]
    assert upright.max() < 25 and turned.min() > 60


# --- the reference --------------------------------------------------------------------------------------------------


def test_the_reference_survives_a_round_trip(reference: Reference, tmp_path: Path) -> None:
    reference.save(tmp_path)
    loaded = Reference.load(tmp_path)
    for name in Reference.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
    assert loaded.embedding_threshold == reference.embedding_threshold and loaded.source == reference.source
    assert reference.embedding_sample.shape == (120, EMBEDDING_DIMS)  # all of them: fewer than 200


def test_holm_adjusts_step_down() -> None:
    np.testing.assert_allclose(drift.holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])


def test_mmd_separates_shifted_gaussians_not_equal_ones() -> None:
    rng = np.random.default_rng(1)  # a fixed draw: under the null, p < 0.05 one time in 20 (seed 0 is one)
    base = rng.standard_normal((150, 8))
    assert drift.mmd_test(base, rng.standard_normal((80, 8)))[1] > 0.05
    assert drift.mmd_test(base, rng.standard_normal((80, 8)) + 0.5)[1] < 0.01


# --- drift ----------------------------------------------------------------------------------------------------------


def test_no_drift_on_images_of_the_same_distribution(reference: Reference, network, same) -> None:
    report = _check(reference, network, same)
    assert not report.drift and report.moved == () and not report.embedding_moved
    assert report.ood_count == 0, [image.reasons for image in report.out_of_distribution]


def _darker(image: np.ndarray) -> np.ndarray:
    return (image * 0.7).astype(np.uint8)


def _blurred(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)))


def _colour_cast(image: np.ndarray) -> np.ndarray:
    return np.clip(image * np.array([0.85, 1.0, 1.25]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("shift", "feature"), [(_darker, "brightness"), (_blurred, "sharpness"),
                                                (_colour_cast, "saturation")])  # fmt: skip
def test_drift_is_detected_and_the_feature_named(reference: Reference, network, same, shift, feature) -> None:
    report = _check(reference, network, [shift(image) for image in same])
    assert report.drift and feature in report.moved and report.drift_score > 0.5


def test_another_camera_moves_size_and_border(reference: Reference, network) -> None:
    """A camera with a smaller field of view on a wider sensor: 48 px retinas on 80x64 frames."""
    frames = []
    for retina in _fundus(1, 60, size=48):
        frame = np.zeros((64, 80, 3), np.uint8)
        frame[8:56, 16:64] = retina
        frames.append(frame)
    report = _check(reference, network, frames)
    assert report.drift and {"width", "aspect", "border_share"} <= set(report.moved) and report.embedding_moved


# --- out of distribution --------------------------------------------------------------------------------------------


def _reasons(reference: Reference, network, image: np.ndarray) -> tuple[str, ...]:
    [checked] = drift.flag_images(reference, _stats([image]), _embed(network, [image]), ["x.png"])
    return checked.reasons


def test_a_black_frame_is_flagged(reference: Reference, network) -> None:
    assert _reasons(reference, network, np.zeros((SIZE, SIZE, 3), np.uint8)) == (
        "black frame: nothing brighter than the black border",
    )


def test_a_tiny_image_is_flagged(reference: Reference, network) -> None:
    reasons = _reasons(reference, network, _fundus(2, 1, size=24)[0])
    assert any(reason.startswith("tiny image: 24x24 px") for reason in reasons)


def test_non_fundus_images_are_flagged(reference: Reference, network) -> None:
    rng = np.random.default_rng(0)
    texture = np.asarray(Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).resize((96, 64)))
    grey_photo = np.full((64, 96, 3), 170, np.uint8)
    grey_photo[20:40, 30:70] = 90  # something on a wall
    for image in (texture, grey_photo):
        assert any("no circular field of view" in r for r in _reasons(reference, network, image))


def test_a_grey_fundus_is_flagged_for_its_colour(reference: Reference, network, same) -> None:
    grey = np.repeat((same[0].astype(float) @ LUMA).astype(np.uint8)[..., None], 3, axis=2)
    assert any("colour far outside the reference" in r for r in _reasons(reference, network, grey))


def test_a_turned_fundus_is_flagged(reference: Reference, network, same) -> None:
    assert any(r.startswith("rotated?") for r in _reasons(reference, network, np.rot90(same[0]).copy()))


def test_a_portrait_photo_among_landscape_ones_is_flagged_as_turned(reference: Reference, network, same) -> None:
    landscape = reference.stats.copy()  # the same images as if taken on a 3:2 sensor
    landscape[:, FEATURES.index("width")] *= 1.5
    landscape[:, FEATURES.index("aspect")] = 1.5
    portrait = np.zeros((96, 64, 3), np.uint8)
    portrait[16:80] = same[0]
    reasons = _reasons(dataclasses.replace(reference, stats=landscape), network, portrait)
    assert any(r.startswith("rotated by 90 degrees? aspect 0.67") for r in reasons), reasons
    assert not any(r.startswith("rotated") for r in _reasons(reference, network, portrait[16:80]))


def test_embeddings_far_from_the_reference_are_flagged(reference: Reference, network, same) -> None:
    inverted = 255 - same[0]  # a fundus-shaped FOV with the colours turned inside out
    reasons = _reasons(reference, network, inverted)
    assert any(r.startswith("embedding far from the reference") for r in reasons), reasons
