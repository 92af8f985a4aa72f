"""Reading weights from files: the one way odir reads a checkpoint (plain tensors only, each fault named with its
file), and a ``weights:`` checkpoint loaded into a classifier, whole or backbone only.

Kept apart from :mod:`components.models.backbones` (which builds the networks) so that checking a profile's files
before a run (:mod:`components.inputs`) and reading training checkpoints (:mod:`components.training.checkpoints`)
need no network code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from components.errors import OdirError

if TYPE_CHECKING:
    from components.models.backbones import Classifier


class WeightsError(OdirError):
    """Pretrained weights that cannot be had or do not fit the model."""


# text, an empty or truncated file, a pickle torch.save did not write, another format: torch's errors say it in its
# own terms (a "load key", a "zip archive") and name no file
_NOT_A_CHECKPOINT = "checkpoint {path} refused: not a PyTorch checkpoint (text, empty, damaged or another format)"


def load_tensors(path: Path | str) -> object:
    """What ``torch.load(path, weights_only=True)`` reads (tensors, numbers, strings and containers of them): the one
    way odir reads a checkpoint file.

    Raises:
        WeightsError: naming the file and what is wrong: missing, not a PyTorch checkpoint (text, truncated, another
            format), or a pickle of objects other than tensors, refused because loading it would run code from the
            file (torch's own message advises loading it unsafely: never repeated to a user).
    """
    import pickle
    import warnings

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path}: {'not found' if not path.exists() else 'not a file'}")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's words for a pickle naming Python objects (whose loading runs their code), not for a damaged one
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(error)):
            raise WeightsError(f"checkpoint {path} refused: it holds Python objects other than tensors "
                               f"({found.group(1)}), and odir loads checkpoints as plain tensors only (loading it "
                               "would run code from the file); save the model's state_dict() instead"
                               ) from None  # fmt: skip
        raise WeightsError(_NOT_A_CHECKPOINT.format(path=path)) from None
    except Exception:  # an empty or truncated file, another zip: torch's errors name no file
        raise WeightsError(_NOT_A_CHECKPOINT.format(path=path)) from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``weights:`` checkpoint (:func:`load_tensors`): a bare state dict or a dict with a
    ``model`` / ``state_dict`` entry (odir's own checkpoints), ``module.`` prefixes (DataParallel) dropped.

    Raises:
        WeightsError: naming the file and what is wrong (:func:`load_tensors`), or that it holds no state dict.
    """
    loaded = load_tensors(path)
    state = loaded.get("model", loaded.get("state_dict", loaded)) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"checkpoint {path}: holds no state dict (a mapping of parameter names to tensors)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_checkpoint_weights(model: Classifier, path: Path) -> None:
    """Loads a full-model state dict, or a backbone-only one into ``features.body`` (a 3-class ``fc`` into the head),
    as :func:`read_checkpoint` reads it.

    Raises:
        WeightsError: naming the file and what is wrong with it, or the keys that do not fit.
    """
    state = read_checkpoint(path)
    if any(key.startswith(("features.", "head.")) for key in state):
        _load_strict(model, state, path)
        return
    body_state = {key: value for key, value in state.items() if key in model.features.body.state_dict()}
    head = _backbone_head(state, model)
    _load_strict(model.features.body, body_state, path, allow_missing_prefixes=())
    if head:
        model.head[1].load_state_dict(head)


def _backbone_head(state: dict[str, torch.Tensor], model: Classifier) -> dict[str, torch.Tensor]:
    """A torchvision-style classifier (``fc`` or ``classifier.1``) with three outputs, as head weights."""
    for prefix in ("fc.", "classifier.1.", "classifier."):
        weight = state.get(prefix + "weight")
        if weight is not None and weight.shape == model.head[1].weight.shape:
            return {"weight": weight, "bias": state[prefix + "bias"]}
    return {}


def _load_strict(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, allow_missing_prefixes: tuple[str, ...] = ()
) -> None:
    own = module.state_dict()
    missing = [key for key in own if key not in state and not key.startswith(allow_missing_prefixes)]
    wrong = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    unexpected = [key for key in state if key not in own]
    if missing or wrong or unexpected:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("wrong shape", wrong), ("unexpected", unexpected))
            if keys
        )
        raise WeightsError(f"checkpoint {path} does not fit the model ({detail})")
    module.load_state_dict(state, strict=False)
