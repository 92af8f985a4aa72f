"""The code fingerprint in reuse keys follows the imports: code a step reaches changes it; docstrings, comments,
modules it never imports and modules that only move data do not."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from steps.support import fingerprint

STEPS = ("train", "evaluate", "tune_thresholds", "ensemble")


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the project's components/ and steps/ that the fingerprints are read from."""
    for package in fingerprint.PROJECT_PACKAGES:
        shutil.copytree(fingerprint.SOURCE_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    fingerprint._fingerprint.cache_clear()
    yield tmp_path
    fingerprint._fingerprint.cache_clear()


def _fingerprint(step: str) -> str:
    fingerprint._fingerprint.cache_clear()
    return fingerprint.code_fingerprint(step)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_a_metric_change_changes_tune_thresholds_fingerprint(source: Path) -> None:
    """tune_thresholds imports components.evaluation.thresholds, which imports the metrics: the hand-kept list this
    replaced left the metrics out."""
    assert "components.evaluation.metrics" in fingerprint.code_modules("steps.tune_thresholds", source)
    before = _fingerprint("tune_thresholds")
    _edit(source / "components" / "evaluation" / "metrics.py", "def ", "def _added_helper():\n    return 1\n\n\ndef ")
    assert _fingerprint("tune_thresholds") != before


def test_a_changed_loss_changes_the_train_fingerprint(source: Path) -> None:
    before = _fingerprint("train")
    _edit(source / "components" / "training" / "losses.py", "gamma", "gamma_changed")
    assert _fingerprint("train") != before


def test_docstrings_comments_and_unreached_modules_do_not(source: Path) -> None:
    before = {step: _fingerprint(step) for step in STEPS}
    losses = source / "components" / "training" / "losses.py"
    first_line = losses.read_text().splitlines()[0]
    assert first_line.startswith('"""')
    _edit(losses, first_line, first_line + " (reworded)")
    losses.write_text("# a new comment\n" + losses.read_text() + "\n\n# trailing comment\n")
    (source / "components" / "unreached.py").write_text('"""Imported by no step."""\n\n\nVALUE = 2\n')
    assert {step: _fingerprint(step) for step in STEPS} == before


def test_a_drift_change_re_runs_none_of_the_reused_steps(source: Path) -> None:
    """The drift comparison shapes only the drift check, which is never reused: before the formats steps hand each
    other were split by format, every step imported all of them and a change here retrained every model."""
    before = {step: _fingerprint(step) for step in STEPS}
    _edit(source / "components" / "monitoring" / "drift.py", "def ", "def _added_helper():\n    return 1\n\n\ndef ")
    assert {step: _fingerprint(step) for step in STEPS} == before


def test_grad_cam_changes_the_evaluate_fingerprint_not_the_train_one(source: Path) -> None:
    before = {step: _fingerprint(step) for step in ("train", "evaluate")}
    _edit(source / "components" / "monitoring" / "explain.py", "def ", "def _added_helper():\n    return 1\n\n\ndef ")
    assert _fingerprint("train") == before["train"]
    assert _fingerprint("evaluate") != before["evaluate"]


def test_modules_that_only_move_data_are_followed_but_not_hashed(source: Path) -> None:
    """steps.support.tracking says ``SHAPES_RESULTS = False``: a change there re-runs nothing."""
    modules = fingerprint.code_modules("steps.train", source)
    assert "steps.support.tracking" not in modules and "steps.support.registry" not in modules
    assert "steps.train" in modules
    before = _fingerprint("train")
    _edit(source / "steps" / "support" / "tracking.py", "def ", "def _added_helper():\n    return 1\n\n\ndef ")
    assert _fingerprint("train") == before


def test_the_fingerprint_does_not_depend_on_where_the_code_lives(source: Path, tmp_path_factory) -> None:
    before = {step: _fingerprint(step) for step in STEPS}
    moved = tmp_path_factory.mktemp("elsewhere")
    for package in fingerprint.PROJECT_PACKAGES:
        shutil.copytree(source / package, moved / package)
    fingerprint.SOURCE_ROOT = moved  # restored by the fixture's monkeypatch
    assert {step: _fingerprint(step) for step in STEPS} == before


def test_a_missing_module_is_named(source: Path) -> None:
    step = source / "steps" / "tune_thresholds.py"
    step.write_text(step.read_text() + "\n\ndef _late():\n    import components.nosuch  # noqa\n")
    with pytest.raises(ModuleNotFoundError, match=r"components\.nosuch"):
        _fingerprint("tune_thresholds")


def test_every_step_fingerprint_reads_the_real_tree() -> None:
    fingerprint._fingerprint.cache_clear()
    for step in STEPS:
        assert len(fingerprint.code_fingerprint(step)) == 16
