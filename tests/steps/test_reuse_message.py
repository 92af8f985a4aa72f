"""Work done before is reused with one line that says what, from which run and why, and a first pipeline run that
asks for the same work twice says it was done earlier in this run; looking up what an earlier step made says
nothing (it is no reuse: a first ``make demo`` printed "reusing run" there)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest

from steps.support import tracking
from steps.support.base import StepConfig, run_step

EXPERIMENT = "reuse-message"


def _probe(config: StepConfig, key: str) -> str:
    """A step whose work is to return its run's id, as a step returns its results."""
    return run_step(config, "probe", {"probe_key": key}, f"probe {key}", work=lambda run: run.info.run_id,
                    reused=lambda done: done.info.run_id)  # fmt: skip


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("steps.")]


def test_reuse_says_what_from_which_run_and_why(odir_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow import MlflowClient

    tracking.connect()
    caplog.set_level(logging.INFO, logger="steps")
    first = _probe(StepConfig(experiment=EXPERIMENT), "a")
    assert _said(caplog) == [] and tracking.find_finished_run(EXPERIMENT, "probe", {"probe_key": "a"}) is not None
    assert _said(caplog) == []  # a look-up is not a reuse
    assert _probe(StepConfig(experiment=EXPERIMENT), "a") == first
    ended = datetime.fromtimestamp(MlflowClient().get_run(first).info.end_time / 1000)
    assert _said(caplog) == [f"probe a: done before with the same inputs and code (run {first}, finished "
                             f"{ended:%Y-%m-%d %H:%M}): its results are reused; --force does it again"]  # fmt: skip

    caplog.clear()
    parent = MlflowClient().create_run(tracking.setup(EXPERIMENT)).info.run_id
    in_pipeline = StepConfig(experiment=EXPERIMENT, parent_run_id=parent)
    once = _probe(in_pipeline, "b")
    assert _probe(in_pipeline, "b") == once
    assert _said(caplog) == [f"probe b: done earlier in this pipeline run with the same inputs and code (run {once}): "
                             "its results are reused"]  # fmt: skip
