"""What every step shares: the common config fields, reuse of finished work, and the code fingerprint.

A step is ``run(config) -> result``. Its config is a keyword-only frozen dataclass deriving from
:class:`StepConfig`; :func:`run_step` finds an earlier FINISHED run with the same reuse tags (and returns what it
produced), or opens a new child run of the pipeline run and does the work in it.

Reuse tags carry a **code fingerprint** (:func:`code_fingerprint`): the package version plus a hash of the source of
the modules that shape the step's result, so a fix to the training loop or a loss retrains while a change anywhere
else (a docstring, a CLI message, another step) reuses.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

from steps import integrity, locks, tracking

Result = TypeVar("Result")

# The modules whose code decides what a step produces from its inputs (its reuse key includes their fingerprint).
STEP_CODE: dict[str, tuple[str, ...]] = {
    "train": ("components.attention", "components.augment", "components.checkpoints", "components.data",
              "components.fundus", "components.losses", "components.metrics", "components.models",
              "components.schedule", "components.training"),
    # components.training: load_trained, which puts a loaded model in the memory format it trained in
    "evaluate": ("components.data", "components.explain", "components.fundus", "components.inference",
                 "components.metrics", "components.models", "components.referral", "components.scoring",
                 "components.training", "components.tta", "steps.ensemble_model"),
    "tune_thresholds": ("components.thresholds",),
    # components.drift: the drift reference the ensemble logs with each version
    "ensemble": ("components.data", "components.drift", "components.ensemble", "components.fundus",
                 "components.metrics", "components.referral", "components.thresholds", "steps.ensemble_model"),
}  # fmt: skip


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
    reused: Callable[[Any], Result], system_metrics: bool = False,
) -> Result:  # fmt: skip
    """``reused(run)`` of the newest FINISHED ``step`` run tagged ``tags`` when ``config.reuse`` allows, else
    ``work(run)`` inside a new child run tagged ``tags`` (which ends FAILED, keeping what was logged, if it raises).

    A finished run is reused only if the version it registered still passes its SHA-256 check
    (:mod:`steps.integrity`). The work runs under a registry lock named after the step and its tags
    (:mod:`steps.locks`): two pipelines that want the same model at once train it once; the second waits for the
    first and reuses its run.
    """
    if config.reuse and (done := _sound_finished_run(config, step, tags)):
        return reused(done)
    # One process at a time does the same work: a second pipeline that wants it waits, then reuses the result.
    with locks.registry_lock(f"{step}-{tracking.content_key(tags)}", timeout=None, waiting_for=run_name):
        if config.reuse and (done := _sound_finished_run(config, step, tags)):
            return reused(done)
        with tracking.step_run(step, config.experiment, config.parent_run_id, run_name, tags, system_metrics) as run:
            return work(run)


def _sound_finished_run(config: StepConfig, step: str, tags: dict[str, str]) -> Any | None:
    """The run to reuse: the newest finished one with these tags whose registered version still verifies (a broken
    one is set aside, and the next one looked for)."""
    while (done := tracking.find_finished_run(config.experiment, step, tags)) is not None:
        if integrity.sound_reuse(done):
            return done
    return None


@functools.cache
def code_fingerprint(step: str) -> str:
    """A short hash of the package version and of the code in ``STEP_CODE[step]``.

    Each module's source is parsed and printed back with ``ast`` after its docstrings are removed, so comments,
    docstrings, blank lines and formatting do not count; what is hashed depends only on the source files and the
    package version, never on paths, the machine or the order of imports, so two hosts running the same checkout
    (or wheel) agree. Modules are read from their files without being imported.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("odir")
    except PackageNotFoundError:  # running from a plain checkout
        package = "unversioned"
    digest = hashlib.sha256(package.encode())
    for module in sorted(STEP_CODE[step]):
        digest.update(module.encode())
        digest.update(_code_of(module).encode())
    return digest.hexdigest()[:16]


def _code_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"code fingerprint: module {module} not found")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
