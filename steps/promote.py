"""Promote: the new ensemble becomes ``@champion`` only if it beats the current champion on the same split of the
same data (same dataset digest), or when there is no champion; otherwise it becomes ``@challenger``.

Scores come from the version tags that evaluate writes (``score.<split>.f1_macro`` with ``score.<split>.digest``);
a model not yet scored on this data is evaluated here first, so both are always compared on the same images. The
decision and both scores are logged. Aliases are moved last, after everything else succeeded, and under a lock
held in the registry, so two concurrent promotions compare one after the other and a worse model never replaces
a better champion.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from components.metrics import multilabel_report
from steps import cli, tracking
from steps.base import StepConfig
from steps.contracts import Manifest, load_manifest, predict_split, record_score, recorded_score

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True, kw_only=True)
class PromoteConfig(StepConfig):
    """Compare a new registered version with the champion and move the aliases (``reuse`` does not apply: the
    champion may have changed since)."""

    model_uri: str
    manifest_uri: str
    split: str = "offsite_test"


@dataclass(frozen=True)
class PromoteResult:
    """The decision (``champion`` or ``challenger``) and the two scores (None: there was no champion)."""

    decision: str
    version: str
    score: float
    champion_version: str | None
    champion_score: float | None
    run_id: str


def score_on(model_uri: str, manifest: Manifest, split: str) -> float:
    """``f1_macro`` of a registered version on one split, from its tags when scored on this data, else computed."""
    from mlflow import MlflowClient

    name, version = tracking.split_model_uri(model_uri)
    recorded = recorded_score(MlflowClient().get_model_version(name, version).tags, split, manifest.digest)
    if recorded is not None:
        return recorded
    prediction = predict_split(f"models:/{name}/{version}", manifest, split, views=("identity",))
    score = multilabel_report(manifest.labels(split), prediction.probs, prediction.thresholds)["f1_macro"]
    record_score(f"models:/{name}/{version}", split, manifest.digest, score)
    return score


def current_champion(name: str) -> str | None:
    """The version holding ``@champion``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def run(config: PromoteConfig) -> PromoteResult:
    """Compares and moves the aliases; see the module docstring."""
    import mlflow

    manifest = load_manifest(config.manifest_uri)
    name, version = tracking.split_model_uri(config.model_uri)
    tags = {"split": config.split}
    with (
        tracking.step_run("promote", config.experiment, config.parent_run_id, "promote", tags) as run,
        tracking.registry_lock(f"promote-{name}"),  # concurrent promotions compare one after the other
    ):
        score = score_on(f"models:/{name}/{version}", manifest, config.split)
        champion = current_champion(name)
        champion_score = score_on(f"models:/{name}/{champion}", manifest, config.split) if champion else None
        wins = champion is None or champion == version or score > champion_score
        decision = CHAMPION if wins else CHALLENGER
        mlflow.log_params({"model_uri": f"models:/{name}/{version}", "split": config.split, "decision": decision,
                           "champion_version": champion or "none"})  # fmt: skip
        mlflow.log_metrics({"score": score, **({"champion_score": champion_score} if champion else {})})
        mlflow.MlflowClient().set_registered_model_alias(name, decision, version)
        log.info(
            "%s version %s (f1_macro %.4f on %s) is %s; champion was %s (%s)", name, version, score, config.split,
            decision, champion or "none", "n/a" if champion_score is None else f"{champion_score:.4f}",
        )  # fmt: skip
        return PromoteResult(decision, version, score, champion, champion_score, run.info.run_id)


if __name__ == "__main__":
    sys.exit(cli.main(PromoteConfig, run))
