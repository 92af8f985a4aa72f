"""What every step shares: the common config fields, reuse of finished work, and the code fingerprint.

A step is ``run(config) -> result``. Its config is a keyword-only frozen dataclass deriving from
:class:`StepConfig`; :func:`run_step` finds an earlier FINISHED run with the same reuse tags (and returns what it
produced), or opens a new child run of the pipeline run and does the work in it.

Reuse tags carry a **code fingerprint** (:mod:`steps.support.fingerprint`): the package version plus a hash of the
code of the step and of every module it imports, so a fix to the training loop or a loss retrains while a docstring
or a module the step never reaches does not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from steps.support import integrity, locks, tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

Result = TypeVar("Result")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """Fields every step has.

    Attributes:
        experiment: the MLflow experiment the step's run goes to.
        parent_run_id: the pipeline run this step's run nests under (None: a top-level run).
        reuse: return an earlier FINISHED run with the same inputs and code instead of doing the work again.
    """

    experiment: str = tracking.DEFAULT_EXPERIMENT
    parent_run_id: str | None = None
    reuse: bool = True


def run_step(
    config: StepConfig, step: str, tags: dict[str, str], run_name: str, work: Callable[[Any], Result],
    reused: Callable[[Any], Result], system_metrics: bool | None = False,
) -> Result:  # fmt: skip
    """``reused(run)`` of the newest FINISHED ``step`` run tagged ``tags`` when ``config.reuse`` allows, else
    ``work(run)`` inside a new child run tagged ``tags`` (which ends FAILED, keeping what was logged, if it raises).

    A finished run is reused only if the version it registered still passes its SHA-256 check
    (:mod:`steps.support.integrity`). The work runs under a registry lock named after the step and its tags
    (:mod:`steps.support.locks`): two pipelines that want the same model at once train it once; the second waits for the
    first and reuses its run.
    """
    if config.reuse and (done := _sound_finished_run(config, step, tags)):
        return _reuse(config, run_name, done, reused)
    # One process at a time does the same work: a second pipeline that wants it waits, then reuses the result.
    with locks.registry_lock(f"{step}-{tracking.content_key(tags)}", timeout=None, waiting_for=run_name):
        if config.reuse and (done := _sound_finished_run(config, step, tags)):
            return _reuse(config, run_name, done, reused)
        with tracking.step_run(step, config.experiment, config.parent_run_id, run_name, tags, system_metrics) as run:
            return work(run)


def _reuse(config: StepConfig, run_name: str, done: Any, reused: Callable[[Any], Result]) -> Result:
    """``reused(done)``, said in one line: what is reused, from which run, and why (the same inputs and code), with
    "earlier in this pipeline run" where the run is a sibling (a first run that asks for the same work twice)."""
    if config.parent_run_id and done.data.tags.get("mlflow.parentRunId") == config.parent_run_id:
        log.info("%s: done earlier in this pipeline run with the same inputs and code (run %s): its results are "
                 "reused", run_name, done.info.run_id)  # fmt: skip
    else:
        finished = datetime.fromtimestamp((done.info.end_time or done.info.start_time) / 1000)
        log.info("%s: done before with the same inputs and code (run %s, finished %s): its results are reused; "
                 "--force does it again", run_name, done.info.run_id, f"{finished:%Y-%m-%d %H:%M}")  # fmt: skip
    return reused(done)


def _sound_finished_run(config: StepConfig, step: str, tags: dict[str, str]) -> Any | None:
    """The run to reuse: the newest finished one with these tags whose registered version still verifies (a broken
    one is set aside, and the next one looked for)."""
    while (done := tracking.find_finished_run(config.experiment, step, tags)) is not None:
        if integrity.sound_reuse(done):
            return done
    return None
