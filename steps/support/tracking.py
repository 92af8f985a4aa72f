"""MLflow setup, the one place that knows where the tracking store is, and the run and artifact helpers the steps
share (the registry's names and model URIs: :mod:`steps.support.registry`).

The embedded default is ``sqlite:///<project root>/mlruns/mlflow.db`` with artifacts in ``<project root>/mlruns/
artifacts``, whatever the current directory; each store owns its files (:class:`StoreFiles`).
``MLFLOW_TRACKING_URI`` (read when a step starts, never at import) switches to another store or a tracking server;
the usual ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_*`` variables then apply as MLflow reads them. A store that does not
answer is retried under one policy (:class:`RetryPolicy`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.support import processes

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "odir"
STEP_TAG = "odir.step"


# A model-training experiment (MLflow 3's UI opens it on its runs and models, not the GenAI views) with a description
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "odir: multi-label classifiers for fundus photographs (D diabetic retinopathy, G glaucoma, A AMD). Each "
        "`pipeline <profile>` run holds the headline scores of its ensemble (with 95% intervals over patients) and "
        "links its steps: ingest, one train run per member, evaluate, thresholds, ensemble, submit, promote. "
        "Registered models: `odir-<member>` and `odir-ensemble` (`@champion` is what `odir predict` uses)."
    ),
}


def project_root() -> Path:
    """``$ODIR_HOME`` if set, else the checkout this code runs from (the folder with ``pyproject.toml``), else the
    current directory (an installed wheel in a container)."""
    if os.environ.get("ODIR_HOME"):
        return Path(os.environ["ODIR_HOME"]).resolve()
    checkout = Path(__file__).resolve().parents[2]  # steps/support/tracking.py -> the checkout
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd().resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the embedded SQLite store under the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:")


@dataclass(frozen=True)
class StoreFiles:
    """The local files a store owns, so that two stores never share any: ``artifacts`` (embedded stores: run and
    model files; a server keeps its own) and ``work`` (training checkpoints for resuming).

    - the default store ``mlruns/mlflow.db``: ``mlruns/artifacts`` and ``.odir/work`` under the project root;
    - another SQLite file ``<dir>/<name>.db``: ``<dir>/<name>-artifacts`` and ``<dir>/<name>-work``, beside it;
    - a tracking server: artifacts where the server puts them, ``.odir/stores/<host>-<port>/work`` locally;
    - a database without a server (``postgresql://...``): ``.odir/stores/<host>-<port>/artifacts`` and ``work``.
    """

    artifacts: Path | None
    work: Path


def store_files(uri: str | None = None) -> StoreFiles:
    uri = uri or tracking_uri()
    root = project_root()
    if is_embedded(uri):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        if database == root / "mlruns" / "mlflow.db":
            return StoreFiles(root / "mlruns" / "artifacts", root / ".odir" / "work")
        return StoreFiles(database.with_name(f"{database.stem}-artifacts"), database.with_name(f"{database.stem}-work"))
    host, port = _endpoint(uri) or ("store", 0)
    local = root / ".odir" / "stores" / f"{host}-{port}"
    server = uri.startswith(("http:", "https:", "databricks"))
    return StoreFiles(None if server else local / "artifacts", local / "work")


# --- one retry policy for the tracking server and the object store ---------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How odir retries a tracking server or object store that does not answer, everywhere, in one round.

    ``attempts`` tries of at most ``timeout_s`` each (per connection and per wait for an answer), with waits that
    double from ``backoff_s`` between them (0, 2, 4, 8 s with the defaults as urllib3 counts them for MLflow's
    requests; 1, 2, 4, 8 s in the start-up check and in odir's own object-store requests,
    ``steps.support.storage.retrying``; MLflow's artifact transfers go through boto, whose waits are random and under a
    second in all). The defaults (5 attempts, 8 s, 1 s) give up within about 15 s on a server that refuses
    connections (nothing listening, stopped) and within about 55 s on one that does not answer at all.
    ``ODIR_STORE_ATTEMPTS``, ``ODIR_STORE_TIMEOUT_S`` and ``ODIR_STORE_BACKOFF_S`` change them (a slow network or a
    server that restarts slowly: more attempts, a longer timeout); MLflow's and boto's own variables, when set, win
    for MLflow's requests. Flows do not retry a task that failed this way: no nested rounds.
    """

    attempts: int = 5
    timeout_s: int = 8
    backoff_s: int = 1  # whole seconds, both: MLflow reads its variables as integers

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            max(1, int(os.environ.get("ODIR_STORE_ATTEMPTS", cls.attempts))),
            int(os.environ.get("ODIR_STORE_TIMEOUT_S", cls.timeout_s)),
            int(os.environ.get("ODIR_STORE_BACKOFF_S", cls.backoff_s)),
        )

    def apply(self) -> None:
        """Hands the policy to MLflow's HTTP client and to boto (MLflow's S3 artifact client) unless the user set
        their own variables."""
        for variable, value in {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": self.attempts - 1,
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": self.backoff_s,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": self.timeout_s,
            "AWS_MAX_ATTEMPTS": self.attempts,
            "AWS_RETRY_MODE": "standard",
        }.items():
            os.environ.setdefault(variable, str(value))

    def waits(self) -> Iterator[float]:
        """Before each attempt, the seconds to wait: 0, then doubling from ``backoff_s``."""
        yield 0
        for attempt in range(1, self.attempts):
            yield self.backoff_s * 2 ** (attempt - 1)

    def describe(self) -> str:
        return f"{self.attempts} attempts, {self.timeout_s:g} s each, backoff from {self.backoff_s:g} s"


class StoreUnreachable(ConnectionError):
    """The tracking server or object store did not answer within the retry policy."""


def _endpoint(uri: str) -> tuple[str, int] | None:
    """(host, port) of a server URI, None for a local store."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    default_port = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
    scheme = parts.scheme.split("+")[0]  # postgresql+psycopg2
    if scheme not in default_port or not parts.hostname:
        return None
    return parts.hostname, parts.port or default_port[scheme]


def _s3_endpoint() -> str | None:
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


def check_store(policy: RetryPolicy | None = None) -> None:
    """Before any work: the tracking server (and the S3 endpoint, when one is set) accepts connections, tried
    under the retry policy, and a tracking server accepts the credentials (one read request).

    Raises:
        StoreUnreachable: one line naming the URI and what was tried.
        mlflow.exceptions.MlflowException: the server refused the credentials (:func:`access_refused` words it).
    """
    import time

    policy = policy or RetryPolicy.from_env()
    for what, uri in (("tracking server", tracking_uri()), ("object store", _s3_endpoint())):
        address = _endpoint(uri) if uri else None
        if address is None:
            continue
        started, error = time.monotonic(), None
        for wait in policy.waits():
            time.sleep(wait)
            try:
                socket.create_connection(address, timeout=policy.timeout_s).close()
                break
            except OSError as failure:
                error = failure
        else:
            raise StoreUnreachable(
                f"{what} {uri} unreachable: {policy.attempts} attempts over {time.monotonic() - started:.0f} s "
                f"({error.strerror or error}); retry policy: {policy.describe()} (ODIR_STORE_ATTEMPTS, "
                "ODIR_STORE_TIMEOUT_S, ODIR_STORE_BACKOFF_S)"
            )
    if tracking_uri().startswith(("http:", "https:")):  # a server with authentication refuses here, not mid-run
        from mlflow import MlflowClient

        policy.apply()
        MlflowClient(tracking_uri()).search_experiments(max_results=1)


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and what caused it, outermost first."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def store_unreachable(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a failure to reach the tracking server or the object store."""
    import requests
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError
    from botocore.exceptions import ReadTimeoutError as BotoReadTimeout
    from mlflow.exceptions import MlflowException

    unreachable = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                   EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, BotoReadTimeout)  # fmt: skip
    for cause in causes(error):
        if isinstance(cause, unreachable):
            return True
        if isinstance(cause, MlflowException) and "Max retries exceeded" in str(cause):
            return True
    return False


def access_refused(error: BaseException | None) -> str | None:
    """One line when ``error`` (or what caused it) is the tracking server refusing the credentials (HTTP 401) or
    the user's permission (HTTP 403), naming the server and what to set; None for any other error. Retrying cannot
    fix either: callers report it as a bad setting."""
    import re
    from urllib.parse import urlsplit

    import requests
    from mlflow.exceptions import MlflowException

    for cause in causes(error):
        if isinstance(cause, MlflowException):  # the REST API
            status = cause.get_http_status_code()
            endpoint = re.search(r"endpoint (\S+)", cause.message)
            endpoint = endpoint.group(1) if endpoint else "the request"
        elif (  # artifacts through the server
            isinstance(cause, requests.HTTPError)
            and cause.response is not None
            and cause.response.url.startswith(tracking_uri())
        ):
            status, endpoint = cause.response.status_code, urlsplit(cause.response.url).path
        else:
            continue
        if status not in (401, 403):
            continue
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 401:
            given = f"user {user!r} with this password was not accepted" if user else "no credentials were sent"
            return (
                f"tracking server {tracking_uri()} refused the credentials (HTTP 401: {given}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of the server"
            )
        return (
            f"tracking server {tracking_uri()} denied user {user!r} {endpoint} (HTTP 403: this user may read but not "
            "change it); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the pipeline's identity"
        )
    return None


def unreachable_message(error: BaseException) -> str:
    """One line for a store that stopped answering: which one, and what was tried."""
    if isinstance(error, StoreUnreachable):
        return str(error)
    text = str(error)
    s3 = _s3_endpoint()
    *_, cause = causes(error)
    from_boto = any(type(link).__module__.startswith(("botocore", "boto3")) for link in causes(error))
    what, uri = (
        ("object store", s3)
        if s3 and (from_boto or "s3" in text.lower() or "endpoint" in text.lower())
        else ("tracking server", tracking_uri())
    )
    return (
        f"{what} {uri} stopped answering (retry policy: {RetryPolicy.from_env().describe()}; last error: "
        f"{type(cause).__name__}); nothing finished is lost: run the same command again when it is back"
    )


def connect() -> str:
    """Points MLflow at the store (read from the environment now, not at import) and returns its URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    RetryPolicy.from_env().apply()
    import mlflow

    uri = tracking_uri()
    if is_embedded(uri):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def setup(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Points MLflow at the store and returns the experiment's id, creating the experiment if needed.

    With an embedded store, the experiment's artifacts go beside its database (:class:`StoreFiles`; MLflow would
    otherwise put them under the current directory, shared by every store).
    """
    import mlflow

    uri = connect()
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if EXPERIMENT_TAGS.keys() - found.tags.keys():  # made by an older odir: the UI opened it as a GenAI one
            for key, value in EXPERIMENT_TAGS.items():
                mlflow.MlflowClient().set_experiment_tag(found.experiment_id, key, found.tags.get(key, value))
        return found.experiment_id
    artifacts = store_files(uri).artifacts
    location = artifacts.as_uri() if artifacts else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent step
        return mlflow.get_experiment_by_name(experiment).experiment_id


@functools.cache
def git_sha() -> str:
    """The checkout's commit, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def step_run(
    step: str, experiment: str, parent_run_id: str | None, run_name: str, tags: dict[str, str] | None = None,
    system_metrics: bool | None = False,
) -> Iterator[Any]:  # fmt: skip
    """A child run of ``parent_run_id`` (or a top-level run) for one step; ``system_metrics`` None leaves MLflow's
    system metrics to its switch, ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` (off unless set).

    On an exception the run ends FAILED with everything logged so far kept, and the exception propagates.
    """
    import mlflow

    experiment_id = setup(experiment)
    processes.reap_dead_runs(experiment_id)
    all_tags = {STEP_TAG: step, "odir.git_sha": git_sha(), **processes.process_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=all_tags, log_system_metrics=system_metrics
    ) as run:
        yield run


MODEL_STEP = -1
"""The step odir logs models at. MLflow copies every run metric of a model's step onto the new logged model (system
metrics, per-fold curves, temperatures: dozens of columns in the Models tab); at a step no metric uses it copies none,
and the steps link the metrics that compare models themselves (:func:`link_metrics`)."""


def link_metrics(model_id: str | None, metrics: dict[str, float]) -> None:
    """Logs ``metrics`` in the active run linked to the logged model ``model_id`` (its Models tab columns); nothing
    for a model logged before MLflow had logged models (``None``)."""
    import mlflow

    if model_id and metrics:
        mlflow.log_metrics(metrics, model_id=model_id)


def pinned_requirements(*packages: str) -> list[str]:
    """``package==version`` of each installed package (local build tags dropped), for a logged model's
    requirements: read from the package metadata, without importing the package (torchvision's import takes 1.4 s).
    """
    from importlib.metadata import version

    return [f"{package}=={version(package).split('+')[0]}" for package in packages]


def content_key(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts: identifies a step's inputs for reuse."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def find_finished_run(experiment: str, step: str, tags: dict[str, str]) -> Any | None:
    """The newest FINISHED run of ``step`` whose tags equal ``tags``, or None: how steps skip work already done
    (:func:`steps.support.base.run_step` says so when it reuses one) and find what an earlier step made."""
    import mlflow

    experiment_id = setup(experiment)
    conditions = [f"tags.`{STEP_TAG}` = '{step}'", "attributes.status = 'FINISHED'"]
    conditions += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs = mlflow.search_runs(
        [experiment_id], " and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=1,
        output_format="list",
    )  # fmt: skip
    return runs[0] if runs else None


def log_json(data: Any, artifact_file: str) -> str:
    """Logs ``data`` as a JSON artifact of the active run; returns its artifact URI."""
    import mlflow

    mlflow.log_dict(data, artifact_file)
    return mlflow.get_artifact_uri(artifact_file)


def read_json(artifact_uri: str) -> Any:
    """The JSON artifact at ``artifact_uri``."""
    return json.loads(Path(download(artifact_uri)).read_text())


def download(artifact_uri: str, dst: str | None = None) -> str:
    """Downloads an artifact (file or folder) to ``dst`` (by default a new folder of :func:`scratch`) and returns
    its local path."""
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst or scratch())


SCRATCH_PREFIX = "odir-downloads-"
_scratch_lock = threading.Lock()


@functools.cache
def _scratch_root() -> tempfile.TemporaryDirectory:
    _remove_dead_scratch()
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def _remove_dead_scratch() -> None:
    """Removes the scratch folders of processes that are gone (killed: no exit handler ran)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-")[0]
        if pid.isdigit() and not processes.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def scratch() -> str:
    """A new folder for downloaded artifacts, removed with the others when the process exits (or, if it is killed,
    by the next odir process on this machine that downloads something).

    Why one root per process: a step hands on what it downloads (a verified model folder to ``load_model``, checkpoint
    paths to the loader), so no call site can delete its own folder; left in the system's temporary folder, every
    check of a version kept a copy of it (tens of MB) there for good.
    """
    with _scratch_lock:  # the pipeline's tasks run in threads: one root for all of them
        root = _scratch_root()
    return tempfile.mkdtemp(dir=root.name)


def flat_params(data: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow wants them: scalars as they are, containers as JSON."""
    return {key: json.dumps(value) if isinstance(value, dict | list | tuple) else value for key, value in data.items()}


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"f1_macro": x} -> {"<prefix>f1_macro": x}``, dropping NaN (MLflow stores it, but charts choke)."""
    return {f"{prefix}{key}": value for key, value in metrics.items() if value == value}


def split_prefix(split: str) -> str:
    """Metric prefix of a split: ``val_``, ``offsite_``, ``onsite_``, ``train_``."""
    return {"offsite_test": "offsite_", "onsite_test": "onsite_"}.get(split, f"{split}_")
