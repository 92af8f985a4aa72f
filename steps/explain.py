"""Explain: Grad-CAM overlays per image and class for a registered model, a member (``models:/odir-<name>/<v>``) or
the ensemble (``models:/odir-ensemble@champion``).

The probabilities and thresholds are the model's own answer (:func:`steps.support.predict.predict_paths`: the ensemble
with its TTA views, temperatures and thresholds; a member with the five study views and threshold 0.5). The maps are
Grad-CAM on the identity view (:mod:`components.monitoring.explain`): a member's over its fold models averaged, the
ensemble's the weighted mean of its members' with its weights. Model files are checked by :mod:`steps.support.integrity`
as for any prediction.

Writes ``<out>/<image stem>_<class>.png`` per image and class, and ``<out>/index.csv`` with the columns ``id`` (the
image's file name), ``class``, ``probability``, ``threshold`` and ``png`` (the overlay's file name, beside the
index). Reads and writes no MLflow run: like ``odir predict``, it only uses the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from components import LABELS
from components.errors import OdirError
from components.monitoring.explain import caption, explain_images, write_overlay_png
from steps.support.predict import load_cam_model, predict_paths

log = logging.getLogger(__name__)

OVERLAY_SIZE = 384
"""Side of the overlays in pixels (the photo padded to a square, as the models see it)."""
CHUNK = 32
"""Images explained at once: bounds the maps held in memory (``CHUNK x 3 x OVERLAY_SIZE²`` floats, 57 MB)."""
INDEX_FILE = "index.csv"


@dataclass(frozen=True)
class Explanation:
    """One overlay: the image's file name, the class, the model's probability and threshold, and the PNG's path."""

    id: str
    label: str
    probability: float
    threshold: float
    png: Path


def explain(
    model_uri: str, image_paths: Sequence[Path | str], out_dir: Path | str, classes: Sequence[str] = LABELS,
    size: int = OVERLAY_SIZE,
) -> list[Explanation]:  # fmt: skip
    """Writes a Grad-CAM overlay per image and class and the index (see the module docstring); returns its rows, in
    image order, the classes in ``classes`` order.

    Raises:
        OdirError: for an unknown class, or two images whose overlays would have the same name.
        DataError: naming an image that cannot be decoded.
    """
    columns = _class_columns(classes)
    paths = [Path(path) for path in image_paths]
    _check_stems(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(path) for path in paths]
    prediction = predict_paths(model_uri, sources)
    model = load_cam_model(model_uri)
    explanations: list[Explanation] = []
    for start in range(0, len(paths), CHUNK):
        explained = explain_images(model, sources[start : start + CHUNK], size)
        for offset, path in enumerate(paths[start : start + CHUNK]):
            for column, label in columns:
                probability = float(prediction.probs[start + offset, column])
                threshold = float(prediction.thresholds[column])
                text = caption(label, probability, threshold)
                png = out / f"{path.stem}_{label}.png"
                write_overlay_png(png, explained.images[offset], explained.cams[offset, column], text)
                explanations.append(Explanation(path.name, label, probability, threshold, png))
        if len(paths) > CHUNK:
            log.info("explained %d of %d images", min(start + CHUNK, len(paths)), len(paths))
    _write_index(explanations, out / INDEX_FILE)
    return explanations


def _class_columns(classes: Sequence[str]) -> list[tuple[int, str]]:
    unknown = [label for label in classes if label not in LABELS]
    if unknown or not classes:
        raise OdirError(f"classes must be some of {', '.join(LABELS)}; got {', '.join(classes) or 'none'}")
    return [(LABELS.index(label), label) for label in classes]


def _check_stems(paths: list[Path]) -> None:
    """Overlays are named after the image's stem: two images that share one (``a.jpg``, ``a.png``) would collide."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise OdirError(f"{seen[path.stem]} and {path} would write the same overlays ({path.stem}_<class>.png)")
        seen[path.stem] = path


def _write_index(explanations: list[Explanation], path: Path) -> None:
    rows = [{**asdict(row), "png": row.png.name} for row in explanations]
    frame = pd.DataFrame(rows, columns=["id", "label", "probability", "threshold", "png"])
    frame.rename(columns={"label": "class"}).round(6).to_csv(path, index=False)
