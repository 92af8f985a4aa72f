"""bench.recipe_ensemble on two tiny cross-validated "ablation rows": it finds each row's CV member, combines them
with the pipeline's ensemble step and prints the row; a row without a CV training is refused by name."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench import recipe_ensemble
from components.config import parse_model_spec
from components.data.folds import CVSpec
from components.models.tta import STUDY_VIEWS
from steps import ensemble, ingest, train
from steps.support.predictions import read_predictions

CV = CVSpec(folds=3, seed=5)
VIEWS = STUDY_VIEWS  # the views bench.recipe_ensemble combines with


@pytest.fixture(scope="module")
def rows(
    odir_home: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, train.TrainStepResult]:
    """Two ablation rows, each a CV member trained under its own profile with its own single-member ensemble."""
    data = Path(shutil.copytree(tiny_data, tmp_path_factory.mktemp("rows") / "data"))
    (data / "offsite_test.csv").unlink()
    manifest_uri = ingest.run(ingest.IngestConfig(data_root=str(data))).manifest_uri
    members = {}
    for profile, loss in (("row-a", "bce"), ("row-b", "focal")):
        spec = parse_model_spec({"name": f"{profile}-net", "backbone": "tiny_cnn", "loss": loss, "image_size": 32,
                                 "batch_size": 8, "epochs": 1, "lr": 0.003, "seed": 1})  # fmt: skip
        member = train.run(train.TrainStepConfig(manifest_uri=manifest_uri, spec=spec, profile=profile, cv=CV,
                                                 views=VIEWS))  # fmt: skip
        ensemble.run(ensemble.EnsembleConfig(member_model_uris=(member.model_uri,), manifest_uri=manifest_uri,
                                             member_val_predictions=(member.oof_predictions_uri,), views=VIEWS,
                                             grid="fine", profile=profile))  # fmt: skip
        members[profile] = member
    return members


def test_it_combines_the_rows_members_and_prints_their_cross_fitted_row(
    rows: dict[str, train.TrainStepResult], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["recipe_ensemble", "row-a", "row-b"])
    recipe_ensemble.main()
    printed = capsys.readouterr().out
    client = MlflowClient()
    experiment = client.get_experiment_by_name("odir").experiment_id
    combined = recipe_ensemble.finished(client, experiment, "ensemble", "row-a+row-b")
    tags, metrics = combined.data.tags, combined.data.metrics
    version = client.get_model_version(*tags["registered_model_uri"].removeprefix("models:/").split("/"))
    assert version.tags["members"] == f"{rows['row-a'].model_uri},{rows['row-b'].model_uri}"
    cross_fitted = read_predictions(tags["cv_predictions_uri"])
    oof = read_predictions(rows["row-a"].oof_predictions_uri)
    assert sorted(cross_fitted["id"]) == sorted(oof["id"])  # every pool image once, scored out of fold
    assert f"| row-a+row-b | - | - | - | {metrics['cv_f1_macro']:.3f} [" in printed
    assert "vs row-a alone (paired): " in printed and "vs row-b alone (paired): " in printed


def test_a_row_without_a_cross_validated_training_is_refused_by_name(
    rows: dict[str, train.TrainStepResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["recipe_ensemble", "row-a", "row-missing"])
    with pytest.raises(SystemExit, match="row-missing: no finished cross-validated training"):
        recipe_ensemble.main()
