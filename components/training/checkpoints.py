"""Checkpoint I/O for :mod:`components.training.loop`: what ``best.pt`` and ``last.pt`` hold, how they are written, read
and resumed from, and :func:`load_trained`: a ``best.pt`` as a model ready to predict.

It lives apart from the loop so that the file format and its guarantees can be read (and tested) in one place:

- ``best.pt`` (:data:`BEST_CHECKPOINT`): ``{"model", "spec", "epoch", "metrics"}``, the weights of the best epoch;
  what :func:`load_trained` and the pipeline's later steps load.
- ``last.pt`` (:data:`LAST_CHECKPOINT`): what a resume needs, the weights training changes (all of them in ``full``
  mode, only the head otherwise: a frozen backbone is rebuilt bit for bit from the spec), the optimiser and the
  run's :class:`RunState`. After the final epoch it keeps only the state (``best.pt`` holds the result).
- Every file is written atomically through a temporary file of its own (a unique name in the same folder, then
  :func:`os.replace`), so a crash mid-write never leaves a truncated checkpoint and two processes writing into the
  same folder never trip over each other's temporary file.
- :class:`CheckpointWriter` writes in a background thread while the next epoch computes.
- Reading is ``weights_only=True`` only: a checkpoint that would need to run code to load is refused.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.errors import OdirError
from components.models.backbones import (
    IMAGENET,
    Classifier,
    Normalisation,
    build_model,
    preprocessing_config,
)
from components.models.weight_files import WeightsError, load_tensors
from components.training.runtime import place, select_device, uses_channels_last
from components.training.spec import ModelSpec

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


@dataclass
class RunState:
    """What ``last.pt`` stores besides the weights and the optimiser, and the best checkpoint kept in memory."""

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False
    best: dict | None = None  # the best checkpoint's payload, kept from the epoch it was made (None after a resume)
    best_on_disk: bool = True  # whether best.pt holds it yet (while epochs improve, last.pt holds its weights)

    def metrics_of(self, epoch: int) -> dict[str, float]:
        [entry] = [h for h in self.history if h["epoch"] == epoch]
        return {key: value for key, value in entry.items() if key != "epoch"}


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint as plain tensors and numbers; one that would need to run code to load is refused.

    Raises:
        WeightsError: naming the file, when it is missing, corrupt or not loadable as plain tensors
            (:func:`components.models.weight_files.load_tensors`).
    """
    saved = load_tensors(path)
    if not isinstance(saved, dict) or "model" not in saved or "spec" not in saved:
        raise WeightsError(f"checkpoint {path} is not an odir checkpoint (no model and spec)")
    return saved


def save_checkpoint(path: Path, payload: dict) -> None:
    """Writes ``payload`` to ``path`` atomically, through a temporary file no other write uses.

    Readers see the old file or the new one, never a partial one. The temporary file is named uniquely in the same
    folder (so :func:`os.replace` stays a rename on one file system); it is removed when the write fails.
    """
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with partial.open("xb") as handle:  # "x": fails rather than share a file with another writer
            torch.save(payload, handle)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _changing_state(model: Classifier, mode: str) -> dict[str, torch.Tensor]:
    """The part of the weights that training changes: all of it in ``full`` mode, only the head otherwise.

    A frozen backbone is rebuilt bit for bit from the spec (weights and seed) on resume, so ``last.pt`` need not
    rewrite it every epoch; in head mode that is most of the time of a run on cached features.
    """
    if mode == "full":
        return model.state_dict()
    return {f"head.{key}": value for key, value in model.head.state_dict().items()}


def changing_weights(model: Classifier, mode: str) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights training changes (as ``last.pt`` holds them): what an EMA's ``last.pt`` keeps too."""
    return _detached(_changing_state(model, mode))


def _detached(value: object) -> object:
    """A copy of a checkpoint payload whose tensors training can no longer change in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(item) for item in value)
    return value


def best_payload(model: Classifier, spec: ModelSpec, state: RunState) -> dict:
    """``best.pt`` of the current weights, the best epoch's (a copy: training goes on changing the weights)."""
    return _detached({
        "model": model.state_dict(), "spec": spec.model_dump(), "epoch": state.best_epoch,
        "metrics": state.metrics_of(state.best_epoch), "preprocessing": preprocessing_config(spec.backbone),
    })  # fmt: skip


def frozen_payload(model: Classifier, spec: ModelSpec, metrics: dict[str, float]) -> dict:
    """``best.pt`` of a ``frozen`` run: the loaded weights, epoch 0."""
    return {"model": model.state_dict(), "spec": spec.model_dump(), "epoch": 0, "metrics": metrics,
            "preprocessing": preprocessing_config(spec.backbone)}  # fmt: skip


def last_payload(model: Classifier, optimiser: torch.optim.Optimizer | None, spec: ModelSpec, state: RunState) -> dict:
    """``last.pt``: what a resume needs; after the final epoch only the run's state (best.pt holds the result)."""
    weights = None if state.finished else changing_weights(model, spec.mode)
    optimiser_state = None if state.finished else _detached(optimiser.state_dict())
    return {
        "model": weights, "optimizer": optimiser_state, "spec": spec.model_dump(), "epoch": state.epoch,
        "best_score": state.best_score, "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
        "history": state.history, "finished": state.finished,
    }  # fmt: skip


def resume_state(
    workdir: Path, spec: ModelSpec, model: Classifier, optimiser: torch.optim.Optimizer | None
) -> RunState | None:
    """The state of ``workdir/last.pt``, its weights and optimiser loaded into ``model`` and ``optimiser``; None
    without one.

    Raises:
        OdirError: when ``last.pt`` was written for another spec.
        WeightsError: when it cannot be loaded as plain tensors.
    """
    path = workdir / LAST_CHECKPOINT
    if not path.exists():
        return None
    saved = load_checkpoint(path)
    if saved["spec"] != spec.model_dump():
        raise OdirError(f"{path} was written for another model spec; use an empty working folder or the same spec")
    state = RunState(saved["epoch"], saved["best_score"], saved["best_epoch"], saved["bad_epochs"], saved["history"])
    state.finished = saved.get("finished", False)
    if state.finished:  # best.pt holds the result; nothing is left to train
        return state
    model.load_state_dict(saved["model"], strict=spec.mode == "full")
    if optimiser is not None and saved["optimizer"] is not None:
        optimiser.load_state_dict(saved["optimizer"])
    if state.best_epoch == state.epoch:  # the best weights are these, not yet in best.pt
        state.best, state.best_on_disk = best_payload(model, spec, state), False
    log.info("%s: resuming after epoch %d from %s", spec.name, saved["epoch"], path)
    return state


class CheckpointWriter:
    """Writes checkpoints in a background thread so the next epoch computes while the last one goes to disk.

    One job at a time, its files in order: :meth:`submit` waits for the previous job, and :meth:`flush` for the
    pending one (and re-raises its error). Payloads must be copies (:func:`best_payload`, :func:`last_payload`)
    that training no longer changes in place.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, writes: list[tuple[Path, dict]]) -> None:
        self.flush()
        self._thread = threading.Thread(target=self._write, args=(writes,), name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _write(self, writes: list[tuple[Path, dict]]) -> None:
        try:
            for path, payload in writes:
                save_checkpoint(path, payload)
        except BaseException as error:  # handed to the training thread by flush()
            self._error = error

    def flush(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_trained(checkpoint: Path | str, device: str | None = None) -> tuple[Classifier, ModelSpec]:
    """The model and spec of a ``best.pt`` written by :func:`components.training.loop.train` (tensors only:
    ``weights_only=True``), normalising its input as it was trained to, in the memory format it was trained in
    (channels-last: 1.5x faster 5-view prediction of Lite0 on 2 CPU cores, ``make bench``)."""
    saved = load_checkpoint(checkpoint)
    spec = ModelSpec.model_validate(saved["spec"])
    # the normalisation the weights were trained under: recorded since it became part of the backbone's
    # registration; every checkpoint written before that was trained on ImageNet statistics
    recorded = saved.get("preprocessing")
    model = build_model(spec.backbone, "none", Normalisation.from_config(recorded) if recorded else IMAGENET)
    model.load_state_dict(saved["model"])
    target = select_device(device)
    return place(model, target, uses_channels_last(spec, target)).eval(), spec
