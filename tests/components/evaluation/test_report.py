"""The experiments table: intervals beside the headline metrics, the compact cells, the protocol notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components import LABELS
from components.config import Experiment
from components.evaluation.metrics import multilabel_report
from components.evaluation.report import (
    INTERVAL_COLUMNS,
    TABLE_METRICS,
    compact,
    format_interval,
    headline_columns,
    protocol_notes,
    results_table,
    score_experiment,
    shared_with_train,
    to_html,
    to_markdown,
)
from components.evaluation.scoring import INTERVAL_METRICS


def test_format_interval_by_hand() -> None:
    assert format_interval(0.6441, 0.5812, 0.6951) == "0.644 [0.58, 0.70]"
    # outwards: the low bound down, the high bound up, even across a decimal
    assert format_interval(0.65, 0.6449, 0.6551) == "0.650 [0.64, 0.66]"
    # bounds already on the grid stay (0.58 * 100 is 57.999... in floating point)
    assert format_interval(0.7, 0.58, 0.70) == "0.700 [0.58, 0.70]"
    assert format_interval(1.0, 1.0, 1.0) == "1.000 [1.00, 1.00]"
    assert format_interval(0.5, float("nan"), float("nan")) == "0.500"
    assert format_interval(float("nan"), 0.1, 0.2) == "—"


def _tiny_table() -> pd.DataFrame:
    return pd.DataFrame([{
        "experiment": "A", "task": 1,
        "val_f1_macro": 0.6441, "val_f1_macro_ci_low": 0.5812, "val_f1_macro_ci_high": 0.6951,
        "val_f1_course": 0.7, "val_f1_course_ci_low": 0.61, "val_f1_course_ci_high": 0.79,
        "offsite_f1_macro": 0.5, "offsite_f1_macro_ci_low": float("nan"), "offsite_f1_macro_ci_high": float("nan"),
        "offsite_auroc_D": 0.9, "offsite_auroc_D_ci_low": 0.8, "offsite_auroc_D_ci_high": 0.95,
        "offsite_sens_at_spec90_D": 0.25, "offsite_sens_at_spec90_D_ci_low": 0.1,
        "offsite_sens_at_spec90_D_ci_high": 0.4,
        "val_auroc_D": 0.99, "thresholds": "0.50/0.50/0.50", "train_minutes": 1.5, "parameters_m": 0.25,
        "study_offsite_f1_course": 0.8205,
    }])  # fmt: skip


def test_markdown_cells_of_a_tiny_table() -> None:
    table = _tiny_table()
    header, rule, row = to_markdown(table).strip().split("\n")
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))
    # the test split's AUROC and operating point, not val's
    assert columns == ["experiment", "task", "val_f1_macro", "val_f1_course", "offsite_f1_macro", "offsite_auroc_D",
                       "offsite_sens_at_spec90_D", "thresholds", "train_minutes", "parameters_m",
                       "study_offsite_f1_course"]  # fmt: skip
    assert rule == "|" + "---|" * len(columns)
    assert cells["val_f1_macro"] == "0.644 [0.58, 0.70]"
    assert cells["val_f1_course"] == "0.700 [0.61, 0.79]"
    assert cells["offsite_f1_macro"] == "0.500"  # interval undefined: the value alone
    assert cells["offsite_auroc_D"] == "0.9000"  # per-class intervals are in the CSV and the HTML
    assert cells["offsite_sens_at_spec90_D"] == "0.2500"
    assert cells["study_offsite_f1_course"] == "0.8205"
    assert cells["thresholds"] == "0.50/0.50/0.50"


def test_html_prints_intervals_in_the_cells_and_the_notes() -> None:
    table = _tiny_table()
    shown = compact(table)
    assert not [c for c in shown.columns if c.endswith(("_ci_low", "_ci_high"))]
    assert shown.loc[0, "offsite_auroc_D"] == "0.900 [0.80, 0.95]"
    assert shown.loc[0, "val_auroc_D"] == 0.99  # no interval columns: left as it is
    page = to_html(table, "t", ["**Protocol: given splits.** `x` & y"])
    assert "0.644 [0.58, 0.70]" in page and "0.250 [0.10, 0.40]" in page
    assert "<p><strong>Protocol: given splits.</strong> <code>x</code> &amp; y</p>" in page
    assert "_ci_low" not in page


# 30 patients, both eyes each: val; 20 patients: offsite. Probabilities separate the classes perfectly.
def _split(patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 2, size=(patients, len(LABELS))), 2, axis=0).astype(np.float32)
    labels[:2] = 1
    labels[2:4] = 0  # both classes present in every column
    probs = np.where(labels == 1, 0.9, 0.1)
    return labels, probs, [f"p{seed}-{i // 2}" for i in range(2 * patients)]


def _noisy(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.35 * labels + rng.uniform(0, 0.65, size=labels.shape), 0, 1)


def test_perfect_separation_gives_degenerate_intervals() -> None:
    # every resample (with both classes) scores F1, AUROC and sensitivity at 90% specificity 1: intervals [1, 1]
    (val_y, val_p, val_pat), (off_y, off_p, off_pat) = _split(30, 1), _split(20, 2)
    row = Experiment(name="perfect", task=1, members=("m",))
    score = score_experiment(row, {"m": {"val": val_p, "offsite_test": off_p}},
                             {"val": val_y, "offsite_test": off_y}, {"m": (60.0, 1000)},
                             patients={"val": val_pat, "offsite_test": off_pat})  # fmt: skip
    table = results_table([score])
    for prefix in ("val", "offsite"):
        for metric in INTERVAL_COLUMNS:
            column = f"{prefix}_{metric}"
            assert table.loc[0, [column, f"{column}_ci_low", f"{column}_ci_high"]].tolist() == [1.0, 1.0, 1.0]
    assert to_markdown(table).count("1.000 [1.00, 1.00]") == 4  # f1_macro and f1_course of both splits


def test_table_columns_and_intervals_hold_the_values() -> None:
    (val_y, _, val_pat), (off_y, _, off_pat) = _split(40, 3), _split(30, 4)
    members = {m: {"val": _noisy(val_y, s), "offsite_test": _noisy(off_y, s + 10)} for m, s in (("a", 5), ("b", 6))}
    labels = {"val": val_y, "offsite_test": off_y}
    rows = [
        Experiment(name="a", task=1, members=("a",)),
        Experiment(name="a+b", task=4, members=("a", "b"), thresholds=True, published={"offsite_f1_course": 0.8}),
    ]
    scores = [score_experiment(r, members, labels, {"a": (60.0, 10), "b": (30.0, 20)}, (0.3, 0.4, 0.5),
                               patients={"val": val_pat, "offsite_test": off_pat}) for r in rows]  # fmt: skip
    table = results_table(scores)
    assert set(INTERVAL_COLUMNS) <= set(INTERVAL_METRICS) & set(TABLE_METRICS)
    for prefix in ("val", "offsite"):
        for metric in TABLE_METRICS:
            assert f"{prefix}_{metric}" in table.columns
        for metric in INTERVAL_COLUMNS:
            value, low, high = (table[f"{prefix}_{metric}{s}"] for s in ("", "_ci_low", "_ci_high"))
            assert ((low <= value + 1e-12) & (value <= high + 1e-12)).all(), metric
            assert (low < high).any(), metric  # noisy predictions: a real interval
    # the point estimates are the evaluate step's (multilabel_report at the row's thresholds)
    expected = multilabel_report(off_y, members["a"]["offsite_test"], 0.5)
    assert table.loc[0, "offsite_f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-12)
    assert table.loc[0, "offsite_auroc_G"] == pytest.approx(expected["auroc_G"], abs=1e-12)
    # the same predictions give the same intervals (fixed seed)
    again = results_table(
        [
            score_experiment(
                rows[1],
                members,
                labels,
                {"a": (60.0, 10), "b": (30.0, 20)},
                (0.3, 0.4, 0.5),
                patients={"val": val_pat, "offsite_test": off_pat},
            )
        ]
    )
    pd.testing.assert_frame_equal(again, table.iloc[[1]].reset_index(drop=True).dropna(axis=1, how="all"))
    assert table.loc[1, "study_offsite_f1_course"] == 0.8
    assert headline_columns(table)[:6] == ["experiment", "task", "val_f1_macro", "val_f1_course",
                                           "offsite_f1_macro", "offsite_f1_course"]  # fmt: skip


def test_shared_with_train_counts_by_hand() -> None:
    frame = pd.DataFrame({
        "split": ["train", "train", "val", "val", "val", "val", "offsite_test", "offsite_test"],
        "patient": ["1", "2", "1", "3", "3", "2", "9", "9"],
    })  # fmt: skip
    # val: patient 1 (one image) and patient 2 (one image) also in train, patient 3 not
    assert shared_with_train(frame, "val") == (4, 2, 2)
    assert shared_with_train(frame, "offsite_test") == (2, 0, 0)


def test_protocol_notes_say_the_protocol() -> None:
    notes = protocol_notes(["val", "offsite_test"], {"val": (200, 12, 6), "offsite_test": (100, 0, 0)},
                           tuned=["B + thresholds"], weighted=["A+B"])  # fmt: skip
    text = "\n".join(notes)
    assert notes[0].startswith("**Protocol: given splits.**")
    assert "scored on val and offsite_test" in text
    assert "tune their per-class thresholds on val (`B + thresholds`)" in text
    assert "ensemble weights from val F1 (`A+B`)" in text
    assert "their val scores are optimistic" in text
    assert "12 of 200 val images (6 patients)" in text and "0 of 100 offsite_test images" in text
    assert "not fully patient-disjoint" in text
    assert "bootstrap over patients" in text and "1000 resamples, seed 0" in text
    only_val = "\n".join(protocol_notes(["val"], {"val": (50, 0, 0)}))
    assert "no held-out test split" in only_val and "optimistic" not in only_val
    assert "patient-disjoint from train" in only_val
