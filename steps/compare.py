"""Compare: registered versions (members or ensembles) on the same labelled images -> a table of their scores with
intervals and each one's paired difference against the first, logged as a ``compare`` run.

Each version is scored by its predictions of the split (:mod:`steps.support.scored`: the evaluate step's on this
data, at the thresholds it scored them at; in cross-validation mode, split ``cv``, a member's out-of-fold predictions
and an ensemble's cross-fitted ones) and compared with the reference on the same patient resamples
(:mod:`components.evaluation.comparison`). A version that trained, picked an epoch or tuned a threshold on these
images (:func:`steps.support.scored.fitted_on`) is scored anyway and says so in its note: its score there is
optimistic. ``odir compare`` refuses such a version instead; the pipeline's own table keeps it, marked.

The run holds the table (``comparison.md``, ``comparison.csv``), per model ``<name>.<metric>`` with its interval and
``<name>.difference_<metric>`` against the reference, the models as its inputs (MLflow's logged-model inputs: each
model's page lists it) and their URIs as tags.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.errors import OdirError
from components.evaluation.comparison import COMPARED, Candidate, Comparison, compare, comparison_markdown
from steps.support import cli, registry, tracking
from steps.support.base import StepConfig
from steps.support.manifest import LABELLED_SPLITS, Manifest, load_manifest
from steps.support.scored import Images, cv_predictions, fitted_on, images_of, scored_on


@dataclass(frozen=True, kw_only=True)
class CompareConfig(StepConfig):
    """Compare registered versions on one labelled split of a manifest; the first is the reference."""

    model_uris: tuple[str, ...]
    manifest_uri: str
    split: str = "offsite_test"


@dataclass(frozen=True)
class CompareResult:
    """The comparison (rows in the order of the models) and its table."""

    run_id: str
    split: str
    rows: tuple[Comparison, ...]
    markdown: str


def run(config: CompareConfig) -> CompareResult:
    """Scores and compares the versions (or returns the same comparison done before); see the module docstring.

    Raises:
        OdirError: fewer than two models, an unknown model or alias, or a split without labels.
    """
    if len(config.model_uris) < 2:
        raise OdirError(f"compare needs at least two models, got {len(config.model_uris)}")
    uris = tuple(f"models:/{'/'.join(registry.registered_version(uri))}" for uri in config.model_uris)
    manifest = load_manifest(config.manifest_uri)
    images = _images(manifest, config.split, uris[0], config.experiment)
    tags = {"split": config.split, "data_digest": manifest.digest}
    # never reused: it costs a bootstrap, and the versions' predictions may have been evaluated since
    with tracking.step_run("compare", config.experiment, config.parent_run_id, f"compare on {config.split}",
                           tags) as run:  # fmt: skip
        return _compare(config, uris, manifest, images, run)


def _images(manifest: Manifest, split: str, reference: str, experiment: str) -> Images:
    if split == "cv":
        frame = cv_predictions(reference, experiment)
        if frame is None:
            raise OdirError(
                f"split cv: {reference} was not built in cross-validation mode (no out-of-fold predictions)"
            )
        return images_of(manifest, split, frame)
    if split not in LABELLED_SPLITS or not manifest.has_split(split):
        present = ", ".join(s for s in LABELLED_SPLITS if manifest.has_split(s)) or "none"
        raise OdirError(f"split {split}: no labelled images of that name in {manifest.data_root} "
                        f"(labelled splits: {present})")  # fmt: skip
    return images_of(manifest, split, None)


def candidates(
    uris: tuple[str, ...], manifest: Manifest, split: str, experiment: str, images: Images
) -> list[Candidate]:
    """Each version's predictions of the images, named after its registered model and version, with a note where it
    trained or was tuned on them."""
    found = []
    for uri in uris:
        scored = scored_on(uri, manifest, split, experiment, images)
        reason = fitted_on(uri, manifest, split)
        name, version = registry.split_model_uri(uri)
        note = f"optimistic: {reason}" if reason else None
        found.append(Candidate(f"{name.removeprefix(registry.MODEL_PREFIX)} v{version}", scored.probs,
                               tuple(scored.thresholds), note))  # fmt: skip
    return found


def _compare(config: CompareConfig, uris: tuple[str, ...], manifest: Manifest, images: Images, run) -> CompareResult:
    import mlflow
    from mlflow.entities import LoggedModelInput

    rows = compare(images.labels, images.patients, candidates(uris, manifest, config.split, config.experiment, images))
    markdown = comparison_markdown(rows)
    mlflow.log_text(f"Compared on {config.split} ({len(images.ids)} images, {len(set(images.patients))} patients), "
                    f"each model at its own thresholds; 95% intervals from a paired bootstrap over patients.\n\n"
                    f"{markdown}\n", "comparison.md")  # fmt: skip
    mlflow.log_text(_frame(rows).to_csv(index=False), "comparison.csv")
    mlflow.log_metrics(_metrics(rows))
    mlflow.set_tags({"model_uris": ",".join(uris), "reference": uris[0]})
    models = [LoggedModelInput(model_id) for uri in uris if (model_id := registry.logged_model_id(uri))]
    mlflow.MlflowClient().log_inputs(run.info.run_id, models=models)
    return CompareResult(run.info.run_id, config.split, tuple(rows), markdown)


def _metrics(rows: list[Comparison]) -> dict[str, float]:
    metrics = {}
    for row in rows:
        for metric in COMPARED:
            score = row.scores[metric]
            metrics.update({f"{row.name}.{metric}": score.value, f"{row.name}.{metric}_ci_low": score.low,
                            f"{row.name}.{metric}_ci_high": score.high})  # fmt: skip
            if row.differences is not None:
                diff = row.differences[metric]
                metrics.update({f"{row.name}.difference_{metric}": diff.value,
                                f"{row.name}.difference_{metric}_ci_low": diff.low,
                                f"{row.name}.difference_{metric}_ci_high": diff.high})  # fmt: skip
    return {key.replace(" ", "_"): value for key, value in metrics.items() if np.isfinite(value)}


def _frame(rows: list[Comparison]) -> pd.DataFrame:
    records = []
    for row in rows:
        record = {"model": row.name, "note": row.note or ""}
        for metric in COMPARED:
            score = row.scores[metric]
            record.update({metric: score.value, f"{metric}_ci_low": score.low, f"{metric}_ci_high": score.high})
            if row.differences is not None:
                diff = row.differences[metric]
                record.update({f"difference_{metric}": diff.value, f"difference_{metric}_ci_low": diff.low,
                               f"difference_{metric}_ci_high": diff.high,
                               f"p_reference_better_{metric}": row.prob_reference_better[metric]})  # fmt: skip
        records.append(record)
    return pd.DataFrame(records)


if __name__ == "__main__":
    sys.exit(cli.main(CompareConfig, run))
