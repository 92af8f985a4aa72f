"""The CSV and image contract: every bad input names its file and row; odd image modes decode to RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data import dataset as data
from components.data import images
from components.data.dataset import FundusDataset, ImageCache, to_model_input
from components.data.images import decode_image, square_resize
from components.data.splits import load_split, patient_of, validate_dataset
from components.errors import DataError


def _rewrite_csv(root: Path, text: str, name: str = "train.csv") -> Path:
    path = root / name
    path.write_text(text)
    return path


def _first_ids(root: Path, count: int = 2) -> list[str]:
    return [line.split(",")[0] for line in (root / "train.csv").read_text().splitlines()[1 : count + 1]]


def test_valid_dataset_loads_every_split(synthetic_root: Path) -> None:
    report = validate_dataset(synthetic_root)
    assert report.ok, report.problems
    assert report.checked == ["train", "val", "offsite_test", "onsite_test"]
    train = report.splits["train"]
    assert len(train) == 12 and train.labels.shape == (12, 3)
    assert set(np.unique(train.labels)) <= {0.0, 1.0}
    assert report.splits["onsite_test"].labels.sum() == 0
    assert all(path.exists() for path in train.paths)


def test_only_train_is_required(dataset_copy: Path) -> None:
    for name in ("val.csv", "offsite_test.csv", "onsite_test_submission.csv"):
        (dataset_copy / name).unlink()
    assert validate_dataset(dataset_copy).ok
    (dataset_copy / "train.csv").unlink()
    problems = validate_dataset(dataset_copy).problems
    assert [str(p) for p in problems] == [f"{dataset_copy / 'train.csv'}: file not found"]


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("{a},1,0,0\n{b},1,2,0\n", 3, "label G is '2' for id '{b}', expected 0 or 1"),
        ("{a},1,0,0\n{b},1,,0\n", 3, "label G is missing (empty or NaN) for id '{b}'"),
        ("{a},1,0,0\n{b},NaN,0,0\n", 3, "label D is missing (empty or NaN) for id '{b}'"),
        ("{a},1,0,0\n{a},0,1,0\n", 3, "duplicate id '{a}' (first on line 2)"),
        ("{a},1,0,0\n../x.jpg,1,0,0\n", 3, "id '../x.jpg' must be a plain file name inside images/train/"),
        ("{a},1,0,0\nsub/x.jpg,1,0,0\n", 3, "id 'sub/x.jpg' must be a plain file name"),
        ("{a},1,0,0\n,1,0,0\n", 3, "id is empty"),
        ("{a},1,0,0\n{b},1,0\n", 3, "has 3 fields, expected 4"),
        ("{a},1,0,0\nmissing.jpg,1,0,0\n", 3, "image train/missing.jpg not found"),
    ],
)
def test_bad_rows_name_file_line_and_problem(dataset_copy: Path, body: str, line: int, message: str) -> None:
    a, b = _first_ids(dataset_copy)
    path = _rewrite_csv(dataset_copy, "id,D,G,A\n" + body.format(a=a, b=b))
    with pytest.raises(DataError) as caught:
        load_split(dataset_copy, "train")
    [problem] = caught.value.problems
    assert problem.file == str(path) and problem.line == line
    assert message.format(a=a, b=b) in problem.message
    assert f"{path}, line {line}: " in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the CSV is empty (no header line)"),
        ("id,D,G,A\n", "the CSV has a header but no rows"),
        ("id,D,A\nx.jpg,1,0\n", "missing column(s) G; found id,D,A, expected id,D,G,A"),
        ("id,D,G,A,G\nx.jpg,1,0,0,0\n", "duplicate column(s) G"),
    ],
)
def test_bad_files_are_refused(dataset_copy: Path, text: str, message: str) -> None:
    path = _rewrite_csv(dataset_copy, text)
    with pytest.raises(DataError) as caught:
        load_split(dataset_copy, "train")
    assert caught.value.problems[0].file == str(path)
    assert message in caught.value.problems[0].message


def test_all_problems_are_reported_at_once(dataset_copy: Path) -> None:
    a, b = _first_ids(dataset_copy)
    _rewrite_csv(dataset_copy, f"id,D,G,A\n{a},7,0,0\n{b},1,0,x\n../{a},0,0,0\n")
    report = validate_dataset(dataset_copy)
    assert [p.line for p in report.problems] == [2, 3, 4]


def test_undecodable_and_truncated_images_are_named(dataset_copy: Path) -> None:
    a, b = _first_ids(dataset_copy)
    image_dir = dataset_copy / "images" / "train"
    (image_dir / a).write_bytes(b"")
    (image_dir / b).write_bytes((image_dir / b).read_bytes()[:60])
    with pytest.raises(DataError) as caught:
        load_split(dataset_copy, "train")
    messages = {p.line: p.message for p in caught.value.problems}
    assert messages[2].startswith(f"image train/{a}: cannot be decoded as an image")
    assert messages[3].startswith(f"image train/{b}: cannot be decoded as an image")


def test_symlink_out_of_the_image_folder_is_refused(dataset_copy: Path, tmp_path: Path) -> None:
    a = _first_ids(dataset_copy, 1)[0]
    outside = tmp_path / "outside.jpg"
    image_path = dataset_copy / "images" / "train" / a
    outside.write_bytes(image_path.read_bytes())
    image_path.unlink()
    os.symlink(outside, image_path)
    with pytest.raises(DataError, match=r"resolves outside .*images/train \(symlink\?\)"):
        load_split(dataset_copy, "train")


def test_image_problems_can_be_skipped_for_csv_only_checks(dataset_copy: Path) -> None:
    a = _first_ids(dataset_copy, 1)[0]
    (dataset_copy / "images" / "train" / a).unlink()
    assert len(load_split(dataset_copy, "train", check_images=False)) == 12


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("RGBA", (200, 100, 50, 255), (200, 100, 50)),
        ("RGBA", (200, 100, 50, 0), (0, 0, 0)),  # transparent pixels lie on the black surround
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("P", 3, (3, 3, 3)),
    ],
)
def test_image_modes_decode_to_rgb(tmp_path: Path, mode: str, pixel: object, expected: tuple[int, int, int]) -> None:
    image = Image.new(mode, (5, 4), pixel)
    if mode == "P":
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    path = tmp_path / "img.png"
    image.save(path)
    rgb = decode_image(path)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == expected


def test_oversized_image_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.png: 20x20 pixels is over the 100-pixel limit"):
        decode_image(tmp_path / "big.png")


def test_square_resize_pads_with_black_and_keeps_aspect() -> None:
    wide = np.full((2, 4, 3), 200, dtype=np.uint8)
    square = square_resize(wide, 4)
    assert square.shape == (4, 4, 3)
    assert (square[0] == 0).all() and (square[3] == 0).all() and (square[1:3] == 200).all()


def test_patient_ids() -> None:
    assert patient_of("913_right.jpg") == "913"
    assert patient_of("4449_LEFT.jpg") == "4449"
    assert patient_of("scan7.png") == "scan7"


def test_cache_decodes_each_image_once(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = load_split(synthetic_root, "val")
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda path, size: calls.append(path) or real(path, size))
    cache = ImageCache()
    dataset = FundusDataset.from_split(split, 16, cache)
    first = [dataset[i][0] for i in range(len(dataset))]
    second = [dataset[i][0] for i in range(len(dataset))]
    assert len(calls) == len(split) and len(cache) == len(split)
    assert cache.nbytes == len(split) * 3 * 16 * 16
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    uncached = FundusDataset.from_split(split, 16, cache=None)
    assert torch.equal(uncached[0][0], first[0]) and len(calls) == len(split) + 1


def test_dataset_items_and_model_input(synthetic_root: Path) -> None:
    split = load_split(synthetic_root, "train")
    image, label = FundusDataset.from_split(split, 24, ImageCache())[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    assert torch.equal(label, torch.as_tensor(split.labels[0]))
    batch = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert to_model_input(batch) is batch  # checked, not converted: the model normalises for its backbone


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(1, 3, 2, 2, dtype=torch.float32),  # already converted
        torch.zeros(1, 3, 2, 2, dtype=torch.int64),
        torch.zeros(3, 2, 2, dtype=torch.uint8),  # one image, no batch dimension
        torch.zeros(1, 1, 2, 2, dtype=torch.uint8),  # grey
        torch.zeros(1, 2, 2, 3, dtype=torch.uint8),  # channels last in shape (H, W, C)
    ],
)
def test_model_input_rejects_bad_shapes_and_dtypes(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=rf"expected a uint8 batch of shape \(B, 3, H, W\), got {bad.dtype}"):
        to_model_input(bad)


def test_dataset_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match=r"labels have shape \(1, 3\), expected \(2, 3\)"):
        FundusDataset(["a.jpg", "b.jpg"], np.zeros((1, 3), np.float32), 16)
