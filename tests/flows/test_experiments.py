"""``odir-experiments``: a two-experiment grid on tiny synthetic data, checked against the MLflow runs; a re-run
trains nothing new and writes the same report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from components.monitoring.explain import GALLERY_PER_KIND
from steps.support import tracking
from steps.support.tags import evaluate_key
from tests.flows.conftest import BIN, Stack

pytestmark = pytest.mark.slow

GRID = {
    "name": "twogrid",
    "defaults": {"image_size": 32, "batch_size": 8, "epochs": 2, "lr": 0.003, "seed": 5},
    "models": [{"name": "x-a", "backbone": "tiny_cnn"}, {"name": "x-b", "backbone": "tiny_cnn", "loss": "focal"}],
    "experiments": [
        {"name": "A alone", "task": 1, "members": ["x-a"]},
        {"name": "A+B + TTA + thresholds", "task": 4, "members": ["x-a", "x-b"], "weights": [0.5, 0.5], "tta": True,
         "thresholds": True, "published": {"offsite_f1_course": 0.8205}},
    ],
}  # fmt: skip


def _runs(client: MlflowClient, step: str, **tags: str) -> list:
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    conditions = [f"tags.`{tracking.STEP_TAG}` = '{step}'", "attributes.status = 'FINISHED'"]
    conditions += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    return client.search_runs([experiment.experiment_id], " and ".join(conditions), max_results=1000)


def test_grid_report_matches_mlflow_and_reruns_reuse(stack: Stack, tiny_data: Path, tmp_path: Path) -> None:
    grid = tmp_path / "twogrid.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    command = [
        str(BIN / "odir"),
        "experiments",
        "--grid",
        str(grid),
        "--data",
        str(tiny_data),
        "--out",
        str(tmp_path / "r1"),
    ]
    first = stack.run(*command)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = pd.read_csv(tmp_path / "r1" / "results.csv")
    assert list(table["experiment"]) == ["A alone", "A+B + TTA + thresholds"]
    for column in ("val_f1_macro", "offsite_f1_course", "val_precision_D", "val_recall_G", "val_f1_A", "val_auroc_D",
                   "train_minutes", "parameters_m", "study_offsite_f1_course"):  # fmt: skip
        assert column in table.columns, column
    for prefix in ("val", "offsite"):  # intervals over patients beside the headline metrics and operating points
        for metric in ("f1_macro", "f1_course", "auroc_G", "sens_at_spec90_D"):
            value, low, high = (table[f"{prefix}_{metric}{s}"] for s in ("", "_ci_low", "_ci_high"))
            defined = low.notna()
            assert ((low <= value + 1e-12) & (value <= high + 1e-12))[defined].all(), (prefix, metric)
        assert table[f"{prefix}_f1_macro_ci_low"].notna().all()
    markdown = (tmp_path / "r1" / "results.md").read_text()
    assert "**Protocol: given splits.**" in markdown and "1000 resamples, seed 0" in markdown
    assert "(`A+B + TTA + thresholds`)" in markdown and "val images" in markdown
    first_row = next(line for line in markdown.splitlines() if line.startswith("| A alone |"))
    assert f"| {table.loc[0, 'val_f1_macro']:.3f} [" in first_row

    client = MlflowClient(tracking_uri=f"sqlite:///{stack.home / 'mlruns' / 'mlflow.db'}")
    trains = {r.data.tags["odir.model"]: r for r in _runs(client, "train", profile="twogrid")}
    assert set(trains) == {"x-a", "x-b"}
    model_a = trains["x-a"].data.tags["registered_model_uri"]
    [evaluation] = _runs(
        client,
        "evaluate",
        evaluate_key=evaluate_key(model_a, "offsite_test", ("identity",), gradcam_gallery=GALLERY_PER_KIND),
    )
    assert f"- x-a on offsite_test: `{evaluation.data.tags['gradcam_uri']}/gallery.html`" in markdown  # Grad-CAM
    alone = table.iloc[0]
    assert alone["offsite_f1_macro"] == pytest.approx(evaluation.data.metrics["offsite_f1_macro"], abs=1e-12)
    seconds = sum(r.data.metrics["train_seconds"] for r in trains.values())
    assert table.iloc[1]["train_minutes"] == pytest.approx(seconds / 60)
    assert table.iloc[1]["parameters_m"] == pytest.approx(2 * trains["x-a"].data.metrics["parameters"] / 1e6)
    assert table.iloc[1]["study_offsite_f1_course"] == 0.8205
    for name in ("f1_by_class.png", "pr_curves_best.png", "threshold_curves.png"):
        assert (tmp_path / "r1" / "figures" / name).stat().st_size > 1000

    counts = {step: len(_runs(client, step)) for step in ("train", "evaluate")}
    command[-1] = str(tmp_path / "r2")
    second = stack.run(*command)
    assert second.returncode == 0, second.stdout[-3000:]
    assert {step: len(_runs(client, step)) for step in ("train", "evaluate")} == counts
    for name in ("results.md", "results.csv", "results.html"):
        assert (tmp_path / "r2" / name).read_text() == (tmp_path / "r1" / name).read_text(), name
