"""Model card: what MLflow holds about one registered version, as Markdown for the registry and as an artifact.

:func:`write_model_card` reads everything from the tracking store, nothing is passed in by hand: the version's tags
(data digest, profile, spec key, code fingerprint, kind, members, ``score.<split>.f1_macro``, ``promotion.*``), the
run that produced it (a member's training run: the spec as params, ``best_epoch``, ``best_val_*`` or, cross-validated,
the out-of-fold ``cv_*`` scores, the dataset input; the ensemble run: members, weights, TTA views, thresholds,
temperatures, cross-fitted ``cv_*`` scores), the evaluate runs of the version (tag ``odir.step`` = ``evaluate``,
param ``model_uri`` = ``models:/NAME/VERSION``; their ``<prefix><metric>`` and ``_ci_low`` / ``_ci_high``
metrics), the thresholds the tune_thresholds step fit for a member, the newest promote run, and the ingest run of
the data digest (``validation/report.json``: images, patients, positives and unlabelled images per split, patients
shared between splits). Every figure names its split and protocol (given splits or patient-grouped CV, and where
the thresholds were tuned); a metric no run logged reads "not measured".

The card fits the registry's 5000 characters (PostgreSQL enforces the column's length): when the full card is
longer, the per-class tables of val, then all of them, are left out, each named with the run artifact that holds
it. :func:`publish_model_card` makes the card the version's description (the MLflow UI renders it on the version's
page), logs the same text as ``model_card.md`` to the run that produced the version, and gives the registered model a
one-line description when it has none. Publishing again writes the same text: it is idempotent, and it is meant to
be called again whenever a new evaluation or promotion of the version is logged (after the last one of a pipeline
run). ``python -m steps.model_card --model-uri models:/odir-ensemble/3`` does it from the command line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import LABELS
from steps.support import cli, tracking

log = logging.getLogger(__name__)

CARD_ARTIFACT = "model_card.md"
DESCRIPTION_LIMIT = 5000  # characters: the registry's description column is VARCHAR(5000) (PostgreSQL enforces it)
INTENDED_USE = (
    "**Intended use: research and screening support, not a diagnosis.** It flags fundus photographs with signs of "
    "diabetic retinopathy (D), glaucoma (G) or age-related macular degeneration (A) for review by an eye-care "
    "professional; it is never the only basis of a clinical decision."
)
CLASS_NAMES = {"D": "diabetic retinopathy", "G": "glaucoma", "A": "AMD"}
SPLIT_ORDER = ("train", "cv", "val", "offsite_test", "onsite_test")  # cv: out-of-fold scores on train + val
HEADLINE = (("f1_macro", "F1 macro"), ("f1_course", "F1 course"), ("auroc_macro", "AUROC macro"))
PER_CLASS = (
    ("f1", "F1 at threshold"),
    ("auroc", "AUROC"),
    ("ap", "Average precision"),
    ("sensitivity", "Sensitivity at threshold"),
    ("specificity", "Specificity at threshold"),
    ("sens_at_spec90", "Sensitivity at 90% specificity"),
    ("sens_at_spec95", "Sensitivity at 95% specificity"),
    ("spec_at_sens90", "Specificity at 90% sensitivity"),
    ("ece", "Calibration error (ECE)"),
)
# The MLflow UI draws Markdown tables without cell padding, so neighbouring columns run together; an em space ends
# every cell but the last (the zero-width space after it stops the Markdown parser from trimming it away).
CELL_GAP = "\u2003\u200b"
SPEC_FIELDS = ("backbone", "weights", "mode", "loss", "epochs", "lr", "batch_size", "image_size", "augment", "seed")


# --- what MLflow holds ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the version: a split, how it was predicted, and the metrics (without the split prefix)."""

    split: str
    views: tuple[str, ...]
    thresholds: str  # where the thresholds came from, in words
    metrics: dict[str, float]
    step: str  # the step whose run logged the metrics: evaluate, or ensemble (its validation metrics)
    run_id: str
    scored_images: int | None = None  # fewer than the split's images when shared patients were left out


@dataclass(frozen=True)
class Facts:
    """Everything the card says, gathered from the store."""

    name: str
    version: str
    kind: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    run: Any | None  # the run that produced the version
    split_mode: str
    data_report: dict | None
    evaluations: list[Evaluation]
    member_thresholds: dict | None = None  # a member's thresholds tuned on val (not part of the version)
    members: list[dict] = field(default_factory=list)  # the ensemble's members
    ensemble_thresholds: dict | None = None
    promotion: dict[str, str] | None = None  # the newest promote step's decision about this version
    cv: str | None = None  # the cross-validation's folds, seed and views, as the train step tags it


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


def _data_report(client, digest: str | None) -> dict | None:
    """``validation/report.json`` of the newest finished ingest of this data digest."""
    if not digest:
        return None
    for run in _search(client, [f"tags.`{tracking.STEP_TAG}` = 'ingest'", f"tags.data_digest = '{digest}'"]):
        report = _artifact_json(client, run.info.run_id, "validation/report.json")
        if report is not None:
            return report
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
    step = run.data.tags.get(tracking.STEP_TAG, "train")
    return Evaluation("cv", tuple(filter(None, views.split(","))), thresholds, metrics, step, run.info.run_id)


def _evaluations(client, model_uri: str, ensemble_thresholds: str) -> list[Evaluation]:
    """The newest finished evaluation per (split, TTA views, thresholds) of this version."""
    runs = _search(client, [f"tags.`{tracking.STEP_TAG}` = 'evaluate'", f"params.model_uri = '{model_uri}'"])
    seen, found = set(), []
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
        found.append(Evaluation(split, views, thresholds, metrics, "evaluate", run.info.run_id,
                                None if scored is None else int(scored)))  # fmt: skip
    return found


def _member_thresholds(client, run: Any | None, evaluations: list[Evaluation]) -> dict | None:
    """The thresholds the tune_thresholds step fit on this member's out-of-fold or validation predictions, if any."""
    candidates = [run.data.tags.get("oof_predictions_uri")] if run is not None else []
    candidates += [client.get_run(e.run_id).data.tags.get("predictions_uri") for e in evaluations if e.split == "val"]
    for predictions in filter(None, candidates):
        conditions = [f"tags.`{tracking.STEP_TAG}` = 'tune_thresholds'", f"params.predictions_uri = '{predictions}'"]
        for tuned in _search(client, conditions):
            payload = _json_uri(tuned.data.tags.get("thresholds_uri"))
            if payload:
                return {**payload, "grid_name": tuned.data.params.get("grid", "?")}
    return None


def _promotion(client, model_uri: str, tags: dict[str, str]) -> dict[str, str] | None:
    """What the newest promote run decided about this version (its params, and the ``promotion.*`` version tags)."""
    found = {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")}
    runs = _search(client, [f"tags.`{tracking.STEP_TAG}` = 'promote'", f"params.model_uri = '{model_uri}'"])
    if runs:
        found = {**runs[0].data.params, **found}
    return found or None


def _member_rows(client, run: Any) -> list[dict]:
    """Per member of an ensemble run: name, version URI, spec fields, weight and temperatures."""
    tags, params = run.data.tags, run.data.params
    weights = _json_uri(tags.get("weights_uri")) or {}
    temperatures = _artifact_json(client, run.info.run_id, "temperatures.json") or _json_uri(
        tags.get("temperatures_uri")
    )
    names = [n for n in params.get("members", "").split(",") if n]
    uris = {
        tracking.split_model_uri(uri)[0].removeprefix(tracking.MODEL_PREFIX): uri
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
        name, version = tracking.split_model_uri(uri)
        by_name[name.removeprefix(tracking.MODEL_PREFIX)] = (uri, name, version)
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


def gather(model_uri: str) -> Facts:
    """Reads what the card needs from MLflow (see the module docstring)."""
    client = _client()
    name, version = tracking.split_model_uri(model_uri)
    model_version = client.get_model_version(name, version)
    tags = dict(model_version.tags)
    kind = tags.get("kind") or ("ensemble" if name == tracking.ENSEMBLE_MODEL else "member")
    run = _producing_run(client, model_version)
    split_mode = _split_mode(tags, run)
    tuned_on = "out-of-fold predictions" if split_mode == "cv" else "val"
    own = f"tuned on {tuned_on}" if kind == "ensemble" else "0.5"
    evaluations = _evaluations(client, f"models:/{name}/{version}", own)
    facts: dict[str, Any] = {}
    if run is not None and (cv := _cv_scores(run, kind)):
        evaluations.append(cv)
    if kind == "ensemble" and run is not None:
        facts["members"] = _with_member_specs(client, _member_rows(client, run), tags.get("members", ""))
        facts["ensemble_thresholds"] = _json_uri(run.data.tags.get("thresholds_uri"))
        facts["cv"] = next((m["cv"] for m in facts["members"] if m.get("cv")), None)
        val = {k.removeprefix("val_"): v for k, v in run.data.metrics.items() if k.startswith("val_")}
        if val and split_mode != "cv" and not any(e.split == "val" for e in evaluations):  # cv: val_* is in-sample
            views = tuple(filter(None, run.data.params.get("tta_views", "").split(",")))
            evaluations.append(Evaluation("val", views, f"{own} (these images)", val, "ensemble", run.info.run_id))
    elif kind == "member":
        facts["member_thresholds"] = _member_thresholds(client, run, evaluations)
        facts["cv"] = run.data.tags.get("cv") if run is not None else None
    facts["promotion"] = _promotion(client, f"models:/{name}/{version}", tags)
    return Facts(
        name, str(version), kind, tags, tuple(model_version.aliases or ()), run, split_mode,
        _data_report(client, tags.get("data_digest")), _ordered(evaluations), **facts,
    )  # fmt: skip


def _ordered(evaluations: list[Evaluation]) -> list[Evaluation]:
    def key(e: Evaluation) -> tuple:
        rank = SPLIT_ORDER.index(e.split) if e.split in SPLIT_ORDER else len(SPLIT_ORDER)
        return rank, e.split, -len(e.views)

    return sorted(evaluations, key=key)


# --- formatting -----------------------------------------------------------------------------------------------------


def number(value: float | None, digits: int = 3) -> str:
    """A metric as the card prints it (3 decimals); ``n/a`` for a missing or undefined (NaN) value."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def with_interval(metrics: dict[str, float], key: str) -> str | None:
    """``0.812 (0.701–0.889)``: the value and its 95% interval when logged; None when the metric is absent."""
    if key not in metrics:
        return None
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    interval = f" ({number(low)}–{number(high)})" if low is not None and high is not None else ""
    return number(metrics[key]) + interval


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, each cell but the last ended by :data:`CELL_GAP`."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join([*(f"{cell}{CELL_GAP}" for cell in cells[:-1]), cells[-1]]) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _views(views: tuple[str, ...]) -> str:
    if not views or views == ("identity",):
        return "none"
    return f"{len(views)} views"


def _protocol(facts: Facts) -> str:
    split_mode, kind = facts.split_mode, facts.kind
    if split_mode == "cv":
        folds = f" ({facts.cv.partition(', views')[0]})" if facts.cv else ""
        fit = "thresholds, temperatures and weights fit on" if kind == "ensemble" else "scored on"
        return (f"patient-grouped k-fold cross-validation on train + val{folds}, both eyes of a patient in one fold; "
                f"{fit} out-of-fold predictions")  # fmt: skip
    if kind == "ensemble":
        return (
            "given splits: members trained on train; weights, temperatures and thresholds fit on val; tested on "
            "offsite_test"
        )
    return "given splits: trained on train, best epoch chosen on val, tested on offsite_test"


def _split_size(report: dict | None, e: Evaluation) -> str:
    counts = (report or {}).get("splits", {}).get(e.split)
    if e.split == "cv":
        counts = _pool_counts(report)
    if not counts:
        return "?" if e.scored_images is None else str(e.scored_images)
    if e.scored_images is not None and e.scored_images < counts["images"]:
        return f"{e.scored_images} of {counts['images']} (shared patients left out)"
    return f"{counts['images']} ({counts['patients']})"


def summary_line(facts: Facts) -> str:
    """The card's first line, plain text (the registry's version list shows it raw): the version, what it is, and
    its held-out F1 macro with split and protocol."""
    if facts.kind == "ensemble":
        what = f"ensemble of {len(facts.members)} member{'s' if len(facts.members) != 1 else ''}"
    else:
        params = facts.run.data.params if facts.run else {}
        what = f"member model ({params.get('backbone', '?')}, {params.get('loss', '?')} loss)"
    protocol = "patient-grouped CV" if facts.split_mode == "cv" else "given splits"
    scored = [e for e in _one_per_split(facts.evaluations) if "f1_macro" in e.metrics]
    held_out = [e for e in scored if e.split != "val"] or scored
    if not held_out:
        return f"{facts.name} v{facts.version}: not evaluated yet; {what}, {protocol}."
    e = held_out[-1]
    score = with_interval(e.metrics, "f1_macro")
    return (
        f"{facts.name} v{facts.version}: F1 macro {score} on {e.split}; {what}, {protocol}, thresholds {e.thresholds}."
    )


def _pool_counts(report: dict | None) -> dict | None:
    """Images and patients of train + val (the cross-validation pool)."""
    splits = (report or {}).get("splits", {})
    if "train" not in splits or "val" not in splits:
        return None
    shared = report.get("shared_patients", {}).get("train/val", {}).get("count", 0)
    return {"images": splits["train"]["images"] + splits["val"]["images"],
            "patients": splits["train"]["patients"] + splits["val"]["patients"] - shared}  # fmt: skip


def _header(facts: Facts) -> list[str]:
    what = "ensemble" if facts.kind == "ensemble" else "member model"
    tags = facts.tags
    lines = [summary_line(facts), "", INTENDED_USE, "", "## Identity", ""]
    lines.append(f"- **Kind:** {what}" + (f", alias {', '.join(f'`@{a}`' for a in facts.aliases)}" if facts.aliases
                                         else ""))  # fmt: skip
    if facts.promotion:
        lines.append(f"- **Promotion:** {_promotion_line(facts.promotion, facts.version)}")
    lines.append(f"- **Protocol:** {_protocol(facts)}")
    lines.append(f"- **Data digest:** `{tags.get('data_digest', 'not recorded')}`")
    lines.append(f"- **Profile:** `{tags.get('profile', 'not recorded')}`")
    if facts.kind == "member":
        lines.append(f"- **Spec key:** `{tags.get('spec_key', 'not recorded')}`")
        lines.append(f"- **Code fingerprint:** `{tags.get('code_fingerprint', 'not recorded')}`")
    else:
        lines.append(f"- **Ensemble key:** `{tags.get('ensemble_key', 'not recorded')}`")
    if facts.run is not None:
        lines.append(f"- **Run:** `{facts.run.info.run_id}` ({facts.run.data.tags.get('mlflow.runName', '')})")
    return lines


def _promotion_line(promotion: dict[str, str], version: str) -> str:
    decision = promotion.get("decision", "?")
    split, metric = promotion.get("split", "?"), promotion.get("metric", "f1_macro")
    champion = promotion.get("champion_version", "none")
    if champion in ("none", ""):
        return f"{decision} on {split} (no champion before)"
    if champion == version:
        return f"{decision} on {split} (already the champion)"
    line = f"{decision} on {split} against version {champion} ({metric}"
    if "prob_better" in promotion:
        line += f"; paired bootstrap over patients: P(better) {promotion['prob_better']}"
        line += f", needed {promotion['min_probability']}" if "min_probability" in promotion else ""
    if "difference_ci" in promotion:
        line += f"; difference {promotion['difference_ci']}"
    if "evidence" in promotion:
        line += f"; {promotion['evidence']}"
    return line + ")"


def _data(facts: Facts) -> list[str]:
    lines = ["", "## Data", ""]
    report = facts.data_report
    if report is None:
        return [*lines, "- Ingest report: not recorded for this data digest."]
    splits = report.get("splits", {})
    sizes = ", ".join(f"{s} {c['images']} ({c['patients']} patients)" for s, c in _split_items(splits))
    lines.append(f"- **Images (patients):** {sizes}")
    dataset = _dataset_input(facts.run)
    if dataset:
        lines.append(f"- **Dataset input:** {dataset}")
    shared = report.get("shared_patients", {})
    if shared:
        pairs = ", ".join(f"{pair} {v['count']}" for pair, v in shared.items())
        lines.append(f"- **Patients in two splits:** {pairs}: scores on the later split are optimistic")
    else:
        lines.append("- **Patients in two splits:** none (checked at ingest)")
    if facts.split_mode == "cv":
        lines[-1] += "; the CV folds keep each patient in one fold"
    return lines


def _split_items(splits: dict) -> list[tuple[str, dict]]:
    return sorted(splits.items(), key=lambda kv: SPLIT_ORDER.index(kv[0]) if kv[0] in SPLIT_ORDER else 99)


def _dataset_input(run: Any | None) -> str | None:
    if run is None or not run.inputs or not run.inputs.dataset_inputs:
        return None
    dataset = run.inputs.dataset_inputs[0].dataset
    try:
        source = json.loads(dataset.source).get("uri", dataset.source)
    except (TypeError, ValueError):
        source = dataset.source
    return f"`{dataset.name}` digest `{dataset.digest}` from `{source}`"


def _training(facts: Facts) -> list[str]:
    if facts.run is None:
        return ["", "## Training", "", "- Training run: not found."]
    params, metrics = facts.run.data.params, facts.run.data.metrics
    spec = ", ".join(f"{k} `{params[k]}`" for k in SPEC_FIELDS if k in params)
    lines = ["", "## Training", "", f"- **Spec:** {spec}"]
    if params.get("monitor") == "last":
        folds = "; one model per fold, trained on every other fold, averaged" if facts.split_mode == "cv" else ""
        lines.append(f"- **Epochs:** all {params.get('epochs', '?')}, the last kept: no epoch chosen on data{folds}")
    elif "best_epoch" in metrics and facts.split_mode == "cv":
        lines.append(f"- **Best epoch:** median {int(metrics['best_epoch'])} of {params.get('epochs', '?')} over the "
                     "folds, each fold's chosen on another fold; one model per fold, averaged")  # fmt: skip
    elif "best_epoch" in metrics:
        monitor = params.get("monitor", "f1_macro")
        best = ", ".join(
            f"{label} {number(metrics[f'best_val_{key}'])}" for key, label in HEADLINE if f"best_val_{key}" in metrics
        )
        lines.append(
            f"- **Best epoch:** {int(metrics['best_epoch'])} of {params.get('epochs', '?')}, chosen on val "
            f"`{monitor}`; val at that epoch (threshold 0.5, no TTA; optimistic, val chose it): {best}"
        )
    thresholds = facts.member_thresholds
    if thresholds:
        grid = f"grid `{thresholds['grid_name']}`{_objectives(thresholds)}"
        values = _per_class_values(thresholds["thresholds"], 2)
        lines.append(
            f"- **Thresholds tuned on {_tuned_on(facts)}** ({grid}): {values}; not part of this version, which "
            "predicts at 0.5 (the ensemble tunes its own)"
        )
    return lines


def _tuned_on(facts: Facts) -> str:
    return "out-of-fold predictions" if facts.split_mode == "cv" else "val"


def _objectives(thresholds: dict) -> str:
    objectives = thresholds.get("objectives")
    if not objectives:
        return ", objective F1"
    values = [objectives.get(c, "f1") for c in LABELS]
    if len(set(values)) == 1:
        return f", objective {values[0]}"
    return ", objectives " + ", ".join(f"{c} {o}" for c, o in zip(LABELS, values, strict=True))


def _per_class_values(values: dict[str, float], digits: int = 3) -> str:
    return ", ".join(f"{c} {number(values.get(c), digits)}" for c in LABELS)


def _ensemble(facts: Facts) -> list[str]:
    if facts.run is None:
        return ["", "## Ensemble", "", "- Ensemble run: not found."]
    params = facts.run.data.params
    rows = []
    for row in facts.members:
        spec, temps = row["spec"], row.get("temperatures")
        temperatures = ", ".join(number(temps.get(c), 2) for c in LABELS) if temps else "none"
        rows.append([f"`{row['uri'] or row['name']}`", spec.get("backbone", "?"), spec.get("loss", "?"),
                     spec.get("mode", "?"), number(row["weight"]), temperatures])  # fmt: skip
    header = ["Member", "Backbone", "Loss", "Mode", "Weight", "Temperature D, G, A"]
    lines = ["", "## Ensemble", "", *table(header, rows)]
    calibrated = any(row.get("temperatures") for row in facts.members)
    tuned_on = _tuned_on(facts)
    views = params.get("tta_views", "")
    lines += ["", f"- **TTA views:** {views.replace(',', ', ') or 'not recorded'}"]
    lines.append(f"- **Weights:** given by the profile, else each member's F1 macro on {tuned_on}, normalised")
    if calibrated:
        lines.append(f"- **Calibration:** per member and class temperature, fit on {tuned_on}")
    else:
        lines.append("- **Calibration:** none (no temperatures recorded)")
    thresholds = facts.ensemble_thresholds
    if thresholds:
        lines.append(
            f"- **Thresholds** (tuned on {tuned_on}, grid `{params.get('grid', '?')}`{_objectives(thresholds)}): "
            f"{_per_class_values(thresholds['thresholds'], 2)}"
        )
    else:
        lines.append("- **Thresholds:** not recorded")
    return lines


def _results(facts: Facts, detail: str) -> list[str]:
    lines = ["", "## Results", ""]
    if not facts.evaluations:
        return [*lines, "Not measured: no evaluation of this version was found.", *_recorded_scores(facts, set())]
    lines.append(
        "Protocol: " + ("given splits" if facts.split_mode != "cv" else "patient-grouped CV") + ". "
        "Values with their 95% interval (bootstrap over patients) where logged. F1 macro: mean positive-class F1 "
        "over D, G, A; F1 course: mean of both classes' F1 per disease (the study's scoring)."
    )
    rows = []
    for e in facts.evaluations:
        label = e.split if e.step == "evaluate" else f"{e.split} ({e.step} step)"
        rows.append([label, _split_size(facts.data_report, e), _views(e.views), e.thresholds,
                     *(with_interval(e.metrics, key) or "not measured" for key, _ in HEADLINE)])  # fmt: skip
    lines += ["", *table(["Split", "Images (patients)", "TTA", "Thresholds", *(h for _, h in HEADLINE)], rows)]
    if any(e.split == "val" for e in facts.evaluations) and facts.split_mode != "cv":
        chose = "the best epoch" if facts.kind == "member" else "weights, temperatures and thresholds"
        lines += ["", f"val chose {chose}: its scores are optimistic; offsite_test is the held-out figure."]
    lines += _recorded_scores(facts, {e.split for e in facts.evaluations})
    shown = _one_per_split(facts.evaluations)
    held_out = [e for e in shown if e.split != "val"] or shown
    tabled = {"all": shown, "held_out": held_out, "none": []}[detail]
    for e in tabled:
        lines += _per_class(e)
    left_out = [_where_per_class(e) for e in shown if e not in tabled]
    if left_out:
        lines += [
            "",
            f"Per-class results not shown (the registry keeps {DESCRIPTION_LIMIT} characters): "
            + "; ".join(left_out)
            + ".",
        ]
    return lines


def _where_per_class(e: Evaluation) -> str:
    if e.step == "evaluate":
        return f"{e.split} in `tables/{e.split}_per_class.csv` of evaluate run `{e.run_id}`"
    return f"{e.split} in the `{tracking.split_prefix(e.split)}*` metrics of {e.step} run `{e.run_id}`"


def _recorded_scores(facts: Facts, shown: set[str]) -> list[str]:
    """``score.<split>.f1_macro`` version tags of splits no evaluation above covers (promote scores without TTA)."""
    digest = facts.tags.get("data_digest")
    lines = []
    for key, value in sorted(facts.tags.items()):
        if key.startswith("score.") and key.endswith(".f1_macro"):
            split = key.removeprefix("score.").removesuffix(".f1_macro")
            if split in shown:
                continue
            same = facts.tags.get(f"score.{split}.digest") == digest
            data = "this data" if same else f"data `{facts.tags.get(f'score.{split}.digest', '?')[:12]}`"
            lines.append(f"- {split}: F1 macro {number(float(value))} (version tag, no TTA, on {data})")
    return ["", *lines] if lines else []


def _one_per_split(evaluations: list[Evaluation]) -> list[Evaluation]:
    """The evaluation with the most TTA views of each split (the order of :func:`_ordered`)."""
    chosen: dict[str, Evaluation] = {}
    for e in evaluations:
        chosen.setdefault(e.split, e)
    return list(chosen.values())


def _per_class(e: Evaluation) -> list[str]:
    title = f"### {e.split}, per class: TTA {_views(e.views)}, thresholds {e.thresholds}"
    rows, missing = [], []
    for key, label in PER_CLASS:
        cells = [with_interval(e.metrics, f"{key}_{c}") for c in LABELS]
        if all(cell is None for cell in cells):
            missing.append(label)
            continue
        rows.append([label, *(cell or "n/a" for cell in cells)])
    if all(f"support_{c}" in e.metrics for c in LABELS):
        rows.append(["Positives", *(str(int(e.metrics[f"support_{c}"])) for c in LABELS)])
    lines = ["", title, "", *table(["Metric", *(f"{c} ({CLASS_NAMES[c]})" for c in LABELS)], rows)]
    if missing:
        lines += ["", f"Not measured on {e.split}: {', '.join(missing)}."]
    return lines


def _training_counts(facts: Facts) -> tuple[str, dict | None]:
    """What the model was trained on (train, or in CV train + val) and its counts from the ingest report."""
    splits = (facts.data_report or {}).get("splits", {})
    if facts.split_mode != "cv" or "val" not in splits or "train" not in splits:
        return "train", splits.get("train")
    train, val = splits["train"], splits["val"]
    summed = {key: train.get(key, 0) + val.get(key, 0) for key in ("images", "no_label")}
    return "train + val", {**summed, "positives": {c: train["positives"][c] + val["positives"][c] for c in LABELS}}


def _limitations(facts: Facts) -> list[str]:
    lines = ["", "## Known limitations", ""]
    splits = (facts.data_report or {}).get("splits", {})
    trained_on, train = _training_counts(facts)
    if train:
        share = ", ".join(
            f"{c} {train['positives'][c] / train['images']:.0%} ({train['positives'][c]})" for c in LABELS
        )
        lines.append(
            f"- **Class prevalence** ({trained_on}, {train['images']} images): {share}. Precision, F1 and thresholds "
            "hold for this mix only; where a disease is rarer, more positives are false."
        )
        if train.get("no_label", 0) == 0:
            lines.append(
                f"- **No normal images in training:** each of the {train['images']} training images shows D, G or A "
                "(none has no label). The model never saw a healthy fundus, and the specificities above are "
                "measured among diseased eyes: on screening data, mostly normal, expect more false positives."
            )
        else:
            lines.append(f"- **Few normal images:** {train['no_label']} of {train['images']} training images have "
                         "none of D, G, A.")  # fmt: skip
    else:
        lines.append("- **Class prevalence:** not recorded (no ingest report for this data digest).")
    lines.append(
        "- **Camera and site shift:** the scores hold for images like these, from one collection; other cameras, "
        "sites, image quality and populations are untested."
    )
    small = [f"{s} {c['images']} images of {c['patients']} patients" for s, c in _split_items(splits)
             if s in ("val", "offsite_test")]  # fmt: skip
    if facts.split_mode == "cv" and (pool := _pool_counts(facts.data_report)):
        small.insert(0, f"cv pool {pool['images']} images of {pool['patients']} patients")
    lines.append(
        "- **Small evaluation sets:** "
        + ("; ".join(small) if small else "sizes not recorded")
        + f". The intervals are wide{_widest(facts)}: differences of a few points between versions are noise."
    )
    return lines


def _widest(facts: Facts) -> str:
    """The F1 macro interval of the held-out split, as an example of how wide the intervals are."""
    for e in reversed(facts.evaluations):
        if "f1_macro_ci_low" in e.metrics and "f1_macro_ci_high" in e.metrics:
            low, high = e.metrics["f1_macro_ci_low"], e.metrics["f1_macro_ci_high"]
            return f" (F1 macro on {e.split}: {number(low)}–{number(high)})"
    return ""


DETAIL = ("all", "held_out", "none")  # per-class tables of every split, of the held-out splits, of none


def render(facts: Facts, detail: str = "all") -> str:
    """The card's Markdown with the per-class tables of :data:`DETAIL` ``detail``."""
    middle = _training(facts) if facts.kind == "member" else _ensemble(facts)
    lines = [*_header(facts), *_data(facts), *middle, *_results(facts, detail), *_limitations(facts)]
    return "\n".join(lines) + "\n"


# --- public API -----------------------------------------------------------------------------------------------------


def write_model_card(model_uri: str) -> str:
    """The Markdown model card of a registered version, ``models:/odir-<name>/<version>`` (a member) or
    ``models:/odir-ensemble/<version>`` (an alias resolves to its version), from what MLflow holds."""
    return fitted(gather(model_uri))


def fitted(facts: Facts) -> str:
    """The fullest card within :data:`DESCRIPTION_LIMIT` characters: per-class tables of every split, else of the
    held-out splits only, else none (each left-out table named with the run that holds it); cut at a line as a last
    resort."""
    for detail in DETAIL:
        card = render(facts, detail)
        if len(card) <= DESCRIPTION_LIMIT:
            return card
    note = f"\n(cut to the registry's limit of {DESCRIPTION_LIMIT} characters)\n"
    return card[: card.rfind("\n", 0, DESCRIPTION_LIMIT - len(note))] + note


def _model_summary(facts: Facts) -> str:
    if facts.kind == "ensemble":
        return (
            "odir ensemble: weighted mean of odir member models with test-time augmentation and per-class "
            "thresholds; predicts D (diabetic retinopathy), G (glaucoma), A (AMD) from a fundus photograph. "
            "Research and screening support, not a diagnosis. Each version's description is its model card."
        )
    params = facts.run.data.params if facts.run else {}
    recipe = ", ".join(f"{k} {params[k]}" for k in ("mode", "loss", "weights") if k in params)
    return (
        f"odir member: {params.get('backbone', 'a CNN')}{f' ({recipe})' if recipe else ''}, multi-label D (diabetic "
        "retinopathy), G (glaucoma), A (AMD) from a fundus photograph. Research and screening support, not a "
        "diagnosis. Each version's description is its model card."
    )


def publish_model_card(model_uri: str) -> None:
    """Writes the card as the version's description and as ``model_card.md`` of the run that produced the version,
    and a one-line description of the registered model when it has none. Idempotent."""
    client = _client()
    facts = gather(model_uri)
    card = fitted(facts)
    run_id = facts.run.info.run_id if facts.run is not None else None
    client.update_model_version(facts.name, facts.version, description=card)
    if run_id:
        client.log_text(run_id, card, CARD_ARTIFACT)
    else:
        log.warning("model card of %s: no run produced this version; description only", model_uri)
    if not client.get_registered_model(facts.name).description:
        client.update_registered_model(facts.name, description=_model_summary(facts))
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
