"""Models compared on the same labelled images: each one's scores with patient-bootstrap intervals, and its paired
difference against a reference model with the interval and the probability that the reference is better.

Every model is scored at its own thresholds, on the same patient resamples as the reference
(:func:`components.evaluation.bootstrap.paired_bootstrap`, the one promotion uses), so what the patients have in
common cancels out of the differences. A model may carry a note (for example that it was tuned on these images, so
its score is optimistic), which the table prints beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.evaluation.bootstrap import paired_bootstrap, pick, report_metrics

COMPARED = ("f1_macro", "f1_course")
RESAMPLES = 1000


@dataclass(frozen=True)
class Candidate:
    """One model's predictions of the compared images."""

    name: str
    probs: np.ndarray
    thresholds: Sequence[float]
    note: str | None = None


@dataclass(frozen=True)
class Interval:
    """A value and its 95% interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass(frozen=True)
class Comparison:
    """One model against the reference, per metric of :data:`COMPARED`.

    Attributes:
        scores: the model's score and interval.
        differences: model minus reference, with the interval of the paired difference (None for the reference).
        prob_reference_better: share of patient resamples where the reference scores higher, ties half (None for
            the reference).
    """

    name: str
    scores: dict[str, Interval]
    differences: dict[str, Interval] | None
    prob_reference_better: dict[str, float] | None
    note: str | None = None


def compare(
    labels: np.ndarray, patients: Sequence[str], candidates: Sequence[Candidate], reference: int = 0,
    metrics: Sequence[str] = COMPARED, seed: int = 0,
) -> list[Comparison]:  # fmt: skip
    """Each candidate against ``candidates[reference]`` on these labels (one row per image, its patient in
    ``patients``), in the candidates' order.

    Raises:
        ValueError: when a candidate's predictions do not cover the labels.
    """
    base = candidates[reference]
    rows = []
    for index, candidate in enumerate(candidates):
        scores, differences, prob = {}, {}, {}
        for metric in metrics:
            paired = paired_bootstrap(
                pick(report_metrics(tuple(base.thresholds)), metric), labels, base.probs, candidate.probs, patients,
                resamples=RESAMPLES, seed=seed, metric_b=pick(report_metrics(tuple(candidate.thresholds)), metric),
            )  # fmt: skip
            scores[metric] = Interval(paired.score_b, *paired.interval_b)
            differences[metric] = Interval(paired.difference, *paired.interval)
            prob[metric] = 1.0 - paired.prob_b_better
        own = index == reference
        rows.append(Comparison(candidate.name, scores, None if own else differences, None if own else prob,
                               candidate.note))  # fmt: skip
    return rows


def comparison_markdown(rows: Sequence[Comparison], metrics: Sequence[str] = COMPARED) -> str:
    """The comparison as a Markdown table, the reference's row first as given."""
    reference = next(row.name for row in rows if row.differences is None)
    header = ["model"]
    for metric in metrics:
        header += [f"{metric} [95% CI]", f"difference vs {reference} [95% CI]", f"P({reference} better)"]
    lines = ["| " + " | ".join([*header, "note"]) + " |", "|" + "---|" * (len(header) + 1)]
    for row in rows:
        cells = [row.name]
        for metric in metrics:
            if row.differences is None:
                cells += [str(row.scores[metric]), "reference", "-"]
            else:
                cells += [str(row.scores[metric]), row.differences[metric].signed(),
                          f"{row.prob_reference_better[metric]:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join([*cells, row.note or ""]) + " |")
    return "\n".join(lines)
