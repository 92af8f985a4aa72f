"""One image file to pixels: decoding whatever the file holds to RGB, padding to a square and resizing, and the
fundus preprocessing done once per decoded image (:mod:`components.data.fundus`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.fundus import FundusPreprocess
from components.errors import DataError, Problem

MAX_IMAGE_PIXELS = 64_000_000
"""Images larger than this are refused before decoding (decompression-bomb guard; ODIR photos are < 20 MP)."""



def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> ``(H, W, 3)`` uint8. 16-bit and float greyscale are scaled; alpha is laid on black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode.startswith("I;16") or peak > 255:
            scale = 65535.0
        elif image.mode == "F" and peak <= 1.0:
            scale = 1.0
        else:
            scale = 255.0
        grey = np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


ImageSource = Path | str | bytes
"""An image file's path, or the encoded bytes of an image (as sent to the served model)."""


def _describe_source(source: ImageSource) -> str:
    return f"<{len(source)} bytes of image data>" if isinstance(source, bytes) else str(source)


def decode_image(source: ImageSource) -> np.ndarray:
    """Decodes an image file (or encoded bytes) to ``(H, W, 3)`` uint8 RGB, whatever its mode (grey, RGBA, 16-bit,
    palette).

    Raises:
        DataError: naming the file when it is missing, not an image, truncated or too large.
    """
    path = _describe_source(source)
    opened = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    message = f"{image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS:,}-pixel limit"
                    raise DataError([Problem(str(path), message)])
                image.load()
                return _to_rgb_array(image)
    except FileNotFoundError:
        raise DataError([Problem(str(path), "image file not found")]) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        if isinstance(error, DataError):
            raise
        raise DataError([Problem(str(path), f"cannot be decoded as an image ({error})")]) from None


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pads ``(H, W, 3)`` to a centred black square (fundus photos have a black surround), then resizes."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    if height != width:
        square = np.zeros((side, side, 3), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = rgb
        rgb = square
    if side != size:
        rgb = np.array(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))
    return rgb


def load_image(source: ImageSource, size: int, preprocess: FundusPreprocess | None = None) -> torch.Tensor:
    """Decodes an image file (or encoded bytes) and returns a ``(3, size, size)`` uint8 tensor.

    ``preprocess`` (:mod:`components.data.fundus`) crops to the field of view before the square resize and applies the
    local-contrast normalisation after it; None (or an inactive one) does neither.
    """
    rgb = decode_image(source)
    if preprocess is not None and preprocess.crop is not None:
        rgb = preprocess.crop(rgb)
    rgb = square_resize(rgb, size)
    if preprocess is not None and preprocess.contrast is not None:
        rgb = preprocess.contrast(rgb)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()

