"""What one run of the flow ``odir`` returns: a typed summary of what it built and decided.

Three readers share it: the command's printout (:mod:`flows.cli`), the Prefect artifacts (:mod:`flows.artifacts`)
and the headline on the pipeline's MLflow run (:func:`headline_metrics`, :func:`headline_tags`). Its fields are
plain types and frozen dataclasses of them, so Prefect stores it as the flow run's result like any other value.
"""

from __future__ import annotations

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
class BuiltEnsemble:
    """The ensemble a pipeline run built (or found built) and how it scored.

    Attributes:
        model_uri: the registered ensemble version (``models:/odir-ensemble/<n>``).
        run_id: its ensemble run.
        members: the members' registered model URIs, in the profile's order; ``member_runs`` their training runs.
        member_f1_macro: each member's f1_macro by registered model name: out-of-fold in CV mode, else val's at its
            best epoch (None where not logged).
        split_mode: ``given splits`` or ``cv (<k> folds)``.
        scored_split: where ``scores`` come from: ``offsite_test``, ``val``, or ``cv`` (cross-fitted out-of-fold).
        per_class: one row per class of formatted scores (:func:`flows.artifacts.per_class_rows`).
        referral: None where the scored split's evaluation logged none (the cross-fitted CV scores).
        gallery: None where no evaluation ran on the scored split or it logged no gallery.
        submission: the submission CSV, where the data has an onsite_test split.
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


def headline_metrics(summary: PipelineSummary) -> dict[str, float]:
    """The ensemble's scores as metrics of the pipeline run: ``<split>_<metric>`` with ``_ci_low``/``_ci_high``."""
    if summary.built is None:
        return {}
    prefix = tracking.split_prefix(summary.built.scored_split)
    metrics = {}
    for name, score in summary.built.scores.items():
        if score.value is not None:
            metrics[f"{prefix}{name}"] = score.value
        if score.has_interval:
            metrics.update({f"{prefix}{name}_ci_low": score.low, f"{prefix}{name}_ci_high": score.high})
    return metrics


def headline_tags(summary: PipelineSummary) -> dict[str, str]:
    """What a user looks for on the pipeline run besides the scores: the decision, links to the model version and
    to the runs of the steps, reused ones included (a re-run's children are those it ran; these tags point at the
    runs it reused, so every pipeline run links the whole lineage without copying runs), a note with the scores
    and a run name with the headline score (the runs list shows names, not metrics, until a user picks columns)."""
    built = summary.built
    if built is None:
        return {"decision": summary.decision}
    links = {"decision": summary.decision, "registered_model_uri": built.model_uri,
             "member_model_uris": ",".join(built.members), "member_runs": ",".join(built.member_runs),
             "ensemble_run": built.run_id}  # fmt: skip
    tags = {key: value for key, value in links.items() if value}
    lines = [f"| {name} | {s.value:.3f} [{s.low:.3f}, {s.high:.3f}] |" for name, s in built.scores.items()
             if s.value is not None and s.has_interval]  # fmt: skip
    tags["mlflow.note.content"] = (
        f"**{built.model_uri}** on {built.scored_split} ({built.split_mode}): {summary.decision}"
        f"{summary.promotion_evidence()}.\n\n| metric | value [95% CI] |\n|---|---|\n" + "\n".join(lines)
    )
    f1 = built.scores["f1_macro"]
    if f1.value is not None:
        interval = f" [{f1.low:.3f}, {f1.high:.3f}]" if f1.has_interval else ""
        name = f"pipeline {summary.profile} · f1_macro {f1.value:.3f}{interval} on {built.scored_split}"
        tags["mlflow.runName"] = name
    return tags
