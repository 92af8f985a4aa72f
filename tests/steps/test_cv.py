"""Patient-grouped cross-validation through the steps on tiny synthetic data: out-of-fold predictions, fold-averaged
members, a cross-fitted ensemble score and promotion on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components.config import parse_model_spec
from components.data.folds import CVSpec
from components.data.splits import patient_of
from components.evaluation.scoring import compared_metrics
from steps import ensemble, ingest, promote, train
from steps.support import registry
from steps.support.manifest import load_manifest
from steps.support.members import member_checkpoints, member_view_probs
from steps.support.predict import predict_paths
from steps.support.predictions import read_predictions

CV = CVSpec(folds=3, seed=5)
VIEWS = ("identity", "hflip")


@pytest.fixture(scope="module")
def cv_run(odir_home: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = Path(shutil.copytree(tiny_data, tmp_path_factory.mktemp("cv") / "data"))
    (data / "offsite_test.csv").unlink()  # like the real data: no labelled test split, CV is the estimate
    manifest_uri = ingest.run(ingest.IngestConfig(data_root=str(data))).manifest_uri
    members = []
    for name, loss in (("cv-a", "bce"), ("cv-b", "focal")):
        spec = parse_model_spec({"name": name, "backbone": "tiny_cnn", "loss": loss, "image_size": 32,
                                 "batch_size": 8, "epochs": 2, "lr": 0.003, "seed": 1})  # fmt: skip
        config = train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile="cv", cv=CV, views=VIEWS)
        members.append(train.run(config))
    ens = ensemble.run(ensemble.EnsembleConfig(
        member_model_uris=tuple(m.model_uri for m in members),
        member_val_predictions=tuple(m.oof_predictions_uri for m in members), manifest_uri=manifest_uri, views=VIEWS,
    ))  # fmt: skip
    return {"manifest_uri": manifest_uri, "members": members, "ensemble": ens}


def test_every_pool_image_is_predicted_by_the_model_of_its_own_fold(cv_run: dict) -> None:
    manifest = load_manifest(cv_run["manifest_uri"])
    pool = manifest.cv_pool(CV)
    for member in cv_run["members"]:
        oof = read_predictions(member.oof_predictions_uri)
        assert list(oof["id"]) == list(pool["id"]) and list(oof["fold"]) == list(pool["fold"])
        assert oof.groupby(oof["id"].map(patient_of))["fold"].nunique().max() == 1  # a patient is in one fold
        assert [p.name for p in member_checkpoints(member.model_uri)] == [
            "fold_0.pt",
            "fold_1.pt",
            "fold_2.pt",
        ]
        metrics = MlflowClient().get_run(member.run_id).data.metrics
        assert all(f"fold{k}_best_val_f1_macro" in metrics for k in range(CV.folds))
        assert metrics["cv_f1_macro_ci_low"] <= metrics["cv_f1_macro"] <= metrics["cv_f1_macro_ci_high"]


def test_fold_models_train_on_all_folds_but_two_or_with_no_epoch_picked_all_but_one() -> None:
    folds = np.array([0, 1, 2, 0, 1, 2, 2])
    fit, pick = train.fold_rows(folds, 2, 3, "f1_macro")  # fold 0 picks the epoch of the model that predicts fold 2
    assert fit.tolist() == [0, 1, 0, 0, 1, 0, 0] and pick.tolist() == [1, 0, 0, 1, 0, 0, 0]
    fit, pick = train.fold_rows(folds, 2, 3, "last")
    assert fit.tolist() == [1, 1, 0, 1, 1, 0, 0] and pick.tolist() == [0, 0, 1, 0, 0, 1, 1]


def test_the_registered_member_averages_its_fold_models(cv_run: dict) -> None:
    manifest = load_manifest(cv_run["manifest_uri"])
    paths = [str(p) for p in manifest.paths("onsite_test")]
    member = cv_run["members"][0]
    checkpoints = member_checkpoints(member.model_uri)
    each = [member_view_probs([c], paths, VIEWS).mean(axis=(0, 1)) for c in checkpoints]
    averaged = predict_paths(member.model_uri, paths, VIEWS).probs
    np.testing.assert_allclose(averaged, np.mean(each, axis=0), atol=1e-6)


def test_the_ensemble_reports_a_cross_fitted_score_and_promotion_compares_it(cv_run: dict) -> None:
    ens = cv_run["ensemble"]
    for name in ("f1_macro", "f1_G", "auroc_D"):
        assert ens.metrics[f"cv_{name}_ci_low"] <= ens.metrics[f"cv_{name}"] <= ens.metrics[f"cv_{name}_ci_high"]
    first = promote.run(promote.PromoteConfig(model_uri=ens.model_uri, manifest_uri=cv_run["manifest_uri"],
                                              split="cv"))  # fmt: skip
    assert first.decision == "champion"
    again = ensemble.run(ensemble.EnsembleConfig(
        member_model_uris=tuple(m.model_uri for m in cv_run["members"]), manifest_uri=cv_run["manifest_uri"],
        member_val_predictions=tuple(m.oof_predictions_uri for m in cv_run["members"]), views=VIEWS, reuse=False,
    ))  # fmt: skip
    second = promote.run(promote.PromoteConfig(model_uri=again.model_uri, manifest_uri=cv_run["manifest_uri"],
                                               split="cv"))  # fmt: skip
    assert second.decision == "challenger" and second.prob_better == pytest.approx(0.5)  # the same fit: a tie
    assert promote.current_champion(registry.ENSEMBLE_MODEL) == ens.version


def test_too_many_folds_name_the_profile_field(cv_run: dict) -> None:
    from components.errors import OdirError

    manifest = load_manifest(cv_run["manifest_uri"])
    with pytest.raises(OdirError, match=r"profile field cv\.folds: 500 folds need at least 500 patients"):
        manifest.cv_pool(CVSpec(folds=500))


def test_members_and_the_ensemble_share_the_cv_columns_of_the_models_tab(cv_run: dict) -> None:
    """In CV mode the members' out-of-fold scores at 0.5 and the ensemble's cross-fitted ones sit under the same
    ``cv_*`` keys of their logged models, so one column ranks them."""
    client = MlflowClient()
    for result in (*cv_run["members"], cv_run["ensemble"]):
        linked = client.get_logged_model(registry.logged_model_id(result.model_uri)).metrics
        logged = client.get_run(result.run_id).data.metrics
        assert {m.key: m.value for m in linked} == compared_metrics(logged, "cv_")
        assert {"cv_f1_macro", "cv_f1_macro_ci_low", "cv_f1_course_ci_high"} <= {m.key for m in linked}
