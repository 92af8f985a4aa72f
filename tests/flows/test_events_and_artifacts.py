"""Against a real Prefect server of their own: a pipeline run's artifacts (summary, per-class table, training
progress), and event-driven retraining (changed data starts exactly one ``odir/retrain`` run, unchanged none)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from flows.artifacts import model_link, per_class_rows, run_link, summary_markdown
from flows.summary import BuiltEnsemble, PipelineSummary, Referral, Score
from tests.flows.conftest import BIN, CHECKOUT, Stack, prefect_server

pytestmark = pytest.mark.slow

READ_ARTIFACTS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    print(json.dumps([{"key": a.key, "type": a.type, "data": a.data} for a in client.read_artifacts()], default=str))
"""

# the runs of odir/retrain that a trigger started: they carry a data parameter, the cron's scheduled runs do not
TRIGGERED_RUNS = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("odir/retrain")
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    print(json.dumps([r.parameters for r in runs if "data" in r.parameters]))
"""

APPLY_RETRAIN = """
from flows.deployments import served_deployments
[deployment.apply() for deployment in served_deployments() if deployment.name == "retrain"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with prefect_server(tmp_path_factory.mktemp("events-home")) as stack:
        yield stack


@pytest.fixture(scope="module")
def champion(server: Stack, tiny_data: Path, tiny_profile: Path) -> str:
    """``odir full`` on the tiny data against the server: its flow run, and a champion built from that data."""
    done = server.run(str(BIN / "odir"), "full", "--profile", str(tiny_profile), "--data", str(tiny_data))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _json(server: Stack, script: str):
    done = server.run(sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_pipeline_run_publishes_its_summary_table_and_progress(server: Stack, champion: str) -> None:
    artifacts = {a["key"]: a for a in _json(server, READ_ARTIFACTS)}
    summary = artifacts["odir-tiny-summary"]
    assert summary["type"] == "markdown"
    assert "| f1_macro |" in summary["data"] and "**Decision:** champion" in summary["data"]
    assert "models:/odir-ensemble/1" in summary["data"] and "pipeline run (run `" in summary["data"]
    table = artifacts["odir-tiny-per-class"]
    assert table["type"] == "table"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [row["class"] for row in rows] == ["D", "G", "A"] and {"f1", "auroc"} <= set(rows[0])
    for model in ("tiny-a", "tiny-b"):
        progress = artifacts[f"train-{model}-progress"]
        assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    assert "referred to a grader:" in champion and "odir-tiny-summary" in champion
    assert "Grad-CAM gallery" in champion and "/gradcam/offsite_test/gallery.html" in champion
    assert "**Grad-CAM gallery:** evaluate run (run `" in summary["data"]


def test_changed_data_starts_one_retrain_run_and_unchanged_data_none(
    server: Stack, champion: str, tiny_data: Path, tmp_path: Path
) -> None:
    applied = server.run(sys.executable, "-c", APPLY_RETRAIN)  # the deployment and its trigger, with no runner
    assert applied.returncode == 0, applied.stderr[-3000:]
    same = server.run(str(BIN / "odir"), "ingest", str(tiny_data))
    assert same.returncode == 0, same.stderr[-3000:]
    assert "is the champion's: no retraining event" in same.stdout
    assert "drift against the champion's reference images:" in same.stdout  # its own train images
    changed = Path(shutil.copytree(tiny_data, tmp_path / "changed"))
    lines = (changed / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1,1,1"  # other labels: another digest
    (changed / "train.csv").write_text("\n".join(lines) + "\n")
    sent = server.run(str(BIN / "odir"), "ingest", str(changed))
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert "sent odir.dataset.changed" in sent.stdout
    deadline = time.monotonic() + 90
    while not (runs := _json(server, TRIGGERED_RUNS)) and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(10)  # a second run (the unchanged data's, or a duplicate) would have come by now
    runs = _json(server, TRIGGERED_RUNS)
    assert runs == [{"data": str(changed), "only_if_changed": True}]


def test_summary_markdown_and_links_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    built = BuiltEnsemble(
        model_uri="models:/odir-ensemble/3", run_id="e1", weights={}, thresholds={}, members=("models:/odir-a/1",),
        member_runs=("m1",), member_f1_macro={"odir-a": 0.75}, split_mode="given splits", scored_split="offsite_test",
        scores={"f1_macro": Score(0.8, 0.7, 0.9), "f1_G": Score(0.5)}, per_class=(),
        referral=Referral(n_referred=4, n=20, error_rate_referred=0.5, error_rate_kept=0.125), gallery=None,
        submission=None,
    )  # fmt: skip
    summary = PipelineSummary(profile="p", data_digest="d", pipeline_run_id="p1", decision="champion",
                              champion_version="3", prob_better=0.95, built=built)  # fmt: skip
    monkeypatch.delenv("ODIR_MLFLOW_UI_URL", raising=False)
    text = summary_markdown(summary)
    assert "| f1_macro | 0.800 [0.700, 0.900] |" in text and "| f1_G | 0.500 |" in text
    assert "(P(better than champion) 0.95); champion is version 3" in text
    unfair = replace(summary, decision="challenger", prob_better=None, promotion_note="no comparison: why")
    assert "**Decision:** challenger (no comparison: why); champion is version 3." in summary_markdown(unfair)
    assert "4 of 20 images on offsite_test (error rate 0.50 referred vs 0.12 kept)" in text
    assert "`models:/odir-ensemble/3`" in text and "member run 1 (run `m1`)" in text
    monkeypatch.setenv("ODIR_MLFLOW_UI_URL", "http://ui:5000/")
    assert (
        model_link("models:/odir-ensemble/3")
        == "[models:/odir-ensemble/3](http://ui:5000/#/models/odir-ensemble/versions/3)"
    )
    link = run_link("r9", "x")
    assert link.startswith("[x](http://ui:5000/#/experiments/") and link.endswith("/runs/r9)")


def test_per_class_rows_by_hand() -> None:
    metrics = {"offsite_f1_D": 0.5, "offsite_f1_D_ci_low": 0.4, "offsite_f1_D_ci_high": 0.6, "offsite_auroc_A": 0.9}
    rows = per_class_rows(metrics, "offsite_test")
    assert rows[0]["class"] == "D" and rows[0]["f1"] == "0.500 [0.400, 0.600]" and rows[0]["recall"] == "n/a"
    assert rows[2]["auroc"] == "0.900"


def test_prefect_yaml_declares_the_trigger_odir_serve_uses() -> None:
    import yaml

    from flows.events import retrain_trigger

    declared = yaml.safe_load((CHECKOUT / "prefect.yaml").read_text())
    [retrain] = [d for d in declared["deployments"] if d["name"] == "retrain"]
    [trigger] = retrain["triggers"]
    served = retrain_trigger()
    assert trigger["expect"] == sorted(served.expect) and trigger["match"] == served.match.root
    assert trigger["parameters"] == served.parameters and trigger["name"] == served.name
