"""The registered ``odir-ensemble``: an MLflow pyfunc holding member checkpoints, weights, TTA views and thresholds.

``predict`` takes a DataFrame with an ``image_path`` column (files readable where the model runs) and/or an
``image_b64`` column (base64-encoded image bytes, for serving); each row needs one of them. It returns, per row,
``D``, ``G``, ``A`` (0/1 after the per-class thresholds) and ``p_D``, ``p_G``, ``p_A`` (ensemble probabilities).
Member checkpoints are loaded with ``weights_only=True``: the model runs no pickled code of its own.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from components import LABELS
from components.calibration import apply_temperature
from components.data import ImageSource
from components.ensemble import PROB_COLUMNS, weighted_mean
from components.errors import OdirError
from components.inference import predict_images
from components.metrics import binarize
from components.training import load_trained

CONFIG_ARTIFACT = "ensemble_config"


def input_schema():
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec("string", "image_path", required=False), ColSpec("string", "image_b64", required=False)])


def output_schema():
    from mlflow.types import ColSpec, Schema

    return Schema([*(ColSpec("long", label) for label in LABELS), *(ColSpec("double", p) for p in PROB_COLUMNS)])


def image_sources(frame: pd.DataFrame) -> list[ImageSource]:
    """One image per row: its path, or its decoded base64 bytes.

    Raises:
        OdirError: naming the row that has neither, or invalid base64.
    """
    paths = frame["image_path"] if "image_path" in frame.columns else pd.Series([None] * len(frame))
    encoded = frame["image_b64"] if "image_b64" in frame.columns else pd.Series([None] * len(frame))
    sources: list[ImageSource] = []
    for row, (path, data) in enumerate(zip(paths, encoded, strict=True)):
        if isinstance(path, str) and path:
            sources.append(path)
        elif isinstance(data, str) and data:
            try:
                sources.append(base64.b64decode(data, validate=True))
            except binascii.Error as error:
                raise OdirError(f"row {row}: image_b64 is not valid base64 ({error})") from None
        else:
            raise OdirError(f"row {row}: needs image_path or image_b64")
    return sources


class OdirEnsemble(mlflow.pyfunc.PythonModel):
    """Weighted mean of member probabilities (each with TTA, then temperature-scaled per class), then per-class
    thresholds."""

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        self.names: list[str] = config["members"]
        # per member its checkpoint, or its fold models (versions from before folds name one "member_<i>" each)
        keys = config.get("checkpoints") or [[f"member_{i}"] for i in range(len(self.names))]
        self.members = [[load_trained(context.artifacts[key]) for key in member] for member in keys]
        self.weights = np.asarray(config["weights"], dtype=np.float64)
        self.views = tuple(config["views"])
        self.thresholds = np.asarray([config["thresholds"][label] for label in LABELS], dtype=np.float64)
        # per member and class, fit on validation predictions; versions registered before calibration have none
        self.temperatures = np.asarray(config.get("temperatures") or np.ones((len(self.names), len(LABELS))))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        sources = image_sources(model_input)
        member_probs = [
            apply_temperature(self._member_probs(folds, sources), t)
            for folds, t in zip(self.members, self.temperatures, strict=True)
        ]
        probs = weighted_mean(member_probs, self.weights)
        labels = binarize(probs, self.thresholds)
        frame = pd.DataFrame({label: labels[:, c] for c, label in enumerate(LABELS)})
        for column, name in enumerate(PROB_COLUMNS):
            frame[name] = probs[:, column]
        return frame

    def _member_probs(self, folds: list, sources: list[ImageSource]) -> np.ndarray:
        """A member's TTA probabilities: its model's, or the mean of its fold models'."""
        probs = [
            predict_images(
                model, sources, spec.image_size, self.views, spec.batch_size, preprocess=spec.fundus_preprocess()
            )
            for model, spec in folds
        ]
        return np.mean(probs, axis=0)
