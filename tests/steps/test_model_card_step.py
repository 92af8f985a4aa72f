"""Model cards of the versions a real embedded MLflow store holds after the tiny synthetic pipeline: that
:func:`steps.model_card.gather` reads every fact from the store, and that the card is published. How the facts read
on the card is tested without a store, in tests/components/evaluation/test_model_card.py."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components.config import ModelSpec
from components.data.folds import CVSpec
from components.evaluation.model_card import CELL_GAP, DESCRIPTION_LIMIT
from components.evaluation.model_card_facts import (
    DataReport,
    DatasetInput,
    Evaluation,
    Member,
    ProducingRun,
    RecordedScore,
    SplitCounts,
)
from steps import ensemble, evaluate, ingest, model_card, promote, train, tune_thresholds
from steps.support import cli, registry, tracking

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


def _logged(run_id: str, prefix: str) -> dict[str, float]:
    """A run's metrics that start with ``prefix``, without it."""
    metrics = MlflowClient().get_run(run_id).data.metrics
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def _interval(metrics: dict[str, float], key: str) -> str:
    """How the card prints a metric: 3 decimals, and its 95% interval when one was logged."""
    text = f"{metrics[key]:.3f}"
    if f"{key}_ci_low" in metrics:
        text += f" ({metrics[f'{key}_ci_low']:.3f}–{metrics[f'{key}_ci_high']:.3f})"
    return text


def _ingest_report(pipeline: dict) -> DataReport:
    """The counts the ingest run logged (``validation/report.json``)."""
    path = tracking.download(f"runs:/{pipeline['ingest'].run_id}/validation/report.json")
    report = json.loads(Path(path).read_text())
    splits = {
        s: SplitCounts(c["images"], c["patients"], c["positives"], c["no_label"]) for s, c in report["splits"].items()
    }
    return DataReport(splits, {pair: v["count"] for pair, v in report["shared_patients"].items()})


def test_member_facts_are_read_from_the_store(pipeline: dict, tiny_data: Path) -> None:
    member, client = pipeline["member"], MlflowClient()
    facts = model_card.gather(member.model_uri)
    tags = client.get_model_version(MEMBER, member.version).tags
    run = client.get_run(member.run_id)
    assert (facts.name, facts.version, facts.kind, facts.split_mode, facts.aliases) == (
        MEMBER, member.version, "member", "given", ()
    )  # fmt: skip
    assert facts.data_digest == tags["data_digest"] == pipeline["ingest"].data_digest
    assert (facts.profile, facts.spec_key) == ("tiny", tags["spec_key"])
    assert facts.code_fingerprint == tags["code_fingerprint"]
    dataset = DatasetInput("odir", run.inputs.dataset_inputs[0].dataset.digest, str(tiny_data.resolve()))
    assert facts.run == ProducingRun(member.run_id, run.info.run_name, run.data.params, run.data.metrics, dataset)
    assert facts.data_report == _ingest_report(pipeline)
    scores = [RecordedScore(s, float(tags[f"score.{s}.f1_macro"]), facts.data_digest) for s in ("offsite_test", "val")]
    assert facts.recorded_scores == scores
    thresholds = facts.member_thresholds
    assert (thresholds.values, thresholds.grid) == (pipeline["tuned"].thresholds, "study")
    assert facts.promotion is None and facts.members == [] and facts.ensemble_thresholds is None
    assert sorted(e.split for e in facts.evaluations) == ["offsite_test", "val"]
    for result in (pipeline["val"], pipeline["offsite"]):
        table = f"tables/{result.split}_per_class.csv"
        assert next(e for e in facts.evaluations if e.split == result.split) == Evaluation(
            result.split, tuple(client.get_run(result.run_id).data.params["tta_views"].split(",")), "0.5",
            _logged(result.run_id, tracking.split_prefix(result.split)), "evaluate",
            f"`{table}` of evaluate run `{result.run_id}`", facts.data_report.splits[result.split].images,
        )  # fmt: skip
        assert table in {f.path for f in client.list_artifacts(result.run_id, "tables")}  # where the card points
    offsite = _logged(pipeline["offsite"].run_id, "offsite_")
    card = _card(member.model_uri)
    assert card.startswith(f"{MEMBER} v{member.version}: F1 macro {_interval(offsite, 'f1_macro')} on offsite_test")
    assert "### offsite_test, per class: TTA 5 views, thresholds 0.5" in card


def test_ensemble_facts_are_read_from_the_store(pipeline: dict) -> None:
    ens, member, client = pipeline["ensemble"], pipeline["member"], MlflowClient()
    facts = model_card.gather(ens.model_uri)
    tags = client.get_model_version(registry.ENSEMBLE_MODEL, ens.version).tags
    run = client.get_run(ens.run_id)
    assert (facts.kind, facts.split_mode, facts.aliases) == ("ensemble", "given", ("champion",))
    assert (facts.data_digest, facts.ensemble_key) == (pipeline["ingest"].data_digest, tags["ensemble_key"])
    assert facts.run == ProducingRun(ens.run_id, run.info.run_name, run.data.params, run.data.metrics)
    assert facts.data_report == _ingest_report(pipeline)
    temperatures = tracking.read_json(f"{run.info.artifact_uri}/temperatures.json")  # the tiny profile calibrates
    spec = client.get_run(member.run_id).data.params
    assert facts.members == [Member("card-a", member.model_uri, ens.weights["card-a"], spec, temperatures["card-a"])]
    thresholds = facts.ensemble_thresholds
    assert (thresholds.values, thresholds.grid) == (ens.thresholds, "study")
    offsite, val = (next(e for e in facts.evaluations if e.split == split) for split in ("offsite_test", "val"))
    assert offsite.metrics == _logged(pipeline["ensemble_offsite"].run_id, "offsite_")
    assert (offsite.thresholds, offsite.step) == ("tuned on val", "evaluate")
    views = tuple(run.data.params["tta_views"].split(","))
    assert val == Evaluation("val", views, "tuned on val (these images)", _logged(ens.run_id, "val_"), "ensemble",
                             f"the `val_*` metrics of ensemble run `{ens.run_id}`")  # fmt: skip
    assert (facts.promotion.decision, facts.promotion.split) == ("champion", "offsite_test")
    card = _card(ens.model_uri)
    assert card.startswith(f"{registry.ENSEMBLE_MODEL} v{ens.version}: F1 macro ")
    assert "on offsite_test; ensemble of 1 member, given splits" in card.splitlines()[0]


def test_a_split_mode_tag_on_the_version_decides_the_protocol(pipeline: dict) -> None:
    client = MlflowClient()
    member = pipeline["member"]
    assert model_card.gather(member.model_uri).split_mode == "given"  # no split_mode tag: the default
    client.set_model_version_tag(MEMBER, member.version, "split_mode", "cv")
    try:
        assert model_card.gather(member.model_uri).split_mode == "cv"
        assert "**Protocol:** patient-grouped k-fold cross-validation" in _card(member.model_uri)
    finally:
        client.delete_model_version_tag(MEMBER, member.version, "split_mode")


def test_publish_writes_description_artifact_and_model_description(pipeline: dict) -> None:
    client = MlflowClient()
    for uri, run_id, summary in (
        (pipeline["member"].model_uri, pipeline["member"].run_id, "odir member: tiny_cnn (mode full, loss bce"),
        (pipeline["ensemble"].model_uri, pipeline["ensemble"].run_id, "odir ensemble: weighted mean of odir member"),
    ):
        name, version = registry.split_model_uri(uri)
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
    name, version = registry.split_model_uri(uri)
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
    by_alias = _card(f"models:/{registry.ENSEMBLE_MODEL}@champion")
    assert by_alias == _card(pipeline["ensemble"].model_uri)


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


def test_a_cross_validated_member_is_read_with_its_folds_and_out_of_fold_scores(cv_pipeline: dict) -> None:
    member = cv_pipeline["member"]
    facts = model_card.gather(member.model_uri)
    run = MlflowClient().get_run(member.run_id)
    assert (facts.split_mode, facts.cv) == ("cv", run.data.tags["cv"]) and facts.cv.startswith("3 folds, seed 0, ")
    views = tuple(run.data.tags["cv"].rpartition("views ")[2].split(","))
    where = f"the `cv_*` metrics of train run `{member.run_id}`"
    assert facts.evaluations == [Evaluation("cv", views, "0.5", _logged(member.run_id, "cv_"), "train", where)]
    thresholds = facts.member_thresholds  # tuned on the out-of-fold predictions
    assert (thresholds.values, thresholds.grid) == (cv_pipeline["tuned"].thresholds, "study")
    card = _card(member.model_uri)
    assert "**Protocol:** patient-grouped k-fold cross-validation on train + val (3 folds, seed 0)" in card
    assert card.startswith(
        f"odir-card-cv v{member.version}: F1 macro {_interval(_logged(member.run_id, 'cv_'), 'f1_macro')} on cv;"
    )


def test_a_cross_fitted_ensemble_is_read_with_its_cv_scores_not_its_in_sample_ones(cv_pipeline: dict) -> None:
    ens = cv_pipeline["ensemble"]
    facts = model_card.gather(ens.model_uri)
    run = MlflowClient().get_run(ens.run_id)
    assert (facts.split_mode, facts.cv) == ("cv", MlflowClient().get_run(cv_pipeline["member"].run_id).data.tags["cv"])
    views = tuple(run.data.params["tta_views"].split(","))
    assert facts.evaluations == [  # its val_* metrics are scored on the data they were fit on: left out
        Evaluation("cv", views, "cross-fitted (tuned on the other folds)", _logged(ens.run_id, "cv_"), "ensemble",
                   f"the `cv_*` metrics of ensemble run `{ens.run_id}`")
    ]  # fmt: skip
    thresholds = facts.ensemble_thresholds
    assert (thresholds.values, thresholds.grid) == (cv_pipeline["ensemble"].thresholds, "study")
