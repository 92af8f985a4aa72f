"""The registered ``odir-ensemble``: an MLflow pyfunc holding member checkpoints, weights, TTA views and thresholds.

``predict`` takes a DataFrame with an ``image_path`` column and/or an ``image_b64`` column (base64-encoded image
bytes); each row needs exactly one of them. As a security default, ``image_path`` is refused unless the serving
process sets ``ODIR_SERVE_IMAGE_ROOT``, and then read only under that folder (relative paths from it, nothing
outside it, symlinks included); odir's own steps call :meth:`OdirEnsemble.predict_sources` with the files they
chose. It returns, per row,
``D``, ``G``, ``A`` (0/1 after the per-class thresholds), ``p_D``, ``p_G``, ``p_A`` (ensemble probabilities), per class
``tta_std_*`` (the test-time views' spread) and ``member_std_*`` (the members' disagreement), and ``refer`` (1: send
the image to a human grader; :mod:`components.monitoring.referral`, limits from the profile's ``referral``).
Member checkpoints are loaded with ``weights_only=True``: the model runs no pickled code of its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from components import LABELS
from components.data.images import ImageSource
from components.errors import OdirError
from components.evaluation.ensemble import PROB_COLUMNS
from components.models.inference import predict_image_views
from components.monitoring.referral import (
    MEMBER_STD_COLUMNS,
    TTA_STD_COLUMNS,
    ReferralSpec,
    ensemble_uncertainty,
    prediction_frame,
)
from components.training.checkpoints import load_trained

CONFIG_ARTIFACT = "ensemble_config"


def input_schema():
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec("string", "image_path", required=False), ColSpec("string", "image_b64", required=False)])


def output_schema():
    from mlflow.types import ColSpec, Schema

    doubles = (*PROB_COLUMNS, *TTA_STD_COLUMNS, *MEMBER_STD_COLUMNS)
    return Schema(
        [*(ColSpec("long", c) for c in LABELS), *(ColSpec("double", c) for c in doubles), ColSpec("long", "refer")]
    )


IMAGE_ROOT_ENV = "ODIR_SERVE_IMAGE_ROOT"
EXPECTED = "each row needs one of the columns image_path (a file under the server's ODIR_SERVE_IMAGE_ROOT) or image_b64"


class BadRequest(OdirError, MlflowException):
    """Bad input to the served model: an MLflow INVALID_PARAMETER_VALUE, which ``mlflow models serve`` answers with
    status 400 and this message (any other error becomes a generic message with the cause in a stack trace)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def image_sources(frame: pd.DataFrame) -> list[ImageSource]:
    """One image per row: its path, or its decoded base64 bytes.

    Raises:
        OdirError: no rows (a request whose columns are none of the two, which MLflow's schema drops), a row with
            neither or both, or invalid base64, naming the row.
    """
    if len(frame) == 0:
        raise BadRequest(f"no rows to predict: {EXPECTED}")
    paths = frame["image_path"] if "image_path" in frame.columns else pd.Series([None] * len(frame))
    encoded = frame["image_b64"] if "image_b64" in frame.columns else pd.Series([None] * len(frame))
    sources: list[ImageSource] = []
    for row, (path, data) in enumerate(zip(paths, encoded, strict=True)):
        has_path, has_data = isinstance(path, str) and bool(path), isinstance(data, str) and bool(data)
        if has_path and has_data:
            raise BadRequest(f"row {row}: both image_path and image_b64; {EXPECTED}, not both")
        if has_path:
            sources.append(path)
        elif has_data:
            try:
                sources.append(base64.b64decode(data, validate=True))
            except binascii.Error as error:
                raise BadRequest(f"row {row}: image_b64 is not valid base64 ({error})") from None
        else:
            raise BadRequest(f"row {row}: needs image_path or image_b64; {EXPECTED}")
    return sources


def confined(sources: list[ImageSource], root: str | None) -> list[ImageSource]:
    """The sources with every path resolved under ``root`` (relative paths from it); with no root, paths refused.

    A served model must not read any file of the server: only what sits under the folder the operator named.

    Raises:
        BadRequest: naming the row and the path.
    """
    folder = Path(root).resolve() if root else None
    checked: list[ImageSource] = []
    for row, source in enumerate(sources):
        if isinstance(source, bytes):
            checked.append(source)
            continue
        if folder is None:
            raise BadRequest(f"row {row}: image_path is refused: this server reads no files ({IMAGE_ROOT_ENV} is "
                             "not set); send the image as image_b64")  # fmt: skip
        path = (folder / source).resolve()  # an absolute source stays itself; symlinks and .. are followed
        if not path.is_relative_to(folder):
            raise BadRequest(f"row {row}: image_path {source} is outside {IMAGE_ROOT_ENV} ({folder})")
        checked.append(str(path))
    return checked


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
        self.referral = ReferralSpec(**config.get("referral", {}))  # versions from before referral: the defaults

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """What ``mlflow models serve`` and ``mlflow.pyfunc`` callers get: input checked (paths only under
        ``ODIR_SERVE_IMAGE_ROOT``), bad input answered as :class:`BadRequest` naming the row or image."""
        sources = confined(image_sources(model_input), os.environ.get(IMAGE_ROOT_ENV))
        try:
            return self.predict_sources(sources)
        except BadRequest:
            raise
        except OdirError as error:  # an image that cannot be read or decoded, named
            raise BadRequest(str(error)) from None

    def predict_sources(self, sources: list[ImageSource]) -> pd.DataFrame:
        """Predictions for image files or bytes that odir itself chose (its pipeline, ``odir predict``): no
        confinement; bad images raise :class:`~components.errors.DataError`."""
        member_views = [self._member_views(folds, sources) for folds in self.members]
        probs, tta_std, member_std = ensemble_uncertainty(member_views, self.weights, self.temperatures)
        return prediction_frame(probs, self.thresholds, tta_std, member_std, self.referral)

    def _member_views(self, folds: list, sources: list[ImageSource]) -> np.ndarray:
        """A member's ``(F, V, N, 3)`` probabilities: each of its F fold models' (one for a plain model) per view."""
        return np.stack(
            [
                predict_image_views(
                    model, sources, spec.image_size, self.views, spec.batch_size, preprocess=spec.fundus_preprocess()
                )
                for model, spec in folds
            ]
        )
