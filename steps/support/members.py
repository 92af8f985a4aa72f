"""The checkpoints of a registered member model (train writes them, evaluate, ensemble and drift read them):
``checkpoints/best.pt`` of the train run, or one ``checkpoints/fold_<k>.pt`` per fold of a cross-validated member,
whose probabilities are averaged (:func:`member_view_probs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.errors import OdirError
from components.models.inference import predict_image_views
from components.training.checkpoints import load_trained
from steps.support import integrity

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_ARTIFACT = f"{CHECKPOINT_DIR}/best.pt"


def member_checkpoints(model_uri: str) -> list[Path]:
    """The local checkpoints of a registered member model: ``[best.pt]``, or its fold models in fold order (tensors
    only, loadable with ``weights_only=True``)."""
    folder = integrity.verified_checkpoints(model_uri)
    if folder is None:
        raise OdirError(f"{model_uri} has no checkpoints: not a member model of odir")
    if (folder / "best.pt").exists():
        return [folder / "best.pt"]
    return sorted(folder.glob("fold_*.pt"), key=lambda path: int(path.stem.removeprefix("fold_")))


def member_view_probs(checkpoints: list[Path], paths: list[str], views: tuple[str, ...]) -> np.ndarray:
    """``(F, V, N, 3)`` probabilities of each of a member's F fold models (one for a plain model) and views."""
    probs = []
    for checkpoint in checkpoints:
        network, spec = load_trained(checkpoint)
        probs.append(predict_image_views(network, paths, spec.image_size, views, spec.batch_size,
                                         preprocess=spec.fundus_preprocess()))  # fmt: skip
    return np.stack(probs)
