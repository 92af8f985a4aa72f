"""What one run of the flow ``odir`` returns: a typed summary of what it built and decided.

Three readers share it: the command's printout (:mod:`flows.cli`), the Prefect artifacts (:mod:`flows.artifacts`)
and the headline on the pipeline's MLflow run (:func:`headline_metrics`, :func:`headline_tags`). Its fields are
plain types and frozen dataclasses of them, so Prefect stores it as the flow run's result like any other value.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from components.evaluation.scoring import COMPARED_METRICS
from steps.support import tracking


@dataclass(frozen=True)
class Score:
    """A metric on the scored split and its 95% interval (bootstrap over patients).

    ``value`` is None where the evaluation logged no such metric; ``low`` and ``high`` are None where it logged no
    interval, and NaN where the bootstrap had none (a class absent from every resample).
    """

    value: float | None
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.low == self.low


@dataclass(frozen=True)
class Referral:
    """How many images the ensemble referred to a grader, and its error rates on those and on the rest (NaN for an
    empty group)."""

    n_referred: int
    n: int
    error_rate_referred: float
    error_rate_kept: float


@dataclass(frozen=True)
class Gallery:
    """Where the ensemble's Grad-CAM gallery on the scored split is: its evaluate run and ``gallery.html``."""

    run_id: str
    uri: str


@dataclass(frozen=True)
class SeedScore:
    """The recipe trained under one seed: its ensemble and how it scored on the scored split."""

    seed: int
    model_uri: str
    f1_macro: Score
    f1_course: Score


@dataclass(frozen=True)
class BuiltEnsemble:
    """The ensemble a pipeline run built (or found built) and how it scored.

    Attributes:
        model_uri: the registered ensemble version (``models:/odir-ensemble/<n>``).
        run_id: its ensemble run.
        members: the members' registered model URIs, in the profile's order; ``member_runs`` their training runs.
        member_f1_macro: each member's f1_macro on the scored split by registered model name (out-of-fold in CV
            mode; None where not logged).
        split_mode: ``given splits`` or ``cv (<k> folds)``.
        scored_split: where ``scores`` come from: ``offsite_test``, ``val``, or ``cv`` (cross-fitted out-of-fold).
        per_class: one row per class of formatted scores (:func:`flows.artifacts.per_class_rows`).
        referral: None where the scored split's evaluation logged none (the cross-fitted CV scores).
        gallery: None where no evaluation ran on the scored split or it logged no gallery.
        submission: the submission CSV, where the data has an onsite_test split.
        member_evaluations: the members' evaluate runs on the scored split (none in CV mode: their out-of-fold
            scores are on their training runs).
        comparison: the members and the ensemble on the scored split, one formatted row each, the best member the
            reference (:mod:`steps.compare`); ``comparison_run`` its run, ``comparison_markdown`` its table.
        seeds: the recipe's score under each of the profile's ``seeds``, this run's first (empty without seeds).
    """

    model_uri: str
    run_id: str
    weights: dict[str, float]
    thresholds: dict[str, float]
    members: tuple[str, ...]
    member_runs: tuple[str, ...]
    member_f1_macro: dict[str, float | None]
    split_mode: str
    scored_split: str
    scores: dict[str, Score]
    per_class: tuple[dict[str, str], ...]
    referral: Referral | None
    gallery: Gallery | None
    submission: str | None
    member_evaluations: tuple[str, ...] = ()
    comparison: tuple[dict[str, str], ...] = ()
    comparison_run: str | None = None
    comparison_markdown: str = ""
    seeds: tuple[SeedScore, ...] = ()


@dataclass(frozen=True)
class PipelineSummary:
    """The result of one run of the flow ``odir``.

    Attributes:
        decision: ``champion`` or ``challenger`` for the built ensemble; ``up to date`` when retraining found the
            champion built from the same data and profile and built nothing.
        champion_version: the champion's version after the run.
        prob_better: the paired bootstrap's probability that the ensemble beats the champion (None: no comparison).
        promotion_note: why no comparison was made, when none was.
        built: what was built; None when nothing was (``up to date``).
    """

    profile: str
    data_digest: str
    pipeline_run_id: str
    decision: str
    champion_version: str | None
    prob_better: float | None = None
    promotion_note: str | None = None
    built: BuiltEnsemble | None = None

    def promotion_evidence(self) -> str:
        """What the promotion decision rests on, in parentheses: the paired bootstrap's probability, or why no
        comparison was made; empty when there was no champion to compare with."""
        if self.prob_better is not None:
            return f" (P(better than champion) {self.prob_better:.2f})"
        return f" ({self.promotion_note})" if self.promotion_note else ""


def headline_scores(metrics: dict[str, float], split: str) -> dict[str, Score]:
    """The compared scores (:data:`~components.evaluation.scoring.COMPARED_METRICS`) from an evaluate run's metrics
    (prefixed by ``split``)."""
    prefix = tracking.split_prefix(split)
    return {
        name: Score(metrics.get(f"{prefix}{name}"), metrics.get(f"{prefix}{name}_ci_low"),
                    metrics.get(f"{prefix}{name}_ci_high"))
        for name in COMPARED_METRICS
    }  # fmt: skip


def referral_counts(metrics: dict[str, float], split: str) -> Referral | None:
    """How many images the ensemble referred on the scored split, and the error rates in and out (None where the
    split's evaluation logged none: the cross-fitted CV scores)."""
    prefix = tracking.split_prefix(split)
    if f"{prefix}n_referred" not in metrics:
        return None
    referred, kept = int(metrics[f"{prefix}n_referred"]), int(metrics[f"{prefix}n_kept"])
    return Referral(n_referred=referred, n=referred + kept,
                    error_rate_referred=metrics.get(f"{prefix}error_rate_referred", float("nan")),
                    error_rate_kept=metrics.get(f"{prefix}error_rate_kept", float("nan")))  # fmt: skip


def seed_spread(seeds: tuple[SeedScore, ...], metric: str) -> tuple[float, float] | None:
    """Mean and sample standard deviation of ``metric`` (``f1_macro`` or ``f1_course``) over the seeds; None with
    fewer than two scored seeds."""
    values = [getattr(s, metric).value for s in seeds if getattr(s, metric).value is not None]
    if len(values) < 2:
        return None
    return statistics.fmean(values), statistics.stdev(values)


def headline_metrics(summary: PipelineSummary) -> dict[str, float]:
    """The ensemble's scores as metrics of the pipeline run: ``<split>_<metric>`` with ``_ci_low``/``_ci_high``, and
    with seeds ``<split>_<metric>_seed_mean`` / ``_seed_sd`` over them."""
    if summary.built is None:
        return {}
    prefix = tracking.split_prefix(summary.built.scored_split)
    metrics = {}
    for name, score in summary.built.scores.items():
        if score.value is not None:
            metrics[f"{prefix}{name}"] = score.value
        if score.has_interval:
            metrics.update({f"{prefix}{name}_ci_low": score.low, f"{prefix}{name}_ci_high": score.high})
    for metric in ("f1_macro", "f1_course"):
        if (spread := seed_spread(summary.built.seeds, metric)) is not None:
            metrics.update({f"{prefix}{metric}_seed_mean": spread[0], f"{prefix}{metric}_seed_sd": spread[1]})
    return metrics


def headline_tags(summary: PipelineSummary, experiment_id: str) -> dict[str, str]:
    """What a user looks for on the pipeline run besides the scores: the decision, links to the model version and
    to the runs of the steps, reused ones included (a re-run's children are those it ran; these tags point at the
    runs it reused, so every pipeline run links the whole lineage without copying runs), a description with the
    scores, the comparison and those links (:func:`description`), and a run name short enough for the runs list
    to show its headline score."""
    built = summary.built
    if built is None:
        return {"decision": summary.decision}
    links = {"decision": summary.decision, "registered_model_uri": built.model_uri,
             "member_model_uris": ",".join(built.members), "member_runs": ",".join(built.member_runs),
             "ensemble_run": built.run_id}  # fmt: skip
    tags = {key: value for key, value in links.items() if value}
    tags["mlflow.note.content"] = description(summary, experiment_id)
    if (f1 := built.scores["f1_macro"].value) is not None:
        tags["mlflow.runName"] = f"pipeline {summary.profile} {f1:.3f}"
    return tags


def run_href(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A link the MLflow UI follows from a run's description (relative: the UI's own address)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifactPath/{artifact}" if artifact else "")


def description(summary: PipelineSummary, experiment_id: str) -> str:
    """The pipeline run's description, Markdown the MLflow UI renders: the ensemble's scores with intervals, the
    decision, the spread over seeds, the comparison of members and ensemble, and links to every run it rests on."""
    built = summary.built
    name, version = built.model_uri.removeprefix("models:/").split("/")
    lines = [f"**[{name} version {version}](#/models/{name}/versions/{version})** on {built.scored_split} "
             f"({built.split_mode}): {summary.decision}{summary.promotion_evidence()}.", "",
             "| metric | value [95% CI] |", "|---|---|"]  # fmt: skip
    lines += [f"| {metric} | {s.value:.3f} [{s.low:.3f}, {s.high:.3f}] |" for metric, s in built.scores.items()
              if s.value is not None and s.has_interval]  # fmt: skip
    if built.seeds:
        lines += ["", f"**Over {len(built.seeds)} seeds** (each a whole training of the recipe):"]
        for metric in ("f1_macro", "f1_course"):
            each = ", ".join(f"{getattr(s, metric).value:.3f}" for s in built.seeds
                             if getattr(s, metric).value is not None)  # fmt: skip
            spread = seed_spread(built.seeds, metric)
            lines.append(f"- {metric}: mean {spread[0]:.3f} ± {spread[1]:.3f} (sd; seeds {each})" if spread
                         else f"- {metric}: {each}")  # fmt: skip
    if built.comparison_markdown:
        compared = f" ([compare run]({run_href(experiment_id, built.comparison_run)}))" if built.comparison_run else ""
        lines += ["", f"**Members and ensemble on {built.scored_split}**, paired over patients{compared}:", "",
                  built.comparison_markdown]  # fmt: skip
    lines += ["", "**Runs:** " + " · ".join(_run_links(built, experiment_id))]
    if built.gallery:
        gallery = "gradcam/" + built.gallery.uri.split("/gradcam/", 1)[-1]  # its path in the evaluate run
        lines.append(f"\n**Grad-CAM gallery:** [{gallery}]({run_href(experiment_id, built.gallery.run_id, gallery)})")
    return "\n".join(lines)


def _run_links(built: BuiltEnsemble, experiment_id: str) -> list[str]:
    links = [f"[ensemble]({run_href(experiment_id, built.run_id)})"]
    for index, (uri, train_run) in enumerate(zip(built.members, built.member_runs, strict=True)):
        member = uri.removeprefix("models:/").split("/")[0]
        links.append(f"[train {member}]({run_href(experiment_id, train_run)})")
        if index < len(built.member_evaluations):
            links.append(f"[evaluate {member}]({run_href(experiment_id, built.member_evaluations[index])})")
    return links
