"""Promote: the new ensemble becomes ``@champion`` only when the evidence says it is better than the champion on the
same images, or when there is no champion; otherwise it becomes ``@challenger``.

Both versions' predictions on the split (the evaluate step's artifacts for this data, or predicted here when a
version was never evaluated on it) are compared with a **paired bootstrap over patients**: the same resampled
patients score both, each at its own thresholds, and the challenger wins only when it beats the champion in at
least ``min_probability`` of the resamples (ties count half). On ~200 images a 0.02 better F1 is often noise; a
tie or a marginal win keeps the champion.

In cross-validation mode without a test split (``split`` ``cv``), the images are the labelled pool and each version
is represented by its cross-fitted out-of-fold predictions (the ensemble step's ``predictions/cv.csv``). A
champion without them, built on other data, is run on the pool instead: it may have trained on some of those
images, so its score is optimistic, and a challenger that beats it anyway is better still. A champion built on
this same data that trained or was tuned on the compared images (:func:`steps.support.scored.fitted_on`: a
given-splits version on the pool, a cross-validated one on train or val) has no fair score there: no comparison is
made, the challenger stays ``@challenger``, and the log, the summary and its version's ``promotion.evidence`` tag say
why and how to move the alias by hand. The decision, the probability and both intervals are logged on the promote run
and as tags of the challenger's version. Aliases are moved last, after everything else succeeded, and
under a lock held in the registry, so two concurrent promotions compare one after the other.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np

from components.evaluation.bootstrap import PairedResult, paired_bootstrap, pick, report_metrics
from steps.support import cli, integrity, locks, registry, tracking
from steps.support.base import StepConfig
from steps.support.manifest import Manifest, load_manifest
from steps.support.scored import Images, Scored, cross_validated, cv_predictions, fitted_on, images_of, scored_on
from steps.support.tags import record_score, recorded_score

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
RESAMPLES = 1000


@dataclass(frozen=True, kw_only=True)
class PromoteConfig(StepConfig):
    """Compare a new registered version with the champion on the same images and move the aliases (``reuse`` does
    not apply: the champion may have changed since).

    Attributes:
        metric: what is compared (a key of ``multilabel_report``: ``f1_macro``, ``f1_course``, ``auroc_G`` ...).
        min_probability: the share of patient resamples the challenger must win to be promoted.
    """

    model_uri: str
    manifest_uri: str
    split: str = "offsite_test"
    metric: str = "f1_macro"
    min_probability: float = 0.9


@dataclass(frozen=True)
class PromoteResult:
    """The decision (``champion`` or ``challenger``), the scores and the evidence (None: there was no champion)."""

    decision: str
    version: str
    score: float
    champion_version: str | None
    champion_score: float | None
    run_id: str
    prob_better: float | None = None
    note: str | None = None  # why no comparison was made, when none was


def decide(
    labels: np.ndarray, patients: list[str], champion: Scored, challenger: Scored, metric: str, min_probability: float
) -> tuple[bool, PairedResult]:
    """Whether the challenger is better with at least ``min_probability``, and the paired comparison."""
    compared = paired_bootstrap(
        pick(report_metrics(tuple(champion.thresholds)), metric), labels, champion.probs, challenger.probs, patients,
        resamples=RESAMPLES, seed=0, metric_b=pick(report_metrics(tuple(challenger.thresholds)), metric),
    )  # fmt: skip
    return bool(compared.prob_b_better >= min_probability), compared


def _no_fair_score(champion_uri: str, manifest: Manifest, split: str) -> bool:
    """Whether the champion trained or was tuned on the compared images (:func:`steps.support.scored.fitted_on`),
    except where the challenger was too: two given-splits versions on val, both tuned there (the protocol's known
    optimism, the same for both)."""
    if fitted_on(champion_uri, manifest, split) is None:
        return False
    return not (split == "val" and not cross_validated(champion_uri))


def current_champion(name: str) -> str | None:
    """The version holding ``@champion``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def sound_champion(name: str) -> str | None:
    """The champion's version, unless its files fail their SHA-256 check: a broken champion is set aside (its
    alias removed) so that a sound version takes its place instead of being compared with it."""
    version = current_champion(name)
    if version is not None and (problems := integrity.check(name, version).problems):
        log.warning("%s version %s, the champion, fails verification (%s): set aside", name, version,
                    "; ".join(problems))  # fmt: skip
        integrity.set_aside(name, version, problems)
        return None
    return version


def _already_decided(name: str, version: str, split: str, digest: str) -> PromoteResult | None:
    """A re-run with nothing new to decide records nothing (no new run): the version is the champion, or it lost
    to the version that is still champion, on the same data. None when there is something to decide."""
    from mlflow import MlflowClient

    champion = sound_champion(name)
    tags = MlflowClient().get_model_version(name, version).tags
    score = recorded_score(tags, split, digest)
    if score is None or champion is None:
        return None
    if champion == version:
        log.info("%s version %s (f1_macro %.4f on %s) stays champion: nothing changed", name, version, score, split)
        return PromoteResult(CHAMPION, version, score, version, None, "", None)
    if tags.get("promotion.decision") == CHALLENGER and tags.get("promotion.champion_version") == champion:
        log.info("%s version %s stays challenger to champion version %s: compared before on the same data", name,
                 version, champion)  # fmt: skip
        prob = float(tags["promotion.prob_better"]) if "promotion.prob_better" in tags else None
        return PromoteResult(CHALLENGER, version, score, champion, None, "", prob, tags.get("promotion.evidence"))
    return None


def run(config: PromoteConfig) -> PromoteResult:
    """Compares and moves the aliases; see the module docstring."""
    tracking.setup(config.experiment)  # the registry is read before the promote run opens
    manifest = load_manifest(config.manifest_uri)
    name, version = registry.split_model_uri(config.model_uri)
    if (unchanged := _already_decided(name, version, config.split, manifest.digest)) is not None:
        return unchanged
    cv_frame = cv_predictions(f"models:/{name}/{version}", config.experiment) if config.split == "cv" else None
    images = images_of(manifest, config.split, cv_frame)
    tags = {"split": config.split}
    with (
        tracking.step_run("promote", config.experiment, config.parent_run_id, "promote", tags) as run,
        locks.registry_lock(f"promote-{name}"),  # concurrent promotions compare one after the other
    ):
        return _promote(config, manifest, images, name, version, run)


def _promote(config: PromoteConfig, manifest: Manifest, images: Images, name: str, version: str, run) -> PromoteResult:
    import mlflow

    labels = images.labels
    challenger = scored_on(f"models:/{name}/{version}", manifest, config.split, config.experiment, images)
    champion_version = sound_champion(name)
    mlflow.log_params({"model_uri": f"models:/{name}/{version}", "split": config.split, "metric": config.metric,
                       "min_probability": config.min_probability,
                       "champion_version": champion_version or "none"})  # fmt: skip
    note = None
    if champion_version is None or champion_version == version:
        decision, evidence, champion_score = CHAMPION, None, None
        if champion_version is None:
            _set_promotion_tags(name, version, {"decision": CHAMPION, "champion_version": "none"})
    elif _no_fair_score(f"models:/{name}/{champion_version}", manifest, config.split):
        decision, evidence, champion_score = CHALLENGER, None, None
        note = _no_fair_comparison(name, version, champion_version, config.split)
    else:
        champion = scored_on(f"models:/{name}/{champion_version}", manifest, config.split, config.experiment, images)
        wins, evidence = decide(labels, images.patients, champion, challenger, config.metric, config.min_probability)
        decision, champion_score = (CHAMPION if wins else CHALLENGER), evidence.score_a
        _log_evidence(name, version, evidence, decision, champion_version)
    score = _score(challenger, labels, config.metric)
    record_score(f"models:/{name}/{version}", config.split, manifest.digest, _score(challenger, labels, "f1_macro"))
    mlflow.log_param("decision", decision)
    mlflow.log_metrics({"score": score, **({"champion_score": champion_score} if champion_score is not None else {})})
    mlflow.MlflowClient().set_registered_model_alias(name, decision, version)
    if champion_version == version:
        log.info("%s version %s (%s %.4f on %s) stays champion: nothing changed", name, version, config.metric,
                 score, config.split)  # fmt: skip
    else:
        log.info(
            "%s version %s (%s %.4f on %s) is %s; champion was %s%s", name, version, config.metric, score,
            config.split, decision, champion_version or "none",
            f" ({champion_score:.4f}; P(better) {evidence.prob_b_better:.2f}, needed {config.min_probability})"
            if evidence else "",
        )  # fmt: skip
    prob = evidence.prob_b_better if evidence else None
    return PromoteResult(decision, version, score, champion_version, champion_score, run.info.run_id, prob, note)


def _no_fair_comparison(name: str, version: str, champion_version: str, split: str) -> str:
    """Records (on the promote run and the challenger's version) and returns why no comparison was made."""
    import mlflow

    note = (f"no comparison: champion version {champion_version} trained or was tuned on these images ({split}) of "
            "the same data, so its score there is not a fair one")  # fmt: skip
    mlflow.log_param("evidence", note)
    _set_promotion_tags(name, version, {"decision": CHALLENGER, "champion_version": champion_version, "evidence": note})
    log.warning("%s version %s stays challenger: %s. To make it the champion, set its alias by hand (MLflow UI: "
                "Models > %s > Version %s > Aliases: champion)", name, version, note, name, version)  # fmt: skip
    return note


def _score(scored: Scored, labels: np.ndarray, metric: str) -> float:
    return float(report_metrics(tuple(scored.thresholds))(labels, scored.probs)[metric])


def _log_evidence(name: str, version: str, evidence: PairedResult, decision: str, champion_version: str) -> None:
    """The comparison on the promote run, and its outcome on the challenger's version."""
    import mlflow

    mlflow.log_metrics({
        "prob_better": evidence.prob_b_better, "difference": evidence.difference,
        "difference_ci_low": evidence.interval[0], "difference_ci_high": evidence.interval[1],
        "score_ci_low": evidence.interval_b[0], "score_ci_high": evidence.interval_b[1],
        "champion_score_ci_low": evidence.interval_a[0], "champion_score_ci_high": evidence.interval_a[1],
    })  # fmt: skip
    interval = f"[{evidence.interval[0]:+.3f}, {evidence.interval[1]:+.3f}]"
    _set_promotion_tags(
        name,
        version,
        {
            "decision": decision,
            "champion_version": champion_version,
            "prob_better": f"{evidence.prob_b_better:.3f}",
            "difference_ci": interval,
        },
    )


PROMOTION_TAGS = ("decision", "champion_version", "prob_better", "difference_ci", "evidence")


def _set_promotion_tags(name: str, version: str, values: dict[str, str]) -> None:
    """The version's ``promotion.*`` tags: this decision's, none left from an earlier one."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = client.get_model_version(name, version).tags
    for key in PROMOTION_TAGS:
        if key in values:
            client.set_model_version_tag(name, version, f"promotion.{key}", values[key])
        elif f"promotion.{key}" in tags:
            client.delete_model_version_tag(name, version, f"promotion.{key}")


if __name__ == "__main__":
    sys.exit(cli.main(PromoteConfig, run))
