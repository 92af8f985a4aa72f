"""The scaled-out path, for real, without Docker: PostgreSQL 15, a SeaweedFS S3 store, ``mlflow server`` on them,
``prefect server start`` on PostgreSQL and a process worker, all as processes on 127.0.0.1. The MLflow, Prefect and
worker commands are the ones ``infra/compose.yaml`` gives those containers.

Run by ``make test-integration``; skipped, saying why, where the PostgreSQL 15 binaries are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.servers import free_port, port_closed, stop, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
COMPOSE = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())["services"]
BUCKET = "odir"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "odir-test",
    "AWS_SECRET_ACCESS_KEY": "odir-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Services:
    """Ports, environment and processes of the running stack."""

    tmp: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    named: dict[str, subprocess.Popen] = field(default_factory=dict)

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


def compose_command(service: str, values: dict[str, str], hosts: dict[str, str]) -> list[str]:
    """A compose service's command with ``${VAR}`` filled in and service host names replaced by local ports."""
    command = []
    for word in COMPOSE[service]["command"]:
        for name, value in values.items():
            word = word.replace("${" + name + "}", value)
        for host, address in hosts.items():
            word = word.replace(host, address)
        command.append(word.replace("0.0.0.0", "127.0.0.1"))
    return command


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
    for database in ("mlflow", "prefect"):
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
    return {"@postgres:5432": f"@127.0.0.1:{services.ports['postgres']}"}


def _start_mlflow(services: Services) -> None:
    services.ports.setdefault("mlflow", free_port())
    values = {"POSTGRES_USER": "odir", "POSTGRES_PASSWORD": "", "ODIR_BUCKET": BUCKET}
    command = compose_command("mlflow", values, _hosts(services))
    command = [w.replace("odir:@", "odir@") for w in command]  # trust auth: no password
    command[command.index("--port") + 1] = str(services.ports["mlflow"])
    command[command.index("--workers") + 1] = "1"
    env = {**services.env, "MLFLOW_S3_ENDPOINT_URL": services.url("s3"), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = services.start("mlflow", [str(BIN / command[0]), *command[1:]], env)
    wait_for(f"{services.url('mlflow')}/health", process, seconds=240)


def _start_prefect(services: Services) -> None:
    services.ports["prefect"] = free_port()
    command = compose_command("prefect", {}, {})
    command[command.index("--port") + 1] = str(services.ports["prefect"])
    database = f"postgresql+asyncpg://odir@127.0.0.1:{services.ports['postgres']}/prefect"
    env = {**services.env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": database, "PREFECT_HOME": str(services.tmp / "ph")}
    process = services.start("prefect", [str(BIN / command[0]), *command[1:]], env)
    wait_for(f"{services.url('prefect')}/api/health", process, seconds=240)
    services.env.update({
        "PREFECT_API_URL": f"{services.url('prefect')}/api", "PREFECT_HOME": str(services.tmp / "client"),
        "MLFLOW_TRACKING_URI": services.url("mlflow"), "ODIR_HOME": str(services.tmp / "odir-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
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
    return subprocess.run(command, env=env or services.env, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_odir_full_on_postgres_s3_and_a_worker(stack: Services, tiny_data: Path, tiny_profile: Path) -> None:
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
    assert out.read_text().startswith("id,D,G,A\n")

    # runs, models and aliases are rows in PostgreSQL
    assert int(psql(stack, "mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")) >= 10
    models = set(psql(stack, "mlflow", "SELECT name FROM registered_models").split())
    assert {"odir-tiny-a", "odir-tiny-b", "odir-ensemble"} <= models
    assert (
        psql(stack, "mlflow", "SELECT alias FROM registered_model_aliases WHERE name = 'odir-ensemble'") == "champion"
    )
    assert int(psql(stack, "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")) >= 3

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

    # a fresh client that knows only the server's URL loads and runs the champion
    image = sorted((tiny_data / "images" / "offsite_test").iterdir())[0]
    fresh_env = {k: v for k, v in stack.env.items() if not k.startswith(("AWS_", "ODIR_"))}
    fresh_env["ODIR_SERVE_IMAGE_ROOT"] = str(tiny_data)  # paths are read only under it
    fresh = _run(stack, sys.executable, "-c", "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model("
                 "'models:/odir-ensemble@champion'); print(m.predict(pd.DataFrame({'image_path': "
                 f"['{image}']}})).to_json(orient='records'))", env=fresh_env)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    [row] = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert {row["D"], row["G"], row["A"]} <= {0, 1} and 0 <= row["p_D"] <= 1

    # changed data uploaded: the prefect.yaml trigger starts exactly one odir/retrain run on it (the worker stopped
    # first, so the run waits in the pool instead of training while the next tests stop the servers)
    stop(worker_process)
    changed = Path(shutil.copytree(tiny_data, stack.tmp / "changed"))
    lines = (changed / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1,1,1"
    (changed / "train.csv").write_text("\n".join(lines) + "\n")
    uri = f"s3://{BUCKET}/datasets/changed"
    sent = _run(stack, str(BIN / "odir"), "upload", str(changed), uri)
    assert sent.returncode == 0 and "sent odir.dataset.changed" in sent.stdout, sent.stdout + sent.stderr
    deadline, runs = time.monotonic() + 90, []
    while not runs and time.monotonic() < deadline:
        time.sleep(2)
        runs = _triggered_retrain_runs(stack)
    time.sleep(10)  # a duplicate would have come by now
    assert _triggered_retrain_runs(stack) == [{"data": uri, "only_if_changed": True}]


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
