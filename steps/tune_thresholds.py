"""Tune thresholds: validation predictions -> per-class thresholds (JSON artifact) and the F1 gain they bring.

The study's grid (0.30-0.65, step 0.05) by default, ``fine`` (0.05-0.95, step 0.01) as an option; the profile's
``threshold_strategy`` says how the tuned value is used (:func:`components.evaluation.thresholds.fit_thresholds`).
Tune on validation predictions only; the thresholds are then applied unchanged to the test splits.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

from components.evaluation.thresholds import fit_thresholds
from steps.support import cli, tracking
from steps.support.base import StepConfig, run_step
from steps.support.fingerprint import code_fingerprint
from steps.support.predictions import labels_of, probabilities_of, read_predictions
from steps.support.thresholds import grid_of, log_thresholds, read_thresholds


@dataclass(frozen=True, kw_only=True)
class TuneConfig(StepConfig):
    """Tune per-class thresholds on a (validation) predictions artifact."""

    predictions_uri: str
    grid: str = "study"
    objectives: tuple[str, ...] = ("f1", "f1", "f1")  # per class, D, G, A: f1, youden, sens_at_spec:0.9 ...
    strategy: str = "tuned"  # components.evaluation.thresholds.STRATEGIES
    name: str = "model"


@dataclass(frozen=True)
class TuneResult:
    """The thresholds artifact, the thresholds and the macro F1 gain over 0.5."""

    thresholds_uri: str
    run_id: str
    thresholds: dict[str, float] = field(default_factory=dict)
    f1_gain: float = 0.0


def run(config: TuneConfig) -> TuneResult:
    """Tunes and logs (or reuses the tuning of the same predictions on the same grid); see the module docstring."""
    key = tracking.content_key(config.predictions_uri, config.grid, config.objectives, config.strategy,
                               code_fingerprint("tune_thresholds"))  # fmt: skip
    tags = {"odir.model": config.name, "tune_key": key}

    def reused(done) -> TuneResult:
        uri = done.data.tags["thresholds_uri"]
        return TuneResult(uri, done.info.run_id, read_thresholds(uri), done.data.metrics["f1_gain"])

    return run_step(config, "tune_thresholds", tags, f"thresholds {config.name}", functools.partial(_tune, config),
                    reused)  # fmt: skip


def _tune(config: TuneConfig, run) -> TuneResult:
    import mlflow

    grid = grid_of(config.grid)
    frame = read_predictions(config.predictions_uri)
    mlflow.log_params({"predictions_uri": config.predictions_uri, "grid": config.grid,
                       "objectives": ",".join(config.objectives), "threshold_strategy": config.strategy})  # fmt: skip
    result = fit_thresholds(labels_of(frame), probabilities_of(frame), grid, config.objectives, config.strategy)
    uri = log_thresholds(result, grid)
    mlflow.set_tag("thresholds_uri", uri)
    return TuneResult(uri, run.info.run_id, result.as_dict(), result.f1_gain)


if __name__ == "__main__":
    sys.exit(cli.main(TuneConfig, run))
