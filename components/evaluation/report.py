"""The results table of an experiment grid, its Markdown and HTML, and its figures — from saved predictions only.

Each experiment combines its members' probabilities (weighted mean; one member is the identity), tunes per-class
thresholds on the validation predictions when asked (applied unchanged to the test split) and is scored on every
labelled split it has with ``components.evaluation.scoring.scored_report``: beside each metric of
:data:`INTERVAL_COLUMNS` (``f1_macro``, ``f1_course``, per class AUROC and sensitivity at 90% specificity) its 95%
interval from a bootstrap over *patients* (1000 resamples, seed :data:`BOOTSTRAP_SEED`), as ``<split>_<metric>_ci_low``
/ ``_ci_high`` columns. Markdown and HTML print a value and its interval in one cell, ``0.644 [0.58, 0.70]``. The
study's published numbers sit in their own columns, labelled as the study's. :func:`protocol_notes` says how the numbers
were produced (splits, what was tuned on val, patients shared with train, the bootstrap).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components import LABELS
from components.config import Experiment
from components.evaluation.ensemble import normalise_weights, weighted_mean, weights_from_scores
from components.evaluation.metrics import DEFAULT_THRESHOLD, f1_macro
from components.evaluation.scoring import BOOTSTRAP_RESAMPLES, scored_report
from components.evaluation.thresholds import STUDY_GRID, f1_per_threshold, tune_thresholds

SPLIT_PREFIX = {"val": "val", "offsite_test": "offsite"}
BOOTSTRAP_SEED = 0
"""The seed of every interval of the report: the same predictions give the same intervals."""


@dataclass(frozen=True)
class ExperimentScores:
    """One experiment's scores.

    Attributes:
        name: the experiment's name.
        task: the study's task number.
        thresholds: ``(3,)`` per-class thresholds used (0.5 each without tuning).
        reports: split -> :func:`~components.evaluation.scoring.scored_report` of that split (every metric, and
            ``<metric>_ci_low`` / ``<metric>_ci_high`` for ``components.evaluation.scoring.INTERVAL_METRICS``).
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
    *,
    patients: Mapping[str, Sequence[str]],
) -> ExperimentScores:
    """Scores one experiment.

    Args:
        experiment: the row to score.
        member_probs: member name -> split -> ``(N, 3)`` probabilities (with the experiment's TTA setting).
        labels: split -> ``(N, 3)`` true labels; ``val`` is required.
        costs: member name -> (training seconds, parameter count).
        grid: thresholds searched when ``experiment.thresholds``.
        patients: split -> ``(N,)`` each image's patient: the bootstrap resamples patients, both eyes together.
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
    reports = {split: scored_report(labels[split], probs[split], thresholds, patients[split], seed=BOOTSTRAP_SEED)
               for split in labels}  # fmt: skip
    seconds = float(sum(costs[m][0] for m in experiment.members))
    parameters = int(sum(costs[m][1] for m in experiment.members))
    return ExperimentScores(experiment.name, experiment.task, thresholds, reports, probs, seconds, parameters,
                            dict(experiment.published))  # fmt: skip


OPERATING_POINT = "sens_at_spec90"
"""The clinical operating point of the table: sensitivity at 90% specificity, per class."""
TABLE_METRICS = ("f1_macro", "f1_course", *(f"{m}_{c}" for c in LABELS for m in ("precision", "recall", "f1")),
                 *(f"auroc_{c}" for c in LABELS), *(f"{OPERATING_POINT}_{c}" for c in LABELS))  # fmt: skip
INTERVAL_COLUMNS = ("f1_macro", "f1_course", *(f"auroc_{c}" for c in LABELS),
                    *(f"{OPERATING_POINT}_{c}" for c in LABELS))  # fmt: skip
"""The metrics of the table that also get ``_ci_low`` / ``_ci_high`` columns."""
CI_SUFFIXES = ("_ci_low", "_ci_high")


def results_table(scores: Sequence[ExperimentScores]) -> pd.DataFrame:
    """One row per experiment: ``<split>_<metric>`` for every labelled split (``<split>_<metric>_ci_low`` and
    ``_ci_high`` right after each metric of :data:`INTERVAL_COLUMNS`), time, parameters, thresholds and the study's
    published numbers (``study_<name>``)."""
    rows = []
    for score in scores:
        row: dict[str, object] = {"experiment": score.name, "task": score.task}
        for split, report in score.reports.items():
            prefix = SPLIT_PREFIX.get(split, split)
            for metric in TABLE_METRICS:
                row[f"{prefix}_{metric}"] = report[metric]
                if metric in INTERVAL_COLUMNS:
                    for suffix in CI_SUFFIXES:
                        row[f"{prefix}_{metric}{suffix}"] = report[f"{metric}{suffix}"]
        row["thresholds"] = "/".join(f"{t:.2f}" for t in score.thresholds)
        row["train_minutes"] = score.train_seconds / 60
        row["parameters_m"] = score.parameters / 1e6
        for key, value in score.published.items():
            row[f"study_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_interval(value: float, low: float, high: float) -> str:
    """``0.644 [0.58, 0.70]``: the value to 3 decimals and its interval to 2, rounded outwards (the low bound
    down, the high bound up) so the printed interval never looks narrower than the computed one; ``—`` for a
    missing value, the value alone when the interval is missing (undefined in too many resamples)."""
    if _missing(value):
        return "—"
    if _missing(low) or _missing(high):
        return f"{value:.3f}"
    down = math.floor(round(low * 100, 6)) / 100  # round(…, 6): 0.58 * 100 is 57.999…, which is 58
    up = math.ceil(round(high * 100, 6)) / 100
    return f"{value:.3f} [{down:.2f}, {up:.2f}]"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _has_interval(table: pd.DataFrame, column: str) -> bool:
    return all(f"{column}{suffix}" in table.columns for suffix in CI_SUFFIXES)


def _shown(table: pd.DataFrame, row: pd.Series, column: str, intervals: bool) -> str:
    if intervals and _has_interval(table, column):
        return format_interval(row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"])
    return _cell(row.get(column, float("nan")))


def comparison_prefix(table: pd.DataFrame) -> str:
    """The column prefix of the split a reader should compare on: offsite when scored, else val."""
    return "offsite" if "offsite_f1_macro" in table.columns else "val"


def headline_columns(table: pd.DataFrame) -> list[str]:
    """What the Markdown table shows: macro F1s of each scored split, then per class AUROC and sensitivity at 90%
    specificity on the test split (:func:`comparison_prefix`), thresholds, cost and the study's columns."""
    test = comparison_prefix(table)
    columns = ["experiment", "task", "val_f1_macro", "val_f1_course", "offsite_f1_macro", "offsite_f1_course",
               *(f"{test}_auroc_{c}" for c in LABELS), *(f"{test}_{OPERATING_POINT}_{c}" for c in LABELS),
               "thresholds", "train_minutes", "parameters_m"]  # fmt: skip
    return [c for c in columns if c in table.columns] + [c for c in table.columns if c.startswith("study_")]


def headline_intervals(table: pd.DataFrame) -> set[str]:
    """The Markdown columns printed with their interval: ``f1_macro`` and ``f1_course`` of every split (per-class
    intervals are in results.csv and the HTML table)."""
    return {c for c in table.columns if c.endswith(("_f1_macro", "_f1_course")) and _has_interval(table, c)}


def to_markdown(
    table: pd.DataFrame, columns: Sequence[str] | None = None, intervals: Sequence[str] | None = None
) -> str:
    """A Markdown table of ``columns`` (default :func:`headline_columns`); the ``intervals`` columns (default
    :func:`headline_intervals`) print as ``value [low, high]`` from their ``_ci_low`` / ``_ci_high`` columns."""
    columns = headline_columns(table) if columns is None else list(columns)
    with_ci = headline_intervals(table) if intervals is None else set(intervals)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_shown(table, row, c, c in with_ci) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each metric that has ``_ci_low`` / ``_ci_high`` columns printed in one cell,
    ``0.644 [0.58, 0.70]``, and those columns dropped; other columns as they are."""
    merged = [c for c in table.columns if _has_interval(table, c)]
    out = table.copy()
    for column in merged:
        bounds = zip(table[column], table[f"{column}_ci_low"], table[f"{column}_ci_high"], strict=True)
        out[column] = [format_interval(value, low, high) for value, low, high in bounds]
    return out.drop(columns=[f"{c}{suffix}" for c in merged for suffix in CI_SUFFIXES])


def _inline_html(text: str) -> str:
    """Escaped text with Markdown's ``code`` and **bold** as HTML."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def to_html(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A standalone HTML page with the full table (intervals in the cells, :func:`compact`), after ``notes``
    (paragraphs; Markdown's ``code`` and **bold** rendered)."""
    body = compact(table).to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="—", border=0)
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
             "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}p{max-width:60em}")  # fmt: skip
    paragraphs = "".join(f"<p>{_inline_html(note)}</p>" for note in notes if note)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{paragraphs}{body}"
            "</body></html>\n")  # fmt: skip


def shared_with_train(frame: pd.DataFrame, split: str) -> tuple[int, int, int]:
    """``(images, shared images, shared patients)`` of ``split`` in a manifest frame (columns ``split`` and
    ``patient``): how many of its images belong to a patient who also has images in train."""
    rows = frame[frame["split"] == split]
    shared = rows["patient"].isin(set(frame.loc[frame["split"] == "train", "patient"]))
    return len(rows), int(shared.sum()), int(rows.loc[shared, "patient"].nunique())


def _names(rows: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in rows)


def protocol_notes(
    splits: Sequence[str],
    shared: Mapping[str, tuple[int, int, int]],
    tuned: Sequence[str] = (),
    weighted: Sequence[str] = (),
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[str]:
    """The paragraphs that say how the table was produced.

    Args:
        splits: the scored splits (``val``, and ``offsite_test`` when present).
        shared: split -> :func:`shared_with_train` of it.
        tuned: the rows whose thresholds are tuned on val.
        weighted: the rows whose ensemble weights come from val scores.
        resamples, seed: the bootstrap's.
    """
    test = [s for s in splits if s != "val"]
    notes = [f"**Protocol: given splits.** Models are trained on train and scored on {' and '.join(splits)}"
             + (f"; {' and '.join(test)} is the held-out comparison." if test else
                "; there is no held-out test split in this data, so every score is a validation score.")]  # fmt: skip
    fitted = []
    if tuned:
        fitted.append(f"tune their per-class thresholds on val ({_names(tuned)})")
    if weighted:
        fitted.append(f"take their ensemble weights from val F1 ({_names(weighted)})")
    if fitted:
        applied = f" and apply them unchanged to {' and '.join(test)}" if test else ""
        notes.append(f"Rows that {' or '.join(fitted)}{applied}: their val scores are optimistic.")
    overlaps = []
    for split in splits:
        images, images_shared, patients = shared[split]
        overlaps.append(f"{images_shared} of {images} {split} images ({patients} patients)")
    leak = any(shared[split][1] for split in splits)
    notes.append("Patients shared with train: " + "; ".join(overlaps) + " belong to patients who also have images"
                 " in train" + (": those scores are not fully patient-disjoint from training." if leak else
                                "; every scored split is patient-disjoint from train."))  # fmt: skip
    notes.append(f"Intervals: a cell `value [low, high]` is the estimate and its 95% percentile interval from a"
                 f" bootstrap over patients (both eyes of one patient drawn together; {resamples} resamples, seed"
                 f" {seed}), bounds rounded outwards. results.csv holds them as `<column>_ci_low` / `<column>_ci_high`,"
                 " for AUROC and sensitivity at 90% specificity too.")  # fmt: skip
    notes.append(
        f"`{OPERATING_POINT}_<C>` is the sensitivity at 90% specificity of class C, read off that split's"
        " own ROC curve (threshold-free: the threshold reaching it is found on the split itself)."
    )
    return notes


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
