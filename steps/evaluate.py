"""Evaluate: a registered model + a manifest split -> a predictions artifact and metrics under the split's prefix.

Works for members (their checkpoint, with or without 5-view TTA) and for the ensemble pyfunc (TTA and
thresholds inside). Logs, under the split's prefix (``val_``, ``offsite_``):

- ``f1_macro``, ``f1_course`` and per class precision, recall, F1, AUROC, average precision, sensitivity and
  specificity at the thresholds, sensitivity at 90%/95% specificity, specificity at 90% sensitivity and the
  expected calibration error (``ece_<C>``, 15 bins);
- beside each headline metric its 95% interval, ``<metric>_ci_low`` / ``<metric>_ci_high``, from a bootstrap
  that resamples *patients* (both eyes of one go together; 1000 resamples, seed 0): on ~200 images a point
  estimate alone is a guess;
- the per-class table and ``predictions/<split>.csv`` (id, true labels, ``p_D``, ``p_G``, ``p_A``), which later
  steps read instead of running the network again;
- with ``figures`` (the default), a figure of the classes' PR curves and confusion matrices and a reliability
  diagram (``figures/<split>.png``, ``figures/<split>_reliability.png``);
- a Grad-CAM gallery (:mod:`components.monitoring.explain`): per class the most confident true and false positives and
  the most clearly missed positives, ``gradcam_gallery`` of each at most (default 4; 0: none), as
  ``gradcam/<split>/<class>/<tp|fp|fn>_<id>.png`` and all of them in one page, ``gradcam/<split>/gallery.html`` (tag
  ``gradcam_uri``). Only those images (36 at most) go through the maps, on the identity view.

The compared scores (:data:`components.evaluation.scoring.COMPARED_METRICS` with their intervals) are also linked to
the logged model the evaluation scored, as columns of the experiment's Models tab, unless the model was fitted on
those images (:func:`steps.support.scored.fitted_on`: a given-splits model's val, where it picked its epoch): a
score there stays on this run and is not put beside fair ones.

With ``min_f1_macro`` set it is a gate: below it the step fails after logging.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from components import LABELS
from components.errors import OdirError
from components.evaluation.calibration import reliability_figure
from components.evaluation.metrics import binarize
from components.evaluation.scoring import compared_metrics, scored_report
from components.models.tta import STUDY_VIEWS
from components.monitoring.explain import (
    CLASS_NAMES,
    GALLERY_KINDS,
    GALLERY_PER_KIND,
    caption,
    captioned,
    explain_images,
    gallery_cases,
    overlay,
)
from components.monitoring.referral import (
    MEMBER_STD_COLUMNS,
    TTA_STD_COLUMNS,
    UNCERTAINTY_COLUMNS,
    ReferralSpec,
    refer,
    referral_table,
)
from steps.support import cli, registry, tracking
from steps.support.base import StepConfig, run_step
from steps.support.manifest import LABELLED_SPLITS, Manifest, load_manifest
from steps.support.predict import load_cam_model, predict_split
from steps.support.predictions import predictions_frame
from steps.support.scored import fitted_on
from steps.support.tags import evaluate_key, record_score
from steps.support.thresholds import read_thresholds

log = logging.getLogger(__name__)


class GateError(OdirError):
    """A model scored below the configured minimum."""


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(StepConfig):
    """Predict one split of a manifest with a registered model and log predictions and metrics."""

    model_uri: str
    manifest_uri: str
    split: str = "val"
    tta: bool = True
    views: tuple[str, ...] = STUDY_VIEWS
    thresholds_uri: str | None = None
    min_f1_macro: float | None = None
    exclude_shared_with: tuple[str, ...] = ()  # score without the images of patients also in these splits
    gradcam_gallery: int = GALLERY_PER_KIND  # per class and kind (tp, fp, fn); 0: no gallery
    figures: bool = True  # PR curves, confusion matrices and reliability diagram (1 s per evaluation on 2 cores)


@dataclass(frozen=True)
class EvaluateResult:
    """Where the predictions are and the metrics (prefixed by split) they scored."""

    predictions_uri: str
    run_id: str
    split: str
    metrics: dict[str, float] = field(default_factory=dict)


def _per_class_table(report: dict[str, float]) -> pd.DataFrame:
    rows = ["precision", "recall", "f1", "f1_course", "auroc", "ap", "sensitivity", "specificity", "sens_at_spec90",
            "sens_at_spec95", "spec_at_sens90", "ece", "support"]  # fmt: skip
    return pd.DataFrame({m: [report[f"{m}_{label}"] for label in LABELS] for m in rows}, index=list(LABELS))


TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fixed: matplotlib's tick locators cost a third of drawing the figure


def _log_figures(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, split: str) -> None:
    """``figures/<split>.png``: the classes' precision-recall curves (with average precision) on one axis, then
    each class's confusion matrix at its threshold.

    Four axes drawn with matplotlib's object API, a fixed layout and fixed ticks: 0.08 s, against 0.3 s for a
    figure per class laid out by ``tight_layout`` (which draws twice); and no pyplot state shared between threads.
    """
    import mlflow
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix, precision_recall_curve

    predicted = binarize(probs, thresholds)
    figure = Figure(figsize=(13, 3.4))
    pr_axis, *cm_axes = figure.subplots(1, 1 + len(LABELS), gridspec_kw={"width_ratios": [1.6] + [1] * len(LABELS)})
    for column, (label, cm_axis) in enumerate(zip(LABELS, cm_axes, strict=True)):
        truth = labels[:, column]
        if 0 < truth.sum() < len(truth):  # a curve needs both classes
            precision, recall, _ = precision_recall_curve(truth, probs[:, column])
            average_precision = -np.sum(np.diff(recall) * precision[:-1])  # sklearn's average_precision_score
            pr_axis.step(recall, precision, where="post", label=f"{label}  AP {average_precision:.3f}")
        matrix = confusion_matrix(truth, predicted[:, column], labels=[0, 1])
        cm_axis.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            cm_axis.text(col, row, str(count), ha="center", va="center", color=colour)
        cm_axis.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true",
                    title=f"{label} at threshold {thresholds[column]:.2f}")  # fmt: skip
    pr_axis.set(xlim=(0, 1), ylim=(0, 1.05), xticks=TICKS, yticks=TICKS, xlabel="recall", ylabel="precision",
                title=f"precision-recall ({split})")  # fmt: skip
    if pr_axis.lines:
        pr_axis.legend(loc="lower left")
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.17, top=0.88, wspace=0.35)
    mlflow.log_figure(figure, f"figures/{split}.png")


def run(config: EvaluateConfig) -> EvaluateResult:
    """Predicts, logs predictions, metrics, table and figures; enforces the gate. See the module docstring."""
    manifest = load_manifest(config.manifest_uri)
    name, version = registry.split_model_uri(config.model_uri)
    views = config.views if config.tta else ("identity",)
    model_uri = f"models:/{name}/{version}"  # an alias resolved: the reuse key names the version
    if config.gradcam_gallery < 0:
        raise OdirError(f"gradcam_gallery must be 0 (no gallery) or more, got {config.gradcam_gallery}")
    key = evaluate_key(model_uri, config.split, views, config.thresholds_uri, config.exclude_shared_with,
                       gradcam_gallery=config.gradcam_gallery, figures=config.figures)  # fmt: skip
    model = name.removeprefix(registry.MODEL_PREFIX)
    tags = {"odir.model": model, "model_version": model_uri, "split": config.split, "data_digest": manifest.digest,
            "evaluate_key": key}  # fmt: skip

    def reused(done) -> EvaluateResult:
        if config.split in LABELLED_SPLITS:
            _gate(config, done.data.metrics[f"{tracking.split_prefix(config.split)}f1_macro"])
        return EvaluateResult(done.data.tags["predictions_uri"], done.info.run_id, config.split, done.data.metrics)

    work = functools.partial(_evaluate, config, manifest, model_uri, views)
    return run_step(config, "evaluate", tags, f"evaluate {model} {config.split}", work, reused)


def _evaluate(
    config: EvaluateConfig, manifest: Manifest, model_uri: str, views: tuple[str, ...], run
) -> EvaluateResult:
    import mlflow

    mlflow.log_params({"model_uri": model_uri, "split": config.split, "tta_views": ",".join(views)})
    started = time.perf_counter()
    prediction = predict_split(model_uri, manifest, config.split, views)
    mlflow.log_metric("predict_seconds", time.perf_counter() - started)  # model loading included
    thresholds = prediction.thresholds
    if config.thresholds_uri:
        saved = read_thresholds(config.thresholds_uri)
        thresholds = np.array([saved[label] for label in LABELS])
    labelled = config.split in LABELLED_SPLITS
    labels = manifest.labels(config.split) if labelled else None
    referred = _referred(config, prediction, thresholds)
    frame = predictions_frame(list(manifest.split(config.split)["id"]), labels, prediction.probs)
    frame = frame.assign(**{c: prediction.frame[c].to_numpy() for c in UNCERTAINTY_COLUMNS}, refer=referred)
    mlflow.log_text(frame.to_csv(index=False), f"predictions/{config.split}.csv")
    predictions_uri = mlflow.get_artifact_uri(f"predictions/{config.split}.csv")
    mlflow.set_tag("predictions_uri", predictions_uri)
    metrics: dict[str, float] = {}
    mlflow.log_param("thresholds", ",".join(f"{t:.6g}" for t in thresholds))
    if labelled:
        rows = manifest.split(config.split)
        kept = ~rows["patient"].isin(manifest.patients(config.exclude_shared_with)).to_numpy()
        mlflow.log_metric("scored_images", int(kept.sum()))
        labels, probs = labels[kept], prediction.probs[kept]
        report = scored_report(labels, probs, thresholds, list(rows["patient"][kept]))
        metrics = tracking.prefixed(report, tracking.split_prefix(config.split))
        metrics.update(_referral_metrics(config.split, labels, probs, thresholds, referred[kept]))
        mlflow.log_metrics(metrics)
        if fitted_on(config.model_uri, manifest, config.split) is None:  # a fair score: the Models tab's columns
            model_id = registry.logged_model_id(config.model_uri)
            tracking.link_metrics(model_id, compared_metrics(metrics, tracking.split_prefix(config.split)))
        mlflow.log_text(_per_class_table(report).to_csv(), f"tables/{config.split}_per_class.csv")
        if config.figures:
            _log_figures(labels, probs, thresholds, config.split)
            mlflow.log_figure(reliability_figure(labels, probs), f"figures/{config.split}_reliability.png")
        _log_gallery(config, manifest, model_uri, np.flatnonzero(kept), labels, probs, thresholds)
        record_score(model_uri, config.split, manifest.digest, report["f1_macro"])
        _gate(config, report["f1_macro"])
    return EvaluateResult(predictions_uri, run.info.run_id, config.split, metrics)


def _referred(config: EvaluateConfig, prediction, thresholds: np.ndarray) -> np.ndarray:
    """The referral flags at the thresholds in use: the model's own, or (a member scored with tuned thresholds)
    recomputed at those with the default limits."""
    if not config.thresholds_uri:
        return prediction.frame["refer"].to_numpy()
    spreads = (prediction.frame[list(c)].to_numpy() for c in (TTA_STD_COLUMNS, MEMBER_STD_COLUMNS))
    return refer(prediction.probs, thresholds, *spreads, ReferralSpec())


def _referral_metrics(
    split: str, labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, referred: np.ndarray
) -> dict[str, float]:
    """Share referred and the error rate (any class wrong) of referred and kept images, as ``<split>_`` metrics."""
    errors = (binarize(probs, thresholds) != labels).any(axis=1)
    table = referral_table(errors, referred)
    return tracking.prefixed({k: float(v) for k, v in table.items()}, tracking.split_prefix(split))


GALLERY_SIZE = 256  # pixels: at most 36 overlays per evaluation stay a few MB


def _log_gallery(
    config: EvaluateConfig, manifest: Manifest, model_uri: str, scored_rows: np.ndarray, labels: np.ndarray,
    probs: np.ndarray, thresholds: np.ndarray,
) -> None:  # fmt: skip
    """The Grad-CAM gallery of the module docstring, chosen among the scored images (``scored_rows``: their rows in
    the split, in the order of ``labels`` and ``probs``). Each overlay is encoded as PNG once, for its file and for
    the page, and the folder is logged in one call (a call per image cost 40 ms each)."""
    import mlflow

    if not config.gradcam_gallery:
        return
    started = time.perf_counter()
    cases = gallery_cases(labels, probs, thresholds, config.gradcam_gallery)
    chosen = sorted({int(scored_rows[i]) for indices in cases.values() for i in indices})
    paths, ids = manifest.paths(config.split), list(manifest.split(config.split)["id"])
    explained = explain_images(load_cam_model(model_uri), [str(paths[row]) for row in chosen], GALLERY_SIZE)
    position = {row: index for index, row in enumerate(chosen)}
    folder = f"gradcam/{config.split}"
    html = [f"<h1>Grad-CAM gallery: {escape(model_uri)} on {escape(config.split)}</h1>",
            f"<p>Per class, the most confident true and false positives and the most clearly missed positives "
            f"({config.gradcam_gallery} at most each); maps on the identity view, red where the class's evidence "
            "is strongest.</p>"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for (label, kind), indices in cases.items():
            column = LABELS.index(label)
            if kind == "tp":
                html.append(f"<h2>{label}: {CLASS_NAMES[label]}</h2>")
            html.append(f"<h3>{GALLERY_KINDS[kind]}</h3>" + ("" if indices else "<p>none</p>"))
            for index in indices:
                row = int(scored_rows[index])
                name = f"{label}/{kind}_{Path(ids[row]).stem}.png"
                image = overlay(explained.images[position[row]], explained.cams[position[row], column])
                png = _png(captioned(image, caption(label, float(probs[index, column]), float(thresholds[column]))))
                (Path(tmp) / label).mkdir(exist_ok=True)
                (Path(tmp) / name).write_bytes(png)
                html.append(_figure(png, name, ids[row]))
        # one self-contained page (the images inline): MLflow's artifact viewer renders HTML, not Markdown's images
        (Path(tmp) / GALLERY_FILE).write_text(GALLERY_PAGE.format(body="\n".join(html)), encoding="utf-8")
        mlflow.log_artifacts(tmp, folder)
    mlflow.set_tag("gradcam_uri", mlflow.get_artifact_uri(folder))
    mlflow.log_metric("gradcam_seconds", time.perf_counter() - started)


GALLERY_FILE = "gallery.html"
GALLERY_PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{font-family: sans-serif; background: #fff}} figure {{display: inline-block; margin: 4px}}
figcaption {{font-size: 12px}}</style></head><body>
{body}
</body></html>
"""


def _png(image) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure(png: bytes, path: str, image_id: str) -> str:
    """An ``<img>`` with the PNG inline, captioned with the image's id and the artifact it is also logged as."""
    data = base64.b64encode(png).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(path)}">'
            f"<figcaption>{escape(image_id)} ({escape(path)})</figcaption></figure>")  # fmt: skip


def _gate(config: EvaluateConfig, f1_macro: float) -> None:
    if config.min_f1_macro is not None and f1_macro < config.min_f1_macro:
        raise GateError(
            f"{config.model_uri} scored f1_macro {f1_macro:.4f} on {config.split}, below the minimum "
            f"{config.min_f1_macro:.4f}"
        )


if __name__ == "__main__":
    sys.exit(cli.main(EvaluateConfig, run))
