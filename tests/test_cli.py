"""The ``odir`` command as a user runs it: exit codes and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.store import odir_env


def test_demo_data_then_validate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--size", "32", "--n-train", "6", "--n-val", "2", "--n-offsite", "2",
                 "--n-onsite", "2"]) == 0  # fmt: skip
    assert main(["validate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "OK: 4 split(s) valid (train, val, offsite_test, onsite_test)." in printed


def test_invalid_dataset_exits_2_with_one_line_per_problem(dataset_copy: Path, capsys) -> None:
    lines = (dataset_copy / "train.csv").read_text().splitlines()
    first_id = lines[1].split(",")[0]
    lines[1] = f"{first_id},1,5,0"
    lines[2] = "../escape.jpg,1,0,0"
    (dataset_copy / "train.csv").write_text("\n".join(lines) + "\n")
    assert main(["validate", str(dataset_copy)]) == 2
    printed = capsys.readouterr().out
    assert "INVALID: 2 problem(s):" in printed
    assert f"train.csv, line 2: label G is '5' for id '{first_id}', expected 0 or 1" in printed
    assert "train.csv, line 3: id '../escape.jpg' must be a plain file name" in printed


def test_console_script_runs_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "dataset root not found" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["full", "--profile", "nosuch"], "nosuch.yaml: profile not found; known profiles:"),
        (["full", "--data", "/nonexistent/odir"], "/nonexistent/odir: dataset root not found"),
        (["experiments", "--grid", "nosuch"], "nosuch.yaml: experiment grid not found"),
        (["predict", "--images", "/nonexistent/images", "--out", "x.csv"], "/nonexistent/images: not found"),
    ],
)
def test_input_errors_fail_before_any_work(args: list[str], message: str, tmp_path: Path) -> None:
    env = {**odir_env(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "mlruns").exists()  # no store opened, so no FAILED run left behind
    assert not (tmp_path / "prefect").exists()  # no Prefect server started
