"""Submit: the ensemble predicts the onsite images -> the submission CSV in exactly the template's format.

Same ids in the same order as ``onsite_test_submission.csv``, columns ``id,D,G,A``, 0/1 labels after the
ensemble's thresholds. Written to the path the user gives and logged as an artifact. With ``reuse``, the submission
an earlier run made with the same model version and data is copied to the path instead of predicting again.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components import LABELS
from components.outputs import check_output
from steps.support import cli, registry, tracking
from steps.support.base import StepConfig, run_step
from steps.support.fingerprint import code_fingerprint
from steps.support.manifest import Manifest, load_manifest
from steps.support.predict import predict_paths


@dataclass(frozen=True, kw_only=True)
class SubmitConfig(StepConfig):
    """Predict the onsite split with a registered model and write the submission CSV."""

    model_uri: str
    manifest_uri: str
    out_path: str = "submission.csv"
    split: str = "onsite_test"


@dataclass(frozen=True)
class SubmitResult:
    """Where the CSV was written and logged, and how many rows it has."""

    out_path: str
    submission_uri: str
    run_id: str
    rows: int


def run(config: SubmitConfig) -> SubmitResult:
    """Predicts and writes the submission (or copies the one of an earlier run); see the module docstring."""
    out_path = check_output(config.out_path).resolve()  # before the predictions, not after
    manifest = load_manifest(config.manifest_uri)
    name, version = registry.split_model_uri(config.model_uri)
    model_uri = f"models:/{name}/{version}"
    tags = {"split": config.split, "data_digest": manifest.digest, "model_uri": model_uri,
            "code_fingerprint": code_fingerprint("submit")}  # fmt: skip

    def reused(done) -> SubmitResult:
        uri = done.data.tags["submission_uri"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tracking.download(uri), out_path)
        return SubmitResult(str(out_path), uri, done.info.run_id, int(done.data.metrics["rows"]))

    work = functools.partial(_submit, config, manifest, model_uri, out_path)
    return run_step(config, "submit", tags, "submit", work, reused)


def _submit(config: SubmitConfig, manifest: Manifest, model_uri: str, out_path: Path, run) -> SubmitResult:
    import mlflow

    template = manifest.split(config.split)
    mlflow.log_params({"model_uri": model_uri, "split": config.split})
    started = time.perf_counter()
    output = predict_paths(model_uri, [str(p) for p in manifest.paths(config.split)]).frame  # files checked
    mlflow.log_metric("predict_seconds", time.perf_counter() - started)
    submission = pd.DataFrame({"id": template["id"]})
    for label in LABELS:
        submission[label] = output[label].astype(int).to_numpy()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(out_path, index=False)
    mlflow.log_artifact(str(out_path), "submission")
    mlflow.log_metrics({f"predicted_{label}": int(submission[label].sum()) for label in LABELS})
    mlflow.log_metric("rows", len(submission))
    uri = mlflow.get_artifact_uri(f"submission/{out_path.name}")
    mlflow.set_tag("submission_uri", uri)
    return SubmitResult(str(out_path), uri, run.info.run_id, len(submission))


if __name__ == "__main__":
    sys.exit(cli.main(SubmitConfig, run))
