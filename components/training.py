"""The training loop: one :class:`~components.config.ModelSpec` -> trained weights, best and last checkpoints.

- Adam on the parameters the fine-tuning mode leaves trainable; frozen parts stay in eval mode (BatchNorm
  statistics untouched).
- Every epoch is seeded from ``spec.seed + epoch`` (shuffle order, augmentation, dropout), so a run resumed from
  its last checkpoint ends with the same weights as one that was never interrupted. Checkpoints are written in a
  background thread while the next epoch computes, and only what a resume needs: ``last.pt`` (weights and
  optimiser) after every epoch but the final one, which leaves only the run's state; ``best.pt`` once the best
  weights are about to leave ``last.pt`` (an epoch that did not improve, or the end).
- ``head`` mode without augmentation computes the frozen backbone's features once and trains the head on them:
  the same batches and the same result as running the backbone every step, at a fraction of the cost.
- The best checkpoint is chosen on validation ``f1_macro`` (or loss); early stopping after ``patience`` epochs
  without improvement. Callbacks receive each epoch's metrics and each saved checkpoint (tracking plugs in here).
- CUDA, then Apple MPS, then CPU; mixed precision and channels-last on CUDA.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from components.config import ModelSpec
from components.data import FundusDataset, to_model_input
from components.errors import OdirError
from components.losses import build_loss
from components.metrics import multilabel_report
from components.models import Classifier, WeightsError, build_model

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


class Callback:
    """Hooks called by :func:`train`; override what you need."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch, with ``train_loss``, ``val_loss`` and every ``val_*`` metric."""

    def on_checkpoint(self, path: Path, kind: str, epoch: int) -> None:
        """After a checkpoint is written; ``kind`` is ``"best"`` or ``"last"``."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        best_epoch: the epoch of the best checkpoint (0 for ``frozen``: the weights as loaded).
        best_metrics: validation metrics of the best checkpoint.
        history: one dict of metrics per epoch run, including those before a resume.
        best_checkpoint: ``{"model", "spec", "epoch", "metrics"}``, loadable with ``weights_only=True``.
        resumed_from: the epoch a resumed run continued after, or None.
        stopped_early: whether early stopping ended the run.
        model: the best checkpoint's model, on the CPU in eval mode.
    """

    spec: ModelSpec
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_checkpoint: Path
    resumed_from: int | None
    stopped_early: bool
    seconds: float
    model: Classifier = field(repr=False)


@dataclass
class _State:
    """What ``last.pt`` stores besides the weights and the optimiser."""

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


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA, then Apple MPS, then CPU."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seeds torch (all devices) and NumPy."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def set_trainable(model: Classifier, mode: str) -> None:
    """``full``: everything trains; ``head``: only the head; ``frozen``: nothing."""
    for parameter in model.features.parameters():
        parameter.requires_grad = mode == "full"
    for parameter in model.head.parameters():
        parameter.requires_grad = mode in ("full", "head")


def set_train_mode(model: Classifier, mode: str) -> None:
    """Training mode for the parts that train; frozen parts stay in eval (BatchNorm statistics untouched)."""
    model.train(mode != "frozen")
    if mode != "full":
        model.features.eval()


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Random horizontal and vertical flips, each with probability 1/2 per image (global RNG)."""
    flip_h = torch.rand(images.shape[0], device=images.device) < 0.5
    flip_v = torch.rand(images.shape[0], device=images.device) < 0.5
    images = torch.where(flip_h.view(-1, 1, 1, 1), images.flip(-1), images)
    return torch.where(flip_v.view(-1, 1, 1, 1), images.flip(-2), images)


class _Runtime:
    """Device placement, autocast and gradient scaling for one run."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.channels_last = cuda and spec.channels_last
        self.amp_dtype = None
        if cuda and spec.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        x = to_model_input(batch.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class _Source:
    """Where batches come from and how they become logits: images through the whole model, or cached features
    through the head."""

    train: Dataset
    val: Dataset
    forward: Callable[[torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]
    augment: bool


def _image_source(model: Classifier, train: FundusDataset, val: FundusDataset, rt: _Runtime, augment: bool) -> _Source:
    return _Source(train, val, model, rt.images, augment)


@torch.no_grad()
def extract_features(model: Classifier, dataset: FundusDataset, batch_size: int, rt: _Runtime) -> torch.Tensor:
    """Pooled backbone features of every image of ``dataset``, in order, with the backbone in eval mode."""
    model.features.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks = []
    for images, _ in loader:
        with rt.autocast():
            chunks.append(model.forward_features(rt.images(images)).float())
    return torch.cat(chunks)


def _feature_source(model: Classifier, train: FundusDataset, val: FundusDataset, batch: int, rt: _Runtime) -> _Source:
    train_features = TensorDataset(extract_features(model, train, batch, rt), train.labels)
    val_features = TensorDataset(extract_features(model, val, batch, rt), val.labels)
    return _Source(train_features, val_features, model.forward_head, lambda f: f.to(rt.device), augment=False)


def _train_epoch(
    model: Classifier, source: _Source, loss_fn: nn.Module, optimiser: torch.optim.Optimizer,
    spec: ModelSpec, rt: _Runtime, epoch: int,
) -> float:  # fmt: skip
    from tqdm.auto import tqdm

    set_train_mode(model, spec.mode)
    generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
    loader = DataLoader(source.train, batch_size=spec.batch_size, shuffle=True, generator=generator)
    total, count = 0.0, 0
    for inputs, labels in tqdm(loader, desc=f"{spec.name} epoch {epoch}/{spec.epochs}", leave=False, disable=None):
        x = source.prepare(inputs)
        if source.augment:
            x = augment_batch(x)
        labels = labels.to(rt.device)
        with rt.autocast():
            loss = loss_fn(source.forward(x).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        rt.scaler.scale(loss).backward()
        if spec.grad_clip is not None:
            rt.scaler.unscale_(optimiser)
            nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        rt.scaler.step(optimiser)
        rt.scaler.update()
        total += loss.item() * labels.shape[0]
        count += labels.shape[0]
    return total / max(count, 1)


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    rt: _Runtime,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every item of ``dataset``, in order."""
    logits, labels = [], []
    for inputs, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with rt.autocast():
            logits.append(forward(prepare(inputs)).float().cpu())
        labels.append(batch_labels)
    return torch.cat(logits), torch.cat(labels)


def _validate(
    model: Classifier, source: _Source, loss_fn: nn.Module, spec: ModelSpec, rt: _Runtime
) -> dict[str, float]:
    model.eval()
    logits, labels = predict_logits(source.forward, source.val, source.prepare, spec.batch_size, rt)
    loss = loss_fn(logits.to(rt.device), labels.to(rt.device)).item()
    report = multilabel_report(labels.numpy(), torch.sigmoid(logits).numpy())
    return {"val_loss": loss, **{f"val_{key}": value for key, value in report.items()}}


def _score(metrics: dict[str, float], monitor: str) -> float:
    """Higher is better: F1 as is, loss negated."""
    return metrics["val_f1_macro"] if monitor == "f1_macro" else -metrics["val_loss"]


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint as plain tensors and numbers; one that would need to run code to load is refused.

    Raises:
        WeightsError: naming the file, when it is missing, corrupt or not loadable with ``weights_only=True``.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {path} not found") from None
    except Exception as error:  # an unpickler that refuses a global, a truncated zip, ...
        raise WeightsError(
            f"checkpoint {path} refused: not plain tensors (weights_only load failed: {error})"
        ) from None
    if not isinstance(saved, dict) or "model" not in saved or "spec" not in saved:
        raise WeightsError(f"checkpoint {path} is not an odir checkpoint (no model and spec)")
    return saved


def _save(path: Path, payload: dict) -> None:
    """Writes atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    partial = path.with_suffix(".tmp")
    torch.save(payload, partial)
    partial.replace(path)


def _changing_state(model: Classifier, mode: str) -> dict[str, torch.Tensor]:
    """The part of the weights that training changes: all of it in ``full`` mode, only the head otherwise.

    A frozen backbone is rebuilt bit for bit from the spec (weights and seed) on resume, so ``last.pt`` need not
    rewrite it every epoch; in head mode that is most of the time of a run on cached features.
    """
    if mode == "full":
        return model.state_dict()
    return {f"head.{key}": value for key, value in model.head.state_dict().items()}


def _detached(value: object) -> object:
    """A copy of a checkpoint payload whose tensors training can no longer change in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(item) for item in value)
    return value


class CheckpointWriter:
    """Writes checkpoints in a background thread so the next epoch computes while the last one goes to disk.

    One job at a time, its files in order: :meth:`submit` waits for the previous job, and :meth:`flush` for the
    pending one (and re-raises its error). Payloads must be copies (:func:`_detached`) that training no longer
    changes in place.
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
                _save(path, payload)
        except BaseException as error:  # handed to the training thread by flush()
            self._error = error

    def flush(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _resume(
    workdir: Path, spec: ModelSpec, model: Classifier, optimiser: torch.optim.Optimizer | None
) -> _State | None:
    path = workdir / LAST_CHECKPOINT
    if not path.exists():
        return None
    saved = load_checkpoint(path)
    if saved["spec"] != spec.model_dump():
        raise OdirError(f"{path} was written for another model spec; use an empty working folder or the same spec")
    state = _State(saved["epoch"], saved["best_score"], saved["best_epoch"], saved["bad_epochs"], saved["history"])
    state.finished = saved.get("finished", False)
    if state.finished:  # best.pt holds the result; nothing is left to train
        return state
    model.load_state_dict(saved["model"], strict=spec.mode == "full")
    if optimiser is not None and saved["optimizer"] is not None:
        optimiser.load_state_dict(saved["optimizer"])
    if state.best_epoch == state.epoch:  # the best weights are these, not yet in best.pt
        state.best, state.best_on_disk = _best_payload(model, spec, state), False
    log.info("%s: resuming after epoch %d from %s", spec.name, saved["epoch"], path)
    return state


def train(
    spec: ModelSpec,
    train_data: FundusDataset,
    val_data: FundusDataset,
    workdir: Path | str,
    callbacks: Sequence[Callback] = (),
    device: str | None = None,
    resume: bool = True,
    cache_features: bool | None = None,
) -> TrainResult:
    """Trains ``spec`` on ``train_data``, picks the best epoch on ``val_data``, writes checkpoints to ``workdir``.

    Args:
        spec: the model spec.
        train_data: training images and labels (its labels also feed the class-balanced loss).
        val_data: validation images and labels.
        workdir: where ``last.pt`` and ``best.pt`` go; an existing ``last.pt`` of the same spec is resumed.
        callbacks: told about every epoch and checkpoint.
        device: force a device (``"cpu"``, ``"cuda:1"``); default: the best available.
        resume: continue from ``workdir/last.pt`` when it exists.
        cache_features: train the head on cached backbone features; default: in ``head`` mode without augmentation.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rt = _Runtime(spec, select_device(device))
    seed_everything(spec.seed)
    model = build_model(spec.backbone, spec.weights)
    set_trainable(model, spec.mode)
    model.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    loss_fn = build_loss(spec.loss, train_data.labels.numpy(), **spec.loss_params).to(rt.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=spec.lr, weight_decay=spec.weight_decay) if trainable else None
    state = (_resume(workdir, spec, model, optimiser) if resume else None) or _State()
    resumed_from = state.epoch or None
    use_features = cache_features if cache_features is not None else (spec.mode == "head" and not spec.augment)
    if use_features and spec.mode != "head":
        raise OdirError(f"cached features need mode 'head' (the backbone must be frozen), not {spec.mode!r}")
    if spec.mode == "frozen":
        return _evaluate_frozen(spec, model, train_data, val_data, loss_fn, rt, workdir, callbacks, started)
    if not state.finished:  # a resumed run that had finished trains nothing
        source = (
            _feature_source(model, train_data, val_data, spec.batch_size, rt)
            if use_features
            else _image_source(model, train_data, val_data, rt, spec.augment)
        )
        _run_epochs(spec, model, source, loss_fn, optimiser, rt, state, workdir, callbacks)
    stopped_early = spec.patience is not None and state.bad_epochs >= spec.patience
    if stopped_early:
        log.info("%s: stopped early after epoch %d (no improvement in %d)", spec.name, state.epoch, spec.patience)
    best = state.best or load_checkpoint(workdir / BEST_CHECKPOINT)
    model.load_state_dict(best["model"])
    return TrainResult(
        spec, state.best_epoch, state.metrics_of(state.best_epoch), state.history, workdir / BEST_CHECKPOINT,
        resumed_from, stopped_early, time.perf_counter() - started, model.to("cpu").eval(),
    )  # fmt: skip


def _run_epochs(
    spec: ModelSpec, model: Classifier, source: _Source, loss_fn: nn.Module, optimiser: torch.optim.Optimizer,
    rt: _Runtime, state: _State, workdir: Path, callbacks: Iterable[Callback],
) -> None:  # fmt: skip
    """The epochs after ``state.epoch``, until the last one or early stopping."""
    writer = CheckpointWriter()
    try:
        for epoch in range(state.epoch + 1, spec.epochs + 1):
            seed_everything(spec.seed * 100_003 + epoch)
            train_loss = _train_epoch(model, source, loss_fn, optimiser, spec, rt, epoch)
            metrics = {"train_loss": train_loss, **_validate(model, source, loss_fn, spec, rt)}
            state.history.append({"epoch": float(epoch), **metrics})
            _after_epoch(spec, model, optimiser, state, epoch, metrics, workdir, callbacks, writer)
            if state.finished:
                break
    finally:
        writer.flush()  # the last checkpoint is on disk before returning or re-raising: a crash resumes from it


def _best_payload(model: Classifier, spec: ModelSpec, state: _State) -> dict:
    """``best.pt`` of the current weights, the best epoch's (a copy: training goes on changing the weights)."""
    return _detached({
        "model": model.state_dict(), "spec": spec.model_dump(), "epoch": state.best_epoch,
        "metrics": state.metrics_of(state.best_epoch),
    })  # fmt: skip


def _last_payload(model: Classifier, optimiser: torch.optim.Optimizer, spec: ModelSpec, state: _State) -> dict:
    """``last.pt``: what a resume needs; after the final epoch only the run's state (best.pt holds the result)."""
    weights = None if state.finished else _detached(_changing_state(model, spec.mode))
    optimiser_state = None if state.finished else _detached(optimiser.state_dict())
    return {
        "model": weights, "optimizer": optimiser_state, "spec": spec.model_dump(), "epoch": state.epoch,
        "best_score": state.best_score, "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
        "history": state.history, "finished": state.finished,
    }  # fmt: skip


def _after_epoch(
    spec: ModelSpec, model: Classifier, optimiser: torch.optim.Optimizer, state: _State, epoch: int,
    metrics: dict[str, float], workdir: Path, callbacks: Iterable[Callback], writer: CheckpointWriter,
) -> None:  # fmt: skip
    """Best/last checkpoints, early-stopping bookkeeping, the epoch's log line and callbacks.

    While epochs improve, the best weights are the ones ``last.pt`` holds, so ``best.pt`` waits (in memory) until
    an epoch does not improve or the run ends; then it is written before ``last.pt``, so that a crash at any point
    finds the best weights in one of the two.
    """
    score = _score(metrics, spec.monitor)
    improved = state.best_score is None or score > state.best_score
    state.epoch = epoch
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        state.best, state.best_on_disk = _best_payload(model, spec, state), False
    else:
        state.bad_epochs += 1
    state.finished = epoch == spec.epochs or (spec.patience is not None and state.bad_epochs >= spec.patience)
    writes = []
    if not state.best_on_disk and (state.finished or not improved):
        writes.append((workdir / BEST_CHECKPOINT, state.best))
        state.best_on_disk = True
    writes.append((workdir / LAST_CHECKPOINT, _last_payload(model, optimiser, spec, state)))
    writer.submit(writes)
    log.info(
        "%s epoch %d/%d  train_loss %.4f  val_loss %.4f  val_f1_macro %.4f  val_f1_course %.4f%s",
        spec.name, epoch, spec.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_f1_macro"],
        metrics["val_f1_course"], "  *best*" if improved else "",
    )  # fmt: skip
    if any(type(c).on_checkpoint is not Callback.on_checkpoint for c in callbacks):
        writer.flush()  # a callback that reads the checkpoint needs it on disk
    for callback in callbacks:
        for path, payload in writes:
            callback.on_checkpoint(path, "best" if path.name == BEST_CHECKPOINT else "last", payload["epoch"])
        callback.on_epoch_end(epoch, metrics)


def _evaluate_frozen(
    spec: ModelSpec, model: Classifier, train_data: FundusDataset, val_data: FundusDataset, loss_fn: nn.Module,
    rt: _Runtime, workdir: Path, callbacks: Iterable[Callback], started: float,
) -> TrainResult:  # fmt: skip
    """``frozen`` mode: the loaded weights are the model; validate once and save them as the best checkpoint."""
    source = _image_source(model, train_data, val_data, rt, augment=False)
    metrics = _validate(model, source, loss_fn, spec, rt)
    _save(
        workdir / BEST_CHECKPOINT,
        {"model": model.state_dict(), "spec": spec.model_dump(), "epoch": 0, "metrics": metrics},
    )
    for callback in callbacks:
        callback.on_checkpoint(workdir / BEST_CHECKPOINT, "best", 0)
        callback.on_epoch_end(0, metrics)
    history = [{"epoch": 0.0, **metrics}]
    seconds = time.perf_counter() - started
    return TrainResult(
        spec, 0, metrics, history, workdir / BEST_CHECKPOINT, None, False, seconds, model.to("cpu").eval()
    )


def load_trained(checkpoint: Path | str, device: str | None = None) -> tuple[Classifier, ModelSpec]:
    """The model and spec of a ``best.pt`` written by :func:`train` (tensors only: ``weights_only=True``)."""
    saved = load_checkpoint(checkpoint)
    spec = ModelSpec.model_validate(saved["spec"])
    model = build_model(spec.backbone, "none")
    model.load_state_dict(saved["model"])
    return model.to(select_device(device)).eval(), spec
