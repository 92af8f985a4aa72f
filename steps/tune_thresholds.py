"""Tune thresholds: validation predictions -> per-class thresholds (JSON artifact) and the F1 gain they bring.

The study's grid (0.30-0.65, step 0.05) by default, ``fine`` (0.05-0.95, step 0.01) as an option. Tune on
validation predictions only; the thresholds are then applied unchanged to the test splits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from components import LABELS
from components.ensemble import PROB_COLUMNS
from components.thresholds import STUDY_GRID, ThresholdResult, fine_grid, tune_thresholds
from steps import cli, tracking
from steps.evaluate import labels_of, read_predictions

GRIDS = {"study": STUDY_GRID, "fine": fine_grid()}


@dataclass(frozen=True)
class TuneConfig:
    """Tune per-class thresholds on a (validation) predictions artifact."""

    predictions_uri: str
    grid: str = "study"
    name: str = "model"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    parent_run_id: str | None = None


@dataclass(frozen=True)
class TuneResult:
    """The thresholds artifact, the thresholds and the macro F1 gain over 0.5."""

    thresholds_uri: str
    run_id: str
    thresholds: dict[str, float] = field(default_factory=dict)
    f1_gain: float = 0.0


def grid_of(name: str) -> tuple[float, ...]:
    if name not in GRIDS:
        raise ValueError(f"unknown threshold grid {name!r}; valid: {', '.join(GRIDS)}")
    return GRIDS[name]


def log_thresholds(result: ThresholdResult, grid: tuple[float, ...]) -> str:
    """Logs the thresholds JSON and their metrics to the active run; returns the artifact URI."""
    import mlflow

    payload = {
        "thresholds": result.as_dict(), "grid": list(grid),
        "f1": dict(zip(LABELS, result.f1.tolist(), strict=True)),
        "f1_default": dict(zip(LABELS, result.f1_default.tolist(), strict=True)),
    }  # fmt: skip
    mlflow.log_metrics({f"threshold_{label}": t for label, t in result.as_dict().items()})
    mlflow.log_metrics({"f1_gain": result.f1_gain, "f1_macro_tuned": float(result.f1.mean())})
    return tracking.log_json(payload, "thresholds.json")


def run(config: TuneConfig) -> TuneResult:
    """Tunes and logs; see the module docstring."""
    import mlflow

    grid = grid_of(config.grid)
    frame = read_predictions(config.predictions_uri)
    probs = frame.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    tags = {"odir.model": config.name}
    with tracking.step_run(
        "tune_thresholds", config.experiment, config.parent_run_id, f"thresholds {config.name}", tags
    ) as run:
        mlflow.log_params({"predictions_uri": config.predictions_uri, "grid": config.grid})
        result = tune_thresholds(labels_of(frame), probs, grid)
        uri = log_thresholds(result, grid)
        return TuneResult(uri, run.info.run_id, result.as_dict(), result.f1_gain)


if __name__ == "__main__":
    sys.exit(cli.main(TuneConfig, run))
