"""``odir mlflow-users`` refuses what it cannot do before it changes anything. Against a real secured server it runs
in ``make test-integration`` (tests/integration/test_scaled_out.py), which also covers the refused-credential lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.flows.conftest import BIN, CHECKOUT

USERS = {
    "ODIR_PIPELINE_USERNAME": "odir-pipeline",
    "ODIR_PIPELINE_PASSWORD": "a-long-enough-password",
    "ODIR_READER_USERNAME": "odir-reader",
    "ODIR_READER_PASSWORD": "another-long-password",
}


def _users(env: dict[str, str]) -> str:
    """The last line ``odir mlflow-users`` wrote on stderr; it must have exited 2 without a traceback."""
    done = subprocess.run([str(BIN / "odir"), "mlflow-users"], env=env, cwd=CHECKOUT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("missing", ["ODIR_PIPELINE_PASSWORD", "ODIR_READER_USERNAME"])
def test_mlflow_users_names_a_missing_variable(missing: str, odir_home: Path) -> None:
    env = {**os.environ, **USERS, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # never reached: nothing listens
    del env[missing]
    role = "pipeline" if "PIPELINE" in missing else "reader"
    assert _users(env) == f"odir mlflow-users: the {role} identity needs {missing} (see infra/.env.example)"


def test_mlflow_users_needs_a_tracking_server(odir_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | USERS
    assert _users(env).startswith(
        "odir mlflow-users: MLFLOW_TRACKING_URI must name a tracking server with basic-auth, not sqlite:///"
    )
