"""The scaled-out path, for real, without Docker: PostgreSQL 15, a SeaweedFS S3 store, ``mlflow server`` with its
basic-auth app on them, ``prefect server start`` on PostgreSQL with an API auth string and a process worker, all as
processes on 127.0.0.1. The MLflow, Prefect and worker commands, and the credentials' environment variables, are
the ones ``infra/compose.yaml`` gives those containers; the credentials are random for each run (:data:`ENV_FILE`
plays infra/.env).

Run by ``make test-integration``; skipped, saying why, where the PostgreSQL 15 binaries are absent.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from flows.deployments import SERVED
from tests.servers import free_port, port_closed, stop, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
COMPOSE = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())["services"]
BUCKET = "odir"
# what infra/.env holds, made up for this run: compose's ${VARIABLES} are filled from it
ENV_FILE = {
    "POSTGRES_USER": "odir",
    "POSTGRES_PASSWORD": "",  # the test cluster trusts local connections
    "S3_ACCESS_KEY": "odir-test",
    "S3_SECRET_KEY": secrets.token_urlsafe(18),
    "ODIR_BUCKET": BUCKET,
    "MLFLOW_ADMIN_USERNAME": "admin",
    "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
    "MLFLOW_PIPELINE_USERNAME": "odir-pipeline",
    "MLFLOW_PIPELINE_PASSWORD": secrets.token_urlsafe(18),
    "MLFLOW_READER_USERNAME": "odir-reader",
    "MLFLOW_READER_PASSWORD": secrets.token_urlsafe(18),
    "MLFLOW_FLASK_SECRET_KEY": secrets.token_urlsafe(18),
    "PREFECT_AUTH_STRING": f"odir:{secrets.token_urlsafe(18)}",
}
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": ENV_FILE["S3_ACCESS_KEY"],
    "AWS_SECRET_ACCESS_KEY": ENV_FILE["S3_SECRET_KEY"],
    "AWS_DEFAULT_REGION": "us-east-1",
}
SECRET_VALUES = [ENV_FILE[k] for k in ENV_FILE if k.endswith(("PASSWORD", "SECRET_KEY", "AUTH_STRING")) and ENV_FILE[k]]
# the same credentials as HTTP basic authentication sends them
SECRET_VALUES += [
    base64.b64encode(f"{ENV_FILE[f'MLFLOW_{who}_USERNAME']}:{ENV_FILE[f'MLFLOW_{who}_PASSWORD']}".encode()).decode()
    for who in ("ADMIN", "PIPELINE", "READER")
] + [base64.b64encode(ENV_FILE["PREFECT_AUTH_STRING"].encode()).decode()]


@dataclass
class Services:
    """Ports, environment and processes of the running stack."""

    tmp: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    named: dict[str, subprocess.Popen] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # what the tests' commands printed: scanned for credentials

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(command, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=ROOT)  # fmt: skip
        self.processes.append(process)
        self.named[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def _fill(word: str, values: dict[str, str], hosts: dict[str, str]) -> str:
    for name, value in values.items():
        word = word.replace("${" + name + "}", value)
    for host, address in hosts.items():
        word = word.replace(host, address)
    return word.replace("0.0.0.0", "127.0.0.1")


def compose_command(service: str, values: dict[str, str], hosts: dict[str, str]) -> list[str]:
    """A compose service's command with ``${VAR}`` filled in and service host names replaced by local ports."""
    return [_fill(word, values, hosts) for word in COMPOSE[service]["command"]]


def compose_environment(service: str, hosts: dict[str, str]) -> dict[str, str]:
    """A compose service's environment with ``${VAR}`` filled in from :data:`ENV_FILE`, service host names replaced
    by local addresses and the file compose mounts for MLflow's basic-auth app by the repository's."""
    hosts = {**hosts, "/etc/mlflow/basic_auth.ini": str(ROOT / "infra" / "mlflow" / "basic_auth.ini")}
    environment = {key: _fill(str(value), ENV_FILE, hosts) for key, value in COMPOSE[service]["environment"].items()}
    if environment.get("PGHOST") == "postgres":
        environment["PGHOST"] = "127.0.0.1"
    return environment


def _as_postgres(*command: str) -> list[str]:
    """A PostgreSQL tool run as the ``postgres`` user when we are root (initdb refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _pg_folder(services: Services) -> Path:
    """The cluster's folder: outside pytest's temporary tree, which the ``postgres`` user cannot enter."""
    return Path(tempfile.gettempdir()) / f"odir-pg-{services.tmp.name}-{os.getpid()}"


def _start_postgres(services: Services) -> None:
    folder = _pg_folder(services)
    data = folder / "data"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (folder, data):
            shutil.chown(path, "postgres", "postgres")
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "odir", "-A", "trust"]
    subprocess.run(_as_postgres(*initdb), check=True, capture_output=True)
    port = services.ports["postgres"] = free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w", "start"]
    subprocess.run(_as_postgres(*start), check=True, capture_output=True)
    for database in ("mlflow", "mlflow_auth", "prefect"):  # as infra/postgres/init-databases.sh makes them
        psql(services, "postgres", f"CREATE DATABASE {database}")


def psql(services: Services, database: str, sql: str) -> str:
    command = [
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(services.ports["postgres"]),
        "-U",
        "odir",
        "-d",
        database,
        "-At",
        "-c",
        sql,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _stop_postgres(services: Services) -> None:
    folder = _pg_folder(services)
    if "postgres" in services.ports:
        stop_command = [str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(*stop_command), capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def _start_s3(services: Services) -> None:
    (services.tmp / "s3data").mkdir(exist_ok=True)
    credentials = {"accessKey": S3_KEYS["AWS_ACCESS_KEY_ID"], "secretKey": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}
    identity = {"name": "odir", "credentials": [credentials], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    (services.tmp / "s3.json").write_text(json.dumps({"identities": [identity]}))
    port = services.ports.setdefault("s3", free_port())
    services.env["AWS_ENDPOINT_URL"] = services.url("s3")
    services.start("s3", [
        str(BIN / "weed"), "mini", f"-dir={services.tmp / 's3data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={services.tmp / 's3.json'}", f"-s3.port={port}", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ])  # fmt: skip
    bucket = compose_command("create-bucket", {"ODIR_BUCKET": BUCKET}, {})
    deadline = time.monotonic() + 120
    while subprocess.run([str(BIN / bucket[0]), *bucket[1:]], env=services.env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, services.log("s3")
        time.sleep(1)


def _hosts(services: Services) -> dict[str, str]:
    hosts = {"@postgres:5432": f"@127.0.0.1:{services.ports['postgres']}", "odir:@": "odir@"}  # trust: no password
    if "s3" in services.ports:
        hosts["http://s3:8333"] = services.url("s3")
    if "mlflow" in services.ports:
        hosts["http://mlflow:5000"] = services.url("mlflow")
    return hosts


def _start_mlflow(services: Services) -> None:
    services.ports.setdefault("mlflow", free_port())
    command = compose_command("mlflow", ENV_FILE, _hosts(services))
    command[command.index("--port") + 1] = str(services.ports["mlflow"])
    command[command.index("--workers") + 1] = "1"
    server_env = compose_environment("mlflow", _hosts(services))
    assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ENV_FILE["MLFLOW_ADMIN_PASSWORD"]
    base = {k: v for k, v in services.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    env = {**base, **server_env, "PGPORT": str(services.ports["postgres"])}
    process = services.start("mlflow", [str(BIN / command[0]), *command[1:]], env)
    wait_for(f"{services.url('mlflow')}/health", process, seconds=240)
    users = compose_command("mlflow-users", {}, {})  # the admin creates the pipeline's and the reader's users
    made = _run(services, str(BIN / users[0]), *users[1:], env={**base, **compose_environment("mlflow-users",
                _hosts(services))})  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert "pipeline user odir-pipeline:" in made.stdout and "reader user odir-reader:" in made.stdout


def _start_prefect(services: Services) -> None:
    services.ports["prefect"] = free_port()
    command = compose_command("prefect", {}, {})
    command[command.index("--port") + 1] = str(services.ports["prefect"])
    server_env = compose_environment("prefect", _hosts(services))
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == ENV_FILE["PREFECT_AUTH_STRING"]
    env = {**services.env, **server_env, "PREFECT_HOME": str(services.tmp / "ph")}
    process = services.start("prefect", [str(BIN / command[0]), *command[1:]], env)
    wait_for(f"{services.url('prefect')}/api/health", process, seconds=240)  # answers without credentials
    worker_env = compose_environment("worker-cpu", {})  # the pipeline's identity, as the workers get it
    services.env.update({
        "PREFECT_API_URL": f"{services.url('prefect')}/api", "PREFECT_HOME": str(services.tmp / "client"),
        "MLFLOW_TRACKING_URI": services.url("mlflow"), "ODIR_HOME": str(services.tmp / "odir-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        **{key: worker_env[key] for key in
           ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")},
    })  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}: install postgresql-15 to run the scaled-out test")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    env = {**base, **S3_KEYS, "PATH": f"{BIN}:{os.environ['PATH']}", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    services = Services(tmp_path_factory.mktemp("scaled"), env)
    try:
        _start_postgres(services)
        _start_s3(services)
        _start_mlflow(services)
        _start_prefect(services)
        yield services
    finally:
        for process in reversed(services.processes):
            stop(process)
        _stop_postgres(services)
        for name, port in services.ports.items():
            assert port_closed(port), f"{name} still listens on {port}"


def _run(services: Services, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env or services.env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    services.outputs.append(done.stdout + done.stderr)
    return done


def _as(services: Services, who: str, **more: str) -> dict[str, str]:
    """The stack's client environment signed in as ``who`` (``PIPELINE``, ``READER`` or ``ADMIN``)."""
    return {**services.env, "MLFLOW_TRACKING_USERNAME": ENV_FILE[f"MLFLOW_{who}_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": ENV_FILE[f"MLFLOW_{who}_PASSWORD"], **more}  # fmt: skip


def _basic(auth: str) -> str:
    """The ``Authorization`` header of HTTP basic authentication for ``user:password``."""
    return f"Basic {base64.b64encode(auth.encode()).decode()}"


def _status(url: str, method: str = "GET", body: dict | None = None, auth: str | None = None) -> int:
    """The HTTP status of one request, signed with the basic-authentication ``user:password`` ``auth`` if given."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", _basic(auth))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _events_socket(stack: Services, token: str | None) -> dict | int:
    """Prefect's events socket after its auth handshake with ``token``: the server's answer, or its close code."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{stack.ports['prefect']}/api/events/in"
    with connect(url, subprotocols=["prefect"], open_timeout=30) as socket:
        socket.send(json.dumps({"type": "auth", "token": token}))
        try:
            return json.loads(socket.recv(timeout=30))
        except ConnectionClosed as closed:
            return closed.rcvd.code


def test_anonymous_requests_are_refused(stack: Services) -> None:
    """Nobody without credentials reads or writes: MLflow's REST API, its artifacts, UI and GraphQL, Prefect's API
    and its events socket answer 401 (or close the socket), and so does a wrong password; only the health checks
    answer, for the probes."""
    mlflow, prefect = stack.url("mlflow"), f"{stack.url('prefect')}/api"
    champion = {"name": "odir-ensemble", "alias": "champion", "version": "1"}
    for method, path, body in [
        ("GET", "/api/2.0/mlflow/experiments/search?max_results=10", None),
        ("GET", "/api/2.0/mlflow/registered-models/search", None),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": "0"}),
        ("POST", "/api/2.0/mlflow/model-versions/create", {"name": "odir-ensemble", "source": "runs:/x/model"}),
        ("POST", "/api/2.0/mlflow/registered-models/alias", champion),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts", None),
        ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=10", None),
        ("POST", "/graphql", {"query": "{ __typename }"}),
        ("GET", "/", None),
    ]:
        assert _status(mlflow + path, method, body) == 401, path
    wrong = f"{ENV_FILE['MLFLOW_PIPELINE_USERNAME']}:not-the-password"
    assert _status(f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=10", auth=wrong) == 401
    assert _status(f"{mlflow}/health") == 200
    for method, path, body in [
        ("GET", "/hello", None),
        ("POST", "/flows/filter", {}),
        ("POST", "/deployments/filter", {}),
        ("POST", "/work_pools/", {"name": "intruder"}),
        ("POST", "/events/filter", {}),
    ]:
        assert _status(prefect + path, method, body) == 401, path
    assert _status(f"{prefect}/hello", auth="odir:not-the-auth-string") == 401
    assert _status(f"{prefect}/hello", auth=ENV_FILE["PREFECT_AUTH_STRING"]) == 200
    assert _status(f"{prefect}/health") == 200
    assert _events_socket(stack, None) == 1008 and _events_socket(stack, "odir:not-the-auth-string") == 1008
    assert _events_socket(stack, ENV_FILE["PREFECT_AUTH_STRING"]) == {"type": "auth_success"}


@dataclass
class PipelineRun:
    out: Path
    worker: subprocess.Popen


@pytest.fixture(scope="module")
def pipeline_run(stack: Services, tiny_data: Path, tiny_profile: Path) -> PipelineRun:
    """``odir/full`` on a process worker, the data read from the bucket: everything as the pipeline's identity."""
    upload = _run(stack, str(BIN / "odir"), "upload", str(tiny_data), f"s3://{BUCKET}/datasets/tiny")
    assert upload.returncode == 0, upload.stderr
    prefect = str(BIN / "prefect")
    template = str(ROOT / "infra" / "k8s" / "gpu-job-template.json")
    pools = {"local": ["--type", "process"], "gpu": ["--type", "process"],
             "gpu-k8s": ["--type", "kubernetes", "--base-job-template", template]}  # fmt: skip
    for pool, options in pools.items():
        created = _run(stack, prefect, "work-pool", "create", pool, *options, "--overwrite")
        assert created.returncode == 0, created.stdout + created.stderr
    deployed = _run(stack, prefect, "--no-prompt", "deploy", "--all", env={**stack.env, "ODIR_ROOT": str(ROOT)})
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    worker = compose_command("worker-cpu", {}, {})
    worker_process = stack.start("worker", [str(BIN / worker[0]), *worker[1:]])
    out = stack.tmp / "submission.csv"
    done = _run(stack, prefect, "deployment", "run", "odir/full", "--watch", "--param", f"profile={tiny_profile}",
                "--param", f"data=s3://{BUCKET}/datasets/tiny", "--param", f"out={out}")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + stack.log("worker")
    return PipelineRun(out, worker_process)


def test_odir_full_on_postgres_s3_and_a_worker(stack: Services, pipeline_run: PipelineRun, tiny_data: Path) -> None:
    assert pipeline_run.out.read_text().startswith("id,D,G,A\n")

    # runs, models and aliases are rows in PostgreSQL
    assert int(psql(stack, "mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")) >= 10
    models = set(psql(stack, "mlflow", "SELECT name FROM registered_models").split())
    assert {"odir-tiny-a", "odir-tiny-b", "odir-ensemble"} <= models
    assert (
        psql(stack, "mlflow", "SELECT alias FROM registered_model_aliases WHERE name = 'odir-ensemble'") == "champion"
    )
    assert int(psql(stack, "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")) >= 3
    # task runs reach the server as events on the authenticated socket (lost when its auth fails: PrefectHQ/prefect
    # #22812): the pipeline's steps are there, completed
    assert int(psql(stack, "prefect", "SELECT count(*) FROM task_run WHERE state_type = 'COMPLETED'")) >= 8

    # checkpoints and models are objects in the bucket
    script = (
        "from steps.support.storage import client; pages = client().get_paginator('list_objects_v2')"
        f".paginate(Bucket='{BUCKET}', Prefix='mlflow/')\n"
        "print(' '.join(o['Key'] for p in pages for o in p['Contents']))"
    )
    listing = _run(stack, sys.executable, "-c", script)
    keys = listing.stdout.split()
    assert any(k.endswith("checkpoints/best.pt") for k in keys), listing.stderr
    assert any("/models/" in k and k.endswith("MLmodel") for k in keys)

    # a fresh client that knows only the server's URL and the reader's credentials loads and runs the champion
    image = sorted((tiny_data / "images" / "offsite_test").iterdir())[0]
    fresh_env = {k: v for k, v in _as(stack, "READER").items() if not k.startswith(("AWS_", "ODIR_"))}
    fresh_env["ODIR_SERVE_IMAGE_ROOT"] = str(tiny_data)  # paths are read only under it
    fresh = _run(stack, sys.executable, "-c", "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model("
                 "'models:/odir-ensemble@champion'); print(m.predict(pd.DataFrame({'image_path': "
                 f"['{image}']}})).to_json(orient='records'))", env=fresh_env)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    [row] = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert {row["D"], row["G"], row["A"]} <= {0, 1} and 0 <= row["p_D"] <= 1

    # changed data uploaded by a person with the reader's identity: the prefect.yaml trigger starts exactly one
    # odir/retrain run on it (the worker stopped first, so the run waits in the pool instead of training while the
    # next tests stop the servers)
    stop(pipeline_run.worker)
    changed = Path(shutil.copytree(tiny_data, stack.tmp / "changed"))
    lines = (changed / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1,1,1"
    (changed / "train.csv").write_text("\n".join(lines) + "\n")
    uri = f"s3://{BUCKET}/datasets/changed"
    sent = _run(stack, str(BIN / "odir"), "upload", str(changed), uri, env=_as(stack, "READER"))
    assert sent.returncode == 0 and "sent odir.dataset.changed" in sent.stdout, sent.stdout + sent.stderr
    deadline, runs = time.monotonic() + 90, []
    while not runs and time.monotonic() < deadline:
        time.sleep(2)
        runs = _triggered_retrain_runs(stack)
    time.sleep(10)  # a duplicate would have come by now
    assert _triggered_retrain_runs(stack) == [{"data": uri, "only_if_changed": True}]


READER_ATTEMPTS = """
import json
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

client = MlflowClient()
champion = client.get_model_version_by_alias("odir-ensemble", "champion")
attempts = {
    "register": lambda: client.create_model_version("odir-ensemble", champion.source, champion.run_id),
    "move": lambda: client.set_registered_model_alias("odir-ensemble", "champion", champion.version),
    "drop": lambda: client.delete_registered_model_alias("odir-ensemble", "champion"),
    "log": lambda: client.log_param(champion.run_id, "intruder", "1"),
    "delete": lambda: client.delete_model_version("odir-ensemble", champion.version),
}
answers = {"read": champion.version}
for name, attempt in attempts.items():
    try:
        attempt()
        answers[name] = "allowed"
    except MlflowException as error:
        answers[name] = error.get_http_status_code()
print(json.dumps(answers))
"""

CREATE_USER = """
import sys
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

try:
    AuthServiceClient(sys.argv[1]).create_user("intruder", "a-long-enough-password")
    print("allowed")
except MlflowException as error:
    print(error.get_http_status_code())
"""


def test_the_reader_reads_but_cannot_register_or_move_the_champion(stack: Services, pipeline_run: PipelineRun) -> None:
    versions = psql(stack, "mlflow", "SELECT count(*) FROM model_versions WHERE name = 'odir-ensemble'")
    done = _run(stack, sys.executable, "-c", READER_ATTEMPTS, env=_as(stack, "READER"))
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers == {"read": answers["read"], "register": 403, "move": 403, "drop": 403, "log": 403, "delete": 403}
    assert psql(stack, "mlflow", "SELECT count(*) FROM model_versions WHERE name = 'odir-ensemble'") == versions
    alias = "SELECT version FROM registered_model_aliases WHERE name = 'odir-ensemble' AND alias = 'champion'"
    assert psql(stack, "mlflow", alias) == answers["read"]
    for who in ("READER", "PIPELINE"):  # neither administers the server's users
        made = _run(stack, sys.executable, "-c", CREATE_USER, stack.url("mlflow"), env=_as(stack, who))
        assert made.stdout.strip().splitlines()[-1] == "403", made.stdout + made.stderr[-3000:]


def test_refused_credentials_are_one_line_naming_the_server_and_what_to_set(
    stack: Services, pipeline_run: PipelineRun, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    mlflow, prefect = stack.url("mlflow"), f"{stack.url('prefect')}/api"
    wrong_password = _as(stack, "PIPELINE", MLFLOW_TRACKING_PASSWORD="not-the-password")
    wrong_auth_string = {**stack.env, "PREFECT_API_AUTH_STRING": "odir:not-the-auth-string"}
    changed = Path(shutil.copytree(tiny_data, tmp_path / "changed"))
    lines = (changed / "train.csv").read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",1,1,1"  # a digest the champion's data does not have: an event is due
    (changed / "train.csv").write_text("\n".join(lines) + "\n")
    odir, ingest = str(BIN / "odir"), [sys.executable, "-m", "steps.ingest", "--no-reuse", "--data-root"]
    cases = [
        ([odir, "predict", "--images", str(tiny_data / "images" / "offsite_test"), "--out", str(tmp_path / "p.csv")],
         wrong_password, f"odir predict: tracking server {mlflow} refused the credentials (HTTP 401: user "
         "'odir-pipeline' with this password was not accepted); set MLFLOW_TRACKING_USERNAME and "
         "MLFLOW_TRACKING_PASSWORD"),
        ([*ingest, str(tiny_data)], wrong_password,
         f"python -m steps.ingest: tracking server {mlflow} refused the credentials (HTTP 401"),
        ([*ingest, str(tiny_data)], _as(stack, "READER"),
         f"python -m steps.ingest: tracking server {mlflow} denied user 'odir-reader' /api/2.0/mlflow/runs/create "
         "(HTTP 403"),
        ([odir, "full", "--profile", str(tiny_profile), "--data", str(tiny_data)], wrong_auth_string,
         f"odir full: Prefect server {prefect} refused the request (HTTP 401: the auth string was not accepted); set "
         "PREFECT_API_AUTH_STRING"),
        ([odir, "upload", str(changed), f"s3://{BUCKET}/datasets/refused"], wrong_auth_string,
         f"odir upload: Prefect server {prefect} refused the request (HTTP 401"),
    ]  # fmt: skip
    for command, env, line in cases:
        done = _run(stack, *command, env=env)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines()[-1].startswith(line), done.stderr[-3000:]
        assert "Traceback" not in done.stderr


def _triggered_retrain_runs(stack: Services) -> list[dict]:
    """The parameters of the odir/retrain runs a trigger started (the cron's scheduled runs carry no data)."""
    script = (
        "import json\nfrom prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId\n"
        "with get_client(sync_client=True) as client:\n"
        "    deployment = client.read_deployment_by_name('odir/retrain')\n"
        "    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))\n"
        "    runs = client.read_flow_runs(deployment_filter=only)\n"
        "    print(json.dumps([r.parameters for r in runs if 'data' in r.parameters]))\n"
    )
    done = _run(stack, sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_tracking_server_outage_is_ridden_out_or_reported(stack: Services, tiny_data: Path) -> None:
    """Briefly down: the step's MLflow calls retry with backoff and it succeeds. Down for long: it fails under the
    retry policy with one line naming the server, exit 3, and what was logged before stays."""
    runs_before = int(psql(stack, "mlflow", "SELECT count(*) FROM runs"))
    stop(stack.named["mlflow"])
    ingest = [sys.executable, "-m", "steps.ingest", "--no-reuse", "--data-root", str(tiny_data)]  # a new run each
    patient = {**stack.env, "ODIR_STORE_ATTEMPTS": "8"}  # a server that restarts slowly: the documented knob
    step = subprocess.Popen(ingest, env=patient, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    _start_mlflow(stack)  # back on the same port
    out, err = step.communicate(timeout=600)
    assert step.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["data_digest"]

    stop(stack.named["mlflow"])
    failed = _run(stack, sys.executable, "-m", "steps.ingest", "--no-reuse", "--data-root", str(tiny_data))
    assert failed.returncode == 3, failed.stderr[-3000:]  # under the default policy: one round, no traceback
    assert f"tracking server {stack.url('mlflow')} stopped answering (retry policy: 5 attempts" in failed.stderr
    assert "Traceback" not in failed.stderr
    _start_mlflow(stack)
    assert int(psql(stack, "mlflow", "SELECT count(*) FROM runs")) == runs_before + 1  # nothing lost, nothing half-made


def test_an_object_store_outage_is_ridden_out_or_reported(stack: Services, tiny_data: Path) -> None:
    """The S3 store restarting while a step reads a dataset from it: the default retry policy waits for it (it
    refuses connections, then answers InternalError for a moment). Stopped for good: one line naming the store."""
    data = f"s3://{BUCKET}/datasets/outage"
    assert _run(stack, str(BIN / "odir"), "upload", str(tiny_data), data).returncode == 0
    shutil.rmtree(stack.tmp / "odir-home" / ".odir" / "s3", ignore_errors=True)  # nothing mirrored yet
    stop(stack.named["s3"])
    ingest = [sys.executable, "-m", "steps.ingest", "--no-reuse", "--data-root", data]
    step = subprocess.Popen(ingest, env=stack.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    _start_s3(stack)  # back on the same port with the same data
    out, err = step.communicate(timeout=600)
    assert step.returncode == 0, err[-3000:] + "\n--- S3 store log ---\n" + stack.log("s3")
    assert json.loads(out.strip().splitlines()[-1])["counts"]["train"] == 24

    stop(stack.named["s3"])
    shutil.rmtree(stack.tmp / "odir-home" / ".odir" / "s3", ignore_errors=True)
    failed = _run(stack, sys.executable, "-m", "steps.ingest", "--no-reuse", "--data-root", data)
    assert failed.returncode == 3, failed.stderr[-3000:]  # a store down is not bad input
    assert f"object store {stack.url('s3')} stopped answering (retry policy: 5 attempts" in failed.stderr
    assert "Traceback" not in failed.stderr
    _start_s3(stack)


def _deployment(stack: Services, name: str) -> dict | None:
    """The deployment ``flow/name`` as the API returns it (signed with the auth string), or None."""
    url = f"{stack.url('prefect')}/api/deployments/name/{name}"
    request = urllib.request.Request(url, headers={"Authorization": _basic(ENV_FILE["PREFECT_AUTH_STRING"])})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError:
        return None


def test_odir_serve_registers_its_deployments_with_the_auth_string(stack: Services) -> None:
    """``odir serve`` (the runner without a worker) signs its API requests and its events socket. The worker's
    deployments of the same names (prefect.yaml's) are deleted first: a runner would also take over their waiting
    runs (the retrain run the upload started)."""
    prefect = str(BIN / "prefect")
    for name in SERVED:
        if _deployment(stack, name) is not None:
            deleted = _run(stack, prefect, "deployment", "delete", name)
            assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert all(_deployment(stack, name) is None for name in SERVED)
    serve = stack.start("serve", [str(BIN / "odir"), "serve"])
    try:
        deadline = time.monotonic() + 300
        while any(_deployment(stack, name) is None for name in SERVED):
            assert serve.poll() is None and time.monotonic() < deadline, stack.log("serve")
            time.sleep(2)
        assert all(_status(f"{stack.url('prefect')}/api/deployments/name/{name}") == 401 for name in SERVED)
    finally:
        stop(serve)
    log = stack.log("serve")
    assert "Your deployments are being served" in log, log
    assert "Unable to connect" not in log and "Unable to authenticate" not in log, log


def test_no_credential_in_the_store_or_the_logs(stack: Services, pipeline_run: PipelineRun) -> None:
    """After everything above: no password, key or auth string (nor its basic-authentication form) in MLflow's or
    Prefect's database (params, tags, model versions, flow-run parameters, logs, events), in any object of the
    bucket (artifacts, models, checkpoints, datasets), in the servers' and the worker's logs, or in what the
    commands printed."""
    sources: dict[str, bytes] = {}
    for database in ("mlflow", "prefect"):
        dump = [str(PG_BIN / "pg_dump"), "-h", "127.0.0.1", "-p", str(stack.ports["postgres"]), "-U", "odir", database]
        sources[f"database {database}"] = subprocess.run(dump, check=True, capture_output=True).stdout
    for database, tables in {"mlflow": ("params", "tags", "model_versions"), "prefect": ("flow_run", "log")}.items():
        assert all(f"COPY public.{table} ".encode() in sources[f"database {database}"] for table in tables)
    copy = stack.tmp / "bucket-copy"
    script = (
        "import sys\nfrom pathlib import Path\nfrom steps.support.storage import client\ns3 = client()\n"
        f"for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):\n"
        "    for item in page['Contents']:\n"
        "        target = Path(sys.argv[1]) / item['Key']\n"
        "        target.parent.mkdir(parents=True, exist_ok=True)\n"
        f"        s3.download_file('{BUCKET}', item['Key'], str(target))\n"
    )
    downloaded = _run(stack, sys.executable, "-c", script, str(copy))
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    objects = [path for path in copy.rglob("*") if path.is_file()]
    assert any(path.name == "MLmodel" for path in objects) and any(path.suffix == ".pt" for path in objects)
    sources.update({f"object {path.relative_to(copy)}": path.read_bytes() for path in objects})
    sources.update({f"log {path.name}": path.read_bytes() for path in stack.tmp.glob("*.log")})
    sources["the commands' output"] = "\n".join(stack.outputs).encode()
    assert any(ENV_FILE["MLFLOW_PIPELINE_USERNAME"].encode() in data for data in sources.values())  # they are read
    names = {value: name for name, value in ENV_FILE.items()}  # the message names the setting, never the value
    leaks = [
        (where, names.get(secret, "a basic-authentication header"))
        for where, data in sources.items()
        for secret in SECRET_VALUES
        if secret.encode() in data
    ]
    assert not leaks, leaks
