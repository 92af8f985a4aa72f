"""Fundus preprocessing: the field-of-view crop, the local-contrast normalisation, the cache key, the spec grammar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.dataset import FundusDataset, ImageCache
from components.data.images import load_image
from components.data.fundus import (
    FovCrop,
    FundusPreprocess,
    LocalContrast,
    fov_box,
    fov_mask,
    parse_preprocess,
)


def _fundus(height: int, width: int, cx: float, cy: float, radius: float, seed: int = 0) -> np.ndarray:
    """A black photo (JPEG-like noise below the threshold) with a textured disc of known centre and radius, and a
    dark spot (below the threshold) inside it."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 7, size=(height, width, 3)).astype(np.uint8)
    rows, cols = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    inside = (cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2
    texture = rng.integers(60, 200, size=(height, width, 3)).astype(np.uint8)
    rgb[inside] = texture[inside]
    rgb[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2] = 3  # a dark patch inside the field of view
    return rgb


def test_the_fov_box_matches_a_known_circle() -> None:
    cx, cy, radius = 37.0, 26.0, 17.0
    top, bottom, left, right = fov_box(_fundus(56, 80, cx, cy, radius))
    for found, expected in ((top, cy - radius), (bottom, cy + radius), (left, cx - radius), (right, cx + radius)):
        assert abs(found - expected) <= 1.5, (found, expected)
    assert fov_box(np.zeros((8, 8, 3), np.uint8)) is None  # all black: nothing to crop to


def test_the_mask_fills_dark_patches_inside_the_field_of_view() -> None:
    rgb = _fundus(56, 80, 37.0, 26.0, 17.0)
    mask = fov_mask(rgb)
    assert mask[26, 37] and rgb[26, 37].max() <= 10  # the dark patch is inside
    assert not mask[2, 2] and not mask[50, 75]


def test_the_crop_drops_the_border_and_keeps_the_aspect(tmp_path: Path) -> None:
    # a disc cut off at the top and bottom (as many ODIR photos): the box is wider than tall
    rgb = _fundus(40, 96, 48.0, 20.0, 30.0)
    cropped = FovCrop()(rgb)
    assert cropped.shape[0] == 40 and abs(cropped.shape[1] - 60) <= 2
    path = tmp_path / "eye.png"
    Image.fromarray(rgb).save(path)
    image = load_image(path, 32, FundusPreprocess(crop=FovCrop()))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    # 60 x 40 -> padded to 60 x 60 -> 32 px: about 5 black rows above and below, the retina reaching the sides
    assert image[:, :4].max() <= 10 and image[:, -4:].max() <= 10
    assert image[:, 16, 0].max() > 10 and image[:, 16, -1].max() > 10
    plain = load_image(path, 32)
    assert plain[:, 16, 0].max() <= 10  # without the crop the side border stays


def _expected_contrast(row: np.ndarray, sigma: float, gain: float) -> np.ndarray:
    """``gain * (v - blur(v)) + 128`` along one row, by hand: the sampled Gaussian (radius 4 sigma, as scipy
    truncates it), renormalised over the pixels inside the image (the whole image is the field of view)."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = np.empty(len(row))
    for i in range(len(row)):
        valid = (i + offsets >= 0) & (i + offsets < len(row))
        blurred = (weights[valid] * row[i + offsets[valid]]).sum() / weights[valid].sum()
        out[i] = gain * (row[i] - blurred) + 128
    return np.clip(np.rint(out), 0, 255)


def test_local_contrast_on_a_step() -> None:
    side, sigma, gain = 32, 2.0, 1.0
    row = np.where(np.arange(side) < side // 2, 80.0, 160.0)
    rgb = np.repeat(np.tile(row, (side, 1))[..., None], 3, axis=2).astype(np.uint8)
    out = LocalContrast(sigma=sigma / side, gain=gain)(rgb)
    expected = _expected_contrast(row, sigma, gain)
    assert np.abs(out[side // 2, :, 0].astype(float) - expected).max() <= 1
    assert (out[:, :7] == 128).all() and (out[:, -7:] == 128).all()  # flat far from the step
    assert out[5, 15, 0] < 100 and out[5, 16, 0] > 156  # darker / brighter beside the step, symmetrically
    assert abs((int(out[5, 15, 0]) - 128) + (int(out[5, 16, 0]) - 128)) <= 1


def test_local_contrast_is_flat_on_a_flat_retina_and_grey_outside() -> None:
    # the masked blur averages field-of-view pixels only: no bright ring along the black border
    rgb = np.zeros((48, 48, 3), np.uint8)
    rows, cols = np.mgrid[0:48, 0:48] + 0.5
    rgb[(cols - 24) ** 2 + (rows - 24) ** 2 <= 20**2] = (150, 90, 40)
    out = LocalContrast()(rgb)
    assert (out == 128).all()
    bright = rgb.copy()
    bright[23:25, 23:25] = (250, 250, 250)  # a small bright lesion stands out
    assert LocalContrast()(bright)[23, 23].min() == 255


def test_the_cache_keys_include_the_preprocessing(tmp_path: Path) -> None:
    rgb = _fundus(40, 64, 32.0, 20.0, 16.0)
    path = tmp_path / "eye.png"
    Image.fromarray(rgb).save(path)
    cache = ImageCache()
    contrast = parse_preprocess(["fov_crop", "local_contrast"])
    plain, processed = cache.get(path, 16), cache.get(path, 16, contrast)
    assert len(cache) == 2 and not torch.equal(plain, processed)
    assert torch.equal(cache.get(path, 16, contrast), processed) and len(cache) == 2
    assert torch.equal(cache.get(path, 16, FundusPreprocess()), plain) and len(cache) == 2  # inactive = none
    dataset = FundusDataset([path], None, 16, cache, contrast)
    assert torch.equal(dataset[0][0], processed)
    assert dataset.with_preprocess(contrast) is dataset
    assert torch.equal(dataset.with_preprocess(None)[0][0], plain)
    assert torch.equal(FundusDataset([path], None, 16, None, contrast)[0][0], processed)  # uncached: the same


def test_the_spec_grammar() -> None:
    assert not parse_preprocess("none").active and not parse_preprocess([]).active
    both = parse_preprocess(["local_contrast", "fov_crop"])  # listed in any order, applied crop first
    assert both.crop == FovCrop() and both.contrast == LocalContrast()
    tuned = parse_preprocess({"local_contrast": {"sigma": 0.02, "erode": 0.05}})
    assert tuned.crop is None and tuned.contrast == LocalContrast(sigma=0.02, erode=0.05)
    assert tuned.key == "local_contrast(sigma=0.02,gain=4.0,threshold=10,erode=0.05)"
    assert tuned.background == 128 and parse_preprocess("fov_crop").background == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fov_crp", r"unknown preprocessing step 'fov_crp'; valid: fov_crop, local_contrast\. Did you mean 'fov_crop'"),
        ({"local_contrast": {"sigmas": 1}}, r"'local_contrast' has no parameter 'sigmas'; parameters: sigma, gain"),
        ({"local_contrast": {"sigma": 0}}, r"'local_contrast': sigma must be in \(0, 0.5\]"),
        ({"fov_crop": {"threshold": 300}}, r"'fov_crop': threshold must be in \[1, 254\]"),
        ({"fov_crop": 3}, "'fov_crop': parameters must be a mapping"),
        (["fov_crop", "fov_crop"], "'fov_crop' is named twice"),
        (7, "preprocess must be none, a step's name, a list of names or a mapping"),
    ],
)
def test_bad_preprocessing_is_refused_with_a_clear_message(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_preprocess(value)
