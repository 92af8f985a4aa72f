"""A failure its user can fix, found inside a flow run (where no check before the run could see it): ``odir full``
prints one sentence and exits 2, with no traceback on the console; the flow run's Failed state message is that
sentence, and the run's log keeps the traceback (:mod:`flows.failures`).

``odir full`` runs as a real process (its console is what is tested: Prefect configures the logging of a process
the way it finds it, and a test process's is pytest's) against the package's real Prefect server (``stack``), whose
API then holds the runs' states and logs.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Failed

from components.errors import OdirError
from flows.failures import (
    EXIT_INVALID,
    FAILURE_RECORD,
    FailedElsewhere,
    Failure,
    failure_of,
    no_fixable_traceback,
    raise_if_failed,
)  # fmt: skip
from tests.flows.conftest import BIN, Stack

MODEL = {"name": "tiny-a", "backbone": "tiny_cnn", "image_size": 32, "batch_size": 8, "epochs": 1, "seed": 1}


def _misfit_checkpoint(tmp_path: Path, data: Path) -> tuple[dict, Path]:
    """A checkpoint that loads as plain tensors (so it passes the check before the run) but fits no tiny_cnn."""
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pt")
    return {"models": [{**MODEL, "weights": str(tmp_path / "resnet.pt")}]}, data


def _an_image_that_is_no_image(tmp_path: Path, data: Path) -> tuple[dict, Path]:
    """A dataset whose CSVs are all there (the check before the run passes) with one image that does not decode:
    ingest, a task of the pipeline's flow run, finds it."""
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    first = (copy / "train.csv").read_text().splitlines()[1].split(",")[0]
    (copy / "images" / "train" / first).write_text("not a JPEG")
    return {"models": [MODEL]}, copy


# (how the profile and data are made, what the sentence says)
CASES = {
    "checkpoint that does not fit, in the odir-train subflow": (_misfit_checkpoint, "resnet.pt does not fit the model"),
    "an undecodable image, in the ingest task": (_an_image_that_is_no_image, "train.csv, line 2: image"),
}


def _flow_runs(name: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def _logs(flow_run_id) -> list[str]:
    """The flow run's log lines in the Prefect API (they arrive in batches: waits for the Failed state's line)."""
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [log.message for log in logs]
        if any(m.startswith("Finished in state Failed") for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


@pytest.mark.parametrize("case", list(CASES))
def test_a_failure_inside_a_run_is_one_sentence_and_the_runs_state(
    case: str, stack: Stack, tiny_data: Path, tmp_path: Path
) -> None:
    make, expected = CASES[case]
    settings, data = make(tmp_path, tiny_data)
    profile = tmp_path / "broken.yaml"
    profile.write_text(yaml.safe_dump({"name": "broken", "gradcam_gallery": 0, **settings}, sort_keys=False))
    done = stack.run(str(BIN / "odir"), "full", "--profile", str(profile), "--data", str(data), timeout=300)
    assert done.returncode == EXIT_INVALID, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "Traceback" not in console and "Finished in state Failed" not in console, console[-3000:]
    assert done.stderr.splitlines()[-1].startswith("odir full: ")  # said last, once
    sentence = done.stderr.splitlines()[-1].removeprefix("odir full: ")
    assert expected in sentence and console.count(sentence) == 1
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        [run] = _flow_runs(f"odir {profile}")
        assert run.state.is_failed() and run.state.message == sentence  # what --watch, the UI and inspect show
        logged = [m for m in _logs(run.id) if m.startswith(sentence)]
    assert any("Traceback (most recent call last)" in m for m in logged), logged  # for whoever debugs it


def test_the_console_drops_only_fixable_failures_tracebacks_and_leaves_the_records_alone() -> None:
    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed with exception",
                                 (), (type(error), error, None))  # fmt: skip

    fixable, bug = record(OdirError("data/x.csv: bad")), record(KeyError("x"))
    assert not no_fixable_traceback(fixable) and no_fixable_traceback(bug)
    assert fixable.exc_info[1].args == ("data/x.csv: bad",) and fixable.exc_text is None  # untouched for the API
    assert failure_of(OdirError("data/x.csv: bad")) == Failure("data/x.csv: bad", EXIT_INVALID)
    assert failure_of(KeyError("x")) is None
    engine_exit = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Engine execution exited with "
                                    "unexpected exception", (), fixable.exc_info)  # fmt: skip
    ours = logging.makeLogRecord({**engine_exit.__dict__, FAILURE_RECORD: True})
    flow_run_filter = logging.getLogger("prefect.flow_runs").filter  # a deployment's run logs the traceback once
    assert not flow_run_filter(engine_exit) and flow_run_filter(ours) and flow_run_filter(bug)
    try:
        try:
            raise OdirError("handled")
        except OdirError:
            raise KeyError("a bug while handling it") from None
    except KeyError as bug_in_handler:
        assert failure_of(bug_in_handler) is None  # a bug stays a bug, whatever it was handling


# a flow run started with parameters no command checked (`prefect deployment run odir/full --param ...`, the UI's
# Run form): (the flow, its parameters, the run's name, how its sentence starts)
BAD_PARAMETERS = {
    "an unknown profile": ("odir", {"profile": "nosuch"}, "odir nosuch", "configs/nosuch.yaml: profile not found"),
    "an unknown dispatch": ("odir", {"profile": "demo", "dispatch": "gpu"}, "odir demo",
                            "parameter dispatch: must be 'local' or 'deployment', got 'gpu'"),
    "an unknown grid": ("experiments", {"grid": "nosuch"}, "experiments nosuch",
                        "configs/experiments/nosuch.yaml: experiment grid not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_a_flow_run_with_a_bad_parameter_ends_failed_with_its_sentence(case: str, stack: Stack) -> None:
    module, parameters, name, sentence = BAD_PARAMETERS[case]
    flow = {"odir": "odir", "experiments": "odir_experiments"}[module]
    done = stack.run(sys.executable, "-c", f"from flows.{module} import {flow}; "
                     f"print('state:', {flow}(**{parameters!r}, return_state=True).message)", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("state: ")]
    assert len(said) == 1 and sentence in said[0], done.stdout[-3000:]
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        runs = _flow_runs(name)
    assert any(run.state.is_failed() and sentence in run.state.message for run in runs)


def test_a_deployment_run_that_failed_for_a_reason_says_it_where_it_was_awaited() -> None:
    raise_if_failed("odir-train/gpu run x for a", Completed())
    with pytest.raises(FailedElsewhere, match=r"^x.pt: not found$"):
        raise_if_failed("odir-train/gpu run x for a", Failed(message="x.pt: not found"))
    with pytest.raises(RuntimeError, match=r"^odir-train/gpu run x for a ended Failed: Flow run encountered") as bug:
        raise_if_failed("odir-train/gpu run x for a", Failed(message="Flow run encountered an exception: KeyError"))
    assert failure_of(bug.value) is None  # a bug in the child stays one
