"""Where a training run's batches come from and how they become logits: images through the whole model, or
backbone features computed once and fed to the head alone.

``head`` mode without augmentation computes the frozen backbone's features once (:func:`feature_source`) and trains
the head on them: the same batches and the same result as running the backbone every step, at a fraction of the
cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from components.data.dataset import FundusDataset
from components.models.backbones import Classifier
from components.training.runtime import Runtime


@dataclass
class BatchSource:
    """Where batches come from and how they become logits: images through the whole model, or cached features
    through the head (``head_only``)."""

    train: Dataset
    val: Dataset
    head_only: bool
    prepare: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor], torch.Tensor] | None

    def forward(self, model: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
        """How ``model`` turns this source's batches into logits."""
        return model.forward_head if self.head_only else model


def image_source(
    train: FundusDataset, val: FundusDataset, rt: Runtime, augment: Callable[[torch.Tensor], torch.Tensor] | None
) -> BatchSource:
    """Images, augmented for training when ``augment`` is given, through the whole model."""
    return BatchSource(train, val, False, rt.images, augment)


@torch.no_grad()
def extract_features(model: Classifier, dataset: FundusDataset, batch_size: int, rt: Runtime) -> torch.Tensor:
    """Pooled backbone features of every image of ``dataset``, in order, with the backbone in eval mode."""
    model.features.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks = []
    for images, _ in loader:
        with rt.autocast():
            chunks.append(model.forward_features(rt.images(images)).float())
    return torch.cat(chunks)


def feature_source(model: Classifier, train: FundusDataset, val: FundusDataset, batch: int, rt: Runtime) -> BatchSource:
    """The frozen backbone's features of both datasets, computed once, through the head alone."""
    train_features = TensorDataset(extract_features(model, train, batch, rt), train.labels)
    val_features = TensorDataset(extract_features(model, val, batch, rt), val.labels)
    return BatchSource(train_features, val_features, True, lambda f: f.to(rt.device), augment=None)


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    rt: Runtime,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every item of ``dataset``, in order."""
    logits, labels = [], []
    for inputs, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with rt.autocast():
            logits.append(forward(prepare(inputs)).float().cpu())
        labels.append(batch_labels)
    return torch.cat(logits), torch.cat(labels)
