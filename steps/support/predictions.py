"""The predictions format (written by evaluate and train's out-of-fold predictions, read by tune_thresholds,
ensemble, promote and the report): a CSV of ``id``, the true labels when known, ``p_D``, ``p_G``, ``p_A``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components import LABELS
from components.errors import OdirError
from components.evaluation.ensemble import PROB_COLUMNS
from steps.support import tracking


def predictions_frame(ids: list[str], labels: np.ndarray | None, probs: np.ndarray) -> pd.DataFrame:
    """``id``, the true labels when known, then ``p_D``, ``p_G``, ``p_A``."""
    frame = pd.DataFrame({"id": ids})
    if labels is not None:
        for column, label in enumerate(LABELS):
            frame[label] = labels[:, column].astype(int)
    for column, name in enumerate(PROB_COLUMNS):
        frame[name] = probs[:, column]
    return frame


def read_predictions(predictions_uri: str) -> pd.DataFrame:
    """A predictions artifact written by the evaluate step."""
    return pd.read_csv(tracking.download(predictions_uri), dtype={"id": str})


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    """The ``p_D``, ``p_G``, ``p_A`` columns of a predictions frame."""
    return frame.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float64)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """The true labels of a predictions frame."""
    missing = [label for label in LABELS if label not in frame.columns]
    if missing:
        raise OdirError(f"predictions have no true labels ({', '.join(missing)} missing): use a labelled split")
    return frame.loc[:, list(LABELS)].to_numpy()
