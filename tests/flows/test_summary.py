"""The pipeline's typed summary: its scores and referral counts read from an evaluation's metrics, the headline it
writes on the pipeline's MLflow run, and its round trip through Prefect's result serializers, all by hand."""

from __future__ import annotations

import math

import pytest
from prefect.serializers import JSONSerializer, PickleSerializer

from components.evaluation.scoring import COMPARED_METRICS
from flows.summary import (
    BuiltEnsemble,
    Gallery,
    PipelineSummary,
    Referral,
    Score,
    headline_metrics,
    headline_scores,
    headline_tags,
    referral_counts,
)

NAN = float("nan")
METRICS = {
    "offsite_f1_macro": 0.8, "offsite_f1_macro_ci_low": 0.7, "offsite_f1_macro_ci_high": 0.9, "offsite_f1_G": 0.5,
    "offsite_auroc_A": 0.6, "offsite_auroc_A_ci_low": NAN, "offsite_auroc_A_ci_high": NAN,
    "offsite_n_referred": 4.0, "offsite_n_kept": 16.0, "offsite_error_rate_referred": 0.5, "val_f1_macro": 0.1,
}  # fmt: skip


def _summary(**scores: Score) -> PipelineSummary:
    built = BuiltEnsemble(
        model_uri="models:/odir-ensemble/2", run_id="e1", weights={"odir-a": 0.5, "odir-b": 0.5},
        thresholds={"D": 0.4, "G": 0.5, "A": 0.6}, members=("models:/odir-a/1", "models:/odir-b/1"),
        member_runs=("m1", "m2"), member_f1_macro={"odir-a": 0.75, "odir-b": None}, split_mode="given splits",
        scored_split="offsite_test", scores=scores, per_class=({"class": "D", "f1": "0.500"},),
        referral=Referral(n_referred=4, n=20, error_rate_referred=0.5, error_rate_kept=0.25),
        gallery=Gallery(run_id="v1", uri="file:///store/gradcam/offsite_test/gallery.html"), submission="s.csv",
    )  # fmt: skip
    return PipelineSummary(profile="p", data_digest="d" * 64, pipeline_run_id="p1", decision="challenger",
                           champion_version="1", prob_better=0.4, built=built)  # fmt: skip


def test_headline_scores_and_referral_counts_from_an_evaluations_metrics() -> None:
    scores = headline_scores(METRICS, "offsite_test")
    assert tuple(scores) == COMPARED_METRICS
    assert scores["f1_macro"] == Score(0.8, 0.7, 0.9) and scores["f1_macro"].has_interval
    assert scores["f1_G"] == Score(0.5, None, None) and not scores["f1_G"].has_interval
    assert scores["auroc_A"].value == 0.6 and math.isnan(scores["auroc_A"].low) and not scores["auroc_A"].has_interval
    assert scores["f1_D"] == Score(None, None, None)
    referral = referral_counts(METRICS, "offsite_test")
    assert (referral.n_referred, referral.n, referral.error_rate_referred) == (4, 20, 0.5)
    assert math.isnan(referral.error_rate_kept)  # not logged: an empty group
    assert referral_counts(METRICS, "val") is None  # no referral logged there (cross-fitted CV scores)


def test_the_headline_on_the_pipeline_run() -> None:
    summary = _summary(f1_macro=Score(0.8, 0.7, 0.9), f1_G=Score(0.5), auroc_A=Score(0.6, NAN, NAN), f1_D=Score(None))
    assert headline_metrics(summary) == {
        "offsite_f1_macro": 0.8, "offsite_f1_macro_ci_low": 0.7, "offsite_f1_macro_ci_high": 0.9,
        "offsite_f1_G": 0.5, "offsite_auroc_A": 0.6,
    }  # fmt: skip
    note = ("**models:/odir-ensemble/2** on offsite_test (given splits): challenger (P(better than champion) 0.40)."
            "\n\n| metric | value [95% CI] |\n|---|---|\n| f1_macro | 0.800 [0.700, 0.900] |")  # fmt: skip
    assert headline_tags(summary) == {
        "decision": "challenger", "registered_model_uri": "models:/odir-ensemble/2",
        "member_model_uris": "models:/odir-a/1,models:/odir-b/1", "member_runs": "m1,m2", "ensemble_run": "e1",
        "mlflow.note.content": note, "mlflow.runName": "pipeline p · f1_macro 0.800 [0.700, 0.900] on offsite_test",
    }  # fmt: skip
    no_interval = headline_tags(_summary(f1_macro=Score(0.8)))
    assert no_interval["mlflow.runName"] == "pipeline p · f1_macro 0.800 on offsite_test"
    assert "mlflow.runName" not in headline_tags(_summary(f1_macro=Score(None)))  # the run keeps its name


def test_an_up_to_date_run_records_only_its_decision() -> None:
    summary = PipelineSummary(profile="p", data_digest="d", pipeline_run_id="p1", decision="up to date",
                              champion_version="4")  # fmt: skip
    assert headline_metrics(summary) == {} and headline_tags(summary) == {"decision": "up to date"}
    assert summary.promotion_evidence() == ""


@pytest.mark.parametrize("serializer", [PickleSerializer(), JSONSerializer()], ids=["pickle", "json"])
def test_the_summary_survives_prefects_result_serializers(serializer) -> None:
    summary = _summary(f1_macro=Score(0.8, 0.7, 0.9), f1_G=Score(0.5))
    assert serializer.loads(serializer.dumps(summary)) == summary
