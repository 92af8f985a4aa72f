"""Prefect flows and the ``odir`` command.

Defaults for running Prefect from a checkout, set before Prefect is imported (it reads its settings then): the
epoch lines of ``components``/``steps`` show in the Prefect UI, state lives in ``.prefect/`` of the project,
telemetry is off, and an ephemeral server gets time to start on a small machine. Any of them set by the user wins.
"""

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components,steps")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # steps also log outside flows
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
if (_CHECKOUT / "pyproject.toml").exists():
    os.environ.setdefault("PREFECT_HOME", str(_CHECKOUT / ".prefect"))
