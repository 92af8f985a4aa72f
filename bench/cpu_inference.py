"""CPU inference of a registered ensemble of the `cpu` profile's shape (5 Lite0 fold models at 224 px, 5 views: 25
forwards per image), ONNX Runtime (``--backend onnxruntime``, the default) against eager PyTorch (``--backend torch``):

- ``odir predict`` images/s over a folder of images, one process per run, model loading included; the backends take
  turns (``rounds`` each), median per backend; the share of image-class pairs whose labels agree between the two;
  the peak memory (PSS of the process tree) of each;
- ``mlflow models serve`` images/s under 4 concurrent clients, each sending its requests (2 images as base64 each)
  one after another, after one request that warms the server; the backend chosen by the server's
  ``SERVING_MODEL_CONFIG``; servers of the two backends take turns (``rounds`` each); the peak PSS of each server.

The ensemble: ``ODIR_BENCH_MODEL`` (a registered ``odir-ensemble`` URI in the store that ``ODIR_HOME`` or
``MLFLOW_TRACKING_URI`` names, or ``ODIR_BENCH_HOME`` for this benchmark only, e.g. the champion of ``odir full
--profile cpu``), else one registered in a temporary store by ``odir full`` of the `cpu` recipe cut to one epoch on a
small synthetic dataset (the same arithmetic per image as the real champion; its labels, from one epoch on synthetic
images, are no test of agreement). The images: the dataset root's val split.

    ODIR_BENCH_MODEL=models:/odir-ensemble@champion .venv/bin/python -m bench.cpu_inference [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import yaml

from bench.common import Goal, Row, dataset_root, tree_pss
from components import LABELS
from components.data.splits import load_split
from components.data.synth import SynthSizes, write_synthetic_dataset
from components.models import BACKENDS

CLIENTS, PER_REQUEST, REQUESTS_PER_CLIENT = 4, 2, 6
ODIR = str(Path(sys.executable).parent / "odir")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


class _PeakMemory:
    """The highest PSS of a process tree, sampled every 0.2 s on a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak, self._done = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, tree_pss(self.process))
            self._done.wait(0.2)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def predict(model: str, images: Path, backend: str, out: Path) -> tuple[float, float]:
    """One ``odir predict`` process; returns its wall seconds and peak PSS in MB."""
    command = [ODIR, "predict", "--model", model, "--images", str(images), "--out", str(out), "--backend", backend]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with _PeakMemory(process.pid) as memory:
        _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"odir predict --backend {backend} failed: {err[-2000:]}")
    return time.perf_counter() - started, memory.peak / 2**20


def _post(port: int, body: bytes) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}")


def serve(model: str, images: list[Path], backend: str, folder: Path) -> tuple[float, float]:
    """One ``mlflow models serve`` of ``model`` on ``backend`` under :data:`CLIENTS` concurrent clients (its log in
    ``folder``); returns images/s and the server's peak PSS in MB."""
    from flows.stack import wait_ready
    from steps.support import tracking

    port = _free_port()
    env = _env(
        MLFLOW_TRACKING_URI=tracking.tracking_uri(),
        SERVING_MODEL_CONFIG=json.dumps({"backend": backend}),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )  # its uvicorn
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = folder / f"serve-{backend}.log"
    with log.open("w") as sink:
        server = subprocess.Popen(command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", server, seconds=600, log=log)
        bodies = [
            json.dumps({"dataframe_records": [{"image_b64": base64.b64encode(images[(start + k) % len(images)]
                                                                              .read_bytes()).decode()}
                                              for k in range(PER_REQUEST)]}).encode()
            for start in range(0, CLIENTS * REQUESTS_PER_CLIENT * PER_REQUEST, PER_REQUEST)
        ]  # fmt: skip
        _post(port, bodies[0])  # warm: the first request loads what the server loads lazily
        with _PeakMemory(server.pid) as memory, ThreadPoolExecutor(CLIENTS) as clients:
            started = time.perf_counter()
            shares = [bodies[c::CLIENTS] for c in range(CLIENTS)]
            list(clients.map(lambda share: [_post(port, body) for body in share], shares))
            seconds = time.perf_counter() - started
        return len(bodies) * PER_REQUEST / seconds, memory.peak / 2**20
    finally:
        _stop(server)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def agreement(first: Path, second: Path) -> tuple[int, int]:
    """Image-class pairs whose 0/1 labels agree between two prediction CSVs of the same images, and all pairs."""
    a, b = pd.read_csv(first), pd.read_csv(second)
    if list(a["id"]) != list(b["id"]):
        raise RuntimeError(f"{first} and {second} name other images")
    same = a[list(LABELS)].to_numpy() == b[list(LABELS)].to_numpy()
    return int(same.sum()), same.size


def _bench_ensemble(home: Path) -> str:
    """Registers a `cpu`-shaped ensemble (the `cpu` recipe, one epoch) in a store under ``home`` by ``odir full`` on
    a small synthetic dataset; returns its URI. Sets ``ODIR_HOME`` for this process and the ones it starts."""
    profile = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "cpu.yaml").read_text())
    profile["name"] = "cpu-bench"
    for model in profile["models"]:
        model.update(epochs=1, validate_every=1)
    (home / "profile.yaml").write_text(yaml.safe_dump(profile))
    data = write_synthetic_dataset(home / "data", 256, SynthSizes(60, 20, 20, 10), seed=0)
    os.environ["ODIR_HOME"] = str(home)
    subprocess.run([ODIR, "full", "--profile", str(home / "profile.yaml"), "--data", str(data)], env=_env(),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return "models:/odir-ensemble@champion"


def measure(model: str, images: Path, rounds: int, folder: Path) -> list[Row]:
    """The rows of the module docstring for ``model`` on the images of ``images``."""
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    seconds: dict[str, list[float]] = {b: [] for b in BACKENDS}
    memory: dict[str, list[float]] = {b: [] for b in BACKENDS}
    served: dict[str, list[float]] = {b: [] for b in BACKENDS}
    served_memory: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for _ in range(rounds):
        for backend in reversed(BACKENDS):  # eager first: its run warms the page cache for both
            wall, peak = predict(model, images, backend, folder / f"{backend}.csv")
            seconds[backend].append(wall)
            memory[backend].append(peak)
    for _ in range(rounds):
        for backend in reversed(BACKENDS):
            rate, peak = serve(model, files, backend, folder)
            served[backend].append(rate)
            served_memory[backend].append(peak)
    fast, eager = BACKENDS
    agree, pairs = agreement(folder / f"{fast}.csv", folder / f"{eager}.csv")
    rate = {b: len(files) / statistics.median(seconds[b]) for b in BACKENDS}
    count = f"{len(files)} img"
    return [
        Row(f"odir predict img/s, load included: {fast} vs {eager} ({count})", rate[fast], rate[eager], "img/s",
            Goal(">=", 2.0)),
        Row(f"odir predict labels agreeing: {fast} vs {eager} (img x class)", agree, pairs, "pairs", Goal(">=", 0.99)),
        Row(f"odir predict peak PSS: {fast} vs {eager}", max(memory[fast]), max(memory[eager]), "MB"),
        Row(f"served img/s, {CLIENTS} clients x {PER_REQUEST} img/request: {fast} vs {eager}",
            statistics.median(served[fast]), statistics.median(served[eager]), "img/s", Goal(">=", 2.0)),
        Row(f"served peak PSS: {fast} vs {eager}", max(served_memory[fast]), max(served_memory[eager]), "MB"),
    ]  # fmt: skip


def run(root: Path, rounds: int = 2) -> list[Row]:
    """The rows for ``ODIR_BENCH_MODEL`` (else a `cpu`-shaped ensemble of one epoch) on ``root``'s val images."""
    images = load_split(root, "val", check_images=False).image_dir
    with tempfile.TemporaryDirectory(prefix="odir-bench-inference-") as tmp:
        previous = os.environ.get("ODIR_HOME")
        try:
            model = os.environ.get("ODIR_BENCH_MODEL") or _bench_ensemble(Path(tmp))
            if home := os.environ.get("ODIR_BENCH_HOME"):  # the given model's store, for this benchmark only
                os.environ["ODIR_HOME"] = home
            return measure(model, images, rounds, Path(tmp))
        finally:
            if previous is None:
                os.environ.pop("ODIR_HOME", None)
            else:
                os.environ["ODIR_HOME"] = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of images (default: the dataset root's val images)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each backend (default 2)")
    args = parser.parse_args()
    if args.images is None:
        rows = run(dataset_root()[0], args.rounds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(os.environ["ODIR_BENCH_MODEL"], args.images, args.rounds, Path(tmp))
    for row in rows:
        print(row.format(), flush=True)


if __name__ == "__main__":
    main()
