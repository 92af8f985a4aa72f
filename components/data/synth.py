"""Synthetic fundus photographs carrying the signs of DR, glaucoma and AMD, in the real dataset's layout.

Each image is drawn at twice its size and downsampled (anti-aliasing): a black surround, the orange-red disc of
the retina with vignetting and texture, the optic disc on the nasal side with its cup, vessels branching from the
disc, and the darker macula on the temporal side. The disease signs:

- ``D`` (diabetic retinopathy): dark-red dots and blots and yellow hard exudates scattered over the retina;
- ``G`` (glaucoma): an enlarged, pale optic cup (cup-to-disc ratio 0.65–0.85 instead of 0.2–0.4);
- ``A`` (AMD): pale-yellow drusen clustered around the macula.

Label prevalence and co-occurrence follow the real ODIR subset (train: D 65 %, G 20 %, A 18 %, 3 % with two
labels). Everything is drawn from one seeded generator, so a seed gives the same files byte for byte.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components import LABELS
from components.data.splits import SPLITS

PRIMARY_LABEL_PROBS = (0.63, 0.20, 0.17)
"""Probability that an image's (first) label is D, G, A: the real train split's single-label shares."""
SECOND_LABEL_PROB = 0.04
"""Probability of a second label; the real splits have 3–5 % of images with two labels."""


@dataclass(frozen=True)
class SynthSizes:
    """How many images each split gets."""

    train: int = 240
    val: int = 60
    offsite_test: int = 60
    onsite_test: int = 40

    def items(self) -> list[tuple[str, int]]:
        return [("train", self.train), ("val", self.val), ("offsite_test", self.offsite_test),
                ("onsite_test", self.onsite_test)]  # fmt: skip


def sample_labels(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 3)`` 0/1 labels with the real data's prevalence and a few two-label images."""
    labels = np.zeros((count, len(LABELS)), dtype=np.int64)
    primary = rng.choice(len(LABELS), size=count, p=PRIMARY_LABEL_PROBS)
    labels[np.arange(count), primary] = 1
    for row in np.flatnonzero(rng.random(count) < SECOND_LABEL_PROB):
        others = [c for c in range(len(LABELS)) if c != primary[row]]
        labels[row, rng.choice(others)] = 1
    return labels


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: tuple[int, ...]) -> None:
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)


def _retina(rng: np.random.Generator, side: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """The orange-red retina with vignetting and a low-frequency texture, on black."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy) / radius
    base = np.array([200, 78, 32], np.float32) + rng.normal(0, [14, 10, 6]).astype(np.float32)
    coarse = rng.normal(0, 1, (8, 8)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))
    shade = (1.0 - 0.45 * r**2)[..., None] * (1.0 + 0.05 * texture[..., None])
    rgb = np.clip(base * shade, 0, 255)
    rgb[r > 1.0] = 0
    return rgb.astype(np.uint8)


def _vessels(rng: np.random.Generator, draw: ImageDraw.ImageDraw, disc: tuple[float, float], radius: float) -> None:
    """Four arcades leaving the disc, each a jittered path that branches once or twice."""
    colour = (118, 22, 16)
    for base_angle in (-0.6, 0.6, math.pi - 0.6, math.pi + 0.6):
        stack = [(disc[0], disc[1], base_angle + rng.normal(0, 0.15), radius * 0.022, 0)]
        while stack:
            x, y, angle, width, depth = stack.pop()
            for _ in range(int(rng.integers(7, 12))):
                angle += rng.normal(0, 0.18)
                step = radius * 0.07
                nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
                draw.line((x, y, nx, ny), fill=colour, width=max(1, round(width)))
                x, y = nx, ny
                if depth < 2 and rng.random() < 0.18:
                    stack.append((x, y, angle + rng.choice([-0.7, 0.7]), width * 0.7, depth + 1))
                width *= 0.93


def _scatter(rng: np.random.Generator, centre: tuple[float, float], spread: float, count: int) -> np.ndarray:
    """``count`` points around ``centre`` within ``spread`` (uniform over the disc)."""
    angles = rng.uniform(0, 2 * math.pi, count)
    radii = spread * np.sqrt(rng.uniform(0, 1, count))
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)


def render_fundus(rng: np.random.Generator, size: int, labels: np.ndarray, eye: str) -> Image.Image:
    """One synthetic fundus photograph.

    Args:
        rng: the random source (all variation comes from it).
        size: side of the square output image in pixels.
        labels: ``(3,)`` 0/1 in ``LABELS`` order; each positive label draws its disease's signs.
        eye: ``"left"`` or ``"right"``; the optic disc sits on the nasal side (right of the image for a right eye).
    """
    side = size * 2
    cx, cy = side / 2 + rng.normal(0, side * 0.01, 2)
    radius = side * rng.uniform(0.44, 0.48)
    image = Image.fromarray(_retina(rng, side, cx, cy, radius))
    draw = ImageDraw.Draw(image)
    nasal = 1.0 if eye == "right" else -1.0
    disc = (cx + nasal * radius * rng.uniform(0.38, 0.46), cy + rng.normal(0, radius * 0.04))
    macula = (cx - nasal * radius * rng.uniform(0.12, 0.2), cy + rng.normal(0, radius * 0.03))
    _disc(draw, *macula, radius * 0.16, (140, 48, 22))
    _disc(draw, *macula, radius * 0.05, (110, 34, 16))
    _vessels(rng, draw, disc, radius)
    disc_radius = radius * rng.uniform(0.13, 0.16)
    glaucoma, amd, dr = labels[1], labels[2], labels[0]
    cup_ratio = rng.uniform(0.65, 0.85) if glaucoma else rng.uniform(0.2, 0.4)
    _disc(draw, *disc, disc_radius, (236, 178, 110) if not glaucoma else (244, 204, 150))
    _disc(draw, *disc, disc_radius * cup_ratio, (252, 236, 205))
    if dr:
        for x, y in _scatter(rng, (cx, cy), radius * 0.8, int(rng.integers(10, 24))):
            _disc(draw, x, y, radius * rng.uniform(0.012, 0.03), (120, 8, 10))
        for x, y in _scatter(rng, (cx, cy), radius * 0.7, int(rng.integers(4, 12))):
            _disc(draw, x, y, radius * rng.uniform(0.012, 0.026), (246, 214, 70))
    if amd:
        for x, y in _scatter(rng, macula, radius * 0.24, int(rng.integers(10, 22))):
            _disc(draw, x, y, radius * rng.uniform(0.014, 0.03), (232, 212, 128))
    field_of_view = Image.new("L", image.size, 0)
    _disc(ImageDraw.Draw(field_of_view), cx, cy, radius, 255)
    image = Image.composite(image, Image.new("RGB", image.size), field_of_view)
    image = image.filter(ImageFilter.GaussianBlur(radius=side / 256))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _write_split(rng: np.random.Generator, root: Path, split: str, count: int, size: int, first_patient: int) -> int:
    """Writes one split's images and CSV; returns the next unused patient number."""
    layout = SPLITS[split]
    image_dir = root / layout.image_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    labels = sample_labels(rng, count)
    rows = []
    patient = first_patient
    for index in range(count):
        # both eyes of a patient stay in one split, as in splits the project makes itself
        eye = "left" if index % 2 == 0 else "right"
        image_id = f"{patient}_{eye}.jpg"
        render_fundus(rng, size, labels[index], eye).save(image_dir / image_id, quality=92)
        is_template = split == "onsite_test"
        rows.append([image_id, *(0 if is_template else int(v) for v in labels[index])])
        if eye == "right":
            patient += 1
    with (root / layout.csv_name).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *LABELS])
        writer.writerows(rows)
    return patient + 1


def write_synthetic_dataset(root: Path | str, size: int = 128, sizes: SynthSizes = SynthSizes(), seed: int = 0) -> Path:
    """Writes a synthetic dataset with the real layout: train, val, offsite_test (labelled) and the onsite template.

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        size: image side in pixels.
        sizes: images per split.
        seed: the seed; the same seed gives the same files.

    Returns:
        ``root`` as a Path.
    """
    if size < 16:
        raise ValueError(f"synthetic image size {size} is too small; use at least 16")
    root = Path(root)
    rng = np.random.default_rng(seed)
    patient = 1000
    for split, count in sizes.items():
        if count < 0:
            raise ValueError(f"number of {split} images must be >= 0, got {count}")
        patient = _write_split(rng, root, split, count, size, patient)
    return root
