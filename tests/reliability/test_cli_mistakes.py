"""Every command of the CLI against the mistakes users make: one clean message, a non-zero exit, no traceback
(Prefect's included), and no run left in the store for a typo.

Each mistake runs ``odir`` in the test's process (``odir_here``: its stderr and log lines as a terminal would show
them); a few run the installed ``odir`` as a real process, end to end (``IN_A_PROCESS``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.store import odir_env

ODIR = str(Path(sys.executable).parent / "odir")
CHECKOUT = Path(__file__).resolve().parents[2]

MISTAKES = {
    "full: unknown profile": (["full", "--profile", "nosuch"], "nosuch.yaml: profile not found; known profiles:"),
    "full: profile file missing": (["full", "--profile", "{tmp}/gone.yaml"], "gone.yaml: profile not found"),
    "full: data root missing": (["full", "--data", "{tmp}/nodata"], "nodata: dataset root not found"),
    "full: unwritable output": (["full", "--out", "/proc/odir.csv"], "/proc/odir.csv: cannot be written"),
    "experiments: unknown grid": (["experiments", "--grid", "nosuch"], "experiment grid not found; known grids:"),
    "train: unknown profile": (["train", "--profile", "nosuch", "--data", "{tmp}"], "profile not found"),
    "predict: images missing": (["predict", "--images", "{tmp}/none"], "none: not found"),
    "predict: unknown model": (
        ["predict", "--images", "{images}", "--model", "models:/nosuch@champion", "--out", "{tmp}/p.csv"],
        "models:/nosuch@champion: not found in",
    ),
    "predict: malformed model URI": (
        ["predict", "--images", "{images}", "--model", "nosuch", "--out", "{tmp}/p.csv"],
        "expected a registered model URI",
    ),
    "explain: images missing": (["explain", "--images", "{tmp}/none"], "none: not found"),
    "explain: no images": (["explain", "--images", "{tmp}"], "no images (.jpg, .jpeg"),
    "explain: unwritable output": (["explain", "--images", "{images}", "--out", "/proc/gradcam"], "cannot be written"),
    "explain: unknown model": (
        ["explain", "--images", "{images}", "--model", "models:/nosuch@champion", "--out", "{tmp}/g"],
        "models:/nosuch@champion: not found in",
    ),
    "validate: root missing": (["validate", "{tmp}/nodata"], "dataset root not found"),
    "up: bad port": (["up", "--prefect-port", "80"], "'80' is not a port between 1024 and 65535"),
    "serve: bad limit": (["serve", "--limit", "0"], "'0' is not a whole number of at least 1"),
    "upload: folder missing": (["upload", "{tmp}/nodata", "s3://bucket/x"], "nodata: not found"),
    "upload: not an S3 URI": (["upload", "{tmp}", "s3://"], "an S3 dataset root needs a bucket"),
}

# a bad value before any work, one that looks a model up in the store, one that argparse refuses
IN_A_PROCESS = ("full: unknown profile", "predict: unknown model", "up: bad port")


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_one_message_and_leaves_no_run(mistake: str, tmp_path: Path, tiny_data: Path, odir_here) -> None:
    args, message = MISTAKES[mistake]
    home = tmp_path / "home"
    names = {"tmp": str(tmp_path), "images": str(tiny_data / "images" / "onsite_test")}
    argv = [a.format(**names) for a in args]
    if mistake in IN_A_PROCESS:
        done = subprocess.run([ODIR, *argv], env=odir_env(home), cwd=CHECKOUT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    else:
        done = odir_here(home, *argv)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert message in done.stderr + done.stdout
    assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 3  # a usage line at most besides
    store = home / "mlruns" / "mlflow.db"
    if store.exists():  # predict opens the store to look the model up: still no run in it
        import sqlite3

        with sqlite3.connect(store) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


class _Code:
    """Unpickling this would run code: what a checkpoint from an untrusted source may hold."""

    def __reduce__(self):
        return (print, ("code ran",))


def _weights(tmp: Path, data: Path, write) -> tuple[dict, Path]:
    path = tmp / "weights.pt"
    write(path)
    return {"models": [{"name": "a", "backbone": "tiny_cnn", "weights": str(path)}]}, data


def _train_only(tmp: Path, data: Path) -> tuple[dict, Path]:
    copy = Path(shutil.copytree(data, tmp / "data"))
    for split in ("val.csv", "offsite_test.csv", "onsite_test_submission.csv"):
        (copy / split).unlink()
    return {"models": [{"name": "a", "backbone": "tiny_cnn"}]}, copy


# what the check before the run refuses: (profile settings and dataset, what the one line says)
BEFORE_THE_RUN = {
    "weights: a missing file": (
        lambda tmp, data: _weights(tmp, data, lambda path: None), "models[0].weights: checkpoint {tmp}/weights.pt: "
        "not found",
    ),
    "weights: a text file": (
        lambda tmp, data: _weights(tmp, data, lambda path: path.write_text("not a checkpoint\n")),
        "models[0].weights: checkpoint {tmp}/weights.pt refused: not a PyTorch checkpoint (text, empty, damaged or "
        "another format)",
    ),
    "weights: a pickle that runs code": (
        lambda tmp, data: _weights(tmp, data, lambda path: torch.save({"model": _Code()}, path)),
        "models[0].weights: checkpoint {tmp}/weights.pt refused: it holds Python objects other than tensors (print), "
        "and odir loads checkpoints as plain tensors only (loading it would run code from the file); save the "
        "model's state_dict() instead",
    ),
    "given splits without val": (_train_only, "{tmp}/data: the dataset has no val split (present: train), which "
                                 "profile broken's protocol (given splits) needs"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BEFORE_THE_RUN))
def test_a_profile_that_cannot_run_on_its_inputs_is_refused_before_the_run(
    case: str, tmp_path: Path, tiny_data: Path, odir_here
) -> None:
    make, message = BEFORE_THE_RUN[case]
    settings, data = make(tmp_path, tiny_data)
    profile = tmp_path / "broken.yaml"
    profile.write_text(yaml.safe_dump({"name": "broken", **settings}, sort_keys=False))
    done = odir_here(tmp_path / "home", "full", "--profile", str(profile), "--data", str(data))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [f"odir full: {profile}: {message.format(tmp=tmp_path)}"
                                                if case.startswith("weights") else
                                                f"odir full: {message.format(tmp=tmp_path)}"]  # fmt: skip
    assert "weights_only=False" not in done.stderr  # PyTorch's advice to load it unsafely is never passed on
    assert not (tmp_path / "home" / "mlruns").exists()  # refused before any store, run or Prefect server
