"""The dataset contract: CSV files, image folders, decoding, the decoded-image cache and the torch Dataset.

A dataset root holds, per split, a CSV ``id,D,G,A`` and an image folder::

    ROOT/train.csv                      ROOT/images/train/<id>
    ROOT/val.csv                        ROOT/images/val/<id>
    ROOT/offsite_test.csv               ROOT/images/offsite_test/<id>
    ROOT/onsite_test_submission.csv     ROOT/images/onsite_test/<id>     (template: every label 0)

``id`` is the image's file name inside its split folder (ODIR: ``<patient>_<left|right>.jpg``). Only ``train`` is
required. Every problem is reported with its file and line (the CSV header is line 1), all at once, as a
:class:`~components.errors.DataError`.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from components import LABELS
from components.errors import DataError, Problem
from components.data.fundus import FundusPreprocess

ID_COLUMN = "id"
COLUMNS: tuple[str, ...] = (ID_COLUMN, *LABELS)
MAX_IMAGE_PIXELS = 64_000_000
"""Images larger than this are refused before decoding (decompression-bomb guard; ODIR photos are < 20 MP)."""

_MISSING_VALUES = {"", "nan", "na", "n/a", "none", "null"}
_PATIENT_ID = re.compile(r"^(?P<patient>.+)_(?:left|right)$", re.IGNORECASE)


@dataclass(frozen=True)
class SplitLayout:
    """Where one split lives under a dataset root."""

    name: str
    csv_name: str
    image_dir: str


SPLITS: dict[str, SplitLayout] = {
    "train": SplitLayout("train", "train.csv", "images/train"),
    "val": SplitLayout("val", "val.csv", "images/val"),
    "offsite_test": SplitLayout("offsite_test", "offsite_test.csv", "images/offsite_test"),
    "onsite_test": SplitLayout("onsite_test", "onsite_test_submission.csv", "images/onsite_test"),
}
REQUIRED_SPLITS: tuple[str, ...] = ("train",)


@dataclass(frozen=True)
class Split:
    """One validated split: ids in CSV order and their labels.

    Attributes:
        name: split name (a key of :data:`SPLITS`).
        csv_path: the CSV it was read from.
        image_dir: the folder its images live in.
        ids: image ids in CSV order.
        labels: ``(N, 3)`` float32 array of 0/1 in :data:`~components.LABELS` order.
    """

    name: str
    csv_path: Path
    image_dir: Path
    ids: tuple[str, ...]
    labels: np.ndarray = field(repr=False)

    @property
    def paths(self) -> list[Path]:
        """Image paths in CSV order."""
        return [self.image_dir / image_id for image_id in self.ids]

    def __len__(self) -> int:
        return len(self.ids)


def patient_of(image_id: str) -> str:
    """Patient id of an ODIR image id: ``'913_right.jpg' -> '913'``; other names map to their stem."""
    stem = Path(image_id).stem
    match = _PATIENT_ID.match(stem)
    return match.group("patient") if match else stem


def split_paths(root: Path | str, split: str) -> SplitLayout:
    """The layout of ``split``, validated by name.

    Raises:
        ValueError: for an unknown split name, listing the valid ones.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return SPLITS[split]


def _parse_label(value: str) -> float | None:
    """0/1 as a float, or None when the value is not 0 or 1 (``'1.0'`` counts as 1)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number in (0.0, 1.0) else None


def _check_id(image_id: str, image_dir: str) -> str | None:
    """Why ``image_id`` is not a plain file name inside ``image_dir``, or None when it is."""
    if not image_id:
        return "id is empty"
    if image_id in (".", "..") or "/" in image_id or "\\" in image_id or Path(image_id).name != image_id:
        return f"id {image_id!r} must be a plain file name inside {image_dir}/ (no folders, no '..')"
    return None


def _check_row(
    cells: list[str], columns: dict[str, int], image_dir: str, file: str, line: int
) -> tuple[str | None, list[float] | None, list[Problem]]:
    """Checks one CSV row; returns its id and labels when valid, and its problems."""
    if len(cells) != len(columns):
        return None, None, [Problem(file, f"has {len(cells)} fields, expected {len(columns)}", line)]
    image_id = cells[columns[ID_COLUMN]].strip()
    problems = []
    id_problem = _check_id(image_id, image_dir)
    if id_problem:
        problems.append(Problem(file, id_problem, line))
    labels = []
    for label in LABELS:
        raw = cells[columns[label]].strip()
        value = _parse_label(raw)
        if raw.lower() in _MISSING_VALUES:
            problems.append(Problem(file, f"label {label} is missing (empty or NaN) for id {image_id!r}", line))
        elif value is None:
            problems.append(Problem(file, f"label {label} is {raw!r} for id {image_id!r}, expected 0 or 1", line))
        labels.append(value)
    return (None, None, problems) if problems else (image_id, labels, [])


def _read_header(reader: csv.reader, file: str) -> tuple[dict[str, int] | None, list[Problem]]:
    header = next(reader, None)
    if header is None:
        return None, [Problem(file, "the CSV is empty (no header line); expected columns " + ",".join(COLUMNS))]
    names = [name.strip() for name in header]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        return None, [Problem(file, f"duplicate column(s) {', '.join(duplicated)}", 1)]
    missing = [name for name in COLUMNS if name not in names]
    if missing:
        found = ",".join(names)
        return None, [Problem(file, f"missing column(s) {', '.join(missing)}; found {found}, expected id,D,G,A", 1)]
    return {name: names.index(name) for name in names}, []


@dataclass(frozen=True)
class LabelRows:
    """The valid rows of a split CSV: ids in file order, their labels and the line each came from."""

    ids: list[str]
    labels: np.ndarray
    lines: dict[str, int]


def read_labels_csv(csv_path: Path | str, image_dir: str) -> tuple[LabelRows, list[Problem]]:
    """Reads and checks a split CSV without touching the images.

    Args:
        csv_path: the CSV file.
        image_dir: the split's image folder as shown in messages (e.g. ``images/train``).

    Returns:
        The valid rows and every problem found (empty when the file is valid).
    """
    csv_path = Path(csv_path)
    file = str(csv_path)
    ids: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}
    if not csv_path.is_file():
        return LabelRows(ids, np.zeros((0, len(LABELS)), np.float32), first_line), [Problem(file, "file not found")]
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        problem = Problem(file, f"is not UTF-8 text ({error.reason})")
        return LabelRows(ids, np.zeros((0, len(LABELS)), np.float32), first_line), [problem]
    # newline="" leaves line breaks to the csv module: str.splitlines() would also split on \x85 or \u2028
    # inside a field and put every later row on the wrong line
    reader = csv.reader(io.StringIO(text, newline=""))
    columns, problems = _read_header(reader, file)
    if columns is not None:
        previous = reader.line_num
        for cells in reader:
            line, previous = previous + 1, reader.line_num  # the line the row starts on (a quoted field may span more)
            if not any(cell.strip() for cell in cells):
                continue
            image_id, labels, row_problems = _check_row(cells, columns, image_dir, file, line)
            problems.extend(row_problems)
            if image_id is None:
                continue
            if image_id in first_line:
                problems.append(
                    Problem(file, f"duplicate id {image_id!r} (first on line {first_line[image_id]})", line)
                )
                continue
            first_line[image_id] = line
            ids.append(image_id)
            rows.append(labels)
        if not ids and not problems:
            problems.append(Problem(file, "the CSV has a header but no rows"))
    return LabelRows(ids, np.asarray(rows, dtype=np.float32).reshape(-1, len(LABELS)), first_line), problems


def _check_image(image_dir: Path, image_id: str, line: int, csv_file: str) -> Problem | None:
    """Why the image of ``image_id`` is unusable, or None when it decodes."""
    path = image_dir / image_id
    shown = f"{image_dir.name}/{image_id}"
    if not path.exists():
        return Problem(csv_file, f"image {shown} not found in {image_dir}", line)
    if not path.resolve().is_relative_to(image_dir.resolve()):
        return Problem(csv_file, f"image {shown} resolves outside {image_dir} (symlink?)", line)
    try:
        decode_image(path)
    except DataError as error:
        return Problem(csv_file, f"image {shown}: {error.problems[0].message}", line)
    return None


def check_split(root: Path | str, split: str, check_images: bool = True) -> tuple[Split | None, list[Problem]]:
    """Checks one split of a dataset root: its CSV and (optionally) that every image exists and decodes.

    Returns:
        The split (None when it has problems) and all its problems.
    """
    layout = split_paths(root, split)
    root = Path(root)
    csv_path = root / layout.csv_name
    image_dir = root / layout.image_dir
    rows, problems = read_labels_csv(csv_path, layout.image_dir)
    if check_images and rows.ids:
        if not image_dir.is_dir():
            problems.append(Problem(str(csv_path), f"image folder {image_dir} not found"))
        else:
            for image_id in _progress(rows.ids, f"checking {split} images"):
                problem = _check_image(image_dir, image_id, rows.lines[image_id], str(csv_path))
                if problem:
                    problems.append(problem)
    if problems:
        return None, problems
    return Split(split, csv_path, image_dir, tuple(rows.ids), rows.labels), []


def load_split(root: Path | str, split: str, check_images: bool = True) -> Split:
    """A validated split.

    Raises:
        DataError: listing every problem with its file and line.
    """
    loaded, problems = check_split(root, split, check_images=check_images)
    if loaded is None:
        raise DataError(problems)
    return loaded


@dataclass(frozen=True)
class DatasetReport:
    """What :func:`validate_dataset` found: the valid splits and every problem."""

    root: Path
    splits: dict[str, Split]
    problems: list[Problem]
    checked: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_dataset(root: Path | str, check_images: bool = True) -> DatasetReport:
    """Checks every split present under ``root`` (``train`` is required; the others are optional)."""
    root = Path(root)
    if not root.is_dir():
        return DatasetReport(root, {}, [Problem(str(root), "dataset root not found (not a folder)")], [])
    splits, problems, checked = {}, [], []
    for name, layout in SPLITS.items():
        if not (root / layout.csv_name).exists() and name not in REQUIRED_SPLITS:
            continue
        checked.append(name)
        loaded, split_problems = check_split(root, name, check_images=check_images)
        problems.extend(split_problems)
        if loaded is not None:
            splits[name] = loaded
    return DatasetReport(root, splits, problems, checked)


def _progress(items: Sequence[str], description: str) -> Sequence[str]:
    """Wraps long loops in a progress bar on a terminal (tqdm hides itself elsewhere)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, leave=False, disable=None) if len(items) > 200 else items


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


def _active(preprocess: FundusPreprocess | None) -> FundusPreprocess | None:
    return preprocess if preprocess is not None and preprocess.active else None


class ImageCache:
    """Decoded, resized (and preprocessed) uint8 images kept in memory so that epochs after the first never decode
    a JPEG again.

    Keys are ``(path, size, preprocessing)`` (:attr:`~components.data.fundus.FundusPreprocess.key`, ``""`` for none);
    images are assumed not to change on disk while a process runs. uint8 keeps the footprint at ``3·size²`` bytes
    per image (the 1,450 real ODIR images at 256² take about 285 MB).
    """

    def __init__(self) -> None:
        self._images: dict[tuple[str, int, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, path: Path | str, size: int, preprocess: FundusPreprocess | None = None) -> torch.Tensor:
        """The ``(3, size, size)`` uint8 image at ``path``, decoded (and preprocessed) on first use."""
        preprocess = _active(preprocess)
        key = (str(path), size, preprocess.key if preprocess else "")
        image = self._images.get(key)
        if image is None:
            image = load_image(path, size) if preprocess is None else load_image(path, size, preprocess)
            with self._lock:
                self._images.setdefault(key, image)
        return image

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached pixels."""
        return sum(image.numel() for image in self._images.values())

    def clear(self) -> None:
        """Forgets every image."""
        with self._lock:
            self._images.clear()


IMAGE_CACHE = ImageCache()
"""The process-wide cache: every dataset of a process shares it, so each image is decoded once per process."""


class FundusDataset(Dataset):
    """Images as ``(3, size, size)`` uint8 tensors with their ``(3,)`` float labels.

    Augmentation happens on whole uint8 batches on the training device, and conversion to float with the
    backbone's normalisation inside the model (see :func:`to_model_input`), once per batch rather than per image.

    Args:
        paths: image files (or encoded image bytes, which are never cached).
        labels: ``(N, 3)`` 0/1 labels, or None for unlabelled images (labels are then all zero).
        size: side of the square the images are resized to.
        cache: where decoded images are kept; None decodes every image on every access.
        preprocess: fundus preprocessing applied once per decoded image (None: none); a model trained with one
            must be given images preprocessed the same way (``ModelSpec.fundus_preprocess()``).
    """

    def __init__(
        self,
        paths: Sequence[ImageSource],
        labels: np.ndarray | None,
        size: int,
        cache: ImageCache | None = IMAGE_CACHE,
        preprocess: FundusPreprocess | None = None,
    ) -> None:
        if labels is None:
            labels = np.zeros((len(paths), len(LABELS)), dtype=np.float32)
        if labels.shape != (len(paths), len(LABELS)):
            raise ValueError(f"labels have shape {labels.shape}, expected ({len(paths)}, {len(LABELS)})")
        if size < 8:
            raise ValueError(f"image size {size} is too small; use at least 8")
        self.paths = [path if isinstance(path, bytes) else Path(path) for path in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.size = size
        self.cache = cache
        self.preprocess = _active(preprocess)

    @classmethod
    def from_split(
        cls, split: Split, size: int, cache: ImageCache | None = IMAGE_CACHE, preprocess: FundusPreprocess | None = None
    ) -> FundusDataset:
        """The dataset of a validated split."""
        return cls(split.paths, split.labels, size, cache, preprocess)

    def with_preprocess(self, preprocess: FundusPreprocess | None) -> FundusDataset:
        """The same images and labels under ``preprocess`` (this dataset when it already has it)."""
        if _active(preprocess) == self.preprocess:
            return self
        return FundusDataset(self.paths, self.labels.numpy(), self.size, self.cache, preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.paths[index]
        cached = self.cache is not None and not isinstance(path, bytes)
        if self.preprocess is None:  # the calls as they were, for code that wraps load_image or the cache
            image = self.cache.get(path, self.size) if cached else load_image(path, self.size)
        elif cached:
            image = self.cache.get(path, self.size, self.preprocess)
        else:
            image = load_image(path, self.size, self.preprocess)
        return image, self.labels[index]


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """A uint8 ``(B, 3, H, W)`` batch, checked, as the model takes it: unchanged, on whatever device it is on.

    The model normalises for its backbone itself (see :class:`components.models.backbones.Classifier`), so conversion to
    float happens once, inside the model, fused with the normalisation; batches stay uint8 (a quarter of the
    bytes) through device transfer, augmentation and TTA stacking.

    Raises:
        ValueError: for anything but a uint8 batch of shape ``(B, 3, H, W)``, naming what it got.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images
