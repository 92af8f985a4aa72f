"""bench.held_out_pair on six hand-made predictions: each model scored at its own thresholds, the paired
difference, the ``--ids`` filter and the refusal of files that disagree on the labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import held_out_pair

IDS = ["1_left.jpg", "1_right.jpg", "2_left.jpg", "3_left.jpg", "4_right.jpg", "5_left.jpg"]
LABELS = [(1, 0, 0), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 0, 0)]


def write(folder: Path, name: str, probs_d: list[float], threshold_d: float) -> list[str]:
    """Predictions whose G and A columns are right at 0.5 and whose D column is ``probs_d``."""
    frame = pd.DataFrame(LABELS, columns=["D", "G", "A"]).assign(id=IDS)
    frame["p_D"] = probs_d
    frame["p_G"], frame["p_A"] = 0.2 + 0.6 * frame["G"], 0.1 + 0.8 * frame["A"]
    predictions, thresholds = folder / f"{name}.csv", folder / f"{name}.json"
    frame[["id", "D", "G", "A", "p_D", "p_G", "p_A"]].to_csv(predictions, index=False)
    thresholds.write_text(json.dumps({"thresholds": {"D": threshold_d, "G": 0.5, "A": 0.5}}))
    return [str(predictions), str(thresholds)]


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["held_out_pair", *args])
    held_out_pair.main()
    return capsys.readouterr().out


@pytest.fixture
def pair(tmp_path: Path) -> list[str]:
    """A and B with the same D probabilities; only 5_left (no D) sits at 0.6: a false positive at A's threshold
    0.5, not at B's 0.7."""
    probs_d = [0.9, 0.9, 0.1, 0.2, 0.9, 0.6]
    return [*write(tmp_path, "a", probs_d, 0.5), *write(tmp_path, "b", probs_d, 0.7)]


def test_each_model_is_scored_at_its_own_thresholds_and_compared_paired(
    pair: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = run(monkeypatch, capsys, *pair)
    # A: D has TP 3, FP 1 -> F1 6/7; G and A are perfect: f1_macro (6/7 + 2) / 3 = 0.952; B is perfect
    assert "6 images of 5 patients" in printed
    assert "A (thresholds 0.50/0.50/0.50): f1_macro 0.952 [" in printed
    assert "B (thresholds 0.70/0.50/0.50): f1_macro 1.000 [" in printed
    assert "B - A f1_macro: +0.048 [" in printed


def test_ids_limit_the_images_scored(
    pair: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pd.DataFrame({"id": IDS[:5]}).to_csv(tmp_path / "ids.csv", index=False)  # 5_left, A's false positive, left out
    printed = run(monkeypatch, capsys, *pair, "--ids", str(tmp_path / "ids.csv"))
    assert "5 images of 4 patients" in printed
    assert "A (thresholds 0.50/0.50/0.50): f1_macro 1.000 [" in printed
    assert "B - A f1_macro: +0.000 [" in printed


def test_files_that_disagree_on_the_labels_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a", [0.9] * 6, 0.5)
    b = write(tmp_path, "b", [0.9] * 6, 0.5)
    frame = pd.read_csv(b[0])
    frame.loc[0, "D"] = 0
    frame.to_csv(b[0], index=False)
    with pytest.raises(SystemExit, match="disagree on the labels"):
        run(monkeypatch, capsys, *a, *b)
