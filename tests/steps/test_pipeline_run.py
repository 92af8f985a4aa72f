"""What the flows record in MLflow through ``steps.support.pipeline_run``, against a real embedded store: a parent
run opened with its tags, parameters and texts, its headline, how it ends, and a registered version's tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps.support import pipeline_run, tracking


def test_a_parent_run_gets_its_tags_params_texts_and_headline_and_ends_finished(odir_home: Path) -> None:
    run_id = pipeline_run.start("odir-test", "pipeline p", {tracking.STEP_TAG: "pipeline", "profile": "p"},
                                params={"data_root": "/data"}, texts={"config/profile.yaml": "name: p\n"})  # fmt: skip
    with pipeline_run.ended(run_id):
        pipeline_run.record(run_id, {"offsite_f1_macro": 0.8}, {"decision": "champion", "mlflow.runName": "renamed"})
        assert MlflowClient().get_run(run_id).info.status == "RUNNING"
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "renamed"
    assert run.data.params == {"data_root": "/data"} and run.data.metrics == {"offsite_f1_macro": 0.8}
    assert run.data.tags["profile"] == "p" and run.data.tags[tracking.STEP_TAG] == "pipeline"
    assert run.data.tags["odir.host"] and run.data.tags["odir.pid"]  # whose process: a dead one's run is reaped
    assert Path(client.download_artifacts(run_id, "config/profile.yaml")).read_text() == "name: p\n"
    assert pipeline_run.run_tag(run_id, "decision") == "champion" and pipeline_run.run_tag(run_id, "nosuch") is None


def test_a_parent_run_ends_failed_when_its_block_raises(odir_home: Path) -> None:
    run_id = pipeline_run.start("odir-test", "experiments g", {tracking.STEP_TAG: "experiments"})
    with pytest.raises(KeyboardInterrupt), pipeline_run.ended(run_id):  # a cancelled flow too, not only errors
        raise KeyboardInterrupt
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_a_versions_tags(odir_home: Path, tmp_path: Path) -> None:
    tracking.setup()
    client = MlflowClient()
    client.create_registered_model("odir-test-model")
    (tmp_path / "model").mkdir()
    for digest in ("a" * 64, "b" * 64):
        client.create_model_version("odir-test-model", str(tmp_path / "model"),
                                    tags={"data_digest": digest, "profile_key": "k"})  # fmt: skip
    assert pipeline_run.version_tags("odir-test-model", "2") == {"data_digest": "b" * 64, "profile_key": "k"}
