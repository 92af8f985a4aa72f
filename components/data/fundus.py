"""Fundus preprocessing, done once per image when it is decoded (the decoded-image cache keeps the result).

Two registered steps, chosen per model spec (``preprocess:``), each off unless named:

- ``fov_crop``: crops the photo to the bounding box of its circular field of view (FOV), dropping the black
  border that otherwise shrinks the retina at a given input size. The box is where enough pixels are brighter
  than ``threshold``; the aspect is kept (a circle cut off at the top and bottom stays a wide box, which the
  square resize pads with black).
- ``local_contrast``: the preprocessing of the Kaggle diabetic-retinopathy winners (B. Graham, 2015):
  ``gain * (img - blur(img, sigma)) + 128``, which removes the slow variation of illumination and pigmentation
  and keeps vessels, lesions and the disc edge; applied to the resized image (``sigma = sigma * side``) inside
  the FOV, with everything outside set to 128. The blur is a *masked* Gaussian (``blur(img * m) / blur(m)``): it
  averages FOV pixels only, so the FOV edge does not make the bright ring that the plain blur of a black border
  makes (Graham shrank his mask to 90 % of the radius to hide it).

A spec names steps as a list (``[fov_crop, local_contrast]``), or as a mapping to their parameters
(``{local_contrast: {sigma: 0.02}}``); :func:`parse_preprocess` turns either into a :class:`FundusPreprocess`,
whose :attr:`~FundusPreprocess.key` is part of the image cache's key. The steps always run in the order crop,
resize, contrast, whatever order the spec lists them in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from components.registry import Registry

FOV_THRESHOLD = 10
"""Pixels whose brightest channel is above this (0-255) belong to the field of view; JPEG noise in the black
border of ODIR photos stays below it."""
MIN_LINE_FRACTION = 0.01
"""A row (column) is inside the FOV's box when more than this share of its pixels are: sparse noise is not."""


def _brightest(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)``: each pixel's brightest channel (``np.maximum`` of the planes: ~20x faster than ``max(axis=2)``)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def fov_mask(rgb: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``(H, W, 3)`` uint8 ``rgb`` whose brightest channel is above ``threshold``,
    with holes inside the field of view (a dark haemorrhage, an underexposed patch) filled."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(_brightest(rgb) > threshold)


def fov_box(rgb: np.ndarray, threshold: int = FOV_THRESHOLD) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` (bottom and right exclusive) of the field of view of ``(H, W, 3)`` uint8
    ``rgb``; None when nothing is brighter than ``threshold`` (an all-black image)."""
    bright = _brightest(rgb) > threshold
    height, width = bright.shape
    rows = np.flatnonzero(bright.sum(axis=1) > MIN_LINE_FRACTION * width)
    cols = np.flatnonzero(bright.sum(axis=0) > MIN_LINE_FRACTION * height)
    if not len(rows) or not len(cols):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _masked_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``(H, W, C)`` float ``values`` over the pixels of ``mask`` only: ``blur(v*m) / blur(m)``."""
    from scipy import ndimage

    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
    blurred = np.stack(
        [ndimage.gaussian_filter(values[..., c] * mask, sigma, mode="constant") for c in range(values.shape[2])],
        axis=2,
    )
    return blurred / np.maximum(weight, 1e-12)[..., None]


PREPROCESSING: Registry[type] = Registry("preprocessing step")


def _check(condition: bool, step: str, message: str) -> None:
    if not condition:
        raise ValueError(f"preprocessing step {step!r}: {message}")


@PREPROCESSING.register("fov_crop")
@dataclass(frozen=True)
class FovCrop:
    """Crop to the field of view's bounding box (before the square resize).

    Attributes:
        threshold: brightness (0-255, brightest channel) above which a pixel is inside the FOV.
    """

    threshold: int = FOV_THRESHOLD

    def __post_init__(self) -> None:
        _check(1 <= self.threshold <= 254, "fov_crop", f"threshold must be in [1, 254], got {self.threshold}")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        box = fov_box(rgb, self.threshold)
        if box is None:
            return rgb
        top, bottom, left, right = box
        return np.ascontiguousarray(rgb[top:bottom, left:right])


@PREPROCESSING.register("local_contrast")
@dataclass(frozen=True)
class LocalContrast:
    """``gain * (img - blur) + 128`` inside the FOV, 128 outside (after the square resize).

    Attributes:
        sigma: the Gaussian's standard deviation as a fraction of the image side (1/30: 5.3 px at 160 px).
        gain: how much the local detail is amplified (Graham's 4).
        threshold: brightness above which a pixel is inside the FOV (see :func:`fov_mask`).
        erode: shrink the FOV mask by this fraction of the side (Graham's 0.9 radius is about 0.05), to drop the
            rim's vignetting; 0 keeps the whole FOV.
    """

    sigma: float = 1 / 30
    gain: float = 4.0
    threshold: int = FOV_THRESHOLD
    erode: float = 0.0

    def __post_init__(self) -> None:
        _check(0 < self.sigma <= 0.5, "local_contrast", f"sigma must be in (0, 0.5] (of the side), got {self.sigma}")
        _check(0 < self.gain <= 32, "local_contrast", f"gain must be in (0, 32], got {self.gain}")
        _check(1 <= self.threshold <= 254, "local_contrast", f"threshold must be in [1, 254], got {self.threshold}")
        _check(0 <= self.erode < 0.5, "local_contrast", f"erode must be in [0, 0.5), got {self.erode}")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        side = max(rgb.shape[:2])
        mask = fov_mask(rgb, self.threshold)
        steps = round(self.erode * side)
        if steps and mask.any():
            mask = ndimage.binary_erosion(mask, iterations=steps)
        if not mask.any():
            return np.full_like(rgb, 128)
        values = rgb.astype(np.float64)
        out = self.gain * (values - _masked_blur(values, mask, self.sigma * side)) + 128.0
        out = np.where(mask[..., None], out, 128.0)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FundusPreprocess:
    """The preprocessing of one model spec: an optional crop before the resize, an optional contrast step after.

    Attributes:
        crop: the ``fov_crop`` step, or None.
        contrast: the ``local_contrast`` step, or None.
    """

    crop: FovCrop | None = None
    contrast: LocalContrast | None = None

    @property
    def active(self) -> bool:
        return self.crop is not None or self.contrast is not None

    @property
    def key(self) -> str:
        """A stable description of the steps and their parameters (part of the image cache's key); ``""`` for none."""
        steps = (("fov_crop", self.crop), ("local_contrast", self.contrast))
        return "+".join(_describe(name, step) for name, step in steps if step is not None)

    @property
    def background(self) -> int:
        """The value outside the field of view after preprocessing (0, or 128 after ``local_contrast``): what
        geometric augmentation fills uncovered pixels with."""
        return 128 if self.contrast is not None else 0


def _describe(name: str, step: object) -> str:
    values = ",".join(f"{f.name}={getattr(step, f.name)!r}" for f in fields(step))
    return f"{name}({values})"


NO_PREPROCESS = FundusPreprocess()
_SHAPE = "preprocess must be none, a step's name, a list of names or a mapping of names to parameters"


def parse_steps(value: Any, kind: str, shape: str) -> list[tuple[str, Mapping[str, Any]]]:
    """A spec setting (``none``, a name, a list of names, or a mapping of names to parameters or None) as
    ``[(name, params)]``; ``kind`` names the steps and ``shape`` says what the setting must be, in messages."""
    if value is None or value is False or value == "none":
        return []
    if isinstance(value, str):
        return [(value, {})]
    if isinstance(value, list | tuple):
        strange = [item for item in value if not isinstance(item, str)]
        if strange:
            raise ValueError(f"{shape}; {strange[0]!r} is not a name")
        return [(item, {}) for item in value if item != "none"]
    if isinstance(value, Mapping):
        steps = []
        for name, params in value.items():
            if params is not None and not isinstance(params, Mapping):
                raise ValueError(f"{kind} {name!r}: parameters must be a mapping, got {params!r}")
            steps.append((str(name), params or {}))
        return steps
    raise ValueError(shape)


def build_step(registry: Registry[type], name: str, params: Mapping[str, Any], kind: str) -> object:
    """``registry``'s ``name`` built with ``params``; a ValueError naming the step and the valid parameters for an
    unknown one."""
    cls = registry.get(name)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"parameters: {', '.join(known) or 'none'}")  # fmt: skip
    converted = {key: tuple(value) if isinstance(value, list) else value for key, value in params.items()}
    for key, value in converted.items():
        if isinstance(value, bool) or not isinstance(value, int | float | tuple):
            raise ValueError(f"{kind} {name!r}: {key} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{kind} {name!r}: {key} must be finite, got {value!r}")
    return cls(**converted)


def parse_preprocess(value: Any) -> FundusPreprocess:
    """The :class:`FundusPreprocess` a spec's ``preprocess`` names (see the module docstring).

    Raises:
        ValueError: for an unknown step (naming the valid ones), an unknown parameter or a value out of range.
    """
    built: dict[str, object] = {}
    for name, params in parse_steps(value, "preprocessing step", _SHAPE):
        if name in built:
            raise ValueError(f"preprocessing step {name!r} is named twice")
        built[name] = build_step(PREPROCESSING, name, params, "preprocessing step")
    return FundusPreprocess(built.get("fov_crop"), built.get("local_contrast"))
