"""The six steps chained on tiny synthetic data against a real embedded MLflow store and registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from components import LABELS
from components.config import load_profile
from components.evaluation.metrics import multilabel_report
from components.evaluation.scoring import compared_metrics
from components.monitoring.referral import MEMBER_STD_COLUMNS, TTA_STD_COLUMNS, UNCERTAINTY_COLUMNS
from components.training.hardware import hardware_record
from steps import ensemble, evaluate, ingest, promote, submit, train, tune_thresholds
from steps.support import cli, registry, tracking
from steps.support.fingerprint import code_fingerprint
from steps.support.manifest import load_manifest
from steps.support.members import member_checkpoints
from steps.support.predict import load_ensemble, predict_paths
from steps.support.predictions import labels_of, probabilities_of, read_predictions
from tests.store import odir_env, store_at

MEMBERS = ("tiny-a", "tiny-b")


@pytest.fixture(scope="module")
def pipeline(odir_home: Path, tiny_data: Path, tiny_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs every step in-process under one parent run, as the flow will."""
    experiment_id = tracking.setup()
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline") as parent:
        pid = parent.info.run_id
    ing = ingest.run(ingest.IngestConfig(data_root=str(tiny_data), parent_run_id=pid))
    manifest = ing.manifest_uri
    profile = load_profile(tiny_profile)
    members = [
        train.run(train.TrainStepConfig(manifest_uri=manifest, spec=spec, profile="tiny", parent_run_id=pid))
        for spec in (profile.model(m) for m in MEMBERS)
    ]
    val = [
        evaluate.run(evaluate.EvaluateConfig(model_uri=m.model_uri, manifest_uri=manifest, parent_run_id=pid))
        for m in members
    ]
    tuned = tune_thresholds.run(
        tune_thresholds.TuneConfig(predictions_uri=val[0].predictions_uri, name="tiny-a", parent_run_id=pid)
    )
    ens = ensemble.run(
        ensemble.EnsembleConfig(
            member_model_uris=tuple(m.model_uri for m in members),
            member_val_predictions=tuple(v.predictions_uri for v in val),
            manifest_uri=manifest,
            profile="tiny",
            parent_run_id=pid,
        )
    )
    offsite = evaluate.run(
        evaluate.EvaluateConfig(model_uri=ens.model_uri, manifest_uri=manifest, split="offsite_test", parent_run_id=pid)
    )
    out = tmp_path_factory.mktemp("out") / "submission.csv"
    sub = submit.run(
        submit.SubmitConfig(model_uri=ens.model_uri, manifest_uri=manifest, out_path=str(out), parent_run_id=pid)
    )
    decision = promote.run(promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=manifest, parent_run_id=pid))
    return {"parent": pid, "ingest": ing, "members": members, "val": val, "tuned": tuned, "ensemble": ens,
            "offsite": offsite, "submit": sub, "promote": decision}  # fmt: skip


def test_store_holds_parent_and_child_runs(pipeline: dict) -> None:
    children = mlflow.search_runs(
        experiment_names=[tracking.DEFAULT_EXPERIMENT],
        filter_string=f"tags.mlflow.parentRunId = '{pipeline['parent']}'",
    )
    steps = sorted(children[f"tags.{tracking.STEP_TAG}"])
    assert steps == sorted(["ingest", "train", "train", "evaluate", "evaluate", "evaluate", "tune_thresholds",
                            "ensemble", "submit", "promote"])  # fmt: skip
    assert (children["status"] == "FINISHED").all()
    assert str(tracking.project_root()) in tracking.tracking_uri()


def test_train_runs_log_params_epochs_dataset_and_checkpoints(pipeline: dict) -> None:
    client = MlflowClient()
    for member in pipeline["members"]:
        run = client.get_run(member.run_id)
        assert run.data.params["backbone"] == "tiny_cnn" and run.data.params["epochs"] == "2"
        assert run.data.params["data_digest"] == pipeline["ingest"].data_digest
        for metric in ("train_loss", "val_loss", "val_f1_macro", "val_f1_course", "val_f1_D", "val_auroc_A"):
            assert [m.step for m in client.get_metric_history(member.run_id, metric)] == [1, 2], metric
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["odir"]
        files = {f.path for f in client.list_artifacts(member.run_id, "checkpoints")}
        assert files == {"checkpoints/best.pt"}  # last.pt is local resume state


def test_registry_versions_tags_and_champion(pipeline: dict) -> None:
    client = MlflowClient()
    digest = pipeline["ingest"].data_digest
    for name in ("odir-tiny-a", "odir-tiny-b", registry.ENSEMBLE_MODEL):
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.tags["data_digest"] == digest
    champion = client.get_model_version_by_alias(registry.ENSEMBLE_MODEL, "champion")
    assert str(champion.version) == pipeline["ensemble"].version and champion.tags["profile"] == "tiny"
    assert pipeline["promote"].decision == "champion" and pipeline["promote"].champion_version is None


def test_logged_models_pin_the_installed_torch_without_its_build_tag(pipeline: dict) -> None:
    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # 2.14.1+cpu installs as 2.14.1 from PyPI
    for model_uri in (pipeline["members"][0].model_uri, pipeline["ensemble"].model_uri):
        requirements = Path(tracking.download(f"{model_uri}/requirements.txt")).read_text()
        assert torch_pin in requirements.splitlines(), requirements
        assert any(line.startswith("torchvision==") and "+" not in line for line in requirements.splitlines())


def test_champion_reproduces_the_logged_offsite_metrics(pipeline: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest(pipeline["ingest"].manifest_uri)
    monkeypatch.setenv("ODIR_SERVE_IMAGE_ROOT", str(manifest.local_root))  # the pyfunc reads paths only under it
    model = mlflow.pyfunc.load_model(f"models:/{registry.ENSEMBLE_MODEL}@champion")
    output = model.predict(pd.DataFrame({"image_path": [str(p) for p in manifest.paths("offsite_test")]}))
    probs = output[["p_D", "p_G", "p_A"]].to_numpy()
    thresholds = [pipeline["ensemble"].thresholds[label] for label in LABELS]
    report = multilabel_report(manifest.labels("offsite_test"), probs, np.array(thresholds))
    logged = MlflowClient().get_run(pipeline["offsite"].run_id).data.metrics
    for key in ("f1_macro", "f1_course", "f1_D", "precision_G", "recall_A", "auroc_D"):
        assert logged[f"offsite_{key}"] == report[key], key
    labels = output[list(LABELS)].to_numpy()
    assert ((labels == 1) == (probs >= np.array(thresholds))).all()


def test_the_ensemble_runs_its_checked_onnx_exports_and_eager_gives_the_same_labels(pipeline: dict) -> None:
    from components.models.backbones import Classifier
    from components.models.runtime import TOLERANCE, ExportedNetwork

    run = MlflowClient().get_run(pipeline["ensemble"].run_id)
    assert run.data.tags["export"] == "onnx" and run.data.params["export_check_images"] == "12"  # the 12 val images
    assert 0 <= run.data.metrics["export_largest_difference"] <= TOLERANCE
    uri = pipeline["ensemble"].model_uri
    requirements = Path(tracking.download(f"{uri}/requirements.txt")).read_text().splitlines()
    assert any(line.startswith("onnxruntime==") for line in requirements), requirements
    exported, eager = load_ensemble(uri), load_ensemble(uri, "torch")
    assert exported.backend == "onnxruntime" and eager.backend == "torch"
    assert all(isinstance(network, ExportedNetwork) for folds in exported.members for network, _ in folds)
    assert all(isinstance(network, Classifier) for folds in eager.members for network, _ in folds)
    paths = [str(p) for p in load_manifest(pipeline["ingest"].manifest_uri).paths("offsite_test")]
    fast, reference = exported.predict_sources(paths), eager.predict_sources(paths)
    probs = ["p_D", "p_G", "p_A"]
    np.testing.assert_allclose(fast[probs].to_numpy(), reference[probs].to_numpy(), atol=TOLERANCE, rtol=0)
    assert (fast[list(LABELS)].to_numpy() == reference[list(LABELS)].to_numpy()).mean() >= 0.99


def test_an_export_that_fails_its_check_is_not_used_and_the_run_says_so(
    pipeline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = member_checkpoints(pipeline["members"][0].model_uri)[0]
    images = [str(p) for p in load_manifest(pipeline["ingest"].manifest_uri).paths("offsite_test")][:4]
    config = ensemble.EnsembleConfig(member_model_uris=(), member_val_predictions=(), manifest_uri="unused")
    monkeypatch.setattr(ensemble, "TOLERANCE", -1.0)  # no difference passes: as an export that computes otherwise
    with mlflow.start_run() as run:
        assert ensemble._exports(config, {"member_0_0": str(checkpoint)}, images, tmp_path) == ({}, {})
    tag = MlflowClient().get_run(run.info.run_id).data.tags["export"]
    assert tag.startswith("none: member_0_0 (best.pt): its export's probabilities differ from eager by up to ")
    assert tag.endswith("on 4 images, over -1")


def test_a_version_without_exports_runs_eager(pipeline: dict, tmp_path: Path) -> None:
    """As an ensemble registered before exports (or whose export failed its check): its config names none."""
    from types import SimpleNamespace

    import yaml

    from steps.support import integrity
    from steps.support.ensemble_model import CONFIG_ARTIFACT, OdirEnsemble

    uri = pipeline["ensemble"].model_uri
    folder = integrity.verified_model_dir(uri)
    saved = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    artifacts = {key: str(folder / entry["path"]) for key, entry in saved.items()}
    config = json.loads(Path(artifacts[CONFIG_ARTIFACT]).read_text())
    assert config["exported"] and all(key + "_onnx" in artifacts for key in config["exported"])
    del config["exported"]
    (tmp_path / "ensemble.json").write_text(json.dumps(config))
    artifacts[CONFIG_ARTIFACT] = str(tmp_path / "ensemble.json")
    older = OdirEnsemble()
    older.load_context(SimpleNamespace(artifacts=artifacts, model_config={}))
    assert older.backend == "torch"
    paths = [str(p) for p in load_manifest(pipeline["ingest"].manifest_uri).paths("offsite_test")]
    eager = load_ensemble(uri, "torch")
    pd.testing.assert_frame_equal(older.predict_sources(paths), eager.predict_sources(paths))


def test_evaluate_logs_predictions_table_and_figures(pipeline: dict) -> None:
    client = MlflowClient()
    run_id = pipeline["offsite"].run_id
    files = {f.path for f in client.list_artifacts(run_id, "figures")}
    assert files == {"figures/offsite_test.png", "figures/offsite_test_reliability.png"}
    metrics = client.get_run(run_id).data.metrics
    for name in ("f1_macro", "f1_course", "f1_G", "auroc_D", "sensitivity_A", "specificity_A", "ece_D"):
        low, high = metrics[f"offsite_{name}_ci_low"], metrics[f"offsite_{name}_ci_high"]
        assert low <= metrics[f"offsite_{name}"] <= high, name
    assert metrics["offsite_f1_macro_ci_low"] < metrics["offsite_f1_macro_ci_high"]  # 12 images: not one value
    for name in ("sens_at_spec90_G", "sens_at_spec95_G", "spec_at_sens90_G", "ap_A"):
        assert 0 <= metrics[f"offsite_{name}"] <= 1, name
    table = pd.read_csv(
        tracking.download(client.get_run(run_id).info.artifact_uri + "/tables/offsite_test_per_class.csv"), index_col=0
    )
    assert list(table.index) == list(LABELS) and "auroc" in table.columns
    predictions = read_predictions(pipeline["offsite"].predictions_uri)
    assert list(predictions.columns) == ["id", *LABELS, "p_D", "p_G", "p_A", *UNCERTAINTY_COLUMNS, "refer"]
    assert len(predictions) == 12
    # referral metrics from the logged flags and errors, by hand
    probs, labels = probabilities_of(predictions), labels_of(predictions)
    thresholds = np.asarray([float(t) for t in client.get_run(run_id).data.params["thresholds"].split(",")])
    wrong = ((probs >= thresholds) != labels).any(axis=1)
    referred = predictions["refer"].to_numpy() == 1
    assert metrics["offsite_referred_share"] == pytest.approx(referred.mean())
    for name, group in (("referred", referred), ("kept", ~referred)):  # an empty group logs no rate (NaN dropped)
        logged = metrics.get(f"offsite_error_rate_{name}")
        assert logged == (pytest.approx(wrong[group].mean()) if group.any() else None), name
    assert metrics["offsite_n_referred"] + metrics["offsite_n_kept"] == 12


def test_thresholds_and_weights(pipeline: dict) -> None:
    saved = tracking.read_json(pipeline["tuned"].thresholds_uri)
    assert set(saved["thresholds"]) == set(LABELS)
    assert all(t in saved["grid"] for t in saved["thresholds"].values())
    weights = pipeline["ensemble"].weights
    assert set(weights) == set(MEMBERS) and sum(weights.values()) == pytest.approx(1.0)
    run = MlflowClient().get_run(pipeline["ensemble"].run_id).data
    temperatures = tracking.read_json(run.tags["weights_uri"].replace("weights.json", "temperatures.json"))
    assert set(temperatures) == set(MEMBERS) and all(0.05 <= t <= 20 for m in temperatures.values() for t in m.values())
    assert run.metrics["tiny-a.temperature_D"] == pytest.approx(temperatures["tiny-a"]["D"])
    assert {"tiny-a.val_ece_D_before", "tiny-a.val_ece_D_after"} <= set(run.metrics)  # NLL-fit: ECE may not fall


def test_submission_matches_the_template(pipeline: dict, tiny_data: Path) -> None:
    template = pd.read_csv(tiny_data / "onsite_test_submission.csv", dtype={"id": str})
    written = pd.read_csv(pipeline["submit"].out_path, dtype={"id": str})
    assert list(written.columns) == ["id", "D", "G", "A"]
    assert list(written["id"]) == list(template["id"])
    assert set(np.unique(written[list(LABELS)])) <= {0, 1}


def test_an_equal_challenger_stays_challenger_with_the_evidence_logged(pipeline: dict) -> None:
    manifest_uri = pipeline["ingest"].manifest_uri
    members = pipeline["members"]
    same = ensemble.run(  # the pipeline's ensemble again (same members, weights, thresholds): a new version, a tie
        ensemble.EnsembleConfig(
            member_model_uris=tuple(m.model_uri for m in members),
            member_val_predictions=tuple(v.predictions_uri for v in pipeline["val"]),
            manifest_uri=manifest_uri, profile="tiny", reuse=False,
        )
    )  # fmt: skip
    assert same.version != pipeline["ensemble"].version
    result = promote.run(promote.PromoteConfig(model_uri=same.model_uri, manifest_uri=manifest_uri))
    assert result.decision == "challenger" and result.prob_better == pytest.approx(0.5)
    assert result.score == pytest.approx(result.champion_score)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(registry.ENSEMBLE_MODEL, "champion")
    assert str(champion.version) == pipeline["ensemble"].version
    tags = client.get_model_version(registry.ENSEMBLE_MODEL, same.version).tags
    assert tags["promotion.decision"] == "challenger" and tags["promotion.prob_better"] == "0.500"
    logged = client.get_run(result.run_id).data
    assert logged.metrics["prob_better"] == pytest.approx(0.5) and logged.params["min_probability"] == "0.9"


def test_gate_fails_the_run_and_keeps_what_was_logged(pipeline: dict) -> None:
    member = pipeline["members"][0].model_uri
    with pytest.raises(evaluate.GateError, match=r"below the minimum 1\.0100"):
        evaluate.run(
            evaluate.EvaluateConfig(
                model_uri=member, manifest_uri=pipeline["ingest"].manifest_uri, min_f1_macro=1.01, reuse=False
            )
        )
    [failed] = mlflow.search_runs(
        experiment_names=["odir"], filter_string="attributes.status = 'FAILED'", output_format="list"
    )
    assert "val_f1_macro" in failed.data.metrics and failed.data.params["split"] == "val"


def test_finished_steps_are_reused_not_repeated(pipeline: dict, tiny_profile: Path) -> None:
    manifest_uri = pipeline["ingest"].manifest_uri
    member = pipeline["members"][0]
    spec = load_profile(tiny_profile).model("tiny-a")
    again = train.run(train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile="tiny"))
    assert again.run_id == member.run_id and again.model_uri == member.model_uri
    assert again.metrics == pytest.approx({k: v for k, v in member.metrics.items() if v == v})  # NaN is not logged
    evaluated = evaluate.run(evaluate.EvaluateConfig(model_uri=member.model_uri, manifest_uri=manifest_uri))
    assert evaluated.run_id == pipeline["val"][0].run_id
    ens = pipeline["ensemble"]
    members = tuple(m.model_uri for m in pipeline["members"])
    predictions = tuple(v.predictions_uri for v in pipeline["val"])
    config = ensemble.EnsembleConfig(
        member_model_uris=members, member_val_predictions=predictions, manifest_uri=manifest_uri, profile="tiny"
    )
    before = len(mlflow.search_runs(experiment_names=["odir"], filter_string="tags.`odir.step` = 'ensemble'"))
    again = ensemble.run(config)  # the newest finished ensemble of these inputs (an equal one may have come later)
    assert (again.weights, again.thresholds, again.metrics) == (ens.weights, ens.thresholds, ens.metrics)
    assert len(mlflow.search_runs(experiment_names=["odir"], filter_string="tags.`odir.step` = 'ensemble'")) == before
    tuned = tune_thresholds.TuneConfig(predictions_uri=pipeline["val"][0].predictions_uri, name="tiny-a")
    assert tune_thresholds.run(tuned) == pipeline["tuned"]
    fresh = train.run(train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile="tiny", reuse=False))
    assert fresh.run_id != member.run_id and int(fresh.version) > int(member.version)


def test_a_reused_submission_is_copied_not_predicted(pipeline: dict, tmp_path: Path) -> None:
    again = submit.run(
        submit.SubmitConfig(model_uri=pipeline["ensemble"].model_uri, manifest_uri=pipeline["ingest"].manifest_uri,
                            out_path=str(tmp_path / "again.csv"))
    )  # fmt: skip
    assert again.run_id == pipeline["submit"].run_id and again.rows == pipeline["submit"].rows
    for step, run_id in (("submit", again.run_id), ("ingest", pipeline["ingest"].run_id)):  # a code change redoes them
        assert mlflow.get_run(run_id).data.tags["code_fingerprint"] == code_fingerprint(step)
    assert Path(again.out_path).read_text() == Path(pipeline["submit"].out_path).read_text()


def test_predict_command(pipeline: dict, tiny_data: Path, tmp_path: Path) -> None:
    from flows.cli import main

    out = tmp_path / "preds.csv"
    assert main(["predict", "--images", str(tiny_data / "images" / "offsite_test"), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "D", "G", "A", "p_D", "p_G", "p_A", *UNCERTAINTY_COLUMNS, "refer"]
    assert len(frame) == 12 and (frame[list(UNCERTAINTY_COLUMNS)] >= 0).all().all()
    # refer: near a threshold (margin 0.1) or a spread above its default limit (0.15 views, 0.15 members)
    thresholds = np.asarray([pipeline["ensemble"].thresholds[label] for label in LABELS])
    near = (np.abs(frame[["p_D", "p_G", "p_A"]].to_numpy() - thresholds) < 0.1).any(axis=1)
    unsure = (frame[list(TTA_STD_COLUMNS)].to_numpy() > 0.15).any(axis=1)
    unsure |= (frame[list(MEMBER_STD_COLUMNS)].to_numpy() > 0.15).any(axis=1)
    assert frame["refer"].tolist() == (near | unsure).astype(int).tolist()
    checked = tmp_path / "checked.csv"
    images = str(tiny_data / "images" / "offsite_test")
    assert main(["predict", "--images", images, "--out", str(checked), "--check-drift"]) == 0
    with_drift = pd.read_csv(checked)
    assert list(with_drift.columns) == [*frame.columns, "ood", "ood_reasons"] and with_drift["ood"].isin([0, 1]).all()


def test_explain_command_writes_an_overlay_per_image_and_class(pipeline: dict, tiny_data: Path, tmp_path: Path) -> None:
    from flows.cli import main

    images = tiny_data / "images" / "offsite_test"
    out = tmp_path / "gradcam"
    assert main(["explain", "--images", str(images), "--out", str(out)]) == 0  # the champion ensemble by default
    index = pd.read_csv(out / "index.csv")
    names = sorted(path.name for path in images.iterdir())
    assert list(index.columns) == ["id", "class", "probability", "threshold", "png"] and len(index) == 12 * 3
    assert index["png"].tolist() == [f"{Path(name).stem}_{label}.png" for name in names for label in LABELS]
    assert sorted(path.name for path in out.glob("*.png")) == sorted(index["png"])
    champion = predict_paths(f"models:/{registry.ENSEMBLE_MODEL}@champion", [str(images / n) for n in names])
    assert index["probability"].to_numpy() == pytest.approx(champion.probs.ravel(), abs=1e-6)  # the model's TTA answer
    assert index["threshold"].tolist() == pytest.approx([pipeline["ensemble"].thresholds[c] for c in index["class"]])


def test_explain_a_member_for_some_classes(pipeline: dict, tiny_data: Path, tmp_path: Path) -> None:
    from PIL import Image

    from steps.explain import OVERLAY_SIZE, explain

    images = sorted((tiny_data / "images" / "val").iterdir())[:2]
    rows = explain(pipeline["members"][0].model_uri, images, tmp_path / "member", classes=("G",))
    assert [(row.id, row.label, row.threshold) for row in rows] == [(path.name, "G", 0.5) for path in images]
    with Image.open(rows[0].png) as png:
        assert png.width == OVERLAY_SIZE and png.height > OVERLAY_SIZE  # the caption below the photo


@pytest.mark.parametrize("evaluation", ["ensemble on offsite_test", "member on val"])
def test_evaluate_logs_a_gradcam_gallery_of_true_and_false_positives_and_misses(
    pipeline: dict, evaluation: str
) -> None:
    from components.monitoring.explain import gallery_cases

    result = pipeline["offsite"] if evaluation.startswith("ensemble") else pipeline["val"][0]
    client = MlflowClient()
    run = client.get_run(result.run_id)
    thresholds = np.asarray([float(t) for t in run.data.params["thresholds"].split(",")])
    frame = read_predictions(result.predictions_uri)
    cases = gallery_cases(labels_of(frame), probabilities_of(frame), thresholds, per_kind=4)
    folder = f"gradcam/{result.split}"
    expected = {f"{folder}/{label}/{kind}_{Path(frame['id'][row]).stem}.png"
                for (label, kind), rows in cases.items() for row in rows}  # fmt: skip
    logged = {f.path for label in LABELS for f in client.list_artifacts(result.run_id, f"{folder}/{label}")}
    assert expected and logged == expected
    page = Path(tracking.download(f"runs:/{result.run_id}/{folder}/gallery.html"))
    text = page.read_text()
    assert all(f'alt="{path.removeprefix(folder + "/")}"' in text for path in expected)
    assert text.count('<img src="data:image/png;base64,') == len(expected)
    assert run.data.tags["gradcam_uri"].endswith(folder) and run.data.metrics["gradcam_seconds"] > 0


def test_a_gallery_of_zero_logs_none_and_is_an_evaluation_of_its_own(pipeline: dict) -> None:
    member, manifest_uri = pipeline["members"][0].model_uri, pipeline["ingest"].manifest_uri
    plain = evaluate.run(evaluate.EvaluateConfig(model_uri=member, manifest_uri=manifest_uri, gradcam_gallery=0))
    assert plain.run_id != pipeline["val"][0].run_id  # another output: not the pipeline's run reused
    assert plain.metrics == pytest.approx(pipeline["val"][0].metrics)
    assert not MlflowClient().list_artifacts(plain.run_id, "gradcam")


def _step(module: str, env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", f"steps.{module}", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # seven processes and a second store: make test keeps one step as a process (a corrupt image)
def test_steps_as_commands_match_the_in_process_run(
    pipeline: dict, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    env = odir_env(tmp_path / "home")
    ing = _step("ingest", env, "--data-root", str(tiny_data))
    assert ing["data_digest"] == pipeline["ingest"].data_digest
    profile = load_profile(tiny_profile)
    members = [
        _step("train", env, "--manifest-uri", ing["manifest_uri"], "--spec", profile.model(m).model_dump_json(),
              "--profile", "tiny")
        for m in MEMBERS
    ]  # fmt: skip
    for ours, theirs in zip(members, pipeline["members"], strict=True):
        assert ours["metrics"] == pytest.approx(theirs.metrics, nan_ok=True)
    val = [
        _step("evaluate", env, "--model-uri", m["model_uri"], "--manifest-uri", ing["manifest_uri"], "--split", "val")
        for m in members
    ]
    ens = _step(
        "ensemble", env, "--member-model-uris", *[m["model_uri"] for m in members],
        "--member-val-predictions", *[v["predictions_uri"] for v in val], "--manifest-uri", ing["manifest_uri"],
    )  # fmt: skip
    assert ens["weights"] == pytest.approx(pipeline["ensemble"].weights)
    assert ens["thresholds"] == pipeline["ensemble"].thresholds
    offsite = _step(
        "evaluate",
        env,
        "--model-uri",
        ens["model_uri"],
        "--manifest-uri",
        ing["manifest_uri"],
        "--split",
        "offsite_test",
    )
    assert offsite["metrics"] == pytest.approx(pipeline["offsite"].metrics, nan_ok=True)
    sub = _step(
        "submit",
        env,
        "--model-uri",
        ens["model_uri"],
        "--manifest-uri",
        ing["manifest_uri"],
        "--out-path",
        str(tmp_path / "s.csv"),
    )
    assert Path(sub["out_path"]).read_text() == Path(pipeline["submit"].out_path).read_text()
    decision = _step("promote", env, "--model-uri", ens["model_uri"], "--manifest-uri", ing["manifest_uri"])
    assert decision["decision"] == "champion"


def test_a_corrupt_image_fails_evaluate_with_a_clear_message(
    pipeline: dict, tiny_data: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    home = tmp_path / "home"
    with store_at(home):  # a store of its own: the failed run is the only one there
        ing = ingest.run(ingest.IngestConfig(data_root=str(data)))
        spec = tmp_path / "spec.yaml"  # --spec also takes a file
        spec.write_text(load_profile(tiny_profile).model("tiny-a").model_dump_json())
        argv = ["--manifest-uri", ing.manifest_uri, "--spec", str(spec)]
        member = train.run(cli.parse_config(train.TrainStepConfig, argv, "python -m steps.train"))
    broken = sorted((data / "images" / "offsite_test").iterdir())[3]
    broken.write_bytes(b"not a jpeg")
    done = subprocess.run(
        [sys.executable, "-m", "steps.evaluate", "--model-uri", member.model_uri,
         "--manifest-uri", ing.manifest_uri, "--split", "offsite_test"], env=odir_env(home), capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{broken}: cannot be decoded as an image" in done.stderr and "Traceback" not in done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == tracking.DEFAULT_EXPERIMENT]
    [run] = client.search_runs([experiment.experiment_id], filter_string="tags.`odir.step` = 'evaluate'")
    assert run.info.status == "FAILED" and run.data.params["split"] == "offsite_test"


def test_training_code_changes_retrain_and_docstring_changes_reuse(
    pipeline: dict, tiny_profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from steps.support import fingerprint

    for package in fingerprint.PROJECT_PACKAGES:  # the fingerprint is read from a copy of the code that the test edits
        shutil.copytree(fingerprint.SOURCE_ROOT / package, tmp_path / package)
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    losses = tmp_path / "components" / "training" / "losses.py"
    source = losses.read_text()
    config = train.TrainStepConfig(
        manifest_uri=pipeline["ingest"].manifest_uri, spec=load_profile(tiny_profile).model("tiny-a"), profile="tiny"
    )

    def trained() -> str:
        fingerprint._fingerprint.cache_clear()
        return train.run(config).run_id

    try:
        losses.write_text(source + "\n\ndef scale(x):\n    return x * 2\n")
        first = trained()
        assert first != pipeline["members"][0].run_id  # other code than the pipeline's: trained again
        losses.write_text(source + '\n\ndef scale(x):\n    """Reworded."""\n    # why: a comment\n    return x * 2\n')
        assert trained() == first  # docstring and comment only: reused
        losses.write_text(source + "\n\ndef scale(x):\n    return x * 3\n")
        assert trained() != first  # the code changed: trained again
    finally:
        fingerprint._fingerprint.cache_clear()


def test_train_params_say_what_was_in_effect(pipeline: dict) -> None:
    """amp is CUDA's mixed precision: on this CPU run the params say False although the spec asked for it (no
    ``cpu_bf16``); channels_last applies on every device."""
    params = MlflowClient().get_run(pipeline["members"][0].run_id).data.params
    assert (params["amp"], params["channels_last"]) == ("False", "True")
    assert params["hardware_cpu"] == hardware_record()["hardware_cpu"] and "hardware_cpu_flags" in params


def test_logged_models_are_named_and_carry_their_evaluations_compared_scores(pipeline: dict) -> None:
    """The Models tab compares models: each logged model is named after what it is and carries the scores of the
    evaluations that scored it fairly (one vocabulary with intervals), and no other metric of its run; the members'
    val evaluations (val picked their epoch) are not linked."""
    experiment = tracking.setup()
    models = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")}
    assert {"tiny-a", "tiny-b", "ensemble"} <= set(models)
    for member in MEMBERS:
        assert not models[member].metrics  # scored on val only, where it picked its epoch
    ensemble_linked = {metric.key: metric.value for metric in models["ensemble"].metrics}
    assert ensemble_linked == compared_metrics(pipeline["offsite"].metrics, "offsite_")
    assert len(ensemble_linked) == 24  # 8 scores and their intervals; no system, fold or temperature metric
    member = pipeline["members"][0]
    offsite = evaluate.run(evaluate.EvaluateConfig(model_uri=member.model_uri, manifest_uri=pipeline["ingest"]
                                                   .manifest_uri, split="offsite_test"))  # fmt: skip
    linked = {
        m.key: m.value for m in MlflowClient().get_logged_model(registry.logged_model_id(member.model_uri)).metrics
    }
    assert linked == compared_metrics(offsite.metrics, "offsite_")  # held out: linked under the ensemble's keys


def test_compare_scores_each_model_against_the_first_on_the_same_images(pipeline: dict) -> None:
    from steps import compare

    ensemble_uri, member_uri = pipeline["ensemble"].model_uri, pipeline["members"][0].model_uri
    manifest = pipeline["ingest"].manifest_uri
    result = compare.run(compare.CompareConfig(model_uris=(ensemble_uri, member_uri), manifest_uri=manifest,
                                               split="offsite_test"))  # fmt: skip
    reference, member = result.rows
    assert reference.differences is None and reference.note is None and member.note is None  # held-out images
    offsite = pipeline["offsite"].metrics
    assert reference.scores["f1_macro"].value == pytest.approx(offsite["offsite_f1_macro"])  # the evaluation's score
    assert reference.scores["f1_macro"].low == pytest.approx(offsite["offsite_f1_macro_ci_low"])
    difference = member.scores["f1_macro"].value - reference.scores["f1_macro"].value
    assert member.differences["f1_macro"].value == pytest.approx(difference)
    assert 0.0 <= member.prob_reference_better["f1_macro"] <= 1.0
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["odir.step"] == "compare" and run.data.tags["reference"] == ensemble_uri
    assert {i.model_id for i in run.inputs.model_inputs} == {
        registry.logged_model_id(u) for u in (ensemble_uri, member_uri)
    }
    on_val = compare.run(compare.CompareConfig(model_uris=(ensemble_uri, member_uri), manifest_uri=manifest,
                                               split="val"))  # fmt: skip
    assert on_val.rows[1].note == "optimistic: it picked its epoch (and the ensemble its thresholds) on val"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models:/odir-ensemble@prod", "models:/odir-tiny-a/1"], "models:/odir-ensemble@prod: not found"),
        (["models:/odir-ensemble/1", "models:/odir-tiny-a/1", "--split", "onsite_test"],
         "--split onsite_test: "),
        (["models:/odir-tiny-a/1", "models:/odir-ensemble/1", "--split", "val"],
         "models:/odir-tiny-a/1 has no fair score on val of this data: it picked its epoch"),
    ],
    ids=["unknown alias", "no labels", "tuned on the images"],
)  # fmt: skip
def test_odir_compare_refuses_bad_input_in_one_line(
    pipeline: dict, tiny_data: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    assert main(["compare", *args, "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"odir compare: {message}") and "\n" not in err and "Traceback" not in err


def test_odir_compare_prints_the_paired_table(pipeline: dict, tiny_data: Path, capsys) -> None:
    from flows.cli import main

    ensemble_uri = pipeline["ensemble"].model_uri
    assert main(["compare", ensemble_uri, "models:/odir-tiny-b/1", "--data", str(tiny_data)]) == 0
    out = capsys.readouterr().out
    assert "| tiny-b v1 | " in out and f"P({ensemble_uri} better)" in out and "logged as the compare run" in out
