"""The model spec: everything that turns data into one trained model, as a typed, frozen pydantic model.

A profile lists its models' specs (:mod:`components.config` loads them from YAML); the train step gets one as JSON,
and every checkpoint carries the spec it was trained under (:func:`components.training.checkpoints.load_trained`).
Unknown keys and bad values raise pydantic's ``ValidationError`` naming the field
(:func:`components.config.parse_model_spec` turns it into a :class:`~components.config.ConfigError`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from components.data.augment import AugmentPipeline, build_augment, parse_augment
from components.data.fundus import FundusPreprocess, parse_preprocess
from components.models.backbones import BACKBONES
from components.training.losses import LOSSES


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
