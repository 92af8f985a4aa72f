"""The results table of an experiment grid, its Markdown and HTML, and its figures — from saved predictions only.

Each experiment combines its members' probabilities (weighted mean; one member is the identity), tunes per-class
thresholds on the validation predictions when asked (applied unchanged to the test split) and is scored on every
labelled split it has. The study's published numbers sit in their own columns, labelled as the study's.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components import LABELS
from components.config import Experiment
from components.ensemble import normalise_weights, weighted_mean, weights_from_scores
from components.metrics import DEFAULT_THRESHOLD, f1_macro, multilabel_report
from components.thresholds import STUDY_GRID, f1_per_threshold, tune_thresholds

SPLIT_PREFIX = {"val": "val", "offsite_test": "offsite"}


@dataclass(frozen=True)
class ExperimentScores:
    """One experiment's scores.

    Attributes:
        name: the experiment's name.
        task: the study's task number.
        thresholds: ``(3,)`` per-class thresholds used (0.5 each without tuning).
        reports: split -> :func:`~components.metrics.multilabel_report` of that split.
        probs: split -> ``(N, 3)`` combined probabilities (for figures).
        train_seconds, parameters: summed over the members.
        published: the study's numbers for this row.
    """

    name: str
    task: int
    thresholds: np.ndarray
    reports: dict[str, dict[str, float]]
    probs: dict[str, np.ndarray] = field(repr=False)
    train_seconds: float
    parameters: int
    published: dict[str, float]


def score_experiment(
    experiment: Experiment,
    member_probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    costs: Mapping[str, tuple[float, int]],
    grid: Sequence[float] = STUDY_GRID,
) -> ExperimentScores:
    """Scores one experiment.

    Args:
        experiment: the row to score.
        member_probs: member name -> split -> ``(N, 3)`` probabilities (with the experiment's TTA setting).
        labels: split -> ``(N, 3)`` true labels; ``val`` is required.
        costs: member name -> (training seconds, parameter count).
        grid: thresholds searched when ``experiment.thresholds``.
    """
    if "val" not in labels:
        raise ValueError("experiments are scored with a validation split")
    val_members = [member_probs[m]["val"] for m in experiment.members]
    if experiment.weights is not None:
        weights = normalise_weights(experiment.weights)
    else:
        weights = weights_from_scores([f1_macro(labels["val"], p) for p in val_members])
    probs = {split: weighted_mean([member_probs[m][split] for m in experiment.members], weights) for split in labels}
    thresholds = np.full(len(LABELS), DEFAULT_THRESHOLD)
    if experiment.thresholds:
        thresholds = tune_thresholds(labels["val"], probs["val"], tuple(grid)).thresholds
    reports = {split: multilabel_report(labels[split], probs[split], thresholds) for split in labels}
    seconds = float(sum(costs[m][0] for m in experiment.members))
    parameters = int(sum(costs[m][1] for m in experiment.members))
    return ExperimentScores(experiment.name, experiment.task, thresholds, reports, probs, seconds, parameters,
                            dict(experiment.published))  # fmt: skip


TABLE_METRICS = ("f1_macro", "f1_course", *(f"{m}_{c}" for c in LABELS for m in ("precision", "recall", "f1")),
                 *(f"auroc_{c}" for c in LABELS))  # fmt: skip


def results_table(scores: Sequence[ExperimentScores]) -> pd.DataFrame:
    """One row per experiment: ``<split>_<metric>`` for every labelled split, time, parameters, thresholds and the
    study's published numbers (``study_<name>``)."""
    rows = []
    for score in scores:
        row: dict[str, object] = {"experiment": score.name, "task": score.task}
        for split, report in score.reports.items():
            for metric in TABLE_METRICS:
                row[f"{SPLIT_PREFIX.get(split, split)}_{metric}"] = report[metric]
        row["thresholds"] = "/".join(f"{t:.2f}" for t in score.thresholds)
        row["train_minutes"] = score.train_seconds / 60
        row["parameters_m"] = score.parameters / 1e6
        for key, value in score.published.items():
            row[f"study_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


HEADLINE = ("experiment", "task", "val_f1_macro", "val_f1_course", "offsite_f1_macro", "offsite_f1_course",
            "val_auroc_D", "val_auroc_G", "val_auroc_A", "thresholds", "train_minutes", "parameters_m")  # fmt: skip


def to_markdown(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``columns`` (default: the headline ones present, then the study's columns)."""
    if columns is None:
        study = [c for c in table.columns if c.startswith("study_")]
        columns = [c for c in HEADLINE if c in table.columns] + study
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row.get(c, float("nan"))) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, title: str) -> str:
    """A standalone HTML page with the full table."""
    body = table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="—", border=0)
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}"
             "td:first-child,th:first-child{text-align:left}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")  # fmt: skip


def figure_f1_bars(scores: Sequence[ExperimentScores], split: str):
    """Per-class F1 of every experiment on ``split``, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(8, 0.7 * len(scores)), 4.5))
    positions = np.arange(len(scores))
    for offset, label in zip((-0.27, 0.0, 0.27), LABELS, strict=True):
        axis.bar(positions + offset, [s.reports[split][f"f1_{label}"] for s in scores], width=0.27, label=label)
    axis.set_xticks(positions, [s.name for s in scores], rotation=60, ha="right", fontsize=8)
    axis.set_ylabel(f"F1 ({split})")
    axis.set_ylim(0, 1)
    axis.legend(title="class")
    figure.tight_layout()
    return figure


def figure_pr_curves(scores: Sequence[ExperimentScores], labels: np.ndarray, split: str, best: int = 3):
    """Precision-recall curves per class of the ``best`` experiments by ``f1_macro`` on ``split``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    top = sorted(scores, key=lambda s: s.reports[split]["f1_macro"], reverse=True)[:best]
    figure, axes = plt.subplots(1, len(LABELS), figsize=(13, 4))
    for column, (axis, label) in enumerate(zip(axes, LABELS, strict=True)):
        for score in top:
            if 0 < labels[:, column].sum() < len(labels):
                precision, recall, _ = precision_recall_curve(labels[:, column], score.probs[split][:, column])
                axis.plot(recall, precision, label=score.name)
        axis.set_title(f"{label} ({split})")
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def figure_threshold_curves(score: ExperimentScores, labels: np.ndarray, grid: Sequence[float] = STUDY_GRID):
    """Validation F1 against the threshold for each class of one experiment, the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = np.linspace(0.05, 0.95, 91)
    figure, axis = plt.subplots(figsize=(7, 4))
    for column, label in enumerate(LABELS):
        curve = f1_per_threshold(labels[:, column].astype(int), score.probs["val"][:, column], fine)
        axis.plot(fine, curve, label=label)
        axis.axvline(score.thresholds[column], linestyle=":", color=axis.lines[-1].get_color())
    axis.axvspan(min(grid), max(grid), alpha=0.08, color="grey", label="searched grid")
    axis.set_xlabel("threshold")
    axis.set_ylabel("F1 (val)")
    axis.set_title(score.name)
    axis.legend()
    figure.tight_layout()
    return figure
