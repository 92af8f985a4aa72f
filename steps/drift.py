"""Drift check: new images against the training reference stored with a registered ensemble version.

:func:`check_images` loads the reference the ensemble step logged with the version
(:func:`steps.support.drift_reference.load_drift_reference`), measures the new images and embeds them with the same
member network (its first fold model; its ONNX export in the ensemble where it has one,
:mod:`components.models.runtime`), compares (:func:`components.monitoring.drift.compare`: per-feature KS tests and
an embedding MMD test, Holm-corrected at ``alpha``; per-image out-of-distribution flags) and logs a run tagged
``odir.step=drift``: metrics ``drift_score``, ``mmd``, ``mmd_p_value``, ``ks_<feature>`` (the KS statistics),
``ood_count``; artifacts ``drift/images.csv`` (per image its statistics, embedding distance, and why it is out of
distribution) and ``drift/report.txt`` (:func:`format_report`). A check is never reused: the same images may be checked
again against another version.

``python -m steps.drift --images DIR [--model-uri URI] [--alpha A]`` prints the report as JSON (exit 0 whatever it
found); ``odir check-drift`` prints :func:`format_report` and exits 1 on drift or any image out of distribution.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.errors import OdirError
from components.models.runtime import Network
from components.monitoring.drift import DriftReport, ImageCheck, compare, screen_images
from components.monitoring.image_stats import FEATURES, describe_images
from components.monitoring.reference import embed_images
from components.training.checkpoints import load_trained
from components.training.spec import ModelSpec
from steps.support import cli, registry, tracking
from steps.support.drift_reference import embedding_checkpoint, load_drift_reference
from steps.support.manifest import image_files
from steps.support.predict import load_ensemble

CHAMPION = f"models:/{registry.ENSEMBLE_MODEL}@champion"
SHOWN_IMAGES = 20


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """Check a folder of new images for drift against a registered ensemble's training reference."""

    images: str
    model_uri: str = CHAMPION
    alpha: float = 0.05
    experiment: str = tracking.DEFAULT_EXPERIMENT
    parent_run_id: str | None = None
    backend: str | None = None


def _images_frame(report: DriftReport, stats) -> pd.DataFrame:
    """Per image: whether it is out of distribution and why, its embedding distance and its statistics."""
    frame = pd.DataFrame({
        "image": [image.image for image in report.images],
        "out_of_distribution": [int(image.out_of_distribution) for image in report.images],
        "reasons": ["; ".join(image.reasons) for image in report.images],
        "embedding_distance": [round(image.embedding_distance, 4) for image in report.images],
    })  # fmt: skip
    for column, feature in enumerate(FEATURES):
        frame[feature] = stats[:, column].round(6)
    return frame


def _log(report: DriftReport, stats, model_uri: str) -> None:
    """Logs the check's params, metrics, verdict and artifacts to the active run."""
    import mlflow

    mlflow.log_params({"model_uri": model_uri, "alpha": report.alpha, "reference_images": report.reference_images,
                       "images": report.images_checked})  # fmt: skip
    mlflow.log_metrics({"drift_score": report.drift_score, "mmd": report.mmd, "mmd_p_value": report.mmd_p_value,
                        "ood_count": report.ood_count, "drift": float(report.drift),
                        **{f"ks_{shift.feature}": shift.statistic for shift in report.features}})  # fmt: skip
    mlflow.set_tags({"drift.detected": str(report.drift).lower(), "drift.moved": ",".join(report.moved)})
    mlflow.log_text(_images_frame(report, stats).to_csv(index=False), "drift/images.csv")
    mlflow.log_text(format_report(report), "drift/report.txt")


def check_images(
    image_paths: Sequence[str | Path], model_uri: str = CHAMPION, alpha: float = 0.05,
    experiment: str = tracking.DEFAULT_EXPERIMENT, parent_run_id: str | None = None, backend: str | None = None,
) -> DriftReport:  # fmt: skip
    """New images against the drift reference of a registered ensemble version; logs the check as a run. The
    embeddings run on ``backend`` (as :func:`~steps.support.predict.load_ensemble`; None: the version's exported
    network where it has one).

    Raises:
        OdirError: no images, ``alpha`` outside (0, 1), a model URI the registry does not have, a version without a
            reference (:class:`~steps.support.drift_reference.NoDriftReference`), an image that cannot be decoded (a
            :class:`~components.errors.DataError` naming it).
    """
    paths = [str(path) for path in image_paths]
    if not paths:
        raise OdirError("no images to check for drift")
    if not 0 < alpha < 1:
        raise OdirError(f"alpha must be between 0 and 1, got {alpha}")
    tracking.setup(experiment)
    reference = load_drift_reference(model_uri)
    name, version = registry.split_model_uri(model_uri)
    resolved = f"models:/{name}/{version}"
    source = reference.source
    network, spec = _embedding_network(resolved, source, backend)
    stats = describe_images(paths)
    embeddings = embed_images(network, paths, spec.image_size, spec.batch_size, spec.fundus_preprocess())
    report = compare(reference, stats, embeddings, paths, alpha)
    report = dataclasses.replace(report, model_uri=resolved)
    with tracking.step_run("drift", experiment, parent_run_id, f"drift {name}/{version}") as run:
        report = dataclasses.replace(report, run_id=run.info.run_id)
        _log(report, stats, resolved)
    return report


def screen(image_paths: Sequence[str | Path], model_uri: str = CHAMPION) -> tuple[ImageCheck, ...]:
    """The images' statistics against the drift reference of a registered ensemble version, with no network run and
    no run logged (:func:`components.monitoring.drift.screen_images`): how ``odir predict`` notices images unlike
    the model's data (a demo model's on real photos) at the cost of decoding them once more.

    Raises:
        NoDriftReference: the version has none; OdirError: as :func:`check_images`.
    """
    paths = [str(path) for path in image_paths]
    return screen_images(load_drift_reference(model_uri), describe_images(paths), paths)


def _embedding_network(model_uri: str, source: dict, backend: str | None) -> tuple[Network, ModelSpec]:
    """The network whose pooled features the reference holds (the member checkpoint its ``source`` names): its
    export in the ensemble, run by ONNX Runtime (unless ``backend`` is ``torch``, or the version has none), else the
    eager network."""
    if backend != "torch":
        model = load_ensemble(model_uri, backend)
        found = model.network_of(source["member_model_uri"], source.get("checkpoint"))
        if found is not None and model.backend != "torch":
            return found
    return load_trained(embedding_checkpoint(source["member_model_uri"], source.get("checkpoint")))


def run(config: DriftConfig) -> DriftReport:
    """The step: :func:`check_images` over the images of ``config.images``."""
    return check_images(image_files(config.images), config.model_uri, config.alpha, config.experiment,
                        config.parent_run_id, config.backend)  # fmt: skip


def _verdict(report: DriftReport) -> str:
    tests = f"Holm-corrected over {len(report.features)} features and the embedding"
    if not report.drift:
        largest = max(report.features, key=lambda shift: shift.statistic)
        return (f"NO DRIFT at alpha {report.alpha:g} ({tests}); largest KS statistic {largest.statistic:.2f} "
                f"({largest.feature}, p {largest.p_adjusted:.2g})")  # fmt: skip
    moved = [*report.moved, *(["the embedding"] if report.embedding_moved else [])]
    return f"DRIFT at alpha {report.alpha:g} ({tests}): {', '.join(moved)} moved"


def format_report(report: DriftReport, shown: int = SHOWN_IMAGES) -> str:
    """The check for people: the verdict, the features that moved (KS statistic, p, medians), the embedding test,
    and the images out of distribution with their reasons (the first ``shown``, then how many more)."""
    lines = [
        f"drift check of {report.images_checked} image(s) against {report.model_uri or 'the reference'} "
        f"(reference: {report.reference_images} images its model never trained on)",
        _verdict(report),
    ]
    moved = [shift for shift in report.features if shift.moved]
    if moved:
        lines.append(f"  {'feature':<15} {'KS':>5} {'p (Holm)':>9}   median: reference -> new")
        for shift in sorted(moved, key=lambda s: -s.statistic):
            lines.append(f"  {shift.feature:<15} {shift.statistic:5.2f} {shift.p_adjusted:9.2g}   "
                         f"{shift.reference_median:.4g} -> {shift.median:.4g}")  # fmt: skip
    state = "moved" if report.embedding_moved else "did not move"
    lines.append(f"embedding: MMD² {report.mmd:.4g}, p {report.mmd_p_value:.3g} (Holm {report.mmd_p_adjusted:.3g}): "
                 f"{state}")  # fmt: skip
    flagged = report.out_of_distribution
    if not flagged:
        lines.append("no image out of distribution")
    else:
        lines.append(f"{len(flagged)} of {report.images_checked} image(s) out of distribution:")
        lines += [f"  {Path(image.image).name}: {'; '.join(image.reasons)}" for image in flagged[:shown]]
        if len(flagged) > shown:
            lines.append(f"  ... and {len(flagged) - shown} more (all in the run's drift/images.csv)")
    if report.run_id:
        lines.append(f"run {report.run_id}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.main(DriftConfig, run))
