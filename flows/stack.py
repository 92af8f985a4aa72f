"""The local stack behind ``make up`` / ``make down``: a Prefect server, the MLflow UI on the embedded store and
``odir serve``, all on 127.0.0.1, with PIDs, ports and logs under ``.odir/run/``. ``down`` stops exactly those
processes. While the stack runs, the project's ``prefect.toml`` points Prefect commands run in the project folder at
its server (:func:`point_prefect_here`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from components.errors import OdirError
from flows.deployments import SERVED
from steps.support import tracking
from steps.support.processes import process_alive

HOST = "127.0.0.1"

# the Prefect server's settings: it streams log lines out (Prefect's default: state changes only), so that
# `prefect deployment run ... --watch` shows a run's log, the one sentence of a failed run included
SERVER_SETTINGS = {"PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
                   "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true"}  # fmt: skip
PORTS_FILE = "ports.json"
PREFECT_TOML = "prefect.toml"
TOML_MARK = "# written by odir up"


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it, the URLs that must all answer before it is usable and what to
    do once, after a fresh start, before anyone else uses it."""

    name: str
    command: list[str]
    ready_urls: tuple[str, ...]
    after_start: Callable[[], None] | None = None


def run_folder() -> Path:
    return tracking.project_root() / ".odir" / "run"


def services(prefect_port: int, mlflow_port: int) -> list[Service]:
    bin_dir = Path(sys.executable).parent
    api = f"http://{HOST}:{prefect_port}/api"
    # `odir serve` is usable once the Prefect API knows each of its deployments (404 until it registers them)
    deployments = tuple(f"{api}/deployments/name/{name}" for name in SERVED)
    return [
        Service("prefect", [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
                (f"{api}/health",)),
        Service("mlflow", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", tracking.tracking_uri(),
                           "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
                (f"http://{HOST}:{mlflow_port}/health",), partial(warm_mlflow, f"http://{HOST}:{mlflow_port}")),
        Service("serve", [str(bin_dir / "odir"), "serve"], deployments),
    ]  # fmt: skip


def wait_ready(
    url: str | tuple[str, ...], process: subprocess.Popen | None = None, seconds: float = 180, log: Path | None = None
) -> None:
    """Waits until ``url`` (each of them, for a tuple) answers with a success status.

    Raises:
        RuntimeError: when ``process`` exits first or ``seconds`` pass (naming the URL not yet ready, and ``log``).
    """
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + seconds
    for one in (url,) if isinstance(url, str) else url:
        while not _answers(one):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with status {process.returncode}{where}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready at {one} after {seconds:.0f} s{where}")
            time.sleep(1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:  # refused, timed out, or an HTTP error status such as 404
        return False


def warm_mlflow(url: str) -> None:
    """Has a freshly started MLflow server (one worker) import its lazily loaded modules one request at a time.

    MLflow 3.17's GraphQL handler imports ``mlflow.server.auth`` (auth off or not), and the first registry request
    imports the registry store, whose ``sqlalchemy.orm.configure_mappers()`` fails that request with a 500
    ("name 'SqlUserRoleAssignment' is not defined") when it runs while another request thread is half-way through
    the auth models: a browser's parallel first requests did exactly that, and the model page showed "An error
    occurred while rendering this component". One GraphQL request, then one registry request, before anyone else.
    """
    query = json.dumps({"query": "{ __typename }"}).encode()
    graphql = urllib.request.Request(f"{url}/graphql", query, {"Content-Type": "application/json"})
    for request in (graphql, f"{url}/ajax-api/2.0/mlflow/model-versions/search?max_results=1"):
        with urllib.request.urlopen(request, timeout=60):
            pass


def running() -> dict[str, int]:
    """The services of this project's stack that are running: name -> pid."""
    alive = {}
    for pid_file in run_folder().glob("*.pid"):
        pid = int(pid_file.read_text())
        if process_alive(pid):
            alive[pid_file.stem] = pid
    return alive


def _refuse_other_ports(prefect_port: int, mlflow_port: int) -> None:
    """Fails at once when this project's stack already runs on other ports (asked for those, its services would not
    answer), naming its ports; a stack started before odir recorded its ports is left to the readiness wait."""
    alive, recorded = running(), run_folder() / PORTS_FILE
    if not alive or not recorded.is_file():
        return
    ports = json.loads(recorded.read_text())
    if (ports["prefect"], ports["mlflow"]) != (prefect_port, mlflow_port):
        pids = ", ".join(f"{name} {pid}" for name, pid in sorted(alive.items()))
        raise OdirError(f"a stack of {tracking.project_root()} is already running on other ports: Prefect "
                        f"{ports['prefect']} (UI http://{HOST}:{ports['prefect']}), MLflow {ports['mlflow']} (pids "
                        f"{pids}); use it, or stop it with `odir down` before `odir up --prefect-port {prefect_port} "
                        f"--mlflow-port {mlflow_port}`")  # fmt: skip


def point_prefect_here(api: str) -> bool:
    """Writes ``prefect.toml`` in the project with the stack's API URL, so Prefect commands run there (a new shell
    without ``PREFECT_API_URL``) use the stack's server: Prefect reads ``prefect.toml`` from the current folder, below
    the environment. Leaves a ``prefect.toml`` that odir did not write alone; returns whether the file is odir's."""
    path = tracking.project_root() / PREFECT_TOML
    if path.exists() and not path.read_text().startswith(TOML_MARK):
        return False
    path.write_text(f"{TOML_MARK} while its stack runs (`odir down` removes it): Prefect commands run in this\n"
                    "# folder use the stack's server, as if PREFECT_API_URL were exported\n"
                    f'[api]\nurl = "{api}"\n')  # fmt: skip
    return True


def _unpoint_prefect() -> None:
    path = tracking.project_root() / PREFECT_TOML
    if path.is_file() and path.read_text().startswith(TOML_MARK):
        path.unlink()


def up(prefect_port: int = 4200, mlflow_port: int = 5000) -> dict[str, str]:
    """Starts the stack (each service once) and returns the URLs to open, ``api`` among them, and ``prefect_toml``
    when Prefect commands in the project find the stack without ``PREFECT_API_URL`` (:func:`point_prefect_here`).

    Raises:
        OdirError: the stack already runs on other ports.
        RuntimeError: a service that did not come up (naming it and its log).
    """
    folder = run_folder()
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_other_ports(prefect_port, mlflow_port)
    if not running():  # a fresh stack: its ports, for the next `up` to compare
        (folder / PORTS_FILE).write_text(json.dumps({"prefect": prefect_port, "mlflow": mlflow_port}))
    tracking.setup()  # create the store's schema once, before any server or flow run opens it
    api = f"http://{HOST}:{prefect_port}/api"
    env = {**os.environ, **SERVER_SETTINGS, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "ODIR_HOME": str(tracking.project_root()),
           "ODIR_MLFLOW_UI_URL": f"http://{HOST}:{mlflow_port}"}  # fmt: skip
    for service in services(prefect_port, mlflow_port):
        pid_file = folder / f"{service.name}.pid"
        log = folder / f"{service.name}.log"
        if pid_file.exists() and process_alive(int(pid_file.read_text())):
            wait_ready(service.ready_urls, log=log)  # an earlier `up` may have returned before it was ready
            print(f"{service.name:<8} already running (pid {pid_file.read_text().strip()})")
            continue
        with log.open("ab") as out:
            process = subprocess.Popen(service.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=tracking.project_root())  # fmt: skip
        pid_file.write_text(str(process.pid))
        wait_ready(service.ready_urls, process, log=log)
        if service.after_start is not None:
            service.after_start()
        print(f"{service.name:<8} started (pid {process.pid}), log {log}")
    urls = {"prefect_ui": f"http://{HOST}:{prefect_port}", "mlflow_ui": f"http://{HOST}:{mlflow_port}", "api": api}
    if point_prefect_here(api):
        urls["prefect_toml"] = str(tracking.project_root() / PREFECT_TOML)
    return urls


def down(grace_seconds: float = 20) -> list[str]:
    """Stops the processes started by :func:`up` (their whole process groups); returns their names."""
    stopped = []
    started = [service.name for service in services(4200, 5000)]  # the order up() starts them: stopped in reverse
    pid_files = sorted(run_folder().glob("*.pid"), key=lambda f: -started.index(f.stem) if f.stem in started else 0)
    for pid_file in pid_files:
        pid = int(pid_file.read_text())
        if process_alive(pid):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if process_alive(pid):
                _signal_group(pid, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink()
    (run_folder() / PORTS_FILE).unlink(missing_ok=True)
    _unpoint_prefect()
    return stopped


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
