"""Model cards built from what a real embedded MLflow store holds after the tiny synthetic pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components import LABELS
from components.config import ModelSpec
from components.data.folds import CVSpec
from components.evaluation.model_card import CELL_GAP, DESCRIPTION_LIMIT, PER_CLASS, render
from steps import ensemble, evaluate, ingest, model_card, promote, train, tune_thresholds
from steps.support import cli, tracking

SPEC = ModelSpec(name="card-a", backbone="tiny_cnn", image_size=32, batch_size=8, epochs=2, lr=0.003, seed=1)
MEMBER = "odir-card-a"


@pytest.fixture(scope="module")
def pipeline(odir_home: Path, tiny_data: Path) -> dict:
    """Ingest, one tiny member (evaluated on val and offsite_test, thresholds tuned), the ensemble (evaluated on
    offsite_test) and its promotion, under one parent run; then both cards published."""
    experiment_id = tracking.setup()
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline") as parent:
        pid = parent.info.run_id
    ing = ingest.run(ingest.IngestConfig(data_root=str(tiny_data), parent_run_id=pid))
    manifest = ing.manifest_uri
    member = train.run(train.TrainStepConfig(manifest_uri=manifest, spec=SPEC, profile="tiny", parent_run_id=pid))
    val = evaluate.run(evaluate.EvaluateConfig(model_uri=member.model_uri, manifest_uri=manifest, parent_run_id=pid))
    offsite = evaluate.run(
        evaluate.EvaluateConfig(
            model_uri=member.model_uri, manifest_uri=manifest, split="offsite_test", parent_run_id=pid
        )
    )
    tuned = tune_thresholds.run(
        tune_thresholds.TuneConfig(predictions_uri=val.predictions_uri, name=MEMBER, parent_run_id=pid)
    )
    ens = ensemble.run(
        ensemble.EnsembleConfig(
            member_model_uris=(member.model_uri,), member_val_predictions=(val.predictions_uri,),
            manifest_uri=manifest, profile="tiny", parent_run_id=pid,
        )
    )  # fmt: skip
    ens_offsite = evaluate.run(
        evaluate.EvaluateConfig(model_uri=ens.model_uri, manifest_uri=manifest, split="offsite_test", parent_run_id=pid)
    )
    promote.run(promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=manifest, parent_run_id=pid))
    for uri in (member.model_uri, ens.model_uri):
        model_card.publish_model_card(uri)
    return {"ingest": ing, "member": member, "val": val, "offsite": offsite, "tuned": tuned, "ensemble": ens,
            "ensemble_offsite": ens_offsite}  # fmt: skip


def _card(model_uri: str) -> str:
    """The card with the table cells' padding taken out, so rows can be matched as plain Markdown."""
    return model_card.write_model_card(model_uri).replace(CELL_GAP, "")


def _interval(metrics: dict[str, float], key: str) -> str:
    """How the card prints a metric: 3 decimals, and its 95% interval when one was logged."""
    text = f"{metrics[key]:.3f}"
    if f"{key}_ci_low" in metrics:
        text += f" ({metrics[f'{key}_ci_low']:.3f}–{metrics[f'{key}_ci_high']:.3f})"
    return text


def _section(card: str, title: str) -> str:
    """The text of one ``##``/``###`` section of a card, up to the next heading."""
    start = card.index(title)
    following = [card.find("\n#", start + len(title))]
    return card[start : following[0] if following[0] != -1 else len(card)]


def test_member_card_names_data_spec_and_training_run(pipeline: dict, tiny_data: Path) -> None:
    member = pipeline["member"]
    card = _card(member.model_uri)
    client = MlflowClient()
    tags = client.get_model_version(MEMBER, member.version).tags
    run = client.get_run(member.run_id)
    offsite = MlflowClient().get_run(pipeline["offsite"].run_id).data.metrics
    first = f"{MEMBER} v{member.version}: F1 macro {_interval(offsite, 'offsite_f1_macro')} on offsite_test; member"
    assert card.startswith(first) and card.splitlines()[0].endswith("given splits, thresholds 0.5.")
    assert f"`{pipeline['ingest'].data_digest}`" in card and tags["data_digest"] == pipeline["ingest"].data_digest
    assert f"`{tags['spec_key']}`" in card and f"`{tags['code_fingerprint']}`" in card and "`tiny`" in card
    for field in ("backbone", "mode", "loss", "epochs", "lr", "batch_size", "image_size", "seed"):
        assert f"{field} `{run.data.params[field]}`" in card, field
    best = run.data.metrics
    assert f"**Best epoch:** {int(best['best_epoch'])} of 2, chosen on val `f1_macro`" in card
    assert f"F1 macro {best['best_val_f1_macro']:.3f}" in card and "threshold 0.5, no TTA" in card
    assert f"`{member.run_id}`" in card
    digest = run.inputs.dataset_inputs[0].dataset.digest
    assert f"`odir` digest `{digest}` from `{tiny_data.resolve()}`" in card
    assert "given splits: trained on train, best epoch chosen on val, tested on offsite_test" in card


@pytest.mark.parametrize("evaluation", ["val", "offsite"])
def test_member_card_quotes_every_logged_metric_of_its_evaluations(pipeline: dict, evaluation: str) -> None:
    facts = model_card.gather(pipeline["member"].model_uri)
    card = render(facts, "all").replace(CELL_GAP, "")  # every per-class table, however long
    result = pipeline[evaluation]
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    prefix = tracking.split_prefix(result.split)
    logged = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    row = next(line for line in card.splitlines() if line.startswith(f"| {result.split} |"))
    for key in ("f1_macro", "f1_course", "auroc_macro"):
        assert _interval(logged, key) in row, key
    assert "| 5 views | 0.5 |" in row
    section = _section(card, f"### {result.split}, per class")
    missing = []
    for key, label in PER_CLASS:
        if any(f"{key}_{c}" in logged for c in LABELS):
            line = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
            for c in LABELS:
                assert (_interval(logged, f"{key}_{c}") if f"{key}_{c}" in logged else "n/a") in line, (key, c)
        else:
            missing.append(label)
    assert (f"Not measured on {result.split}: {', '.join(missing)}." in section) == bool(missing)
    assert "| Positives | " + " | ".join(str(int(logged[f"support_{c}"])) for c in LABELS) + " |" in section


def test_the_card_keeps_the_held_out_tables_and_names_where_the_others_are(pipeline: dict) -> None:
    card = _card(pipeline["member"].model_uri)
    assert len(model_card.write_model_card(pipeline["member"].model_uri)) <= DESCRIPTION_LIMIT
    assert "### offsite_test, per class: TTA 5 views, thresholds 0.5" in card
    pointer = f"val in `tables/val_per_class.csv` of evaluate run `{pipeline['val'].run_id}`"
    assert ("### val, per class" in card) != (
        f"Per-class results not shown (the registry keeps 5000 characters): {pointer}." in card
    )


def test_member_card_shows_the_thresholds_tuned_on_val(pipeline: dict) -> None:
    card = _card(pipeline["member"].model_uri)
    values = ", ".join(f"{c} {pipeline['tuned'].thresholds[c]:.2f}" for c in LABELS)
    assert "**Thresholds tuned on val** (grid `study`, objective " in card
    assert values in card and "not part of this version, which predicts at 0.5" in card


def test_card_states_intended_use_data_and_limitations(pipeline: dict) -> None:
    report = _ingest_report(pipeline)
    train_counts = report["splits"]["train"]
    assert train_counts["no_label"] == 0  # the synthetic data, like the ODIR subset, has no normal image
    for uri in (pipeline["member"].model_uri, pipeline["ensemble"].model_uri):
        card = _card(uri)
        assert "research and screening support, not a diagnosis" in card
        limitations = _section(card, "## Known limitations")
        for c in LABELS:
            share = train_counts["positives"][c] / train_counts["images"]
            assert f"{c} {share:.0%} ({train_counts['positives'][c]})" in limitations
        assert f"**No normal images in training:** each of the {train_counts['images']} training images" in limitations
        assert "**Camera and site shift:**" in limitations
        for split in ("val", "offsite_test"):
            counts = report["splits"][split]
            assert f"{split} {counts['images']} images of {counts['patients']} patients" in limitations
        assert "The intervals are wide" in limitations
        assert "**Patients in two splits:** none (checked at ingest)" in card


def _ingest_report(pipeline: dict) -> dict:
    run_id = pipeline["ingest"].run_id
    path = tracking.download(f"runs:/{run_id}/validation/report.json")
    return json.loads(Path(path).read_text())


def test_ensemble_card_names_members_weights_views_thresholds_and_temperatures(pipeline: dict) -> None:
    ens = pipeline["ensemble"]
    card = _card(ens.model_uri)
    client = MlflowClient()
    run = client.get_run(ens.run_id)
    member = pipeline["member"]
    first = f"{tracking.ENSEMBLE_MODEL} v{ens.version}: F1 macro "
    assert card.startswith(first) and "on offsite_test; ensemble of 1 member, given splits" in card.splitlines()[0]
    assert "**Kind:** ensemble, alias `@champion`" in card
    assert f"`{pipeline['ingest'].data_digest}`" in card
    row = next(line for line in card.splitlines() if line.startswith(f"| `{member.model_uri}` |"))
    assert f"| tiny_cnn | bce | full | {ens.weights['card-a']:.3f} |" in row
    temperatures = [a.path for a in client.list_artifacts(ens.run_id)]
    if "temperatures.json" in temperatures:  # calibrated ensembles log their temperatures
        saved = tracking.read_json(f"{run.info.artifact_uri}/temperatures.json")["card-a"]
        assert ", ".join(f"{saved[c]:.2f}" for c in LABELS) + " |" in row
        assert "**Calibration:** per member and class temperature, fit on val" in card
    else:
        assert row.endswith("| none |") and "**Calibration:** none" in card
    assert f"**TTA views:** {run.data.params['tta_views'].replace(',', ', ')}" in card
    thresholds = ", ".join(f"{c} {ens.thresholds[c]:.2f}" for c in LABELS)
    assert "(tuned on val, grid `study`" in card and thresholds in card
    offsite = client.get_run(pipeline["ensemble_offsite"].run_id).data.metrics
    logged = {k.removeprefix("offsite_"): v for k, v in offsite.items() if k.startswith("offsite_")}
    offsite_row = next(line for line in card.splitlines() if line.startswith("| offsite_test |"))
    assert f"| tuned on val | {_interval(logged, 'f1_macro')} | {_interval(logged, 'f1_course')} |" in offsite_row
    val_row = next(line for line in card.splitlines() if line.startswith("| val (ensemble step) |"))
    assert f"| {run.data.metrics['val_f1_macro']:.3f} |" in val_row and "tuned on val (these images)" in val_row
    assert "val chose weights, temperatures and thresholds: its scores are optimistic" in card
    assert "**Promotion:** champion on offsite_test" in card


def test_publish_writes_description_artifact_and_model_description(pipeline: dict) -> None:
    client = MlflowClient()
    for uri, run_id, summary in (
        (pipeline["member"].model_uri, pipeline["member"].run_id, "odir member: tiny_cnn (mode full, loss bce"),
        (pipeline["ensemble"].model_uri, pipeline["ensemble"].run_id, "odir ensemble: weighted mean of odir member"),
    ):
        name, version = tracking.split_model_uri(uri)
        card = model_card.write_model_card(uri)
        assert len(card) <= DESCRIPTION_LIMIT
        assert client.get_model_version(name, version).description == card
        artifact = tracking.download(f"runs:/{run_id}/{model_card.CARD_ARTIFACT}")
        assert Path(artifact).read_text() == card
        assert client.get_registered_model(name).description.startswith(summary)
        assert "not a diagnosis" in client.get_registered_model(name).description


def test_publishing_again_changes_nothing_and_keeps_a_model_description(pipeline: dict) -> None:
    client = MlflowClient()
    uri = pipeline["member"].model_uri
    name, version = tracking.split_model_uri(uri)
    before = client.get_model_version(name, version).description
    client.update_registered_model(name, description="written by hand")
    try:
        model_card.publish_model_card(uri)
        assert client.get_model_version(name, version).description == before
        assert client.get_registered_model(name).description == "written by hand"
        files = [f.path for f in client.list_artifacts(pipeline["member"].run_id) if f.path.endswith(".md")]
        assert files == [model_card.CARD_ARTIFACT]
    finally:
        client.update_registered_model(name, description="")
        model_card.publish_model_card(uri)


def test_an_alias_resolves_to_its_version(pipeline: dict) -> None:
    by_alias = _card(f"models:/{tracking.ENSEMBLE_MODEL}@champion")
    assert by_alias == _card(pipeline["ensemble"].model_uri)


def test_cv_split_mode_is_named(pipeline: dict) -> None:
    client = MlflowClient()
    member = pipeline["member"]
    assert "given splits" in _card(member.model_uri)  # no split_mode tag: the default
    client.set_model_version_tag(MEMBER, member.version, "split_mode", "cv")
    try:
        card = _card(member.model_uri)
        assert (
            "**Protocol:** patient-grouped k-fold cross-validation" in card and "Protocol: patient-grouped CV" in card
        )
    finally:
        client.delete_model_version_tag(MEMBER, member.version, "split_mode")


def test_command_line_prints_the_card(pipeline: dict, capsys: pytest.CaptureFixture[str]) -> None:
    uri = pipeline["member"].model_uri
    assert cli.main(model_card.ModelCardConfig, model_card.run, ["--model-uri", uri, "--no-publish"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"model_uri": uri, "card": model_card.write_model_card(uri)}


@pytest.fixture(scope="module")
def cv_pipeline(pipeline: dict) -> dict:
    """A member cross-validated on train + val (3 patient-grouped folds), thresholds tuned on its out-of-fold
    predictions, and an ensemble fit on them (cross-fitted CV scores), on the same data as ``pipeline``."""
    manifest = pipeline["ingest"].manifest_uri
    spec = SPEC.model_copy(update={"name": "card-cv", "epochs": 1})
    member = train.run(train.TrainStepConfig(manifest_uri=manifest, spec=spec, profile="tiny-cv",
                                             cv=CVSpec(folds=3, seed=0)))  # fmt: skip
    tuned = tune_thresholds.run(
        tune_thresholds.TuneConfig(predictions_uri=member.oof_predictions_uri, name="odir-card-cv")
    )
    ens = ensemble.run(
        ensemble.EnsembleConfig(
            member_model_uris=(member.model_uri,), member_val_predictions=(member.oof_predictions_uri,),
            manifest_uri=manifest, profile="tiny-cv",
        )
    )  # fmt: skip
    return {"member": member, "tuned": tuned, "ensemble": ens}


def test_a_cross_validated_member_card_names_the_folds_and_its_out_of_fold_scores(
    pipeline: dict, cv_pipeline: dict
) -> None:
    member = cv_pipeline["member"]
    card = _card(member.model_uri)
    metrics = {k.removeprefix("cv_"): v for k, v in MlflowClient().get_run(member.run_id).data.metrics.items()
               if k.startswith("cv_")}  # fmt: skip
    assert "**Protocol:** patient-grouped k-fold cross-validation on train + val (3 folds, seed 0)" in card
    report = _ingest_report(pipeline)["splits"]
    pool = report["train"]["images"] + report["val"]["images"]
    patients = report["train"]["patients"] + report["val"]["patients"]
    row = next(line for line in card.splitlines() if line.startswith("| cv (train step) |"))
    assert row.startswith(
        f"| cv (train step) | {pool} ({patients}) | 5 views | 0.5 | {_interval(metrics, 'f1_macro')} |"
    )
    assert "**Best epoch:** median 1 of 1 over the folds" in card
    thresholds = ", ".join(f"{c} {cv_pipeline['tuned'].thresholds[c]:.2f}" for c in LABELS)
    assert "**Thresholds tuned on out-of-fold predictions** (grid `study`" in card and thresholds in card
    assert f"**Class prevalence** (train + val, {pool} images)" in card and "val chose" not in card
    assert card.splitlines()[0].startswith(f"odir-card-cv v1: F1 macro {_interval(metrics, 'f1_macro')} on cv;")


def test_a_cross_fitted_ensemble_card_shows_its_cv_scores_not_its_in_sample_ones(cv_pipeline: dict) -> None:
    ens = cv_pipeline["ensemble"]
    card = _card(ens.model_uri)
    metrics = {k.removeprefix("cv_"): v for k, v in MlflowClient().get_run(ens.run_id).data.metrics.items()
               if k.startswith("cv_")}  # fmt: skip
    row = next(line for line in card.splitlines() if line.startswith("| cv (ensemble step) |"))
    assert f"| cross-fitted (tuned on the other folds) | {_interval(metrics, 'f1_macro')} |" in row
    assert "val (ensemble step)" not in card  # its val_* metrics are scored on the data they were fit on
    assert "thresholds, temperatures and weights fit on out-of-fold predictions" in card
    assert "(tuned on out-of-fold predictions, grid `study`" in card
