"""Prefect flows and the ``odir`` command.

Defaults for running Prefect from a checkout, set before Prefect is imported (it reads its settings then): the
epoch lines of ``components``/``steps`` show in the Prefect UI, state lives in ``.prefect/`` of the project,
telemetry is off, and an ephemeral server gets time to start on a small machine. Any of them set by the user wins.
"""

import functools
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components,steps")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # steps also log outside flows
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
if (_CHECKOUT / "pyproject.toml").exists():
    os.environ.setdefault("PREFECT_HOME", str(_CHECKOUT / ".prefect"))


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs started inside send no Prefect heartbeats, unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set.

    Heartbeats let a server mark a run whose worker died as crashed. A run that odir starts in its own process (the
    pipeline of ``odir full``, each model's ``odir-train`` inside it) is watched by whoever started it, and a
    subflow's parent already heartbeats for the process; yet every heartbeating run waits on exit for Prefect's
    heartbeat thread, which sleeps in 1 s steps: 0.5 s per run on average, 4% of a 13 s training. Runs started by
    workers and ``odir serve`` do not pass through here and keep Prefect's heartbeats.
    """
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@functools.cache  # once: a later freeze would also keep the garbage of the runs before it
def freeze_startup_objects() -> None:
    """Collects the garbage, then takes every object alive (the imported modules of torch, MLflow, Prefect and the
    rest: about 0.7 million) out of the garbage collector's view for the rest of the process.

    CPython's full collections walk every tracked object: 0.35-0.5 s each in an odir process, and a pipeline run
    set off eleven of them (2.3 s, at random points) in one ``odir full --profile demo``. Objects alive after
    start-up live as long as the process anyway; ``gc.freeze`` exists for them.
    """
    gc.collect()
    gc.freeze()
