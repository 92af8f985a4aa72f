"""Version tags and reuse keys: the train run's tags (train and the report), the evaluate run's key (evaluate and
the report), a version's score on a split (evaluate writes it, promote reads it)."""

from __future__ import annotations

from typing import Any

from components.training.spec import ModelSpec
from steps.support import registry, tracking
from steps.support.fingerprint import code_fingerprint


def registered_name(spec: ModelSpec) -> str:
    """The registered model a spec's trainings become versions of."""
    return f"{registry.MODEL_PREFIX}{spec.name}"


def spec_key(spec: ModelSpec) -> str:
    """Identifies a spec: the same key means the same training recipe."""
    return tracking.content_key(spec.model_dump())


def train_tags(spec: ModelSpec, profile: str, digest: str) -> dict[str, str]:
    """The tags that identify a training: model, profile, data, recipe and the code that trains it."""
    return {"odir.model": spec.name, "profile": profile, "data_digest": digest, "spec_key": spec_key(spec),
            "code_fingerprint": code_fingerprint("train")}  # fmt: skip


def evaluate_key(
    model_uri: str, split: str, views: tuple[str, ...], thresholds_uri: str | None = None,
    exclude_shared_with: tuple[str, ...] = (), *, gradcam_gallery: int, figures: bool = True,
) -> str:  # fmt: skip
    """Identifies an evaluation: the same key means the same predictions, scores, figures and Grad-CAM gallery.

    ``gradcam_gallery`` has no default: the default is the evaluate step's, and importing Grad-CAM here would put it
    into the code fingerprint of the train step, which uses this module's tags too.
    """
    return tracking.content_key(model_uri, split, tuple(views), thresholds_uri, tuple(exclude_shared_with),
                                gradcam_gallery, figures, code_fingerprint("evaluate"))  # fmt: skip


def record_score(model_uri: str, split: str, digest: str, f1_macro: float) -> None:
    """Tags a model version with its ``f1_macro`` on a split of the data with this digest (promotion reads it)."""
    from mlflow import MlflowClient

    name, version = registry.split_model_uri(model_uri)
    client = MlflowClient()
    client.set_model_version_tag(name, version, f"score.{split}.f1_macro", f"{f1_macro:.6f}")
    client.set_model_version_tag(name, version, f"score.{split}.digest", digest)


def recorded_score(version_tags: dict[str, Any], split: str, digest: str) -> float | None:
    """The score :func:`record_score` left on a version for this split and data, or None."""
    if version_tags.get(f"score.{split}.digest") != digest:
        return None
    return float(version_tags[f"score.{split}.f1_macro"])
