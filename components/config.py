"""Typed, frozen configs loaded from YAML: a model spec and a pipeline profile. Unknown keys and bad values
raise :class:`ConfigError` naming the file and the field.

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

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from components import LABELS
from components.data.augment import AugmentPipeline, build_augment, parse_augment
from components.data.folds import CVSpec
from components.data.fundus import FundusPreprocess, parse_preprocess
from components.errors import OdirError
from components.evaluation.thresholds import parse_objective
from components.models.backbones import BACKBONES
from components.models.tta import STUDY_VIEWS, check_views
from components.monitoring.explain import GALLERY_PER_KIND
from components.monitoring.referral import ReferralSpec
from components.training.losses import LOSSES


class ConfigError(OdirError):
    """A profile or model spec that cannot be used; the message names the file and the field."""


class ModelSpec(BaseModel):
    """Everything that turns data into one trained model.

    Attributes:
        name: the model's name (registered as ``odir-<name>``): lowercase letters, digits, ``-``, ``_``, ``.``.
        backbone: a registered backbone (``resnet18``, ``se_resnet18``, ``mha_resnet18``, ``efficientnet_b0``,
            ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``, ``tiny_cnn``).
        weights: ``none``, ``imagenet`` or the path of a checkpoint.
        mode: ``frozen`` (evaluate as loaded), ``head`` (backbone frozen, head trained) or ``full``.
        loss: a registered loss (``bce``, ``focal``, ``class_balanced``) and ``loss_params`` for it.
        epochs, lr, weight_decay, batch_size, image_size, seed: the usual (``weight_decay``: L2 under ``adam``,
            decoupled under ``adamw``).
        augment: training augmentation (:mod:`components.data.augment`): ``false``/``none`` (default),
            ``true``/``flips`` (random horizontal and vertical flips, as ``true`` always meant), ``fundus`` (flips,
            resized crop, any rotation, colour and gamma jitter), a list of registered names and presets, or a mapping
            of names to their parameters.
        preprocess: fundus preprocessing done once per decoded image (:mod:`components.data.fundus`): ``none``
            (default), ``fov_crop``, ``local_contrast``, a list of them, or a mapping of them to their parameters.
        optimizer: ``adam`` (default) or ``adamw`` (decoupled weight decay, none on biases and norms).
        schedule: the learning rate over the run's steps: ``constant`` (default) or ``cosine`` (to 0 at the end).
        progressive_sizes: progressive resizing: the image sides of the first epochs, one per epoch, none above
            ``image_size`` (each batch resized after augmentation); the epochs after them, at least the last one,
            train at ``image_size``, the size the model is validated, predicted and served at, and the last epoch is
            the one kept (``monitor: last``). None: ``image_size`` throughout. Predicting at a
            larger size than a model trained at lost 0.011 f1_macro at 256 px and 0.036 at 288 px for 224 px
            models (docs/results.md), hence the last epoch's rule.
        warmup_epochs: linear warmup of the learning rate over this many epochs (fractions allowed), per step.
        backbone_lr_scale: the backbone trains at ``lr * backbone_lr_scale``, the head at ``lr`` (``full`` mode).
        label_smoothing: training targets ``y (1 - s) + s / 2`` (validation loss uses the true labels).
        ema: decay of an exponential moving average of the weights, which is validated and checkpointed instead
            of the raw weights (None: no average).
        monitor: the validation metric that picks the best checkpoint (``f1_macro``, higher is better; ``loss``),
            or ``last``: no epoch is picked, every one counts as an improvement and the last is kept (no early
            stopping; validation is only reported). In CV each fold model then trains on every fold but its own.
        patience: stop after this many epochs without improvement (None: never).
        validate_every: with ``monitor: last``, validate only every n-th epoch and the last (their val curve, and
            the kept model's scores): validation only reports then, and on 2 CPU cores each pass over a held-out fold
            costs 5 seconds. Picking an epoch needs every one scored, so other monitors take 1 only.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        amp: mixed precision on CUDA (bfloat16 where supported, else float16 with gradient scaling).
        cpu_bf16: bfloat16 autocast when training on a CPU (on this machine's avx512_bf16, 1.0-1.3x faster Lite0 fold
            models at 224 px on top of channels-last, docs/benchmarks.md); off by default because it changes the
            numbers, so a profile opts in after measuring. Ignored, with a warning, on a CPU without native bfloat16.
        channels_last: channels-last memory format on CUDA and the CPU (1.6x faster Lite0 training steps on 2 CPU
            cores in float32, docs/benchmarks.md; the same arithmetic in another order). Not on MPS.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    backbone: str
    weights: str = "none"
    mode: Literal["frozen", "head", "full"] = "full"
    loss: str = "bce"
    loss_params: dict[str, float | None] = Field(default_factory=dict)
    epochs: int = Field(default=20, ge=0)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=32, ge=1)
    image_size: int = Field(default=256, ge=16, le=1024)
    seed: int = 0
    augment: bool | str | list[str] | dict[str, dict[str, Any] | None] = False
    preprocess: str | list[str] | dict[str, dict[str, Any] | None] = "none"
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    progressive_sizes: list[Annotated[int, Field(ge=16, le=1024)]] | None = None
    warmup_epochs: float = Field(default=0.0, ge=0)
    backbone_lr_scale: float = Field(default=1.0, gt=0, le=10)
    label_smoothing: float = Field(default=0.0, ge=0, le=0.5)
    ema: float | None = Field(default=None, gt=0, lt=1)
    monitor: Literal["f1_macro", "loss", "last"] = "f1_macro"
    patience: int | None = Field(default=None, ge=1)
    validate_every: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=None, gt=0)
    amp: bool = True
    channels_last: bool = True
    cpu_bf16: bool = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        BACKBONES.get(value)
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        LOSSES.get(value)
        return value

    @field_validator("augment", mode="before")
    @classmethod
    def _known_augment(cls, value: Any) -> Any:
        parse_augment(value)  # ValueError naming the step, the parameter and the valid choices
        return value

    @field_validator("preprocess", mode="before")
    @classmethod
    def _known_preprocess(cls, value: Any) -> Any:
        parse_preprocess(value)
        return value

    @model_validator(mode="after")
    def _trainable(self) -> ModelSpec:
        if self.mode != "frozen" and self.epochs < 1:
            raise ValueError(f"mode {self.mode!r} trains, so epochs must be >= 1")
        if self.warmup_epochs and self.mode != "frozen" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) must be less than epochs ({self.epochs})")
        if self.monitor == "last" and self.patience is not None:
            raise ValueError("monitor 'last' picks no epoch, so it never stops early: remove patience")
        if self.progressive_sizes is not None:
            self._check_progressive_sizes(self.progressive_sizes)
        if self.monitor != "last" and self.validate_every != 1:
            raise ValueError(f"monitor {self.monitor!r} picks an epoch, so it validates every one: validate_every 1")
        return self

    def _check_progressive_sizes(self, sizes: list[int]) -> None:
        """Progressive resizing ends at ``image_size``, on the epoch that is kept."""
        if self.mode == "frozen":
            raise ValueError("mode 'frozen' trains nothing: remove progressive_sizes")
        if self.monitor != "last":
            raise ValueError("progressive_sizes needs monitor 'last': an epoch picked before the last may have trained "
                             "at a smaller size than the model predicts at")  # fmt: skip
        if max(sizes) > self.image_size:
            raise ValueError(f"progressive_sizes are the smaller sides of the first epochs: none above image_size "
                             f"({self.image_size}), got {max(sizes)}")  # fmt: skip
        if not 0 < len(sizes) < self.epochs:
            raise ValueError(f"progressive_sizes lists the sides of the first epochs, 1 to {self.epochs - 1} of them: "
                             f"the last epoch trains at image_size ({self.image_size}); got {len(sizes)}")  # fmt: skip

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves out the optimisation, augmentation and preprocessing fields added later while they hold their
        defaults, so a spec that does not use them dumps (and keys its checkpoints, runs and reuse) as before."""
        data = handler(self)
        for name in _LATER_FIELDS:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data

    def fundus_preprocess(self) -> FundusPreprocess:
        """The preprocessing ``preprocess`` names (inactive by default)."""
        return parse_preprocess(self.preprocess)

    def augmentation(self) -> AugmentPipeline | None:
        """The training augmentation ``augment`` names (None for none); geometric steps fill with the
        preprocessing's background."""
        return build_augment(self.augment, fill=self.fundus_preprocess().background)


_LATER_FIELDS = ("preprocess", "optimizer", "schedule", "warmup_epochs", "backbone_lr_scale", "label_smoothing", "ema",
                 "cpu_bf16", "validate_every", "progressive_sizes")  # fmt: skip


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
            ``youden``, ``sens_at_spec:<level>`` or ``spec_at_sens:<level>`` with a level in (0, 1).
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
            (tiny test profiles: faster).
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

    @field_validator("threshold_objectives")
    @classmethod
    def _known_objectives(cls, value: dict[str, str]) -> dict[str, str]:
        for objective in value.values():
            parse_objective(objective)  # ValueError naming the objective and the valid ones
        return value

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
            if isinstance(data.get("models"), list):  # anything else is refused by the models field itself
                data["models"] = [{**defaults, **m} if isinstance(m, dict) else m for m in data["models"]]
        return data

    @field_validator("tta_views")
    @classmethod
    def _known_views(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_views(value)

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
    candidate = Path(name_or_path)
    path = (
        candidate if candidate.suffix in (".yaml", ".yml") else configs_dir() / "experiments" / f"{name_or_path}.yaml"
    )
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir() / "experiments").glob("*.yaml"))
        raise ConfigError(f"{path}: experiment grid not found; known grids: {', '.join(known) or 'none'}")
    try:
        return ExperimentGrid.model_validate(_read_yaml(path))
    except ValidationError as error:
        raise ConfigError(_describe(error, str(path))) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        message = item["msg"].removeprefix("Value error, ")
        shown = f" (got {item['input']!r})" if not isinstance(item.get("input"), dict | list) else ""
        lines.append(f"{source}: {field or '(top level)'}: {message}{shown}")
    return "\n".join(lines)


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
        raise ConfigError(_describe(error, source)) from None


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
        raise ConfigError(_describe(error, str(path))) from None
