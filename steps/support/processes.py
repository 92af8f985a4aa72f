"""Runs and the processes that made them: each run is tagged with its host and process id, so that a later step can
tell the run of a process that died (killed, crashed, the machine restarted) from a live one and mark it FAILED."""

from __future__ import annotations

import logging
import os
import socket

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

log = logging.getLogger(__name__)


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later step can tell a run whose process died from a live one."""
    return {"odir.host": socket.gethostname(), "odir.pid": str(os.getpid())}


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def reap_dead_runs(experiment_id: str) -> list[str]:
    """Marks FAILED the RUNNING runs of this host whose process is gone (killed, crashed, machine restarted).

    Without this, a killed step's run stays RUNNING forever in the UI. Runs of other hosts are left alone: their
    processes cannot be checked from here.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`odir.host` = '{host}'", max_results=1000
    )
    reaped = []
    for run in runs:
        pid = run.data.tags.get("odir.pid", "")
        if pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "FAILED")
            client.set_tag(run.info.run_id, "odir.failure", f"process {pid} on {host} died before the run ended")
            reaped.append(run.info.run_id)
    if reaped:
        log.warning("marked %d run(s) of dead processes FAILED: %s", len(reaped), ", ".join(reaped))
    return reaped
