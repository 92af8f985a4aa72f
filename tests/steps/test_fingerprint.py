"""The code fingerprint in reuse keys: code that shapes a result changes it; docstrings, comments and other modules
do not."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from steps import base

LOSSES = importlib.util.find_spec("components.losses").origin


@pytest.fixture
def probe_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``fp_probe`` with a copy of the real losses module and an unrelated module; the train step's
    fingerprint covers only the losses copy."""
    package = tmp_path / "fp_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "losses.py").write_text(Path(LOSSES).read_text())
    (package / "unrelated.py").write_text('"""Unrelated."""\n\n\ndef helper() -> int:\n    return 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(base.STEP_CODE, "train", ("fp_probe.losses",))
    base.code_fingerprint.cache_clear()
    yield package
    base.code_fingerprint.cache_clear()
    sys.modules.pop("fp_probe", None)


def _fingerprint() -> str:
    base.code_fingerprint.cache_clear()
    return base.code_fingerprint("train")


def test_a_changed_loss_function_changes_the_fingerprint(probe_package: Path) -> None:
    before = _fingerprint()
    losses = probe_package / "losses.py"
    source = losses.read_text()
    assert "gamma" in source
    losses.write_text(source.replace("gamma", "gamma_changed"))
    assert _fingerprint() != before


def test_docstrings_comments_and_other_modules_do_not(probe_package: Path) -> None:
    before = _fingerprint()
    losses = probe_package / "losses.py"
    source = losses.read_text()
    first_docstring_line = source.splitlines()[0]
    assert first_docstring_line.startswith('"""')
    edited = source.replace(first_docstring_line, first_docstring_line + " (reworded)", 1)
    losses.write_text("# a new comment\n" + edited + "\n\n# trailing comment\n")
    (probe_package / "unrelated.py").write_text('"""Changed."""\n\n\ndef helper() -> int:\n    return 2\n')
    assert _fingerprint() == before


def test_the_fingerprint_does_not_depend_on_where_the_code_lives(probe_package: Path, tmp_path: Path) -> None:
    before = _fingerprint()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    probe_package.rename(moved / "fp_probe")
    sys.modules.pop("fp_probe", None)  # find_spec imported the package from its old place
    sys.path.insert(0, str(moved))
    try:
        importlib.invalidate_caches()
        assert _fingerprint() == before
    finally:
        sys.path.remove(str(moved))


def test_every_step_fingerprint_reads_existing_modules() -> None:
    for step in base.STEP_CODE:
        assert len(base.code_fingerprint(step)) == 16
