"""Model card of a registered version: what MLflow holds about it, gathered into the plain facts that
:mod:`components.evaluation.model_card` renders, and published as the version's description and ``model_card.md``.

:func:`gather` reads everything from the tracking store, nothing is passed in by hand: the version's tags
(data digest, profile, spec key, code fingerprint, kind, members, ``score.<split>.f1_macro``, ``promotion.*``), the
run that produced it (a member's training run: the spec as params, ``best_epoch``, ``best_val_*`` or, cross-validated,
the out-of-fold ``cv_*`` scores, the dataset input; the ensemble run: members, weights, TTA views, thresholds,
temperatures, cross-fitted ``cv_*`` scores), the evaluate runs of the version (tag ``odir.step`` = ``evaluate``,
param ``model_uri`` = ``models:/NAME/VERSION``; their ``<prefix><metric>`` and ``_ci_low`` / ``_ci_high``
metrics), the thresholds the tune_thresholds step fit for a member, the newest promote run, and the ingest run of
the data digest (``validation/report.json``: images, patients, positives and unlabelled images per split, patients
shared between splits).

:func:`publish_model_card` makes the card the version's description (the MLflow UI renders it on the version's
page), logs the same text as ``model_card.md`` to the run that produced the version, and gives the registered model a
one-line description when it has none. Publishing again writes the same text: it is idempotent, and it is meant to
be called again whenever a new evaluation or promotion of the version is logged (after the last one of a pipeline
run). ``python -m steps.model_card --model-uri models:/odir-ensemble/3`` does it from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import LABELS
from components.evaluation.model_card import fitted, model_summary
from components.evaluation.model_card_facts import (
    DataReport,
    DatasetInput,
    Evaluation,
    Facts,
    Member,
    ProducingRun,
    Promotion,
    RecordedScore,
    SplitCounts,
    Thresholds,
)
from steps.support import cli, registry, tracking

log = logging.getLogger(__name__)

CARD_ARTIFACT = "model_card.md"


def _client():
    from mlflow import MlflowClient

    tracking.connect()
    return MlflowClient()


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=1000)]


def _search(client, conditions: list[str]) -> list[Any]:
    """FINISHED runs matching every condition, newest first, in any experiment."""
    conditions = [*conditions, "attributes.status = 'FINISHED'"]
    return client.search_runs(
        _experiment_ids(client), " and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=500
    )


def _producing_run(client, version) -> Any | None:
    """The run that logged the version (its ``run_id``), else the run tagged with its URI."""
    if version.run_id:
        return client.get_run(version.run_id)
    uri = f"models:/{version.name}/{version.version}"
    runs = _search(client, [f"tags.registered_model_uri = '{uri}'"])
    return runs[0] if runs else None


def _artifact_json(client, run_id: str, path: str) -> Any | None:
    """A JSON artifact of a run, or None when the run has no such file."""
    folder, _, _ = path.rpartition("/")
    if path not in {f.path for f in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def _json_uri(uri: str | None) -> Any | None:
    if not uri:
        return None
    try:
        return tracking.read_json(uri)
    except Exception as error:  # an artifact store that lost the file must not stop the card
        log.warning("model card: could not read %s: %s", uri, error)
        return None


def _data_report(client, digest: str | None) -> DataReport | None:
    """``validation/report.json`` of the newest finished ingest of this data digest."""
    if not digest:
        return None
    for run in _search(client, [f"tags.`{tracking.STEP_TAG}` = 'ingest'", f"tags.data_digest = '{digest}'"]):
        report = _artifact_json(client, run.info.run_id, "validation/report.json")
        if report is not None:
            splits = {
                split: SplitCounts(c["images"], c["patients"], c.get("positives", {}), c.get("no_label", 0))
                for split, c in report.get("splits", {}).items()
            }
            shared = {pair: v["count"] for pair, v in report.get("shared_patients", {}).items()}
            return DataReport(splits, shared)
    return None


def _split_mode(version_tags: dict[str, str], run: Any | None) -> str:
    """``given`` or ``cv``: the version's tag, else the producing run's tag or param (a member's train run logs
    ``split_mode``), else ``cv`` when the run holds out-of-fold predictions (a cross-fitted ensemble); ``given``
    when nothing says otherwise."""
    for source in (version_tags, run.data.tags if run else {}, run.data.params if run else {}):
        if source.get("split_mode"):
            return source["split_mode"]
    if run is not None and {"oof_predictions_uri", "cv_predictions_uri"} & set(run.data.tags):
        return "cv"
    return "given"


def _per_class_at(step: str, split: str, run_id: str) -> str:
    """Where a run keeps an evaluation's per-class results: the evaluate step's table, else the run's metrics."""
    if step == "evaluate":
        return f"`tables/{split}_per_class.csv` of evaluate run `{run_id}`"
    return f"the `{tracking.split_prefix(split)}*` metrics of {step} run `{run_id}`"


def _cv_scores(run: Any, kind: str) -> Evaluation | None:
    """The producing run's ``cv_*`` metrics (out-of-fold at 0.5 for a member, cross-fitted for an ensemble)."""
    metrics = {k.removeprefix("cv_"): v for k, v in run.data.metrics.items() if k.startswith("cv_")}
    if not metrics:
        return None
    if kind == "ensemble":
        views = run.data.params.get("tta_views", "")
        thresholds = "cross-fitted (tuned on the other folds)"
    else:
        views = run.data.tags.get("cv", "").rpartition("views ")[2]
        thresholds = "0.5"
    step, run_id = run.data.tags.get(tracking.STEP_TAG, "train"), run.info.run_id
    return Evaluation("cv", tuple(filter(None, views.split(","))), thresholds, metrics, step,
                      _per_class_at(step, "cv", run_id))  # fmt: skip


def _evaluations(client, model_uri: str, ensemble_thresholds: str) -> tuple[list[Evaluation], list[str]]:
    """The newest finished evaluation per (split, TTA views, thresholds) of this version, and the predictions its
    val evaluations saved."""
    runs = _search(client, [f"tags.`{tracking.STEP_TAG}` = 'evaluate'", f"params.model_uri = '{model_uri}'"])
    seen, found, val_predictions = set(), [], []
    for run in runs:
        params = run.data.params
        split, views = params.get("split", "?"), tuple(filter(None, params.get("tta_views", "").split(",")))
        key = (split, views, params.get("thresholds_uri"))
        if key in seen:
            continue
        seen.add(key)
        thresholds = "given" if params.get("thresholds_uri") else ensemble_thresholds
        prefix = tracking.split_prefix(split)
        metrics = {k.removeprefix(prefix): v for k, v in run.data.metrics.items() if k.startswith(prefix)}
        scored = run.data.metrics.get("scored_images")
        found.append(Evaluation(split, views, thresholds, metrics, "evaluate",
                                _per_class_at("evaluate", split, run.info.run_id),
                                None if scored is None else int(scored)))  # fmt: skip
        if split == "val":
            val_predictions.append(run.data.tags.get("predictions_uri"))
    return found, val_predictions


def _thresholds(payload: dict | None, grid: str) -> Thresholds | None:
    """A thresholds artifact (``thresholds`` and, when not all F1, ``objectives`` per class) and its grid's name."""
    if not payload:
        return None
    return Thresholds(payload["thresholds"], grid, payload.get("objectives"))


def _member_thresholds(client, run: Any | None, val_predictions: list[str]) -> Thresholds | None:
    """The thresholds the tune_thresholds step fit on this member's out-of-fold or validation predictions, if any."""
    candidates = [run.data.tags.get("oof_predictions_uri")] if run is not None else []
    for predictions in filter(None, candidates + val_predictions):
        conditions = [f"tags.`{tracking.STEP_TAG}` = 'tune_thresholds'", f"params.predictions_uri = '{predictions}'"]
        for tuned in _search(client, conditions):
            payload = _json_uri(tuned.data.tags.get("thresholds_uri"))
            if payload:
                return _thresholds(payload, tuned.data.params.get("grid", "?"))
    return None


def _promotion(client, model_uri: str, tags: dict[str, str]) -> Promotion | None:
    """What the newest promote run decided about this version (its params, and the ``promotion.*`` version tags)."""
    found = {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")}
    runs = _search(client, [f"tags.`{tracking.STEP_TAG}` = 'promote'", f"params.model_uri = '{model_uri}'"])
    if runs:
        found = {**runs[0].data.params, **found}
    if not found:
        return None
    return Promotion(**{f.name: found[f.name] for f in dataclasses.fields(Promotion) if f.name in found})


def _member_rows(client, run: Any) -> list[dict]:
    """Per member of an ensemble run: name, version URI, spec fields, weight and temperatures."""
    tags, params = run.data.tags, run.data.params
    weights = _json_uri(tags.get("weights_uri")) or {}
    temperatures = _artifact_json(client, run.info.run_id, "temperatures.json") or _json_uri(
        tags.get("temperatures_uri")
    )
    names = [n for n in params.get("members", "").split(",") if n]
    uris = {
        registry.split_model_uri(uri)[0].removeprefix(registry.MODEL_PREFIX): uri
        for uri in filter(None, tags.get("members", "").split(","))
    }
    rows = []
    for name in names:
        row = {"name": name, "uri": uris.get(name), "weight": weights.get(name), "spec": {}}
        if temperatures and name in temperatures:
            row["temperatures"] = temperatures[name]
        elif all(f"{name}.temperature_{c}" in run.data.metrics for c in LABELS):
            row["temperatures"] = {c: run.data.metrics[f"{name}.temperature_{c}"] for c in LABELS}
        rows.append(row)
    return rows


def _with_member_specs(client, rows: list[dict], member_uris: str) -> list[dict]:
    """Fills each row's spec from its member version's training run (and its URI from the version tags)."""
    by_name = {}
    for uri in filter(None, member_uris.split(",")):
        name, version = registry.split_model_uri(uri)
        by_name[name.removeprefix(registry.MODEL_PREFIX)] = (uri, name, version)
    if not rows:  # an ensemble run that logged no members param: the version tag still lists them
        rows = [{"name": n, "uri": None, "weight": None, "spec": {}} for n in by_name]
    for row in rows:
        if row["name"] not in by_name:
            continue
        uri, name, version = by_name[row["name"]]
        row["uri"] = uri
        run_id = client.get_model_version(name, version).run_id
        if run_id:
            member_run = client.get_run(run_id)
            row["spec"], row["cv"] = member_run.data.params, member_run.data.tags.get("cv")
    return rows


def _ensemble_facts(client, run: Any, tags: dict[str, str]) -> dict[str, Any]:
    """An ensemble's members (with the cross-validation their training ran, if any) and its thresholds."""
    rows = _with_member_specs(client, _member_rows(client, run), tags.get("members", ""))
    thresholds = _json_uri(run.data.tags.get("thresholds_uri"))
    return {
        "members": [Member(r["name"], r["uri"], r["weight"], r["spec"], r.get("temperatures")) for r in rows],
        "ensemble_thresholds": _thresholds(thresholds, run.data.params.get("grid", "?")),
        "cv": next((r["cv"] for r in rows if r.get("cv")), None),
    }


def _producing_run_facts(run: Any | None) -> ProducingRun | None:
    if run is None:
        return None
    dataset = None
    if run.inputs and run.inputs.dataset_inputs:
        logged = run.inputs.dataset_inputs[0].dataset
        try:
            source = json.loads(logged.source).get("uri", logged.source)
        except (TypeError, ValueError):
            source = logged.source
        dataset = DatasetInput(logged.name, logged.digest, source)
    name = run.data.tags.get("mlflow.runName", "")
    return ProducingRun(run.info.run_id, name, dict(run.data.params), dict(run.data.metrics), dataset)


def _recorded_scores(tags: dict[str, str]) -> list[RecordedScore]:
    """The ``score.<split>.f1_macro`` version tags (the promote step's scores, without TTA) and their digests."""
    scores = []
    for key, value in sorted(tags.items()):
        if key.startswith("score.") and key.endswith(".f1_macro"):
            split = key.removeprefix("score.").removesuffix(".f1_macro")
            scores.append(RecordedScore(split, float(value), tags.get(f"score.{split}.digest")))
    return scores


def gather(model_uri: str) -> Facts:
    """Reads what the card needs from MLflow (see the module docstring)."""
    client = _client()
    name, version = registry.split_model_uri(model_uri)
    model_version = client.get_model_version(name, version)
    tags = dict(model_version.tags)
    kind = tags.get("kind") or ("ensemble" if name == registry.ENSEMBLE_MODEL else "member")
    run = _producing_run(client, model_version)
    split_mode = _split_mode(tags, run)
    tuned_on = "out-of-fold predictions" if split_mode == "cv" else "val"
    own = f"tuned on {tuned_on}" if kind == "ensemble" else "0.5"
    evaluations, val_predictions = _evaluations(client, f"models:/{name}/{version}", own)
    facts: dict[str, Any] = {}
    if run is not None and (cv := _cv_scores(run, kind)):
        evaluations.append(cv)
    if kind == "ensemble" and run is not None:
        facts.update(_ensemble_facts(client, run, tags))
        val = {k.removeprefix("val_"): v for k, v in run.data.metrics.items() if k.startswith("val_")}
        if val and split_mode != "cv" and not any(e.split == "val" for e in evaluations):  # cv: val_* is in-sample
            views = tuple(filter(None, run.data.params.get("tta_views", "").split(",")))
            evaluations.append(Evaluation("val", views, f"{own} (these images)", val, "ensemble",
                                          _per_class_at("ensemble", "val", run.info.run_id)))  # fmt: skip
    elif kind == "member":
        facts["member_thresholds"] = _member_thresholds(client, run, val_predictions)
        facts["cv"] = run.data.tags.get("cv") if run is not None else None
    return Facts(
        name, str(version), kind, split_mode, tuple(model_version.aliases or ()), tags.get("data_digest"),
        tags.get("profile"), tags.get("spec_key"), tags.get("code_fingerprint"), tags.get("ensemble_key"),
        _producing_run_facts(run), _data_report(client, tags.get("data_digest")), evaluations,
        _recorded_scores(tags), promotion=_promotion(client, f"models:/{name}/{version}", tags), **facts,
    )  # fmt: skip


# --- public API -----------------------------------------------------------------------------------------------------


def write_model_card(model_uri: str) -> str:
    """The Markdown model card of a registered version, ``models:/odir-<name>/<version>`` (a member) or
    ``models:/odir-ensemble/<version>`` (an alias resolves to its version), from what MLflow holds."""
    return fitted(gather(model_uri))


def publish_model_card(model_uri: str) -> None:
    """Writes the card as the version's description and as ``model_card.md`` of the run that produced the version,
    and a one-line description of the registered model when it has none. Idempotent."""
    client = _client()
    facts = gather(model_uri)
    card = fitted(facts)
    run_id = facts.run.run_id if facts.run is not None else None
    client.update_model_version(facts.name, facts.version, description=card)
    if run_id:
        client.log_text(run_id, card, CARD_ARTIFACT)
    else:
        log.warning("model card of %s: no run produced this version; description only", model_uri)
    if not client.get_registered_model(facts.name).description:
        client.update_registered_model(facts.name, description=model_summary(facts))
    log.info("published the model card of %s/%s (%d characters)", facts.name, facts.version, len(card))


def publish_model_cards(model_uris: tuple[str, ...]) -> None:
    """:func:`publish_model_card` for each version, e.g. a pipeline run's members, its ensemble and the champion it
    replaced (whose card no longer says ``@champion``)."""
    for model_uri in model_uris:
        publish_model_card(model_uri)


# --- command line ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelCardConfig:
    """Write (and by default publish) the model card of a registered version."""

    model_uri: str
    publish: bool = True


@dataclass(frozen=True)
class ModelCardResult:
    """The version and its card."""

    model_uri: str
    card: str


def run(config: ModelCardConfig) -> ModelCardResult:
    """``python -m steps.model_card --model-uri models:/odir-ensemble/3``: prints the card (as JSON) and publishes
    it unless ``--no-publish``."""
    if config.publish:
        publish_model_card(config.model_uri)
    return ModelCardResult(config.model_uri, write_model_card(config.model_uri))


if __name__ == "__main__":
    sys.exit(cli.main(ModelCardConfig, run))
