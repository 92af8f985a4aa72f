"""Typed, frozen configs loaded from YAML: a pipeline profile (its models' specs:
:class:`components.training.spec.ModelSpec`) and an experiment grid. Unknown keys and bad values raise
:class:`ConfigError` naming the file and the field.

A profile lists the models to train; ``defaults`` holds settings shared by its models (a model's own keys win)::

    name: demo
    defaults: {image_size: 64, epochs: 3, batch_size: 16}
    models:
      - {name: tiny-bce, backbone: tiny_cnn, loss: bce}
      - {name: tiny-focal, backbone: tiny_cnn, loss: focal}
    tta_views: [identity, hflip, vflip, rot90, rot270]
    threshold_grid: study
    ensemble_weights: {tiny-bce: 0.5, tiny-focal: 0.5}
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components import LABELS
from components.data.folds import CVSpec
from components.errors import OdirError, did_you_mean
from components.evaluation.thresholds import STRATEGIES, parse_objective
from components.models.tta import STUDY_VIEWS, check_views
from components.monitoring.explain import GALLERY_PER_KIND
from components.monitoring.referral import ReferralSpec
from components.training.spec import ModelSpec


class ConfigError(OdirError):
    """A profile or model spec that cannot be used; the message names the file and the field."""


class PromotionSpec(BaseModel):
    """When a new ensemble replaces the champion: a paired bootstrap over patients on the same images.

    Attributes:
        metric: the metric compared (a key of ``multilabel_report``: ``f1_macro``, ``f1_course``, ``auroc_G`` ...).
        min_probability: promote only when the challenger beats the champion in at least this share of the
            patient resamples (ties count half): a marginal win is noise on ~200 images.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = "f1_macro"
    min_probability: float = Field(default=0.9, gt=0.5, lt=1)


class Profile(BaseModel):
    """A pipeline profile: the models to train and how their predictions are combined.

    Attributes:
        threshold_objectives: per class (``D``, ``G``, ``A``), what its threshold maximises: ``f1`` (default),
            ``f1_course``, ``youden``, ``sens_at_spec:<level>`` or ``spec_at_sens:<level>`` with a level in (0, 1).
        calibrate: fit a temperature per member and class on validation predictions and apply it in the ensemble
            before the weighted mean (focal and class-balanced losses do not give calibrated probabilities).
        cv: patient-grouped k-fold cross-validation on train + val instead of the given splits (None).
        exclude_shared_patients: in given-splits mode, score val without the images of patients also in train.
        promotion: the evidence a new ensemble needs to become champion.
        referral: when a prediction is referred to a human grader (margin to the threshold, largest spreads);
            carried by the registered ensemble (:class:`components.monitoring.referral.ReferralSpec` documents the
            defaults).
        gradcam_gallery: per class, the evaluate step logs Grad-CAM overlays of at most this many true positives,
            false positives and false negatives of the evaluated split (``gradcam/<split>/<class>/``); 0 logs none
            (tiny test profiles: faster). The pipeline logs them for the ensemble's evaluations, and for each
            member's only with ``member_figures``.
        member_figures: the pipeline's evaluations of each member log their figures (PR curves and confusion
            matrices, reliability diagram) and a Grad-CAM gallery too, as the ensemble's do (off by default since
            issue 34: about 1.5-2.5 s per evaluation on 2 cores, six evaluations in the demo, and the summary links
            the ensemble's; every evaluation logs its metrics, intervals, per-class table and predictions either
            way; ``odir compare`` and ``odir experiments`` log all of it for whatever they evaluate).
        threshold_strategy: how the per-class thresholds are fit (:data:`components.evaluation.thresholds.
            STRATEGIES`): ``tuned`` on the fitting predictions (default), ``shrunk`` halfway back to 0.5, ``fixed``
            at 0.5, or ``prevalence`` (as many positives predicted as there are).
        seeds: repeats of the whole recipe with these training seeds (each model's ``seed`` replaced): the first is
            the pipeline's own run (registered, promoted, submitted), each other one trains and scores a repeat
            (profile ``<name>-seed<s>``, models ``<model>-seed<s>``), and the summary gives the mean and spread of
            the scores over the seeds beside their intervals. Empty: one run with the models' own seeds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    tta_views: tuple[str, ...] = STUDY_VIEWS
    threshold_grid: Literal["study", "fine"] = "study"
    threshold_objectives: dict[Literal["D", "G", "A"], str] = Field(default_factory=dict)
    ensemble_weights: dict[str, float] | None = None
    calibrate: bool = True
    cv: CVSpec | None = None
    exclude_shared_patients: bool = False
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    referral: ReferralSpec = Field(default_factory=ReferralSpec)
    gradcam_gallery: int = Field(default=GALLERY_PER_KIND, ge=0, le=50)
    member_figures: bool = False
    threshold_strategy: Literal[STRATEGIES] = "tuned"
    seeds: tuple[int, ...] = ()

    @field_validator("threshold_objectives")
    @classmethod
    def _known_objectives(cls, value: dict[str, str]) -> dict[str, str]:
        for objective in value.values():
            parse_objective(objective)  # ValueError naming the objective and the valid ones
        return value

    @property
    def protocol(self) -> str:
        """The evaluation protocol in words: ``given splits`` or ``cv (<k> folds)``."""
        return f"cv ({self.cv.folds} folds)" if self.cv else "given splits"

    def needed_splits(self) -> tuple[str, ...]:
        """The labelled splits a run of this profile cannot do without: train and val under the given splits (val
        picks the epoch and fits thresholds, temperatures and weights), train alone in CV mode (train and val are
        pooled). Test splits are optional: without offsite_test the ensemble is scored on val, or cross-fitted."""
        return ("train",) if self.cv else ("train", "val")

    def objectives(self) -> tuple[str, ...]:
        """The threshold objective of each class, in ``LABELS`` order."""
        return tuple(self.threshold_objectives.get(label, "f1") for label in LABELS)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and "defaults" in data:
            data = dict(data)
            defaults = data.pop("defaults")
            if defaults is None:
                defaults = {}
            if not isinstance(defaults, dict):
                raise ValueError("defaults must be a mapping of model settings")
            for key in defaults:  # named once here, rather than once per model it was merged into
                if key not in ModelSpec.model_fields:
                    hint = did_you_mean(key, ModelSpec.model_fields) or " See docs/profiles.md."
                    raise ValueError(f"defaults.{key}: unknown model setting.{hint}")
            if isinstance(data.get("models"), list):  # anything else is refused by the models field itself
                data["models"] = [{**defaults, **m} if isinstance(m, dict) else m for m in data["models"]]
        return data

    @field_validator("tta_views")
    @classmethod
    def _known_views(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_views(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if repeated := sorted({seed for seed in value if value.count(seed) > 1}):
            raise ValueError(f"each seed once: {repeated} repeated (a repeat would train the same models again)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        names = [model.name for model in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicated)}")
        if self.ensemble_weights is not None:
            unknown = sorted(set(self.ensemble_weights) - set(names))
            if unknown:
                raise ValueError(f"ensemble_weights name unknown model(s) {', '.join(unknown)}; models: {names}")
            if any(w < 0 for w in self.ensemble_weights.values()) or sum(self.ensemble_weights.values()) <= 0:
                raise ValueError("ensemble_weights must be >= 0 and not all zero")
        return self

    def seeded(self, seed: int, repeat: bool) -> Profile:
        """This profile with every model trained under ``seed``; a ``repeat`` is renamed ``<name>-seed<seed>`` (and
        its models ``<model>-seed<seed>``), so its runs and versions stand apart from the profile's own."""
        suffix = f"-seed{seed}" if repeat else ""
        models = [m.model_copy(update={"seed": seed, "name": f"{m.name}{suffix}"}) for m in self.models]
        weights = {f"{n}{suffix}": w for n, w in self.ensemble_weights.items()} if self.ensemble_weights else None
        return self.model_copy(update={"name": f"{self.name}{suffix}", "models": models, "ensemble_weights": weights,
                                       "seeds": ()})  # fmt: skip

    def model(self, name: str) -> ModelSpec:
        """The model spec called ``name``."""
        for spec in self.models:
            if spec.name == name:
                return spec
        raise ConfigError(f"profile {self.name!r} has no model {name!r}; models: {[m.name for m in self.models]}")


class Experiment(BaseModel):
    """One row of an experiment grid: members (one model, or several for an ensemble), TTA and thresholds.

    Attributes:
        name: the row's label in the results table.
        task: the study's task it reproduces (1-4).
        members: model names of the grid; more than one makes an ensemble.
        weights: ensemble weights in ``members`` order (default: from validation F1).
        tta: average the test-time views; thresholds: tune per-class thresholds on validation predictions.
        published: the study's reported numbers for this row (metric name -> value), shown beside ours.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    task: int = Field(ge=1, le=4)
    members: tuple[str, ...] = Field(min_length=1)
    weights: tuple[float, ...] | None = None
    tta: bool = False
    thresholds: bool = False
    published: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights_fit(self) -> Experiment:
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        return self


class ExperimentGrid(Profile):
    """A profile plus the experiments (rows of the results table) built from its models."""

    experiments: list[Experiment] = Field(min_length=1)

    def needed_splits(self) -> tuple[str, ...]:
        """Train and val: a grid's models train on the given splits whatever its ``cv``."""
        return ("train", "val")

    @model_validator(mode="after")
    def _members_known(self) -> ExperimentGrid:
        names = {model.name for model in self.models}
        for experiment in self.experiments:
            unknown = sorted(set(experiment.members) - names)
            if unknown:
                raise ValueError(f"experiment {experiment.name!r} names unknown model(s) {', '.join(unknown)}")
        labels = [e.name for e in self.experiments]
        if len(set(labels)) != len(labels):
            raise ValueError("experiment names must be unique")
        return self


def load_grid(name_or_path: str | Path) -> ExperimentGrid:
    """Loads an experiment grid by name (``configs/experiments/<name>.yaml``) or path.

    Raises:
        ConfigError: naming the file and each bad field.
    """
    path = resolve_grid_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir() / "experiments").glob("*.yaml"))
        raise ConfigError(f"{path}: experiment grid not found; known grids: {', '.join(known) or 'none'}")
    try:
        return ExperimentGrid.model_validate(_read_yaml(path))
    except ValidationError as error:
        raise ConfigError(_describe(error, str(path), ExperimentGrid)) from None


def _describe(error: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line per problem: the file, the field (``models[0].lr``) and what is wrong, with a "Did you mean" for
    a key that ``model`` (the validated class) has no field of that name for, where one is close."""
    lines = []
    for item in error.errors():
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        message = item["msg"].removeprefix("Value error, ")
        shown = f" (got {item['input']!r})" if not isinstance(item.get("input"), dict | list) else ""
        if item["type"] == "extra_forbidden" and (known := _fields_at(model, item["loc"][:-1])):
            hint = did_you_mean(str(item["loc"][-1]), known) or f" Settings here: {', '.join(known)}."
            message, shown = f"unknown setting.{hint}", ""
        lines.append(f"{source}: {field}: {message}{shown}" if field else f"{source}: {message}{shown}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names of the config class found at ``loc`` inside ``model`` (list indices skipped); empty where
    the path leads to no config class."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _config_class(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else []


def _config_class(annotation: Any) -> type[BaseModel] | None:
    """The config class an annotation holds: itself, or inside ``list[...]``, ``X | None``, ...; None if none."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (found := _config_class(argument)) is not None:
            return found
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_model_spec(data: dict[str, Any], source: str = "model spec") -> ModelSpec:
    """A model spec from a mapping; ``source`` names where it came from in error messages."""
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source, ModelSpec)) from None


def configs_dir() -> Path:
    """The ``configs/`` folder: ``$PWD/configs`` when present, else the one beside the installed code."""
    here = Path.cwd() / "configs"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile name (``demo``) -> ``configs/demo.yaml``; a path stays a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    return configs_dir() / f"{name_or_path}.yaml"


def resolve_grid_path(name_or_path: str | Path) -> Path:
    """A grid name (``seed``) -> ``configs/experiments/seed.yaml``; a YAML path stays a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return configs_dir() / "experiments" / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> Profile:
    """Loads and validates a profile (or an experiment grid, which is one) by name or path.

    Raises:
        ConfigError: naming the file and each bad field.
    """
    path = resolve_profile_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in configs_dir().glob("*.yaml"))
        raise ConfigError(f"{path}: profile not found; known profiles: {', '.join(known) or 'none'}")
    data = _read_yaml(path)
    kind = ExperimentGrid if "experiments" in data else Profile  # a grid is a profile with experiments
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, str(path), kind)) from None
