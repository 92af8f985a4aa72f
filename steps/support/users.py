"""The MLflow users of the secured scaled-out stack (infra/, docs/security.md), which ``odir mlflow-users`` keeps.

MLflow's basic-auth app gives every signed-in user ``default_permission = READ`` (infra/mlflow/basic_auth.ini) and
its creator ``MANAGE`` on each experiment and registered model; so the pipeline's identity, which creates the odir
experiments and models, writes to them (runs, versions, ``@champion``), and the reader's identity only reads. Neither
is an admin: the admin's credentials stay with the server and with this command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from components.errors import OdirError
from steps.support import tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


@dataclass(frozen=True)
class Identity:
    """One MLflow user of the stack, by the environment variables that hold its name and password."""

    role: str
    username_variable: str
    password_variable: str

    def credentials(self) -> tuple[str, str]:
        """(username, password) from the environment.

        Raises:
            OdirError: a variable unset or empty.
        """
        missing = [v for v in (self.username_variable, self.password_variable) if not os.environ.get(v)]
        if missing:
            raise OdirError(f"the {self.role} identity needs {' and '.join(missing)} (see infra/.env.example)")
        return os.environ[self.username_variable], os.environ[self.password_variable]


IDENTITIES = (
    Identity("pipeline", "ODIR_PIPELINE_USERNAME", "ODIR_PIPELINE_PASSWORD"),
    Identity("reader", "ODIR_READER_USERNAME", "ODIR_READER_PASSWORD"),
)


def ensure_users() -> list[str]:
    """Creates the pipeline and reader users on the tracking server, or sets the password of one that exists (so
    re-running after a secret changed rotates it); returns one line per user. Runs as an admin of the server
    (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), through MLflow's own auth client.

    Raises:
        OdirError: an identity's variables unset, the tracking store not a server, or the user running it not an
            admin of the server.
    """
    import warnings

    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # the auth package imports the server's app, which warns of a Starlette change
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    uri = tracking.tracking_uri()
    if not uri.startswith(("http:", "https:")):
        raise OdirError(f"MLFLOW_TRACKING_URI must name a tracking server with basic-auth, not {uri}")
    wanted = [(identity.role, *identity.credentials()) for identity in IDENTITIES]  # all checked before any change
    client = AuthServiceClient(uri)
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    if not (admin and client.get_user(admin).is_admin):
        raise OdirError(f"run as an admin of {uri}: MLFLOW_TRACKING_USERNAME ({admin or 'unset'}) is not one")
    done = []
    for role, username, password in wanted:
        try:
            client.get_user(username)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_user(username, password)
            done.append(f"{role} user {username}: created")
            continue
        client.update_user_password(username, password)
        done.append(f"{role} user {username}: exists, password set")
    return done
