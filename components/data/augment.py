"""Training augmentation on whole image batches, on the training device, each image with its own random draw.

A model spec chooses it with ``augment``:

- ``false`` / ``none``: nothing; ``true`` / ``flips``: random horizontal and vertical flips (what ``augment: true``
  always meant, drawn exactly as before, on the uint8 batch);
- ``fundus``: the full set for fundus photos (:data:`PRESETS`): flips, a random resized crop and a random affine
  (any rotation: a fundus has no "up"; a little scale and shift) fused into one resampling, then brightness,
  contrast, saturation and gamma jitter;
- a list of registered names and presets (``[flips, rot90, brightness]``), each with its default parameters;
- a mapping of registered names to their parameters (``{affine: {degrees: 30}, brightness: {strength: 0.1}}``).

Steps run in the order given. Flips and ``rot90`` move pixels exactly and keep a uint8 batch uint8; the first
other step turns the batch into float in ``[0, 1]``, which the model takes as well (it normalises its input itself,
:class:`components.models.backbones.Classifier`). Consecutive geometric steps (``resized_crop``, ``affine``) are composed into
one matrix per image and resampled once (bilinear), so the image is interpolated once however many there are;
uncovered pixels get the preprocessing's background (black, or 128 after ``local_contrast``).

Randomness comes from torch's global generator on the batch's device, which training seeds per epoch, so a resumed
run draws what an uninterrupted one did. The registry is torch-only and batched: torchvision's v2 transforms draw
one set of parameters per call, i.e. per batch; the colour formulas are torchvision's (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_gamma``), drawn per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from components.data.fundus import build_step, parse_steps
from components.errors import did_you_mean
from components.registry import Registry

AUGMENTATIONS: Registry[type] = Registry("augmentation")
_KIND = "augmentation"
_SHAPE = "augment must be true, false, a name, a list of names or a mapping of names to parameters"
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
"""RGB -> grey, as torchvision's ``rgb_to_grayscale`` (ITU-R 601-2 luma)."""


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"augmentation {name!r}: {message}")


def _range(value: float | tuple[float, float], name: str, param: str, symmetric_about: float) -> tuple[float, float]:
    """A number ``v`` -> ``(c - v, c + v)`` about ``symmetric_about``; a pair stays a pair (low <= high)."""
    if isinstance(value, tuple):
        _check(len(value) == 2, name, f"{param} must be a number or a pair [low, high], got {list(value)}")
        low, high = float(value[0]), float(value[1])
    else:
        _check(value >= 0, name, f"{param} must be >= 0, got {value}")
        low, high = symmetric_about - value, symmetric_about + value
    _check(low <= high, name, f"{param} must be [low, high] with low <= high, got [{low}, {high}]")
    return low, high


def _uniform(low: float, high: float, count: int, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, device=device)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 in ``[0, 255]`` -> float32 in ``[0, 1]``; float batches pass unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class Augmentation:
    """A batched random transform; subclasses are dataclasses of their parameters, registered by name.

    ``exact`` steps move whole pixels and take uint8 or float batches; ``geometric`` ones give per-image
    content matrices (:meth:`matrices`) that the pipeline composes and resamples once; the rest act on float
    batches in ``[0, 1]`` (:meth:`__call__`).
    """

    exact: ClassVar[bool] = False
    geometric: ClassVar[bool] = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matrices(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``(count, 3, 3)`` maps from input to output pixel positions, in pixels about the image centre."""
        raise NotImplementedError


@AUGMENTATIONS.register("flips")
@dataclass(frozen=True)
class Flips(Augmentation):
    """Random horizontal and vertical flips, each with probability ``p`` per image (``augment: true``)."""

    p: float = 0.5
    exact: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check(0 <= self.p <= 1, "flips", f"p must be in [0, 1], got {self.p}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flip_h = torch.rand(images.shape[0], device=images.device) < self.p
        flip_v = torch.rand(images.shape[0], device=images.device) < self.p
        images = torch.where(flip_h.view(-1, 1, 1, 1), images.flip(-1), images)
        return torch.where(flip_v.view(-1, 1, 1, 1), images.flip(-2), images)


@AUGMENTATIONS.register("rot90")
@dataclass(frozen=True)
class Rot90(Augmentation):
    """A random multiple of 90 degrees per image (0, 90, 180 or 270, equally likely); exact, square images only."""

    exact: ClassVar[bool] = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rot90 needs square images, got {tuple(images.shape[-2:])}")
        turns = torch.randint(0, 4, (images.shape[0],), device=images.device)
        out = images
        for k in (1, 2, 3):
            out = torch.where(_per_image(turns == k), images.rot90(k, dims=(-2, -1)), out)
        return out


def rotation_scale_matrices(angles: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` content maps: scale by ``scales``, rotate by ``angles`` (degrees, counter-clockwise as
    displayed, as torchvision's ``rotate``), then shift by ``shifts`` ``(B, 2)`` pixels (x right, y down)."""
    radians = torch.deg2rad(angles)
    cos, sin = torch.cos(radians) * scales, torch.sin(radians) * scales
    matrices = torch.zeros(angles.shape[0], 3, 3, device=angles.device)
    # y points down: counter-clockwise on screen takes (x, y) to (x cos + y sin, -x sin + y cos)
    matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2] = cos, sin, shifts[:, 0]
    matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2] = -sin, cos, shifts[:, 1]
    matrices[:, 2, 2] = 1.0
    return matrices


def _inverse_affine(matrices: torch.Tensor) -> torch.Tensor:
    """The inverses of ``(B, 3, 3)`` affine maps ``[[A, t], [0, 1]]``: ``[[A^-1, -A^-1 t], [0, 1]]`` in closed form."""
    a, b, c, d = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1]
    det = a * d - b * c
    inverse = torch.zeros_like(matrices)
    inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 1, 0], inverse[:, 1, 1] = d / det, -b / det, -c / det, a / det
    inverse[:, :2, 2] = -(inverse[:, :2, :2] @ matrices[:, :2, 2:]).squeeze(-1)
    inverse[:, 2, 2] = 1.0
    return inverse


def warp(images: torch.Tensor, matrices: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Resamples float ``images`` (bilinear) so that the content at input position ``p`` lands at ``M @ p``
    (pixels about the centre); output pixels that map outside the input get ``fill``."""
    count, _, height, width = images.shape
    to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0], device=images.device))
    to_normalised = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], device=images.device))
    sampling = to_normalised @ _inverse_affine(matrices) @ to_pixels  # output (normalised) -> input (normalised)
    grid = F.affine_grid(sampling[:, :2, :], [count, images.shape[1], height, width], align_corners=False)
    sampled = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled + fill


@AUGMENTATIONS.register("affine")
@dataclass(frozen=True)
class Affine(Augmentation):
    """Random rotation, scale and shift per image.

    Attributes:
        degrees: the angle is uniform in ``[-degrees, degrees]`` (180: any rotation), or in a pair ``[low, high]``.
        scale: the zoom factor, uniform in ``[low, high]``.
        translate: the shift, uniform in ``[-translate, translate]`` of the side, along each axis.
    """

    degrees: float | tuple[float, float] = 180.0
    scale: tuple[float, float] = (0.95, 1.05)
    translate: float = 0.03
    geometric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _range(self.degrees, "affine", "degrees", 0.0)
        low, high = _range(self.scale, "affine", "scale", 1.0)
        _check(low > 0, "affine", f"scale must be > 0, got [{low}, {high}]")
        _check(0 <= self.translate < 1, "affine", f"translate must be in [0, 1), got {self.translate}")

    def matrices(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        angles = _uniform(*_range(self.degrees, "affine", "degrees", 0.0), count, device)
        scales = _uniform(*_range(self.scale, "affine", "scale", 1.0), count, device)
        shifts = (2 * torch.rand(count, 2, device=device) - 1) * self.translate
        shifts = shifts * torch.tensor([width, height], device=device, dtype=shifts.dtype)
        return rotation_scale_matrices(angles, scales, shifts)


@AUGMENTATIONS.register("resized_crop")
@dataclass(frozen=True)
class ResizedCrop(Augmentation):
    """A random crop resized back to the full image (torchvision's ``RandomResizedCrop``, drawn per image).

    Attributes:
        scale: the crop's area as a fraction of the image, uniform in ``[low, high]``.
        ratio: the crop's width / height, log-uniform in ``[low, high]`` (clipped to fit the image).
    """

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    geometric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        low, high = _range(self.scale, "resized_crop", "scale", 1.0)
        _check(low > 0 and high <= 1, "resized_crop", f"scale must be within (0, 1], got [{low}, {high}]")
        low, high = _range(self.ratio, "resized_crop", "ratio", 1.0)
        _check(low > 0, "resized_crop", f"ratio must be > 0, got [{low}, {high}]")

    def matrices(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        area = _uniform(*_range(self.scale, "resized_crop", "scale", 1.0), count, device) * (height * width)
        low, high = _range(self.ratio, "resized_crop", "ratio", 1.0)
        log_ratio = _uniform(math.log(low), math.log(high), count, device)
        crop_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=width)
        crop_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=height)
        centre_x = (torch.rand(count, device=device) - 0.5) * (width - crop_w)
        centre_y = (torch.rand(count, device=device) - 0.5) * (height - crop_h)
        sx, sy = width / crop_w, height / crop_h
        matrices = torch.zeros(count, 3, 3, device=device)
        matrices[:, 0, 0], matrices[:, 0, 2] = sx, -sx * centre_x
        matrices[:, 1, 1], matrices[:, 1, 2] = sy, -sy * centre_y
        matrices[:, 2, 2] = 1.0
        return matrices


@dataclass(frozen=True)
class _Jitter(Augmentation):
    """A factor per image, uniform in ``[1 - strength, 1 + strength]`` (0: the identity)."""

    strength: float = 0.2
    name: ClassVar[str] = "jitter"

    def __post_init__(self) -> None:
        _check(0 <= self.strength < 1, self.name, f"strength must be in [0, 1), got {self.strength}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.strength == 0:
            return images
        factors = _uniform(1 - self.strength, 1 + self.strength, images.shape[0], images.device)
        return self.apply(images, _per_image(factors))

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def grey(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` luma of float RGB ``images``."""
    r, g, b = images.unbind(dim=1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


@AUGMENTATIONS.register("brightness")
@dataclass(frozen=True)
class Brightness(_Jitter):
    """``x * f`` (torchvision ``adjust_brightness``)."""

    name: ClassVar[str] = "brightness"

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return (images * factors).clamp_(0, 1)


@AUGMENTATIONS.register("contrast")
@dataclass(frozen=True)
class Contrast(_Jitter):
    """``m + f (x - m)`` about the image's mean grey ``m`` (torchvision ``adjust_contrast``)."""

    name: ClassVar[str] = "contrast"

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        mean = grey(images).mean(dim=(-3, -2, -1), keepdim=True)
        return (factors * images + (1 - factors) * mean).clamp_(0, 1)


@AUGMENTATIONS.register("saturation")
@dataclass(frozen=True)
class Saturation(_Jitter):
    """``g + f (x - g)`` about each pixel's grey ``g`` (torchvision ``adjust_saturation``)."""

    name: ClassVar[str] = "saturation"

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return (factors * images + (1 - factors) * grey(images)).clamp_(0, 1)


@AUGMENTATIONS.register("gamma")
@dataclass(frozen=True)
class Gamma(_Jitter):
    """``x ** f`` (torchvision ``adjust_gamma`` with gain 1)."""

    name: ClassVar[str] = "gamma"

    @staticmethod
    def apply(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return images.clamp(min=0).pow(factors).clamp_(0, 1)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "flips": {"flips": {}},
    "fundus": {
        "flips": {},
        "resized_crop": {"scale": (0.8, 1.0), "ratio": (0.9, 1.1)},
        "affine": {"degrees": 180.0, "scale": (0.95, 1.05), "translate": 0.03},
        "brightness": {"strength": 0.2},
        "contrast": {"strength": 0.2},
        "saturation": {"strength": 0.15},
        "gamma": {"strength": 0.15},
    },
}
"""Named sets: ``none``, ``flips`` (``augment: true``) and ``fundus`` (everything, with moderate strengths)."""


def parse_augment(value: Any) -> tuple[tuple[str, Augmentation], ...]:
    """The steps a spec's ``augment`` names, in order (see the module docstring).

    Raises:
        ValueError: for an unknown name (naming the valid ones), an unknown parameter or a value out of range.
    """
    if value is True:
        value = "flips"
    steps: list[tuple[str, Augmentation]] = []
    mapping = isinstance(value, dict)
    for name, params in parse_steps(value, _KIND, _SHAPE):
        if name in AUGMENTATIONS:  # a step's name wins over a preset's ("flips" is both, the same)
            steps.append((name, build_step(AUGMENTATIONS, name, params, _KIND)))
        elif name in PRESETS and not mapping:
            steps.extend((step, build_step(AUGMENTATIONS, step, p, _KIND)) for step, p in PRESETS[name].items())
        elif name in PRESETS:
            raise ValueError(f"augmentation preset {name!r} takes no parameters; name its steps instead: "
                             f"{', '.join(PRESETS[name]) or 'none'}")  # fmt: skip
        else:
            _known(name)
    return tuple(steps)


def _known(name: str) -> None:
    """Raises the unknown-name error (with the presets and a "did you mean") unless ``name`` is registered."""
    if name not in AUGMENTATIONS:
        hint = did_you_mean(name, [*AUGMENTATIONS.names(), *PRESETS])
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS.names())}, "
                         f"or a preset: {', '.join(PRESETS)}.{hint}")  # fmt: skip


@dataclass(frozen=True)
class AugmentPipeline:
    """The augmentation of one spec, applied to a ``(B, 3, H, W)`` batch (uint8, or float in ``[0, 1]``).

    Attributes:
        steps: ``(name, step)`` in order.
        fill: the value (0-255) that geometric steps give pixels they uncover.
    """

    steps: tuple[tuple[str, Augmentation], ...]
    fill: float = 0.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x, pending = images, []
        for _, step in self.steps:
            if step.geometric:
                pending.append(step)
                continue
            x = self._warp(x, pending)
            pending = []
            x = step(x) if step.exact else step(to_float(x))
        return self._warp(x, pending)

    def _warp(self, images: torch.Tensor, pending: Sequence[Augmentation]) -> torch.Tensor:
        if not pending:
            return images
        count, _, height, width = images.shape
        combined = pending[0].matrices(count, height, width, images.device)
        for step in pending[1:]:  # later steps act on the earlier ones' output
            combined = step.matrices(count, height, width, images.device) @ combined
        return warp(to_float(images), combined, self.fill / 255.0)


def build_augment(value: Any, fill: float = 0.0) -> AugmentPipeline | None:
    """The pipeline a spec's ``augment`` names, or None when it names nothing (``false``, ``none``, ``[]``)."""
    steps = parse_augment(value)
    return AugmentPipeline(steps, fill) if steps else None
