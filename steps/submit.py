"""Submit: the ensemble predicts the onsite images -> the submission CSV in exactly the template's format.

Same ids in the same order as ``onsite_test_submission.csv``, columns ``id,D,G,A``, 0/1 labels after the
ensemble's thresholds. Written to the path the user gives and logged as an artifact.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components import LABELS
from steps import cli, tracking
from steps.ingest import load_manifest


@dataclass(frozen=True)
class SubmitConfig:
    """Predict the onsite split with a registered model and write the submission CSV."""

    model_uri: str
    manifest_uri: str
    out_path: str = "submission.csv"
    split: str = "onsite_test"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    parent_run_id: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    """Where the CSV was written and logged, and how many rows it has."""

    out_path: str
    submission_uri: str
    run_id: str
    rows: int


def run(config: SubmitConfig) -> SubmitResult:
    """Predicts and writes the submission; see the module docstring."""
    import mlflow

    manifest = load_manifest(config.manifest_uri)
    template = manifest.split(config.split)
    with tracking.step_run("submit", config.experiment, config.parent_run_id, "submit", {"split": config.split}) as run:
        mlflow.log_params({"model_uri": config.model_uri, "split": config.split})
        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(config.model_uri)
        output = model.predict(pd.DataFrame({"image_path": [str(p) for p in manifest.paths(config.split)]}))
        mlflow.log_metric("predict_seconds", time.perf_counter() - started)
        submission = pd.DataFrame({"id": template["id"]})
        for label in LABELS:
            submission[label] = output[label].astype(int).to_numpy()
        out_path = Path(config.out_path).resolve()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        submission.to_csv(out_path, index=False)
        mlflow.log_artifact(str(out_path), "submission")
        mlflow.log_metrics({f"predicted_{label}": int(submission[label].sum()) for label in LABELS})
        uri = mlflow.get_artifact_uri(f"submission/{out_path.name}")
        return SubmitResult(str(out_path), uri, run.info.run_id, len(submission))


if __name__ == "__main__":
    sys.exit(cli.main(SubmitConfig, run))
