"""The thresholds format (tune_thresholds and ensemble write it, ensemble and evaluate read it): ``thresholds.json``
with the per-class thresholds, the grid they were tuned on, each class's objective and the F1 before and after."""

from __future__ import annotations

from components import LABELS
from components.evaluation.thresholds import STUDY_GRID, ThresholdResult, fine_grid
from steps.support import tracking

THRESHOLD_GRIDS = {"study": STUDY_GRID, "fine": fine_grid()}


def grid_of(name: str) -> tuple[float, ...]:
    if name not in THRESHOLD_GRIDS:
        raise ValueError(f"unknown threshold grid {name!r}; valid: {', '.join(THRESHOLD_GRIDS)}")
    return THRESHOLD_GRIDS[name]


def log_thresholds(result: ThresholdResult, grid: tuple[float, ...]) -> str:
    """Logs ``thresholds.json`` and the thresholds' metrics to the active run; returns the artifact URI."""
    import mlflow

    payload = {
        "thresholds": result.as_dict(), "grid": list(grid),
        "objectives": dict(zip(LABELS, result.objectives, strict=True)),
        "f1": dict(zip(LABELS, result.f1.tolist(), strict=True)),
        "f1_default": dict(zip(LABELS, result.f1_default.tolist(), strict=True)),
    }  # fmt: skip
    mlflow.log_metrics({f"threshold_{label}": t for label, t in result.as_dict().items()})
    mlflow.log_metrics({"f1_gain": result.f1_gain, "f1_macro_tuned": float(result.f1.mean())})
    return tracking.log_json(payload, "thresholds.json")


def read_thresholds(thresholds_uri: str) -> dict[str, float]:
    """Per-class thresholds of a ``thresholds.json`` written by :func:`log_thresholds`."""
    return tracking.read_json(thresholds_uri)["thresholds"]
