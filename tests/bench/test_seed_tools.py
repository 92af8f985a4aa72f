"""bench.seed_table and bench.threshold_strategies on two tiny recipes of two seeds each, cross-validated: their
numbers are those the ensemble step logged, averaged over the seeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from bench import seed_table, threshold_strategies
from components.config import parse_model_spec
from components.data.folds import CVSpec
from components.evaluation.metrics import f1_macro
from components.models.tta import STUDY_VIEWS
from steps import ensemble, evaluate, ingest, train

pytestmark = pytest.mark.slow  # eight tiny cross-validated trainings and ensembles

CV = CVSpec(folds=3, seed=5)
RECIPES = {"bce": ("bce-s1", "bce-s2"), "focal": ("focal-s1", "focal-s2")}


@pytest.fixture(scope="module")
def store(odir_home: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per profile (recipe and seed) its ensemble run's metrics; every profile a CV member of its own."""
    data = Path(shutil.copytree(tiny_data, tmp_path_factory.mktemp("seeds") / "data"))
    manifest_uri = ingest.run(ingest.IngestConfig(data_root=str(data))).manifest_uri
    logged = {}
    for loss, profiles in RECIPES.items():
        for seed, profile in enumerate(profiles, start=1):
            spec = parse_model_spec({"name": f"{profile}-net", "backbone": "tiny_cnn", "loss": loss, "image_size": 32,
                                     "batch_size": 8, "epochs": 1, "lr": 0.003, "seed": seed})  # fmt: skip
            member = train.run(train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile=profile, cv=CV,
                                                     views=STUDY_VIEWS))  # fmt: skip
            result = ensemble.run(ensemble.EnsembleConfig(
                member_model_uris=(member.model_uri,), member_val_predictions=(member.oof_predictions_uri,),
                manifest_uri=manifest_uri, views=STUDY_VIEWS, grid="fine", profile=profile,
            ))  # fmt: skip
            held_out = evaluate.run(evaluate.EvaluateConfig(model_uri=result.model_uri, manifest_uri=manifest_uri,
                                                            split="offsite_test", gradcam_gallery=0))  # fmt: skip
            logged[profile] = {**MlflowClient().get_run(result.run_id).data.metrics, **held_out.metrics}
    return logged


def _row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_seed_table_averages_each_recipe_s_logged_cross_fitted_scores(store: dict) -> None:
    table = seed_table.table(MlflowClient().tracking_uri, {name: list(p) for name, p in RECIPES.items()})
    for name, profiles in RECIPES.items():
        row = _row(table, name)
        logged = [store[profile]["cv_f1_macro"] for profile in profiles]
        assert row[1] == "2" and row[2] == " / ".join(f"{value:.3f}" for value in logged)
        spread = np.std(logged, ddof=1)
        assert row[3].startswith(f"**{np.mean(logged):.3f}** ± {spread:.3f} [")
        course = [store[profile]["cv_f1_course"] for profile in profiles]
        assert row[5].startswith(f"**{np.mean(course):.3f}** ± ")
    assert _row(table, "bce")[6] == "reference"
    focal, bce = (np.mean([store[p]["cv_f1_macro"] for p in RECIPES[r]]) for r in ("focal", "bce"))
    assert _row(table, "focal")[6].startswith(f"{focal - bce:+.3f} [") and "(2 seed pairs)" in _row(table, "focal")[6]


def test_a_profile_without_a_cross_validated_ensemble_is_named(store: dict) -> None:
    with pytest.raises(SystemExit, match="bce: profile nosuch has no finished cross-validated ensemble run"):
        seed_table.table(MlflowClient().tracking_uri, {"bce": ["bce-s1", "nosuch"]})


def test_the_tuned_strategy_reproduces_the_ensemble_step_and_the_others_are_paired_with_it(store: dict) -> None:
    uri = MlflowClient().tracking_uri
    table = threshold_strategies.table(uri, list(RECIPES["bce"]))
    tuned = _row(table, "tuned")
    logged = np.mean([store[profile]["cv_f1_macro"] for profile in RECIPES["bce"]])
    assert tuned[1].startswith(f"{logged:.3f} [") and tuned[2] == "-"
    client = MlflowClient()
    experiment = client.get_experiment_by_name("odir").experiment_id
    frames = [threshold_strategies.out_of_fold(client, experiment, p) for p in RECIPES["bce"]]
    labels = frames[0].loc[:, ["D", "G", "A"]].to_numpy()
    shifted = threshold_strategies.strategy_predictions(frames, "fine")
    mean = {name: np.mean([f1_macro(labels, probs) for probs in runs]) for name, runs in shifted.items()}
    assert mean["tuned"] == pytest.approx(logged)
    for strategy in ("shrunk", "fixed", "prevalence"):
        row = _row(table, strategy)
        assert row[1].startswith(f"{mean[strategy]:.3f} [")
        assert row[2].startswith(f"{mean[strategy] - mean['tuned']:+.3f} [") and "P(better)" in row[2]


def test_on_held_out_patients_the_tuned_strategy_is_the_registered_ensembles_score(store: dict) -> None:
    table = threshold_strategies.table(MlflowClient().tracking_uri, list(RECIPES["bce"]), held_out="offsite_test")
    held_out = table.split("Held out (offsite_test)")[1]
    tuned = _row(held_out, "tuned")
    logged = np.mean([store[profile]["offsite_f1_macro"] for profile in RECIPES["bce"]])
    assert tuned[1].startswith(f"{logged:.3f} [")  # the registered thresholds, as the evaluate step scored them
    for strategy in ("shrunk", "fixed", "prevalence"):
        assert _row(held_out, strategy)[2].startswith(("+", "-")) and "P(better)" in _row(held_out, strategy)[2]
