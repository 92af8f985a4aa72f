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
    SeedScore,
    headline_metrics,
    headline_scores,
    headline_tags,
    referral_counts,
    seed_spread,
)

NAN = float("nan")
METRICS = {
    "offsite_f1_macro": 0.8, "offsite_f1_macro_ci_low": 0.7, "offsite_f1_macro_ci_high": 0.9, "offsite_f1_G": 0.5,
    "offsite_auroc_A": 0.6, "offsite_auroc_A_ci_low": NAN, "offsite_auroc_A_ci_high": NAN,
    "offsite_n_referred": 4.0, "offsite_n_kept": 16.0, "offsite_error_rate_referred": 0.5, "val_f1_macro": 0.1,
}  # fmt: skip


def _summary(seeds: tuple = (), comparison_markdown: str = "", run: str | None = None, **scores: Score):
    built = BuiltEnsemble(
        model_uri="models:/odir-ensemble/2", run_id="e1", weights={"odir-a": 0.5, "odir-b": 0.5},
        thresholds={"D": 0.4, "G": 0.5, "A": 0.6}, members=("models:/odir-a/1", "models:/odir-b/1"),
        member_runs=("m1", "m2"), member_f1_macro={"odir-a": 0.75, "odir-b": None}, split_mode="given splits",
        scored_split="offsite_test", scores=scores, per_class=({"class": "D", "f1": "0.500"},),
        referral=Referral(n_referred=4, n=20, error_rate_referred=0.5, error_rate_kept=0.25),
        gallery=Gallery(run_id="v1", uri="file:///store/1/v1/artifacts/gradcam/offsite_test/gallery.html"),
        submission="s.csv", member_evaluations=("v-a", "v-b"), comparison_markdown=comparison_markdown,
        comparison_run=run, seeds=seeds,
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
    tags = headline_tags(summary, "7")
    assert {k: v for k, v in tags.items() if k != "mlflow.note.content"} == {
        "decision": "challenger", "registered_model_uri": "models:/odir-ensemble/2",
        "member_model_uris": "models:/odir-a/1,models:/odir-b/1", "member_runs": "m1,m2", "ensemble_run": "e1",
        "mlflow.runName": "pipeline p 0.800",
    }  # fmt: skip
    assert tags["mlflow.note.content"] == "\n".join([
        "**[odir-ensemble version 2](#/models/odir-ensemble/versions/2)** on offsite_test (given splits): challenger "
        "(P(better than champion) 0.40).", "", "| metric | value [95% CI] |", "|---|---|",
        "| f1_macro | 0.800 [0.700, 0.900] |", "",
        "**Runs:** [ensemble](#/experiments/7/runs/e1) · [train odir-a](#/experiments/7/runs/m1) · "
        "[evaluate odir-a](#/experiments/7/runs/v-a) · [train odir-b](#/experiments/7/runs/m2) · "
        "[evaluate odir-b](#/experiments/7/runs/v-b)", "",
        "**Grad-CAM gallery:** [gradcam/offsite_test/gallery.html]"
        "(#/experiments/7/runs/v1/artifactPath/gradcam/offsite_test/gallery.html)",
    ])  # fmt: skip
    assert "mlflow.runName" not in headline_tags(_summary(f1_macro=Score(None)), "7")  # the run keeps its name


def test_seeds_give_a_mean_and_spread_and_the_comparison_is_in_the_description() -> None:
    seeds = (SeedScore(42, "models:/odir-ensemble/2", Score(0.78, 0.75, 0.81), Score(0.82)),
             SeedScore(1, "models:/odir-ensemble/3", Score(0.76), Score(0.80)),
             SeedScore(2, "models:/odir-ensemble/4", Score(0.77), Score(0.84)))  # fmt: skip
    summary = _summary(f1_macro=Score(0.78, 0.75, 0.81), seeds=seeds, comparison_markdown="| model |", run="c1")
    assert seed_spread(seeds, "f1_macro") == pytest.approx((0.77, 0.01))  # sd of 0.78, 0.76, 0.77 (n - 1)
    metrics = headline_metrics(summary)
    assert metrics["offsite_f1_course_seed_mean"] == pytest.approx(0.82)
    assert metrics["offsite_f1_course_seed_sd"] == pytest.approx(0.02)
    note = headline_tags(summary, "7")["mlflow.note.content"]
    assert "**Over 3 seeds** (each a whole training of the recipe):" in note
    assert "- f1_macro: mean 0.770 ± 0.010 (sd; seeds 0.780, 0.760, 0.770)" in note
    assert (
        "**Members and ensemble on offsite_test**, paired over patients ([compare run](#/experiments/7/runs/c1)):"
        "\n\n| model |" in note
    )
    assert seed_spread(seeds[:1], "f1_macro") is None


def test_an_up_to_date_run_records_only_its_decision() -> None:
    summary = PipelineSummary(profile="p", data_digest="d", pipeline_run_id="p1", decision="up to date",
                              champion_version="4")  # fmt: skip
    assert headline_metrics(summary) == {} and headline_tags(summary, "7") == {"decision": "up to date"}
    assert summary.promotion_evidence() == ""


@pytest.mark.parametrize("serializer", [PickleSerializer(), JSONSerializer()], ids=["pickle", "json"])
def test_the_summary_survives_prefects_result_serializers(serializer) -> None:
    summary = _summary(f1_macro=Score(0.8, 0.7, 0.9), f1_G=Score(0.5))
    assert serializer.loads(serializer.dumps(summary)) == summary
