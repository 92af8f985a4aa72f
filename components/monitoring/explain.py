"""Grad-CAM per class for odir's classifiers, their fold averages and weighted ensembles, and the overlay a reader
looks at.

For a class ``c`` and the activations ``A`` (``(B, K, h, w)``) of the layer the backbone's name is registered with in
:data:`CAM_LAYERS`: the channel weights are the spatial means of ``∂y_c / ∂A``
(Selvaraju et al., 2017), the map is ``ReLU(Σ_k w_k A_k)``, upsampled bilinearly to the input size and divided by
its maximum, so that every network's map is in ``[0, 1]`` with 0 meaning "no evidence for this class here" (a map
with no positive evidence anywhere stays all zero rather than stretching noise to full scale).

A member made of fold models gets the mean of its folds' maps, an ensemble the weighted mean of its members' maps
with its own weights (members of weight 0 are not run). Each network's map is normalised before the means: raw
Grad-CAM magnitudes of different networks are not on one scale, and a network must not count more because its
activations are larger. The means are not normalised again, so where the members disagree the map is fainter. The
ensemble's temperatures act on probabilities, not on these maps. Every map is computed on the identity view (no
TTA) and placed in the frame of the whole photo padded to a square (:func:`components.data.images.square_resize`), so
that members that crop to the field of view (``preprocess: fov_crop``) and members that do not line up.

Written here (some 40 lines for the map itself) rather than taken from a library, after trying the two maintained
ones on our backbones (``resnet18``, ``se_resnet18``, ``mha_resnet18``, ``efficientnet_lite0``, ``tiny_cnn``, uint8
input): ``grad-cam`` 1.5.7 (pytorch-grad-cam) and ``torchcam`` 0.5.0 both hook the same layers and give the same
maps up to normalisation, but

- both run a forward and a backward pass through every parameter per target class; here one forward serves all
  three classes, and the gradients are taken with respect to the activations only (``torch.autograd.grad``), never
  the weights: cheaper, and it works on a model whose parameters do not require gradients, where grad-cam 1.5.7
  fails ("element 0 of tensors does not require grad": our uint8 input cannot require one either);
- both min-max normalise each map on their own, which would stretch a flat, evidence-free map to full scale, and
  neither averages folds or weights members: that code, and the fov-crop geometry, would be ours anyway;
- grad-cam brings OpenCV (``opencv-python-headless``, ~60 MB) and ``ttach`` into the runtime image for a resize.

So no new dependency: torch, numpy, matplotlib's colormaps and Pillow, which odir already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.utils.data import DataLoader

from components import LABELS
from components.data.dataset import IMAGE_CACHE, FundusDataset, ImageCache, to_model_input
from components.data.fundus import NO_PREPROCESS, FundusPreprocess, fov_box
from components.data.images import ImageSource, decode_image, square_resize
from components.evaluation.ensemble import normalise_weights
from components.registry import Registry

CLASS_NAMES = {"D": "diabetic retinopathy", "G": "glaucoma", "A": "AMD"}

# Per registered backbone (components.models.backbones.BACKBONES), the dotted path inside the Classifier of the module
# whose (B, K, h, w) output Grad-CAM weighs: the last spatial feature map before pooling, after any attention block, so
# the map shows what the head sees. A registry of its own rather than a field of the backbone's: the backbone registry
# is training code, and naming a layer to explain must not change the training fingerprint (steps/support/base.py) and
# retrain every model; tests/components/test_explain.py holds every backbone to having one here.
CAM_LAYERS: Registry[str] = Registry("CAM layer")
CAM_LAYERS.register("resnet18")("features.body.layer4")
# after the attention block that follows layer4: the SE rescaling and the MHA mixing of positions are part of what
# the head sees (layer4's own output would show the map before them)
CAM_LAYERS.register("se_resnet18")("features.attention.layer4")
CAM_LAYERS.register("mha_resnet18")("features.attention.layer4")
CAM_LAYERS.register("efficientnet_b0")("features.body.features.8")  # the 1x1 conv to 1280 channels, BN, SiLU
for _lite in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    CAM_LAYERS.register(_lite)("features.body.bn2")  # timm's BatchNorm + ReLU6 after conv_head
CAM_LAYERS.register("tiny_cnn")("features.body.3")  # the fourth conv block
GALLERY_KINDS = {"tp": "true positives", "fp": "false positives", "fn": "false negatives"}
"""What a reader of an evaluation wants to see explained, per class."""
GALLERY_PER_KIND = 4
"""Default number of images per class and kind in an evaluation's gallery (``gradcam_gallery``; 0: none)."""


def cam_module(model: nn.Module, layer: str) -> nn.Module:
    """The module at dotted path ``layer`` inside ``model``.

    Raises:
        ValueError: naming the path when the model has no such module.
    """
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"CAM layer {layer!r} is not a module of this {type(model).__name__}") from None


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """``(B, classes, H, W)`` Grad-CAM maps in ``[0, 1]``, one per class, at the input's size.

    Args:
        model: maps ``images`` to ``(B, classes)`` logits; run in eval mode (its mode is restored after).
        images: the model's input, ``(B, 3, H, W)`` (uint8 or float, as
        :data:`components.models.backbones.MODEL_INPUT`). layer: dotted path of the module whose ``(B, K, h, w)`` output
            is weighed (the backbone's :data:`CAM_LAYERS` entry).

    Raises:
        ValueError: for a layer that is not in the model, does not run, or has no spatial output.
    """
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # a leaf of our own: d logit / d activation needs no gradient in the weights; the rest of the network runs
        # on a copy, which later in-place operations may change
        activation = output.detach().requires_grad_()
        captured.append(activation)
        return activation.clone()

    handle = cam_module(model, layer).register_forward_hook(capture)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(images)
            if not captured or captured[0].ndim != 4:
                raise ValueError(f"CAM layer {layer!r} gave no (B, K, h, w) feature map in the forward pass")
            activation = captured[0]
            maps = []
            for column in range(logits.shape[1]):
                # one image's logit depends on its own activations only (eval mode): the batch sum separates them
                (gradient,) = torch.autograd.grad(logits[:, column].sum(), activation, retain_graph=True)
                weights = gradient.mean(dim=(2, 3), keepdim=True)
                maps.append(torch.relu((weights * activation).sum(dim=1)))
    finally:
        handle.remove()
        model.train(was_training)
    cams = F.interpolate(torch.stack(maps, dim=1).detach(), size=images.shape[-2:], mode="bilinear")
    return normalise_maps(cams)


def normalise_maps(cams: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` map of ``(..., H, W)`` non-negative ``cams`` divided by its maximum; all-zero maps stay zero."""
    peak = cams.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(torch.finfo(cams.dtype).tiny), torch.zeros_like(cams))


def weighted_cams(maps: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``Σ w_m maps_m`` with the weights normalised to sum to one: the mean of a member's fold maps (equal weights)
    or an ensemble's map (its weights).

    Raises:
        ValueError: for no maps, maps of different shapes, or weights that do not fit them (see
            :func:`components.evaluation.ensemble.normalise_weights`).
    """
    if not maps:
        raise ValueError("weighted_cams needs at least one map")
    shapes = {np.shape(m) for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"maps must all have the same shape, got {sorted(shapes)}")
    normalised = normalise_weights(weights)
    if normalised.size != len(maps):
        raise ValueError(f"{normalised.size} weights for {len(maps)} maps")
    return np.tensordot(normalised, np.stack([np.asarray(m, dtype=np.float32) for m in maps]), axes=1)


# --- networks and images ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CamNetwork:
    """One trained network to explain, with how it sees an image.

    Attributes:
        model: the classifier.
        layer: its backbone's entry in :data:`CAM_LAYERS`.
        image_size: the side of its square input.
        preprocess: the fundus preprocessing it was trained with (``ModelSpec.fundus_preprocess()``).
    """

    model: nn.Module
    layer: str
    image_size: int
    preprocess: FundusPreprocess = NO_PREPROCESS


def input_square(shape: tuple[int, int], box: tuple[int, int, int, int] | None) -> tuple[float, float, float]:
    """Where a network's square input lies in the photo padded to a square: ``(top, left, side)`` as fractions of
    that square's side.

    Args:
        shape: the photo's ``(height, width)``.
        box: ``(top, bottom, left, right)`` of the crop the network's preprocessing took (:func:`fov_box`), or
            None for the whole photo. The crop is padded to its own square, centred, as
            :func:`components.data.images.square_resize` pads.
    """
    height, width = shape
    side = max(height, width)
    top, bottom, left, right = box or (0, height, 0, width)
    crop_height, crop_width = bottom - top, right - left
    crop_side = max(crop_height, crop_width)
    row = (side - height) // 2 + top - (crop_side - crop_height) // 2
    column = (side - width) // 2 + left - (crop_side - crop_width) // 2
    return row / side, column / side, crop_side / side


def place(cams: torch.Tensor, square: tuple[float, float, float], size: int) -> torch.Tensor:
    """``(C, h, w)`` maps of a network's input square placed on a ``(C, size, size)`` canvas of the padded photo
    (:func:`input_square`); what lies outside the network's input is 0."""
    top, left, side = (round(value * size) for value in square)
    side = max(side, 1)
    resized = F.interpolate(cams[None], size=(side, side), mode="bilinear")[0]
    canvas = torch.zeros((cams.shape[0], size, size), dtype=cams.dtype)
    row_start, row_stop = max(top, 0), min(top + side, size)  # a crop's square may reach past the photo's
    column_start, column_stop = max(left, 0), min(left + side, size)
    canvas[:, row_start:row_stop, column_start:column_stop] = resized[
        :, row_start - top : row_stop - top, column_start - left : column_stop - left
    ]
    return canvas


def network_cams(network: CamNetwork, sources: Sequence[ImageSource], batch_size: int = 16,
                 cache: ImageCache | None = IMAGE_CACHE) -> torch.Tensor:  # fmt: skip
    """``(N, classes, S, S)`` maps of one network on its own input (side ``S``, its preprocessing), in batches."""
    dataset = FundusDataset(list(sources), None, network.image_size, cache, network.preprocess)
    device = next(network.model.parameters()).device
    chunks = [
        grad_cam(network.model, to_model_input(batch.to(device)), network.layer).cpu()
        for batch, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ]
    return torch.cat(chunks)


@dataclass(frozen=True)
class CamModel:
    """What a registered model is made of, for Grad-CAM: per member its networks (one, or its fold models), and the
    members' weights in the ensemble (one member: ``[1.0]``)."""

    members: Sequence[Sequence[CamNetwork]]
    weights: np.ndarray


@dataclass(frozen=True)
class Explained:
    """Images and their maps, in the frame of each photo padded to a square and resized to ``size``.

    Attributes:
        images: ``(N, size, size, 3)`` uint8 RGB photos (no preprocessing: what a reader recognises).
        cams: ``(N, classes, size, size)`` float32 maps in ``[0, 1]``.
    """

    images: np.ndarray
    cams: np.ndarray


def explain_images(
    model: CamModel, sources: Sequence[ImageSource], size: int, batch_size: int = 16,
    cache: ImageCache | None = IMAGE_CACHE,
) -> Explained:  # fmt: skip
    """Grad-CAM of a model over some images, at ``size``: per member the mean of its folds' maps, then the weighted
    mean over members.

    Raises:
        ValueError: when the members and weights do not fit (see :func:`weighted_cams`).
        DataError: naming an image that cannot be decoded.
    """
    if not sources:
        return Explained(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, len(LABELS), size, size), np.float32))
    weights = normalise_weights(model.weights)
    if weights.size != len(model.members):
        raise ValueError(f"{weights.size} weights for {len(model.members)} members")
    photos = [decode_image(source) for source in sources]
    squares: dict[FundusPreprocess, list[tuple[float, float, float]]] = {}
    member_maps, used_weights = [], []
    for folds, weight in zip(model.members, weights, strict=True):
        if weight == 0:  # contributes nothing: not worth a forward pass
            continue
        fold_maps = []
        for network in folds:
            if network.preprocess not in squares:
                squares[network.preprocess] = [_square_of(photo, network.preprocess) for photo in photos]
            cams = network_cams(network, sources, batch_size, cache)
            placed = [place(cam, square, size) for cam, square in zip(cams, squares[network.preprocess], strict=True)]
            fold_maps.append(torch.stack(placed).numpy())
        member_maps.append(weighted_cams(fold_maps, np.ones(len(fold_maps))))
        used_weights.append(weight)
    images = np.stack([square_resize(photo, size) for photo in photos])
    return Explained(images, weighted_cams(member_maps, used_weights).astype(np.float32))


def _square_of(photo: np.ndarray, preprocess: FundusPreprocess) -> tuple[float, float, float]:
    crop = preprocess.crop
    box = fov_box(photo, crop.threshold) if crop is not None else None
    return input_square(photo.shape[:2], box)


# --- gallery: which images to show ----------------------------------------------------------------------------


def gallery_cases(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, per_kind: int
) -> dict[tuple[str, str], list[int]]:
    """Row indices to show per class and kind (``tp``, ``fp``, ``fn``), at most ``per_kind`` each: the most
    confident true and false positives (highest probability first) and the most clearly missed positives (lowest
    first). Ties keep row order."""
    predicted = probs >= np.asarray(thresholds)[None, :]
    truth = np.asarray(labels) == 1
    cases: dict[tuple[str, str], list[int]] = {}
    for column, label in enumerate(LABELS):
        score = probs[:, column]
        chosen = {
            "tp": (truth[:, column] & predicted[:, column], -score),
            "fp": (~truth[:, column] & predicted[:, column], -score),
            "fn": (truth[:, column] & ~predicted[:, column], score),
        }
        for kind, (mask, order) in chosen.items():
            rows = np.flatnonzero(mask)
            cases[(label, kind)] = rows[np.argsort(order[rows], kind="stable")][:per_kind].tolist()
    return cases


# --- overlay --------------------------------------------------------------------------------------------------


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` blended with ``cam`` (``(H, W)`` in ``[0, 1]``) drawn in ``colormap``:
    ``(1 - alpha) * image + alpha * heat``."""
    from matplotlib import colormaps

    if image.shape[:2] != cam.shape:
        raise ValueError(f"image {image.shape[:2]} and map {cam.shape} differ in size")
    heat = colormaps[colormap](np.clip(cam, 0, 1))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def caption(label: str, probability: float, threshold: float) -> str:
    """Two lines: the class, then ``p 0.812  threshold 0.40: positive``."""
    verdict = "positive" if probability >= threshold else "negative"
    return f"{label}: {CLASS_NAMES.get(label, label)}\np {probability:.3f}  threshold {threshold:.2f}: {verdict}"


def captioned(image: np.ndarray, text: str) -> Image.Image:
    """``image`` with a black strip below it holding ``text`` (lines) in white, the font as large as fits."""
    height, width = image.shape[:2]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font_size = max(8, width // 20)
    while True:
        font = ImageFont.load_default(size=font_size)
        left, _, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        if right - left <= width - 8 or font_size <= 8:
            break
        font_size -= 1
    canvas = Image.new("RGB", (width, height + bottom + 8), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, 0))
    ImageDraw.Draw(canvas).multiline_text((4, height + 4), text, fill=(255, 255, 255), font=font)
    return canvas


def write_overlay_png(path: Path | str, image: np.ndarray, cam: np.ndarray, text: str) -> Path:
    """Writes ``image`` with ``cam`` over it and ``text`` below as a PNG; returns the path."""
    target = Path(path)
    captioned(overlay(image, cam), text).save(target, format="PNG")
    return target
