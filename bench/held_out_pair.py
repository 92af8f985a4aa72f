"""Two registered ensembles scored on the same held-out images, each at its own thresholds, compared paired.

    python -m bench.held_out_pair A_PREDICTIONS.csv A_THRESHOLDS.json B_PREDICTIONS.csv B_THRESHOLDS.json \
        [--ids IDS.csv]

The predictions are what an ``evaluate`` step logged (``predictions/<split>.csv``: ``id``, the labels and ``p_*``);
the thresholds are the ensemble step's ``thresholds.json``. Only the images in both files (and in ``--ids``, a CSV
with an ``id`` column, when given) are scored. Prints, per model, f1_macro, f1_course and per-class F1 with 95%
intervals over patients, then B minus A on f1_macro with its paired interval and P(B better). Issue 15 uses it for
the fold ensemble, whose gain the cross-validated rows cannot show: each out-of-fold image is scored by one fold
model, never by their average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from components import LABELS
from components.data.splits import patient_of
from components.evaluation.bootstrap import paired_bootstrap, patient_bootstrap, pick, report_metrics
from components.evaluation.ensemble import PROB_COLUMNS


def thresholds_of(path: Path) -> tuple[float, ...]:
    """The per-class thresholds of an ensemble step's ``thresholds.json``, in label order."""
    chosen = json.loads(path.read_text())["thresholds"]
    return tuple(float(chosen[label]) for label in LABELS)


def aligned(a: pd.DataFrame, b: pd.DataFrame, ids: set[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames on the images they share (and ``ids``), in the same order; their labels must agree."""
    common = sorted(set(a["id"]) & set(b["id"]) & (ids if ids is not None else set(a["id"])))
    if not common:
        raise SystemExit("error: the two prediction files share no image")
    a, b = (frame.set_index("id").loc[common].reset_index() for frame in (a, b))
    if not np.array_equal(a.loc[:, list(LABELS)].to_numpy(), b.loc[:, list(LABELS)].to_numpy()):
        raise SystemExit("error: the two prediction files disagree on the labels of the same images")
    return a, b


def summary(name: str, labels: np.ndarray, probs: np.ndarray, thresholds: tuple[float, ...], patients) -> str:
    """One line: f1_macro and f1_course with intervals, per-class F1, at ``thresholds``."""
    metrics = report_metrics(thresholds)
    point, intervals = metrics(labels, probs), patient_bootstrap(metrics, labels, probs, patients, seed=0)

    def cell(key: str) -> str:
        low, high = intervals[key]
        return f"{point[key]:.3f} [{low:.3f}, {high:.3f}]"

    per_class = " / ".join(f"{point[f'f1_{label}']:.2f}" for label in LABELS)
    shown = "/".join(f"{t:.2f}" for t in thresholds)
    return f"{name} (thresholds {shown}): f1_macro {cell('f1_macro')}, f1_course {cell('f1_course')}, F1 {per_class}"


def compare(a: pd.DataFrame, b: pd.DataFrame, thresholds_a: tuple, thresholds_b: tuple) -> list[str]:
    """The report's lines: the image count, each model at its thresholds and at 0.5, and B minus A (paired)."""
    labels = a.loc[:, list(LABELS)].to_numpy()
    patients = [patient_of(i) for i in a["id"]]
    probs_a, probs_b = (frame.loc[:, list(PROB_COLUMNS)].to_numpy() for frame in (a, b))
    score_a, score_b = (pick(report_metrics(t), "f1_macro") for t in (thresholds_a, thresholds_b))
    result = paired_bootstrap(score_a, labels, probs_a, probs_b, patients, resamples=1000, seed=0, metric_b=score_b)
    low, high = result.interval
    return [
        f"{len(a)} images of {len(set(patients))} patients",
        summary("A", labels, probs_a, thresholds_a, patients),
        summary("A at 0.5", labels, probs_a, (0.5,) * len(LABELS), patients),
        summary("B", labels, probs_b, thresholds_b, patients),
        summary("B at 0.5", labels, probs_b, (0.5,) * len(LABELS), patients),
        f"B - A f1_macro: {result.difference:+.3f} [{low:+.3f}, {high:+.3f}], P(B better) {result.prob_b_better:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held_out_pair", description=__doc__.splitlines()[0])
    for side in ("a", "b"):
        parser.add_argument(f"{side}_predictions", type=Path, help=f"model {side.upper()}'s predictions CSV")
        parser.add_argument(f"{side}_thresholds", type=Path, help=f"model {side.upper()}'s thresholds.json")
    parser.add_argument("--ids", type=Path, help="score only the images of this CSV's id column")
    args = parser.parse_args()
    ids = set(pd.read_csv(args.ids, dtype={"id": str})["id"]) if args.ids else None
    frames = [pd.read_csv(path, dtype={"id": str}) for path in (args.a_predictions, args.b_predictions)]
    a, b = aligned(*frames, ids)
    print("\n".join(compare(a, b, thresholds_of(args.a_thresholds), thresholds_of(args.b_thresholds))))


if __name__ == "__main__":
    main()
