"""A worker that shares nothing with the flow's host but the tracking store and the data trains from parameters
alone: its working directory has no ``configs/`` and the profile file is gone before it starts."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import BIN, Stack
from tests.servers import stop

pytestmark = pytest.mark.slow

DEPLOY = """
import sys
from prefect.deployments.runner import EntrypointType
from flows.odir import odir_train

odir_train.to_deployment(
    name="remote", entrypoint_type=EntrypointType.MODULE_PATH, job_variables={"working_dir": sys.argv[1]}
).apply(work_pool_name="remote")
"""


def _train_runs(stack: Stack) -> list[dict]:
    """The runs of the ``odir-train/remote`` deployment (other tests of the package run odir-train in-process)."""
    query = {"flows": {"name": {"any_": ["odir-train"]}}, "deployments": {"name": {"any_": ["remote"]}}}
    request = urllib.request.Request(
        f"{stack.api}/flow_runs/filter", data=json.dumps(query).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def test_a_worker_without_the_flow_hosts_files_trains_from_the_spec(
    stack: Stack, tiny_data: Path, tmp_path: Path
) -> None:
    flow_host, worker_host = tmp_path / "flow-host", tmp_path / "worker-host"
    flow_host.mkdir(), worker_host.mkdir()
    profile = flow_host / "remote.yaml"  # exists only on the flow's side, and only until training is dispatched
    spec = {"name": "remote-a", "backbone": "tiny_cnn", "image_size": 32, "batch_size": 8, "epochs": 1, "seed": 4}
    profile.write_text(yaml.safe_dump({"name": "remote", "models": [spec]}))
    assert stack.run(str(BIN / "prefect"), "work-pool", "create", "remote", "--type", "process").returncode == 0
    deployed = stack.run(str(BIN / "python"), "-c", DEPLOY, str(worker_host))
    assert deployed.returncode == 0, deployed.stderr[-3000:]

    flow_env = {**stack.env, "ODIR_TRAIN_DEPLOYMENT": "odir-train/remote"}
    command = [str(BIN / "odir"), "full", "--profile", str(profile), "--data", str(tiny_data), "--dispatch",
               "deployment", "--out", str(flow_host / "submission.csv")]  # fmt: skip
    flow = stack.start(*command, log=tmp_path / "flow.log", env=flow_env)
    worker = None
    try:
        deadline = time.monotonic() + 300
        while not _train_runs(stack):  # the flow has read the profile and dispatched the training
            assert time.monotonic() < deadline and flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            time.sleep(1)
        profile.unlink()
        worker_env = {**stack.env, "ODIR_HOME": str(worker_host),
                      "MLFLOW_TRACKING_URI": f"sqlite:///{stack.home / 'mlruns' / 'mlflow.db'}"}  # fmt: skip
        worker = stack.start(str(BIN / "prefect"), "worker", "start", "--pool", "remote", "--name", "elsewhere",
                             log=tmp_path / "worker.log", env=worker_env, cwd=worker_host)  # fmt: skip
        assert flow.wait(timeout=600) == 0, (tmp_path / "flow.log").read_text()[-3000:] + (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
    finally:
        for process in (flow, worker):
            if process is not None:
                stop(process)
    [run] = _train_runs(stack)
    assert run["state_type"] == "COMPLETED"
    assert run["parameters"]["spec"]["name"] == "remote-a" and run["parameters"]["profile"] == "remote"
    assert str(profile) not in json.dumps(run["parameters"])  # no host path travels
    assert not (worker_host / "configs").exists()
    # it trained on the worker, its checkpoints in the folder its store owns (beside the store's SQLite file here)
    assert list((stack.home / "mlruns" / "mlflow-work").glob("*/remote/remote-a/*/last.pt"))
    assert not (flow_host / ".odir" / "work").exists()
