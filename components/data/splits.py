"""The dataset contract: per split a CSV file and an image folder under a dataset root, checked row by row.

A dataset root holds, per split, a CSV ``id,D,G,A`` and an image folder::

    ROOT/train.csv                      ROOT/images/train/<id>
    ROOT/val.csv                        ROOT/images/val/<id>
    ROOT/offsite_test.csv               ROOT/images/offsite_test/<id>
    ROOT/onsite_test_submission.csv     ROOT/images/onsite_test/<id>     (template: every label 0)

``id`` is the image's file name inside its split folder (ODIR: ``<patient>_<left|right>.jpg``). Only ``train`` is
required. Every problem is reported with its file and line (the CSV header is line 1), all at once, as a
:class:`~components.errors.DataError`. Images are checked by decoding them (:func:`components.data.images.decode_image`);
:mod:`components.data.dataset` turns a checked split into batches.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components import LABELS
from components.data.images import decode_image
from components.errors import DataError, Problem

ID_COLUMN = "id"
COLUMNS: tuple[str, ...] = (ID_COLUMN, *LABELS)

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
