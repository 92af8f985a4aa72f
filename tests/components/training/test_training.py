"""The training loop: resume after a crash, cached-feature head training, early stopping, frozen evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from components.config import parse_model_spec
from components.data.dataset import FundusDataset, ImageCache
from components.data.splits import load_split
from components.errors import OdirError
from components.models.backbones import IMAGENET, build_model, preprocessing_config
from components.models.inference import predict_images
from components.training import batches, runtime
from components.training import loop as training
from components.training.checkpoints import load_trained
from components.training.loop import Callback, epoch_seed, train
from components.training.runtime import select_device, speed_settings

SIZE = 32


@pytest.fixture(scope="module")
def datasets(synthetic_root: Path) -> tuple[FundusDataset, FundusDataset]:
    cache = ImageCache()
    return (
        FundusDataset.from_split(load_split(synthetic_root, "train"), SIZE, cache),
        FundusDataset.from_split(load_split(synthetic_root, "val"), SIZE, cache),
    )


def _spec(**overrides: object):
    settings = {"name": "t", "backbone": "tiny_cnn", "epochs": 4, "lr": 0.01, "batch_size": 4, "image_size": SIZE,
                "seed": 7, "augment": True}  # fmt: skip
    return parse_model_spec({**settings, **overrides})


class _Crash(Callback):
    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.after_epoch:
            raise KeyboardInterrupt("simulated crash")


class _Recorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.checkpoints: list[tuple[str, int]] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        assert {"train_loss", "val_loss", "val_f1_macro", "val_f1_course", "val_f1_D", "val_auroc_A"} <= set(metrics)
        self.epochs.append(epoch)

    def on_checkpoint(self, path: Path, kind: str, epoch: int) -> None:
        assert path.exists()
        self.checkpoints.append((kind, epoch))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(datasets, tmp_path: Path) -> None:
    train_data, val_data = datasets
    spec = _spec(monitor="loss")
    uninterrupted = train(spec, train_data, val_data, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(spec, train_data, val_data, tmp_path / "b", callbacks=[_Crash(after_epoch=2)])
    recorder = _Recorder()
    resumed = train(spec, train_data, val_data, tmp_path / "b", callbacks=[recorder])
    assert resumed.resumed_from == 2 and recorder.epochs == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0, 3.0, 4.0]
    a, b = _weights(tmp_path / "a" / "best.pt"), _weights(tmp_path / "b" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert resumed.history == uninterrupted.history


def test_the_best_weights_survive_a_crash_after_an_epoch_that_did_not_improve(datasets, tmp_path: Path) -> None:
    # as in test_early_stopping: nothing beats epoch 1, so best.pt must be written by epoch 2 at the latest
    spec = _spec(epochs=4, lr=1e-9, mode="head", augment=False)
    uninterrupted = train(spec, *datasets, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(spec, *datasets, tmp_path / "b", callbacks=[_Crash(after_epoch=2)])
    assert torch.load(tmp_path / "b" / "best.pt", weights_only=True)["epoch"] == 1
    resumed = train(spec, *datasets, tmp_path / "b")
    assert resumed.best_epoch == uninterrupted.best_epoch == 1
    a, b = _weights(tmp_path / "a" / "best.pt"), _weights(tmp_path / "b" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_keeps_only_its_state_in_last_pt_and_resumes_to_the_same_result(
    datasets, tmp_path: Path
) -> None:
    spec = _spec(epochs=2)
    first = train(spec, *datasets, tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["finished"] and last["model"] is None and last["optimizer"] is None and last["epoch"] == 2
    recorder = _Recorder()
    again = train(spec, *datasets, tmp_path, callbacks=[recorder])
    assert recorder.epochs == [] and again.resumed_from == 2
    assert again.best_epoch == first.best_epoch and again.best_metrics == first.best_metrics
    assert again.history == first.history
    first_weights, again_weights = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(first_weights[k], again_weights[k]) for k in first_weights)


def test_cached_features_give_the_naive_result(datasets, tmp_path: Path) -> None:
    train_data, val_data = datasets
    spec = _spec(backbone="resnet18", mode="head", epochs=3, augment=False)
    cached = train(spec, train_data, val_data, tmp_path / "cached", resume=False)
    naive = train(spec, train_data, val_data, tmp_path / "naive", resume=False, cache_features=False)
    for fast, slow in zip(cached.history, naive.history, strict=True):
        assert fast.keys() == slow.keys()
        for key in fast:
            assert fast[key] == pytest.approx(slow[key], abs=1e-5, nan_ok=True), key
    a, b = _weights(cached.best_checkpoint), _weights(naive.best_checkpoint)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    torch.manual_seed(spec.seed)
    untrained = build_model("resnet18").state_dict()
    assert all(torch.equal(a[k], untrained[k]) for k in a if k.startswith("features."))  # the backbone never moved


def test_callbacks_and_best_checkpoint(datasets, tmp_path: Path) -> None:
    recorder = _Recorder()
    result = train(_spec(epochs=3), *datasets, tmp_path, callbacks=[recorder])
    assert recorder.epochs == [1, 2, 3]
    assert [e for kind, e in recorder.checkpoints if kind == "last"] == [1, 2, 3]
    assert [e for kind, e in recorder.checkpoints if kind == "best"][-1] == result.best_epoch
    best_f1 = max(h["val_f1_macro"] for h in result.history)
    assert result.best_metrics["val_f1_macro"] == best_f1
    model, spec = load_trained(result.best_checkpoint)
    assert spec == _spec(epochs=3)
    probs = predict_images(model, datasets[1], SIZE, ("identity",), batch_size=5)
    assert probs.shape == (len(datasets[1]), 3) and ((probs >= 0) & (probs <= 1)).all()


def test_early_stopping(datasets, tmp_path: Path) -> None:
    spec = _spec(epochs=30, lr=1e-9, mode="head", patience=2, augment=False)
    result = train(spec, *datasets, tmp_path)
    # a frozen backbone and a head that barely moves: validation F1 never beats epoch 1, and epochs 2 and 3
    # exhaust the patience
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_monitor_last_picks_no_epoch(datasets, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # test_early_stopping's run, where no epoch beats the first on validation: all 5 train and the 5th is kept
    spec = _spec(epochs=5, lr=1e-9, mode="head", augment=False, monitor="last")
    with caplog.at_level(logging.INFO, logger="components.training.loop"):
        result = train(spec, *datasets, tmp_path)
    assert not result.stopped_early and len(result.history) == 5 and result.best_epoch == 5
    marks = [line.endswith("*kept*") for line in caplog.messages if " epoch " in line]
    assert marks == [False] * 4 + [True] and "*best*" not in caplog.text
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 5
    with pytest.raises(OdirError, match="monitor 'last' picks no epoch, so it never stops early: remove patience"):
        _spec(monitor="last", patience=2)


def test_validate_every_skips_validation_but_not_training(datasets, tmp_path: Path) -> None:
    # 5 epochs, validate_every 2: epochs 2 and 4 and the last (5) are validated; the weights are those of a run
    # validated every epoch (validation draws no random numbers and changes no weights)
    every = train(_spec(epochs=5, monitor="last"), *datasets, tmp_path / "every")
    some = train(_spec(epochs=5, monitor="last", validate_every=2), *datasets, tmp_path / "some")
    assert [("val_loss" in h) for h in some.history] == [False, True, False, True, True]
    assert [h["train_loss"] for h in some.history] == [h["train_loss"] for h in every.history]
    assert some.best_metrics == every.best_metrics and some.best_epoch == 5
    assert all(torch.equal(a, b) for a, b in zip(_weights(some.best_checkpoint).values(),
                                                 _weights(every.best_checkpoint).values(), strict=True))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # a crash after an epoch that was not validated resumes as well
        train(_spec(epochs=5, monitor="last", validate_every=2), *datasets, tmp_path / "crash",
              callbacks=[_Crash(after_epoch=3)])  # fmt: skip
    resumed = train(_spec(epochs=5, monitor="last", validate_every=2), *datasets, tmp_path / "crash")
    assert resumed.resumed_from == 3 and resumed.history == some.history
    with pytest.raises(OdirError, match="monitor 'f1_macro' picks an epoch, so it validates every one"):
        _spec(validate_every=2)


def test_frozen_mode_evaluates_the_loaded_weights(datasets, tmp_path: Path) -> None:
    result = train(_spec(mode="frozen", epochs=0), *datasets, tmp_path)
    assert result.best_epoch == 0 and len(result.history) == 1
    assert "val_f1_macro" in result.best_metrics


def test_resume_refuses_another_spec(datasets, tmp_path: Path) -> None:
    train(_spec(epochs=1), *datasets, tmp_path)
    with pytest.raises(OdirError, match="written for another model spec"):
        train(_spec(epochs=1, lr=0.5), *datasets, tmp_path)


def test_cached_features_need_head_mode(datasets, tmp_path: Path) -> None:
    with pytest.raises(OdirError, match="cached features need mode 'head'"):
        train(_spec(epochs=1), *datasets, tmp_path, cache_features=True)


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    # a device asked for is the device given, whatever is available
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("meta") == torch.device("meta")
    assert select_device("cuda:1") == torch.device("cuda", 1)
    # otherwise CUDA, then MPS, then the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")


def test_epoch_seed() -> None:
    assert epoch_seed(7, 3) == 700_024  # 7 * 100_003 + 3
    assert epoch_seed(0, 1) == 1
    assert len({epoch_seed(seed, epoch) for seed in range(5) for epoch in range(1, 50)}) == 5 * 49


def test_checkpoints_record_the_normalisation_their_weights_were_trained_under(datasets, tmp_path: Path) -> None:
    result = train(_spec(epochs=1), *datasets, tmp_path)
    saved = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert saved["preprocessing"] == preprocessing_config("tiny_cnn")
    saved["preprocessing"] = {**saved["preprocessing"], "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save(saved, tmp_path / "recorded.pt")
    model, _ = load_trained(tmp_path / "recorded.pt")
    assert torch.allclose(model.input_scale, torch.full_like(model.input_scale, 4.0))  # 1 / std
    assert torch.allclose(model.input_shift, torch.full_like(model.input_shift, -2.0))  # -mean / std
    del saved["preprocessing"]  # written before normalisation was recorded: trained on ImageNet statistics
    torch.save(saved, tmp_path / "older.pt")
    model, _ = load_trained(tmp_path / "older.pt")
    assert torch.allclose(model.input_shift.flatten(), -torch.tensor(IMAGENET.mean) / torch.tensor(IMAGENET.std))


ALL_OPTIONS = {
    "augment": "fundus", "preprocess": ["fov_crop", "local_contrast"], "optimizer": "adamw", "weight_decay": 0.01,
    "schedule": "cosine", "warmup_epochs": 1, "backbone_lr_scale": 0.5, "label_smoothing": 0.1, "ema": 0.9,
    "progressive_sizes": [SIZE // 2], "monitor": "last",
}  # fmt: skip


def test_every_new_option_resumes_after_a_crash_to_the_uninterrupted_result(datasets, tmp_path: Path) -> None:
    spec = _spec(epochs=3, **ALL_OPTIONS)
    uninterrupted = train(spec, *datasets, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(spec, *datasets, tmp_path / "b", callbacks=[_Crash(after_epoch=1)])
    assert "ema" in torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    resumed = train(spec, *datasets, tmp_path / "b")
    assert resumed.resumed_from == 1 and resumed.history == uninterrupted.history
    a, b = _weights(tmp_path / "a" / "best.pt"), _weights(tmp_path / "b" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, loaded = load_trained(uninterrupted.best_checkpoint)
    assert loaded == spec and loaded.fundus_preprocess().contrast is not None


def test_progressive_sizes_train_each_epoch_at_its_side_and_validate_at_image_size(
    datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, int]] = []  # (training?, side) of every batch the model is given

    def recording(backbone: str, weights: str):
        model = build_model(backbone, weights)
        model.register_forward_pre_hook(lambda module, args: seen.append((module.training, args[0].shape[-1])))
        return model

    monkeypatch.setattr("components.training.loop.build_model", recording)
    spec = _spec(epochs=3, monitor="last", augment=False, progressive_sizes=[SIZE // 2, SIZE * 3 // 4])
    result = train(spec, *datasets, tmp_path)
    batches = -(-len(datasets[0]) // spec.batch_size)
    trained = [side for training, side in seen if training]
    assert trained == [SIZE // 2] * batches + [SIZE * 3 // 4] * batches + [SIZE] * batches
    assert {side for training, side in seen if not training} == {SIZE}
    assert result.best_epoch == 3
    with pytest.raises(OdirError, match="the last epoch trains at image_size"):
        _spec(epochs=2, monitor="last", progressive_sizes=[16, 24])
    with pytest.raises(OdirError, match="none above image_size"):
        _spec(epochs=3, monitor="last", progressive_sizes=[16, SIZE * 2])
    with pytest.raises(OdirError, match="progressive_sizes needs monitor 'last'"):
        _spec(epochs=3, progressive_sizes=[16])
    with pytest.raises(OdirError, match="trains nothing"):
        _spec(mode="frozen", epochs=0, progressive_sizes=[16])
    head = _spec(mode="head", epochs=2, monitor="last", augment=False, progressive_sizes=[16])
    with pytest.raises(OdirError, match="cached features are computed once"):
        train(head, *datasets, tmp_path / "head", cache_features=True)
    assert train(head, *datasets, tmp_path / "head-images").best_epoch == 2  # by default on images, not features


def test_flips_by_name_train_as_augment_true(datasets, tmp_path: Path) -> None:
    a = train(_spec(epochs=1, augment=True), *datasets, tmp_path / "a")
    b = train(_spec(epochs=1, augment="flips"), *datasets, tmp_path / "b")
    assert a.history == b.history
    wa, wb = _weights(a.best_checkpoint), _weights(b.best_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_ema_is_what_is_validated_and_checkpointed(datasets, tmp_path: Path) -> None:
    torch.manual_seed(7)
    initial = build_model("tiny_cnn").state_dict()
    spec = _spec(epochs=2, ema=0.999999)  # an average that barely leaves the initial weights
    with pytest.raises(KeyboardInterrupt):
        train(spec, *datasets, tmp_path, callbacks=[_Crash(after_epoch=1)])
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    weights = [k for k in initial if initial[k].is_floating_point()]  # (counters are copied, not averaged)
    moved = [k for k in weights if not torch.allclose(last["model"][k], initial[k])]
    assert moved  # the raw weights trained (they are what the next epoch continues from) ...
    assert all(torch.allclose(last["ema"][k], initial[k], atol=1e-3) for k in weights)  # ... not the EMA
    result = train(spec, *datasets, tmp_path)
    best = _weights(result.best_checkpoint)
    assert all(torch.allclose(best[k], initial[k], atol=1e-3) for k in weights)


def test_training_runs_in_the_memory_format_and_precision_the_spec_asks_for(
    datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # channels_last: the first convolution of a training step sees channels-last input; cpu_bf16: it computes in
    # bfloat16 under autocast, while the weights (and the checkpoint) stay float32
    assert speed_settings(_spec(), "cpu") == {"amp": False, "channels_last": True}  # amp is CUDA's
    assert speed_settings(_spec(cpu_bf16=True, channels_last=False), "cpu") == {"amp": True, "channels_last": False}
    with monkeypatch.context() as patched:  # a CPU without native bfloat16 ignores cpu_bf16 (emulated: slower)
        patched.setattr(runtime, "_cpu_has_native_bf16", lambda: False)
        assert speed_settings(_spec(cpu_bf16=True), "cpu") == {"amp": False, "channels_last": True}
    seen: list[tuple[bool, torch.dtype]] = []

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(
            lambda module, inputs, output: seen.append(
                (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype)
            ) if module.training else None
        )  # fmt: skip
        return model

    monkeypatch.setattr(training, "build_model", recording_model)
    cases = [({}, (True, torch.float32)), ({"channels_last": False}, (False, torch.float32)),
             ({"cpu_bf16": True}, (True, torch.bfloat16))]  # fmt: skip
    for index, (settings, expected) in enumerate(cases):
        seen.clear()
        result = train(_spec(epochs=1, **settings), *datasets, tmp_path / str(index))
        assert seen and set(seen) == {expected}
        assert all(v.dtype == torch.float32 for v in _weights(result.best_checkpoint).values() if v.is_floating_point())
        loaded, _ = load_trained(result.best_checkpoint)  # predicts in the memory format it was trained in
        first_conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.weight.is_contiguous(memory_format=torch.channels_last) is expected[0]


def test_the_schedule_and_the_backbone_lr_reach_the_optimiser(datasets, tmp_path: Path) -> None:
    # 12 training images in batches of 4: 3 steps per epoch, 6 in all; the last step of epoch 1 is step 2 of a
    # cosine without warmup: (1 + cos(pi * 2 / 6)) / 2 = 0.75
    spec = _spec(epochs=2, lr=0.01, schedule="cosine", backbone_lr_scale=0.1)
    with pytest.raises(KeyboardInterrupt):
        train(spec, *datasets, tmp_path, callbacks=[_Crash(after_epoch=1)])
    groups = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.001 * 0.75, 0.01 * 0.75])


def test_the_specs_preprocessing_is_applied_to_the_datasets_it_is_given(
    synthetic_root: Path, datasets, tmp_path: Path
) -> None:
    spec = _spec(epochs=1, preprocess="local_contrast")
    given_plain = train(spec, *datasets, tmp_path / "a")
    preprocess, cache = spec.fundus_preprocess(), ImageCache()
    made = [FundusDataset.from_split(load_split(synthetic_root, s), SIZE, cache, preprocess) for s in ("train", "val")]
    given_preprocessed = train(spec, *made, tmp_path / "b")
    assert given_plain.history == given_preprocessed.history
    unprocessed = train(_spec(epochs=1), *datasets, tmp_path / "c")
    assert unprocessed.history != given_plain.history


def test_head_mode_with_augment_none_trains_on_cached_features(
    datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = batches.extract_features
    monkeypatch.setattr(batches, "extract_features", lambda *args: calls.append(1) or real(*args))
    train(_spec(epochs=1, mode="head", augment="none"), *datasets, tmp_path / "none")
    assert len(calls) == 2  # train and val features, once
    train(_spec(epochs=1, mode="head", augment=["brightness"]), *datasets, tmp_path / "jitter")
    assert len(calls) == 2  # augmented images need the backbone every step


def test_inference_gives_a_model_the_preprocessing_it_was_trained_with(datasets, tmp_path: Path) -> None:
    result = train(_spec(epochs=1, preprocess="local_contrast"), *datasets, tmp_path)
    model, spec = load_trained(result.best_checkpoint)
    paths = datasets[1].paths
    as_trained = predict_images(model, datasets[1].with_preprocess(spec.fundus_preprocess()), SIZE, ("identity",))
    given = predict_images(model, paths, SIZE, ("identity",), preprocess=spec.fundus_preprocess())
    raw = predict_images(model, paths, SIZE, ("identity",))
    assert torch.allclose(torch.as_tensor(given), torch.as_tensor(as_trained))
    assert not torch.allclose(torch.as_tensor(raw), torch.as_tensor(as_trained))  # the preprocessing matters
