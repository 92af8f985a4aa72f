"""``mlflow models serve`` answers ``/invocations`` with labels from the registered champion ensemble."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from components.config import load_profile
from steps import ensemble, evaluate, ingest, promote, train
from steps.support import registry, tracking
from tests.servers import free_port, port_closed, wait_for
from tests.store import odir_env


@pytest.fixture(scope="module")
def champion(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> str:
    manifest = ingest.run(ingest.IngestConfig(data_root=str(tiny_data))).manifest_uri
    spec = load_profile(tiny_profile).model("tiny-a")
    member = train.run(train.TrainStepConfig(manifest_uri=manifest, spec=spec, profile="tiny"))
    val = evaluate.run(evaluate.EvaluateConfig(model_uri=member.model_uri, manifest_uri=manifest))
    ens = ensemble.run(
        ensemble.EnsembleConfig(
            member_model_uris=(member.model_uri,), member_val_predictions=(val.predictions_uri,), manifest_uri=manifest
        )
    )
    promote.run(promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=manifest))
    return f"models:/{registry.ENSEMBLE_MODEL}@champion"


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_champion_answers_with_labels(champion: str, odir_home: Path, tiny_data: Path) -> None:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **odir_env(odir_home),
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ODIR_SERVE_IMAGE_ROOT": str(tiny_data / "images"),
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", champion, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server)
        images = sorted((tiny_data / "images" / "offsite_test").iterdir())[:2]
        body = {"dataframe_records": [{"image_path": str(images[0])},
                                      {"image_b64": base64.b64encode(images[1].read_bytes()).decode()}]}  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2
        for row in predictions:
            assert {row["D"], row["G"], row["A"]} <= {0, 1}
            assert all(0.0 <= row[p] <= 1.0 for p in ("p_D", "p_G", "p_A"))
        (tiny_data / "images" / "not-an-image.jpg").write_bytes(b"plain text")
        for records, message in (
            ([{"path": str(images[0])}], "no rows to predict: each row needs one of the columns image_path"),
            ([{"image_path": str(tiny_data / "train.csv")}], "is outside ODIR_SERVE_IMAGE_ROOT"),
            ([{"image_path": "offsite_test/../../train.csv"}], "is outside ODIR_SERVE_IMAGE_ROOT"),
            ([{"image_path": "not-an-image.jpg"}], "not-an-image.jpg: cannot be decoded as an image"),
        ):
            status, answer = _post(port, {"dataframe_records": records})
            assert status == 400 and message in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert port_closed(port), f"port {port} is still listening after the server was stopped"
