"""The drift reference logged by the ensemble step, and `odir check-drift` against it, on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from components.monitoring.image_stats import FEATURES
from steps import drift
from steps.support import cli, registry, tracking
from steps.support.drift_reference import DRIFT_REFERENCE_DIR, DRIFT_REFERENCE_TAG, load_drift_reference
from tests.conftest import one_member_ensemble


@pytest.fixture(scope="module")
def ensemble_uri(odir_home: Path, tiny_data: Path, tiny_profile: Path) -> str:
    """One tiny member and the ensemble of it (at 32 px; the reference holds the 12 val images: the member never
    trained on them)."""
    return one_member_ensemble(tiny_data, tiny_profile)


def _check_drift(*args: str) -> int:
    from flows.cli import main

    return main(["check-drift", *args])


def test_the_ensemble_version_carries_its_reference(ensemble_uri: str) -> None:
    name, version = registry.split_model_uri(ensemble_uri)
    model_version = MlflowClient().get_model_version(name, version)
    assert model_version.tags[DRIFT_REFERENCE_TAG].endswith("/drift_reference")
    files = {f.path for f in MlflowClient().list_artifacts(model_version.run_id, DRIFT_REFERENCE_DIR)}
    assert files == {"drift_reference/reference.json", "drift_reference/reference.npz"}
    reference = load_drift_reference(ensemble_uri)
    assert reference.size == 12 and reference.source["member_model_uri"] == "models:/odir-tiny-a/1"
    assert reference.source["split"] == "val"
    assert reference.source["checkpoint"] == "best.pt" and reference.source["image_size"] == 32


def test_images_like_the_training_ones_pass(ensemble_uri: str, tiny_data: Path, capsys) -> None:
    assert _check_drift("--images", str(tiny_data / "images" / "offsite_test"), "--model", ensemble_uri) == 0
    out = capsys.readouterr().out
    assert "NO DRIFT at alpha 0.05" in out and "no image out of distribution" in out
    assert "PASS: no drift, 0 image(s) out of distribution" in out
    [run] = mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], output_format="list",
                               filter_string="tags.`odir.step` = 'drift'")  # fmt: skip
    assert run.data.metrics["ood_count"] == 0 and {"drift_score", "mmd", "mmd_p_value", "ks_brightness"} <= set(
        run.data.metrics
    )
    flags = pd.read_csv(tracking.download(f"{run.info.artifact_uri}/drift/images.csv"))
    assert len(flags) == 12 and flags["out_of_distribution"].sum() == 0 and "sharpness" in flags.columns


def test_darker_images_are_drift_and_the_feature_is_named(ensemble_uri: str, tiny_data: Path, tmp_path: Path,
                                                          capsys) -> None:  # fmt: skip
    for path in sorted((tiny_data / "images" / "offsite_test").iterdir()):
        darker = (np.asarray(Image.open(path).convert("RGB")) * 0.5).astype(np.uint8)
        Image.fromarray(darker).save(tmp_path / path.name, quality=92)
    assert _check_drift("--images", str(tmp_path), "--model", ensemble_uri) == 1
    out = capsys.readouterr().out
    assert "DRIFT at alpha 0.05" in out and "brightness" in out.split("moved")[0] and "FAIL: drift" in out


def test_a_version_without_a_reference_is_one_line_and_exit_2(ensemble_uri: str, tiny_data: Path, capsys) -> None:
    client = MlflowClient()
    name, version = registry.split_model_uri(ensemble_uri)
    registered = client.get_model_version(name, version)
    older = client.create_model_version(name, registered.source, registered.run_id)  # no tags: as before references
    try:
        code = _check_drift("--images", str(tiny_data / "images" / "val"), "--model", f"models:/{name}/{older.version}")
        err = capsys.readouterr().err
        assert code == 2 and err.strip().splitlines() == [
            f"odir check-drift: models:/{name}/{older.version} has no drift reference: registered before drift "
            "references existed (run `odir full` to register an ensemble that has one)"
        ]
    finally:
        client.delete_model_version(name, older.version)


def test_the_step_entry_prints_the_report_as_json(ensemble_uri: str, tiny_data: Path, capsys) -> None:
    argv = ["--images", str(tiny_data / "images" / "val"), "--model-uri", ensemble_uri, "--alpha", "0.01"]
    assert cli.main(drift.DriftConfig, drift.run, argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["alpha"] == 0.01 and result["images_checked"] == 12 and result["model_uri"] == ensemble_uri
    assert [shift["feature"] for shift in result["features"]] == list(FEATURES)


def test_the_embeddings_run_on_the_ensembles_export_and_agree_with_eager(ensemble_uri: str, tiny_data: Path) -> None:
    from components.models.runtime import ExportedNetwork

    source = load_drift_reference(ensemble_uri).source
    network, _ = drift._embedding_network(ensemble_uri, source, None)
    assert isinstance(network, ExportedNetwork)
    eager, _ = drift._embedding_network(ensemble_uri, source, "torch")
    assert not isinstance(eager, ExportedNetwork)
    paths = sorted((tiny_data / "images" / "offsite_test").iterdir())
    reports = {
        backend: drift.check_images(paths, ensemble_uri, backend=backend) for backend in ("onnxruntime", "torch")
    }
    distances = {b: np.array([image.embedding_distance for image in r.images]) for b, r in reports.items()}
    np.testing.assert_allclose(distances["onnxruntime"], distances["torch"], rtol=1e-4, atol=1e-4)
    assert reports["onnxruntime"].drift == reports["torch"].drift


def _predict(*args: str) -> int:
    from flows.cli import main

    return main(["predict", *args])


def _images_like(tiny_data: Path, folder: Path, change) -> Path:
    """The offsite_test images, each changed by ``change`` (an RGB array -> an RGB array), in ``folder``."""
    folder.mkdir()
    for path in sorted((tiny_data / "images" / "offsite_test").iterdir()):
        Image.fromarray(change(np.asarray(Image.open(path).convert("RGB")))).save(folder / path.name, quality=92)
    return folder


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)


def test_predict_warns_in_one_line_on_images_unlike_the_models_data(ensemble_uri: str, tiny_data: Path,
                                                                     tmp_path: Path, capsys) -> None:  # fmt: skip
    like = tiny_data / "images" / "offsite_test"
    assert _predict("--images", str(like), "--model", ensemble_uri, "--out", str(tmp_path / "like.csv")) == 0
    assert capsys.readouterr().err == ""  # images like the reference: no warning
    grey = _images_like(tiny_data, tmp_path / "grey", _grey)
    assert _predict("--images", str(grey), "--model", ensemble_uri, "--out", str(tmp_path / "grey.csv")) == 0
    [warning] = capsys.readouterr().err.strip().splitlines()
    first = sorted(grey.iterdir())[0].name
    assert warning.startswith(f"odir predict: warning: 12 of 12 image(s) are unlike the training data of "
                              f"{ensemble_uri} (e.g. {first}: not a fundus: colour far outside")  # fmt: skip
    assert warning.endswith(f"`odir check-drift --images {grey} --model {ensemble_uri}` lists them")
    assert len(pd.read_csv(tmp_path / "grey.csv")) == 12  # the predictions are written all the same


@pytest.mark.parametrize(("change", "status"), [(lambda rgb: rgb, 0), (lambda rgb: (rgb * 0.5).astype(np.uint8), 1)],
                         ids=["like the reference", "darker: drift"])  # fmt: skip
def test_predict_check_drift_and_check_drift_agree_on_the_exit_status(
    ensemble_uri: str, tiny_data: Path, tmp_path: Path, change, status: int
) -> None:
    images = str(_images_like(tiny_data, tmp_path / "images", change))
    assert _check_drift("--images", images, "--model", ensemble_uri) == status
    out = str(tmp_path / "p.csv")
    assert _predict("--images", images, "--model", ensemble_uri, "--out", out, "--check-drift") == status
    assert len(pd.read_csv(out)) == 12  # written whatever the verdict
