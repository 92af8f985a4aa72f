"""The training loop: one :class:`~components.training.spec.ModelSpec` -> trained weights, best and last checkpoints.

What lives here is the loop, its epoch seeding and the fine-tuning modes. Elsewhere: what goes to disk, and how,
and :func:`~components.training.checkpoints.load_trained` (a trained model ready to predict) in
:mod:`components.training.checkpoints`; where the batches come from in :mod:`components.training.batches`; the
device, memory format and precision in :mod:`components.training.runtime`. One run's moving parts (spec, model,
batches, loss, optimiser, state, checkpoint writer, callbacks) travel together as a :class:`_Run`, whose methods are
the epochs.

- Adam (or AdamW) on the parameters the fine-tuning mode leaves trainable; frozen parts stay in eval mode
  (BatchNorm statistics untouched). The spec's optimisation options (:mod:`components.training.schedule`: per-step
  warmup and cosine schedule, a lower backbone learning rate, label smoothing, an EMA of the weights that is validated
  and checkpointed instead of the raw ones) and augmentation (:mod:`components.data.augment`) are off by default, and a
  spec that uses none of them trains exactly as before.
- The spec's fundus preprocessing (:mod:`components.data.fundus`) is applied to the datasets it is given, once per
  decoded image.
- Every epoch is seeded from :func:`epoch_seed` ``(spec.seed, epoch)`` (shuffle order, augmentation, dropout), so a
  run resumed from its last checkpoint ends with the same weights as one that was never interrupted. Checkpoints
  are written in a background thread while the next epoch computes, and only what a resume needs: ``last.pt``
  (weights and optimiser) after every epoch but the final one, which leaves only the run's state; ``best.pt``
  once the best weights are about to leave ``last.pt`` (an epoch that did not improve, or the end).
- ``head`` mode without augmentation computes the frozen backbone's features once and trains the head on them
  (:func:`components.training.batches.feature_source`).
- The best checkpoint is chosen on validation ``f1_macro`` (or loss); early stopping after ``patience`` epochs
  without improvement. ``monitor: last`` chooses none: every epoch runs and the last is kept. Callbacks receive
  each epoch's metrics and each saved checkpoint (tracking plugs in here).
- CUDA, then Apple MPS, then CPU; channels-last on CUDA and the CPU, mixed precision on CUDA (and on a CPU with
  native bfloat16 when the spec asks, ``cpu_bf16``): :mod:`components.training.runtime`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from components.data.dataset import FundusDataset
from components.errors import OdirError
from components.evaluation.metrics import multilabel_report
from components.models.backbones import Classifier, build_model
from components.training.batches import BatchSource, feature_source, image_source, predict_logits
from components.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    CheckpointWriter,
    RunState,
    best_payload,
    changing_weights,
    frozen_payload,
    last_payload,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)
from components.training.heap import freed_memory_kept
from components.training.losses import build_loss
from components.training.runtime import Runtime, place, seed_everything, select_device
from components.training.schedule import (
    WeightEMA,
    build_optimiser,
    epoch_side,
    lr_factor,
    resize_batch,
    set_lr,
    smooth_targets,
)
from components.training.spec import ModelSpec

log = logging.getLogger(__name__)


class Callback:
    """Hooks called by :func:`train`; override what you need."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch, with ``train_loss``, and ``val_loss`` and every ``val_*`` metric if the epoch was
        validated (every one unless ``validate_every`` says otherwise)."""

    def on_checkpoint(self, path: Path, kind: str, epoch: int) -> None:
        """After a checkpoint is written; ``kind`` is ``"best"`` or ``"last"``."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        best_epoch: the epoch of the best checkpoint (0 for ``frozen``: the weights as loaded).
        best_metrics: validation metrics of the best checkpoint.
        history: one dict of metrics per epoch run, including those before a resume (``val_*`` only for the
            validated epochs, see ``ModelSpec.validate_every``).
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed``: its shuffle order, augmentation and dropout."""
    return seed * 100_003 + epoch


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


def _score(metrics: dict[str, float], monitor: str, epoch: int) -> float:
    """Higher is better: F1 as is, loss negated, and with ``last`` the epoch itself (each one beats the one before)."""
    if monitor == "last":  # the one monitor that allows epochs without validation (``validate_every``)
        return float(epoch)
    return metrics["val_f1_macro"] if monitor == "f1_macro" else -metrics["val_loss"]


@dataclass
class _Run:
    """One training run: what its epochs share, and the epochs themselves as methods.

    ``source`` is set once the batches are known (images, or cached features); ``state`` is what ``last.pt``
    holds, fresh or resumed. ``ema`` (when the spec asks for one) holds the averaged weights that are validated and
    checkpointed; ``base_lrs`` are the optimiser groups' learning rates before the schedule scales them.
    """

    spec: ModelSpec
    model: Classifier
    loss_fn: nn.Module
    optimiser: torch.optim.Optimizer | None
    rt: Runtime
    state: RunState
    workdir: Path
    callbacks: Sequence[Callback]
    source: BatchSource | None = None
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)
    ema: WeightEMA | None = None
    base_lrs: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0

    @property
    def eval_model(self) -> Classifier:
        """The weights that are validated and checkpointed: the EMA's when there is one."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def scheduled(self) -> bool:
        """Whether the learning rate changes from step to step (a warmup or a non-constant schedule)."""
        return self.spec.schedule != "constant" or self.spec.warmup_epochs > 0

    @classmethod
    def start(
        cls, spec: ModelSpec, train_data: FundusDataset, workdir: Path, callbacks: Sequence[Callback],
        device: str | None, resume: bool,
    ) -> _Run:  # fmt: skip
        """The model, loss and optimiser of ``spec`` on the chosen device, resumed from ``workdir`` if asked."""
        rt = Runtime(spec, select_device(device))
        seed_everything(spec.seed)
        model = build_model(spec.backbone, spec.weights)
        set_trainable(model, spec.mode)
        place(model, rt.device, rt.channels_last)
        loss_fn = build_loss(spec.loss, train_data.labels.numpy(), **spec.loss_params).to(rt.device)
        optimiser = build_optimiser(model, spec.optimizer, spec.lr, spec.weight_decay, spec.backbone_lr_scale)
        base_lrs = [group["lr"] for group in optimiser.param_groups] if optimiser is not None else []
        resumed = resume_state(workdir, spec, model, optimiser) if resume else None
        run = cls(spec, model, loss_fn, optimiser, rt, resumed or RunState(), workdir, callbacks, base_lrs=base_lrs)
        run.steps_per_epoch = max(1, -(-len(train_data) // spec.batch_size))
        if spec.ema is not None and spec.mode != "frozen":
            run.ema = WeightEMA(model, spec.ema)
            if resumed is not None and not resumed.finished:
                run.resume_ema()
        return run

    def resume_ema(self) -> None:
        """The average saved in ``last.pt`` (the part of it training changes), and the best payload made from it."""
        saved = load_checkpoint(self.workdir / LAST_CHECKPOINT).get("ema")
        if saved is None:
            raise OdirError(f"{self.workdir / LAST_CHECKPOINT} holds no weight average; use an empty working folder")
        self.ema.model.load_state_dict(saved, strict=self.spec.mode == "full")
        if self.state.best is not None and not self.state.best_on_disk:  # made from the raw weights by resume_state
            self.state.best = best_payload(self.ema.model, self.spec, self.state)

    def run_epochs(self) -> None:
        """The epochs after ``state.epoch``, until the last one or early stopping."""
        try:
            for epoch in range(self.state.epoch + 1, self.spec.epochs + 1):
                seed_everything(epoch_seed(self.spec.seed, epoch))
                metrics = {"train_loss": self.train_epoch(epoch)}
                if epoch == self.spec.epochs or epoch % self.spec.validate_every == 0:
                    metrics.update(self.validate())
                self.state.history.append({"epoch": float(epoch), **metrics})
                self.after_epoch(epoch, metrics)
                if self.state.finished:
                    break
        finally:
            self.writer.flush()  # the last checkpoint is on disk before returning or re-raising: a crash resumes

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training batches in the epoch's shuffled order; the mean training loss."""
        from tqdm.auto import tqdm

        spec = self.spec
        set_train_mode(self.model, spec.mode)
        generator = torch.Generator().manual_seed(epoch_seed(spec.seed, epoch))
        loader = DataLoader(self.source.train, batch_size=spec.batch_size, shuffle=True, generator=generator)
        total, count = 0.0, 0
        batches = tqdm(loader, desc=f"{spec.name} epoch {epoch}/{spec.epochs}", leave=False, disable=None)
        for index, (inputs, labels) in enumerate(batches):
            total += self.step(inputs, labels, (epoch - 1) * self.steps_per_epoch + index) * labels.shape[0]
            count += labels.shape[0]
        return total / max(count, 1)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, global_step: int = 0) -> float:
        """One optimiser step on one batch (the run's ``global_step``-th, from 0); its loss."""
        rt, optimiser, spec = self.rt, self.optimiser, self.spec
        x = self.source.prepare(inputs)
        if self.source.augment is not None:
            x = self.source.augment(x)
            if x.is_floating_point():  # resampled: back to the runtime's memory format
                x = rt.layout(x)
        if spec.progressive_sizes and not self.source.head_only:
            epoch = global_step // self.steps_per_epoch + 1  # as the learning-rate schedule counts
            x = rt.layout(resize_batch(x, epoch_side(epoch, spec.image_size, spec.progressive_sizes)))
        labels = smooth_targets(labels.to(rt.device), spec.label_smoothing)
        if self.scheduled:
            total = spec.epochs * self.steps_per_epoch
            warmup = round(spec.warmup_epochs * self.steps_per_epoch)
            set_lr(optimiser, lr_factor(global_step, total, warmup, spec.schedule), self.base_lrs)
        with rt.autocast():
            loss = self.loss_fn(self.source.forward(self.model)(x).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        rt.scaler.scale(loss).backward()
        if self.spec.grad_clip is not None:
            rt.scaler.unscale_(optimiser)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
        rt.scaler.step(optimiser)
        rt.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.item()

    def validate(self) -> dict[str, float]:
        """``val_loss`` and every ``val_*`` metric of the current weights (their average, with an EMA)."""
        model = self.eval_model
        model.eval()
        source, batch = self.source, self.spec.batch_size
        logits, labels = predict_logits(source.forward(model), source.val, source.prepare, batch, self.rt)
        loss = self.loss_fn(logits.to(self.rt.device), labels.to(self.rt.device)).item()
        report = multilabel_report(labels.numpy(), torch.sigmoid(logits).numpy())
        return {"val_loss": loss, **{f"val_{key}": value for key, value in report.items()}}

    def after_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Best/last checkpoints, early-stopping bookkeeping, the epoch's log line and callbacks.

        While epochs improve, the best weights are the ones ``last.pt`` holds, so ``best.pt`` waits (in memory)
        until an epoch does not improve or the run ends; then it is written before ``last.pt``, so that a crash at
        any point finds the best weights in one of the two.
        """
        improved = self._record(epoch, metrics)
        writes = self._checkpoints(improved)
        self.writer.submit(writes)
        validated = (
            f"  val_loss {metrics['val_loss']:.4f}  val_f1_macro {metrics['val_f1_macro']:.4f}"
            f"  val_f1_course {metrics['val_f1_course']:.4f}" if "val_loss" in metrics else "  (not validated)"
        )  # fmt: skip
        log.info("%s epoch %d/%d  train_loss %.4f%s%s", self.spec.name, epoch, self.spec.epochs,
                 metrics["train_loss"], validated, self._mark(improved, epoch))  # fmt: skip
        self._notify(epoch, metrics, writes)

    def _mark(self, improved: bool, epoch: int) -> str:
        """The log line's mark of the weights kept so far: the best epoch's, or with ``monitor: last`` (no epoch is
        chosen, so none is "best") the last one's."""
        if self.spec.monitor == "last":
            return "  *kept*" if epoch == self.spec.epochs else ""
        return "  *best*" if improved else ""

    def _record(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Updates the state with the epoch's score; whether it improved on the best."""
        spec, state = self.spec, self.state
        score = _score(metrics, spec.monitor, epoch)
        improved = state.best_score is None or score > state.best_score
        state.epoch = epoch
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            state.best, state.best_on_disk = best_payload(self.eval_model, spec, state), False
        else:
            state.bad_epochs += 1
        state.finished = epoch == spec.epochs or (spec.patience is not None and state.bad_epochs >= spec.patience)
        return improved

    def _checkpoints(self, improved: bool) -> list[tuple[Path, dict]]:
        """The files to write after this epoch, in order: ``best.pt`` when it is due, then ``last.pt``."""
        state, writes = self.state, []
        if not state.best_on_disk and (state.finished or not improved):
            writes.append((self.workdir / BEST_CHECKPOINT, state.best))
            state.best_on_disk = True
        last = last_payload(self.model, self.optimiser, self.spec, state)
        if self.ema is not None and not state.finished:
            last["ema"] = changing_weights(self.ema.model, self.spec.mode)
        writes.append((self.workdir / LAST_CHECKPOINT, last))
        return writes

    def _notify(self, epoch: int, metrics: dict[str, float], writes: list[tuple[Path, dict]]) -> None:
        if any(type(c).on_checkpoint is not Callback.on_checkpoint for c in self.callbacks):
            self.writer.flush()  # a callback that reads the checkpoint needs it on disk
        for callback in self.callbacks:
            for path, payload in writes:
                callback.on_checkpoint(path, "best" if path.name == BEST_CHECKPOINT else "last", payload["epoch"])
            callback.on_epoch_end(epoch, metrics)

    def evaluate_frozen(self, train_data: FundusDataset, val_data: FundusDataset, started: float) -> TrainResult:
        """``frozen`` mode: the loaded weights are the model; validate once and save them as the best checkpoint."""
        self.source = image_source(train_data, val_data, self.rt, augment=None)
        metrics = self.validate()
        best = self.workdir / BEST_CHECKPOINT
        save_checkpoint(best, frozen_payload(self.model, self.spec, metrics))
        for callback in self.callbacks:
            callback.on_checkpoint(best, "best", 0)
            callback.on_epoch_end(0, metrics)
        history = [{"epoch": 0.0, **metrics}]
        seconds = time.perf_counter() - started
        return TrainResult(self.spec, 0, metrics, history, best, None, False, seconds, self.model.to("cpu").eval())

    def result(self, resumed_from: int | None, started: float) -> TrainResult:
        """The run's result, its model holding the best checkpoint's weights."""
        spec, state = self.spec, self.state
        stopped_early = spec.patience is not None and state.bad_epochs >= spec.patience
        if stopped_early:
            log.info("%s: stopped early after epoch %d (no improvement in %d)", spec.name, state.epoch, spec.patience)
        best = state.best or load_checkpoint(self.workdir / BEST_CHECKPOINT)
        self.model.load_state_dict(best["model"])
        return TrainResult(
            spec, state.best_epoch, state.metrics_of(state.best_epoch), state.history, self.workdir / BEST_CHECKPOINT,
            resumed_from, stopped_early, time.perf_counter() - started, self.model.to("cpu").eval(),
        )  # fmt: skip


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
    """Trains ``spec`` on ``train_data``, picks the best epoch on ``val_data`` (unless its ``monitor`` is ``last``),
    writes checkpoints to ``workdir``.

    Args:
        spec: the model spec.
        train_data: training images and labels (its labels also feed the class-balanced loss); made again under
            the spec's ``preprocess`` when it was made without it.
        val_data: validation images and labels (the same).
        workdir: where ``last.pt`` and ``best.pt`` go; an existing ``last.pt`` of the same spec is resumed.
        callbacks: told about every epoch and checkpoint.
        device: force a device (``"cpu"``, ``"cuda:1"``); default: the best available.
        resume: continue from ``workdir/last.pt`` when it exists.
        cache_features: train the head on cached backbone features; default: in ``head`` mode without augmentation.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    preprocess = spec.fundus_preprocess()  # the spec's, whatever the datasets were made with
    train_data, val_data = train_data.with_preprocess(preprocess), val_data.with_preprocess(preprocess)
    augment = spec.augmentation()
    run = _Run.start(spec, train_data, workdir, callbacks, device, resume)
    resumed_from = run.state.epoch or None
    use_features = (
        cache_features
        if cache_features is not None
        else (spec.mode == "head" and augment is None and spec.progressive_sizes is None)
    )
    if use_features and spec.mode != "head":
        raise OdirError(f"cached features need mode 'head' (the backbone must be frozen), not {spec.mode!r}")
    if use_features and spec.progressive_sizes is not None:
        raise OdirError(
            "cached features are computed once, at image_size: progressive_sizes trains on images (cache_features off)"
        )
    if spec.mode == "frozen":
        return run.evaluate_frozen(train_data, val_data, started)
    if not run.state.finished:  # a resumed run that had finished trains nothing
        run.source = (
            feature_source(run.model, train_data, val_data, spec.batch_size, run.rt)
            if use_features
            else image_source(train_data, val_data, run.rt, augment)
        )
        with freed_memory_kept() if run.rt.device.type == "cpu" else nullcontext():
            run.run_epochs()
    return run.result(resumed_from, started)
