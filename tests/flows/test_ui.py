"""What a user sees in the UIs, in a real browser (Playwright driving Debian's Chromium): the MLflow UI on a store
filled by a tiny pipeline run, the Prefect UI of the server that ran it with ``odir serve``'s deployments.

Group ``ui``: skipped, with the reason, where Chromium or Playwright is missing (``make test`` installs Playwright;
Chromium comes from the system: ``apt-get install -y chromium``, as ``.ci/run`` does), except under ``CI=true``,
where they fail instead: CI never passes without having looked at the UIs. Screenshots go to pytest's temporary
folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.stack import warm_mlflow
from tests.flows.conftest import CHECKOUT, Stack
from tests.servers import free_port, stop, wait_for

pytestmark = pytest.mark.ui
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = [
    reason
    for absent, reason in (
        (importlib.util.find_spec("playwright") is None, "Playwright is not installed (pip install -e '.[dev]')"),
        (CHROMIUM is None, "no Chromium on PATH (apt-get install -y chromium)"),
    )
    if absent
]
if MISSING and os.environ.get("CI") != "true":
    pytest.skip("; ".join(MISSING), allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def browser_present() -> None:
    """Under ``CI=true`` the tests fail where the browser is missing: CI must have looked at the UIs."""
    if MISSING:
        pytest.fail(f"{'; '.join(MISSING)}: CI=true runs the browser tests")


@pytest.fixture(scope="module")
def filled(stack: Stack, tiny_data: Path, tiny_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with one tiny pipeline run, its MLflow UI on a free port, and odir serve's deployments."""
    home = tmp_path_factory.mktemp("ui-store")
    env = {**stack.env, "ODIR_HOME": str(home)}
    done = subprocess.run([str(BIN / "odir"), "full", "--profile", str(tiny_profile), "--data", str(tiny_data)],
                          env=env, cwd=CHECKOUT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    ui = stack.start(str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{home / 'mlruns' / 'mlflow.db'}",
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1", log=home / "mlflow-ui.log",
                     env=env)  # fmt: skip
    serve = stack.start(str(BIN / "odir"), "serve", log=home / "serve.log", env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", ui, seconds=240)
        warm_mlflow(f"http://127.0.0.1:{port}")  # as make up does (flows/stack.py says why)
        wait_for(f"{stack.api}/deployments/name/odir/full", serve, seconds=240)
        yield {"mlflow": f"http://127.0.0.1:{port}", "store": f"sqlite:///{home / 'mlruns' / 'mlflow.db'}",
               "prefect": stack.api.removesuffix("/api"), "env": env}  # fmt: skip
    finally:
        stop(serve)
        stop(ui)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1600, "height": 1000})
        browser.close()


def _text(page, url: str, expected: str | tuple[str, ...], shots: Path) -> str:
    """The page's text once ``expected`` (each of them, for a tuple) shows: the UIs render piece by piece after
    their API calls (the Prefect deployments list showed its deployments before their flow's name)."""
    page.goto(url)
    try:
        for text in (expected,) if isinstance(expected, str) else expected:
            page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(shots / f"{abs(hash(url))}.png"), full_page=True)
    return page.inner_text("body")


def test_mlflow_ui_shows_the_headline_the_champion_and_the_learning_curves(filled: dict, page,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    from flows.cli.common import runs_page

    client = MlflowClient(tracking_uri=filled["store"])
    experiment = client.get_experiment_by_name("odir")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", filled["store"])
        pipeline_runs = runs_page(filled["mlflow"])
    runs = _text(page, pipeline_runs, "pipeline tiny 0.", tmp_path)  # the run's name holds its f1_macro
    assert "odir: multi-label classifiers for fundus photographs" in runs  # the experiment's description
    models = _text(page, f"{filled['mlflow']}/#/models/odir-ensemble", "odir ensemble", tmp_path)
    assert "@champion" in models or "champion" in models
    query = "tags.`odir.step` = 'train' and tags.`odir.model` = 'tiny-a'"
    [train] = client.search_runs([experiment.experiment_id], query)
    curves = f"{filled['mlflow']}/#/experiments/{experiment.experiment_id}/runs/{train.info.run_id}/model-metrics"
    _text(page, curves + "?workflowType=machine_learning", "Model metrics", tmp_path)
    page.get_by_placeholder("Search metric charts").fill("val_f1_macro")  # as the README tells a user
    chart = page.get_by_text("val_f1_macro", exact=True).first
    chart.wait_for(timeout=60_000)  # the learning curve's chart (per epoch), beside best_val_f1_macro's
    page.screenshot(path=str(tmp_path / "learning-curve.png"))


def test_the_models_tab_ranks_named_members_and_the_ensemble_on_one_f1_column(filled: dict, page,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    experiment = MlflowClient(tracking_uri=filled["store"]).get_experiment_by_name("odir").experiment_id
    page.set_viewport_size({"width": 3000, "height": 1000})  # the metric columns come after the model attributes
    try:
        models = _text(page, f"{filled['mlflow']}/#/experiments/{experiment}/models?workflowType=machine_learning",
                       ("tiny-a", "tiny-b", "ensemble", "offsite_f1_macro"), tmp_path)  # fmt: skip
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})
    assert "system/" not in models  # no system metric on the comparison path


def test_the_pipeline_runs_description_links_its_runs_and_gallery(filled: dict, page, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=filled["store"])
    experiment = client.get_experiment_by_name("odir").experiment_id
    [pipeline] = client.search_runs([experiment], "tags.`odir.step` = 'pipeline'")
    url = f"{filled['mlflow']}/#/experiments/{experiment}/runs/{pipeline.info.run_id}?workflowType=machine_learning"
    _text(page, url, ("Members and ensemble on offsite_test", "train odir-tiny-a"), tmp_path)
    gallery = "gradcam/offsite_test/gallery.html"  # the artifact viewer's header names the file it opened
    links = (("train odir-tiny-a", "train tiny-a"), (gallery, gallery), ("odir-ensemble version 1", "Version 1"))
    for link, shows in links:
        with page.context.expect_page() as opened:  # the UI opens a description's links in a new tab
            page.get_by_role("link", name=link).first.click()
        tab = opened.value
        try:
            tab.get_by_text(shows, exact=False).first.wait_for(timeout=60_000)
        finally:
            tab.screenshot(path=str(tmp_path / f"{link.replace('/', '-')}.png"))
            tab.close()


def test_prefect_ui_shows_the_deployment_and_a_flow_runs_tasks(filled: dict, page, tmp_path: Path) -> None:
    deployments = _text(page, f"{filled['prefect']}/deployments", ("full", "odir"), tmp_path)
    assert "full" in deployments and "odir" in deployments
    query = json.dumps({"flow_runs": {"name": {"like_": "odir"}}, "sort": "START_TIME_DESC", "limit": 50}).encode()
    request = urllib.request.Request(f"{filled['prefect']}/api/flow_runs/filter", query,
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = [r for r in json.loads(response.read()) if r["state_type"] == "COMPLETED"]
    flow_run = next(r for r in runs if r["name"].startswith("odir "))  # the pipeline's run, not a train subflow
    tasks = _text(page, f"{filled['prefect']}/runs/flow-run/{flow_run['id']}", ("ingest", "ensemble"), tmp_path)
    assert "ingest" in tasks and "ensemble" in tasks


def _artifact_id(prefect: str, key: str) -> str:
    query = json.dumps({"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}).encode()
    request = urllib.request.Request(f"{prefect}/api/artifacts/filter", query, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())[0]["id"]


def test_prefect_ui_shows_the_pipeline_runs_summary_artifact(filled: dict, page, tmp_path: Path) -> None:
    # the key's page lists the versions; each artifact's own page renders it
    listed = _text(page, f"{filled['prefect']}/artifacts/key/odir-tiny-summary",
                   ("Created odir-tiny-summary", "odir tiny: scores, decision and links"), tmp_path)  # fmt: skip
    assert "odir tiny: scores, decision and links" in listed
    summary_id = _artifact_id(filled["prefect"], "odir-tiny-summary")
    summary = _text(page, f"{filled['prefect']}/artifacts/artifact/{summary_id}", "Decision:", tmp_path)
    assert "odir tiny: champion" in summary and "f1_macro" in summary and "Grad-CAM gallery" in summary
    table_id = _artifact_id(filled["prefect"], "odir-tiny-per-class")
    table = _text(page, f"{filled['prefect']}/artifacts/artifact/{table_id}", ("auroc", "precision"), tmp_path)
    assert "precision" in table
