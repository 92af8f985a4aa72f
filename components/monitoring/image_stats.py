"""Per-image statistics for drift and data-quality checks (:mod:`components.monitoring.drift`).

**Statistics** (:func:`image_stats`, :data:`FEATURES`): size and aspect; inside the field of view (FOV,
:func:`components.data.fundus.fov_mask`) the mean and standard deviation of the luminance (brightness, contrast), the
mean HSV saturation and the red share ``R / (R + G + B)``; the share of black border outside the FOV; how much of
the corners of the FOV's box the FOV fills (a disc leaves them dark, a rectangular photo does not); the sharpness
(variance of the Laplacian on a 128 px grey thumbnail of the FOV, inside it: it falls when an image is blurred);
and the optic disc's elevation (the angle of the brightest smoothed spot above or below the horizontal through the
FOV's centre: the disc sits near that line in a macula-centred photo, far from it in one turned by 90°).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from components.data.fundus import fov_box, fov_mask
from components.data.images import ImageSource, decode_image

FEATURES: tuple[str, ...] = (
    "width", "height", "aspect", "brightness", "contrast", "saturation", "red_share", "border_share", "corner_fill",
    "sharpness", "disc_elevation",
)  # fmt: skip
"""The per-image statistics, in the column order of every statistics array."""
WORK_SIDE = 512
"""Statistics other than the size are measured on a copy whose longer side is at most this (a 12 MP photo and its
512 px copy give the same means, and the copy takes milliseconds)."""
THUMBNAIL = 128
"""Side of the grey thumbnail of the FOV that sharpness and the disc are measured on: a fixed size, so that the
sharpness of photos of different resolutions compares."""
LUMA = np.array([0.299, 0.587, 0.114])
MIN_FOV_SHARE = 0.01
"""An image with less of its area inside a FOV has none: a black frame."""
CORNER = 0.1
"""Side of each corner patch of the FOV's box, as a share of the box's side."""
DISC_MIN_RADIUS = 0.15
"""A brightest spot nearer the FOV's centre than this share of its radius gives no direction (elevation 0)."""


def _working_copy(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = WORK_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _thumbnail(values: np.ndarray, resample: Image.Resampling) -> np.ndarray:
    """A ``(THUMBNAIL, THUMBNAIL)`` float copy of a 2-D array."""
    image = Image.fromarray(values.astype(np.float32))  # mode F
    return np.asarray(image.resize((THUMBNAIL, THUMBNAIL), resample), dtype=np.float64)


def _colour(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, saturation and red share of ``(n, 3)`` float RGB pixels."""
    luminance = pixels @ LUMA
    peak, low, total = pixels.max(axis=1), pixels.min(axis=1), pixels.sum(axis=1)
    saturation = np.where(peak > 0, (peak - low) / np.maximum(peak, 1e-9), 0.0)
    red = np.where(total > 0, pixels[:, 0] / np.maximum(total, 1e-9), 1 / 3)
    return {"brightness": float(luminance.mean()), "contrast": float(luminance.std()),
            "saturation": float(saturation.mean()), "red_share": float(red.mean())}  # fmt: skip


def _corner_fill(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the four corner patches of the FOV's box inside the FOV: 0 for a disc (also one cut off at the
    top and bottom: the box's corners stay outside it), 1 for a rectangle."""
    top, bottom, left, right = box
    inside = mask[top:bottom, left:right]
    rows, cols = max(1, round(CORNER * inside.shape[0])), max(1, round(CORNER * inside.shape[1]))
    corners = [inside[:rows, :cols], inside[:rows, -cols:], inside[-rows:, :cols], inside[-rows:, -cols:]]
    return float(np.mean([patch.mean() for patch in corners]))


def _thumbnail_measures(grey: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, float]:
    """Sharpness and disc elevation, on a square thumbnail of the FOV's box."""
    from scipy import ndimage

    top, bottom, left, right = box
    thumb = _thumbnail(grey[top:bottom, left:right], Image.Resampling.BILINEAR)
    inside = _thumbnail(mask[top:bottom, left:right].astype(np.float32), Image.Resampling.NEAREST) > 0.5
    # the FOV's rim is an edge of the camera, not of the retina: leave it out of both measures
    inner = ndimage.binary_erosion(inside, iterations=4)
    laplacian = ndimage.laplace(thumb)
    sharpness = float(laplacian[inner].var()) if inner.sum() >= 64 else float(laplacian[2:-2, 2:-2].var())
    core = ndimage.binary_erosion(inside, iterations=round(0.08 * THUMBNAIL))
    if core.sum() < 16:
        return {"sharpness": sharpness, "disc_elevation": 0.0}
    smooth = ndimage.gaussian_filter(thumb, 0.03 * THUMBNAIL)
    y, x = np.unravel_index(np.argmax(np.where(core, smooth, -np.inf)), smooth.shape)
    cy, cx = ndimage.center_of_mass(inside)
    # thumbnail pixels back to the box's proportions: a box cut off at the top is wider than high
    dy, dx = (y - cy) * (bottom - top) / THUMBNAIL, (x - cx) * (right - left) / THUMBNAIL
    radius = math.sqrt(inside.sum() / math.pi) * max(bottom - top, right - left) / THUMBNAIL
    if math.hypot(dy, dx) < DISC_MIN_RADIUS * radius:
        return {"sharpness": sharpness, "disc_elevation": 0.0}
    return {"sharpness": sharpness, "disc_elevation": math.degrees(math.atan2(abs(dy), abs(dx)))}


def image_stats(rgb: np.ndarray) -> dict[str, float]:
    """The :data:`FEATURES` of one ``(H, W, 3)`` uint8 RGB image (see the module docstring).

    An image without a FOV (a black frame) is measured over all its pixels, with a border share of 1 and corner
    fill and disc elevation 0.
    """
    height, width = rgb.shape[:2]
    work = _working_copy(rgb)
    mask = fov_mask(work)
    stats = {"width": float(width), "height": float(height), "aspect": width / height}
    has_fov = mask.mean() >= MIN_FOV_SHARE
    region = mask if has_fov else np.ones_like(mask)
    stats.update(_colour(work[region].astype(np.float64)))
    stats["border_share"] = float(1.0 - mask.mean())
    box = fov_box(work) if has_fov else None
    grey = work.astype(np.float64) @ LUMA
    if box is None:
        box = (0, work.shape[0], 0, work.shape[1])
        stats.update(_thumbnail_measures(grey, np.ones_like(mask), box), corner_fill=0.0, disc_elevation=0.0)
    else:
        stats.update(corner_fill=_corner_fill(mask, box), **_thumbnail_measures(grey, mask, box))
    return {name: stats[name] for name in FEATURES}


def stats_row(stats: dict[str, float]) -> np.ndarray:
    return np.array([stats[name] for name in FEATURES], dtype=np.float64)


def describe_images(sources: Sequence[ImageSource]) -> np.ndarray:
    """``(N, len(FEATURES))`` statistics of image files (or bytes), decoded at full resolution.

    Raises:
        DataError: naming an image that cannot be read or decoded.
    """
    rows = [stats_row(image_stats(decode_image(source))) for source in sources]
    return np.stack(rows) if rows else np.zeros((0, len(FEATURES)))
