"""Optimisation pieces: the learning-rate schedule, label smoothing, the weight EMA, optimiser and groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from components.models.backbones import build_model
from components.training.schedule import (
    WeightEMA,
    build_optimiser,
    epoch_side,
    lr_factor,
    parameter_groups,
    resize_batch,
    smooth_targets,
)


def test_warmup_then_cosine_by_hand() -> None:
    # 10 steps, 2 of warmup: 1/2, 2/2, then (1 + cos(pi (s - 2) / 8)) / 2
    expected = [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 8)) / 2, (1 + math.cos(math.pi / 4)) / 2]
    expected += [(1 + math.cos(3 * math.pi / 8)) / 2, 0.5, (1 + math.cos(5 * math.pi / 8)) / 2]
    expected += [(1 + math.cos(3 * math.pi / 4)) / 2, (1 + math.cos(7 * math.pi / 8)) / 2]
    got = [lr_factor(step, 10, 2, "cosine") for step in range(10)]
    assert got == pytest.approx(expected)
    assert got[4] == pytest.approx(0.8535534) and got[9] == pytest.approx(0.0380602)


def test_constant_with_and_without_warmup() -> None:
    assert [lr_factor(s, 8, 4, "constant") for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    assert {lr_factor(s, 8) for s in range(8)} == {1.0}
    assert [lr_factor(s, 4, 0, "cosine") for s in range(4)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466])


def test_bad_schedules() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'step'; valid: constant, cosine"):
        lr_factor(0, 10, 0, "step")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        lr_factor(-1, 10)


def test_label_smoothing_targets() -> None:
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    assert smooth_targets(targets, 0.1)[0].tolist() == pytest.approx([0.95, 0.05, 0.95])
    assert smooth_targets(targets, 0.5)[0].tolist() == pytest.approx([0.75, 0.25, 0.75])
    assert smooth_targets(targets, 0.0) is targets
    with pytest.raises(ValueError, match=r"label smoothing must be in \[0, 0.5\]"):
        smooth_targets(targets, 0.6)


def test_ema_after_two_updates_by_hand() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(0.0)
    ema = WeightEMA(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(1)
    ema.update(model)  # 0.75 * 1 + 0.25 * 3 = 1.5; running mean 0.75 * 0 + 0.25 * 4 = 1
    with torch.no_grad():
        model[0].weight.fill_(5.0)
        model[1].num_batches_tracked.fill_(2)
    ema.update(model)  # 0.75 * 1.5 + 0.25 * 5 = 2.375; running mean 0.75 * 1 + 0.25 * 4 = 1.75
    averaged = ema.model.state_dict()
    assert averaged["0.weight"].item() == pytest.approx(2.375)
    assert averaged["1.running_mean"].item() == pytest.approx(1.75)
    assert averaged["1.num_batches_tracked"].item() == 2  # counters are copied, not averaged
    assert model[0].weight.item() == 5.0  # the trained model is untouched
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    with pytest.raises(ValueError, match=r"ema decay must be in \(0, 1\)"):
        WeightEMA(model, 1.0)


def test_the_default_optimiser_is_the_one_adam_group_it_always_was() -> None:
    model = build_model("tiny_cnn")
    optimiser = build_optimiser(model, "adam", 0.01, 0.001)
    assert type(optimiser) is torch.optim.Adam and len(optimiser.param_groups) == 1
    [group] = optimiser.param_groups
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.001
    assert group["params"] == [p for p in model.parameters() if p.requires_grad]
    assert (
        optimiser.state_dict()["param_groups"]
        == torch.optim.Adam(list(model.parameters()), lr=0.01, weight_decay=0.001).state_dict()["param_groups"]
    )


def test_backbone_lr_scale_and_decoupled_decay_groups() -> None:
    model = build_model("tiny_cnn")
    groups = parameter_groups(model, 0.01, 0.05, backbone_lr_scale=0.1)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (pytest.approx(0.001), 0.05, len(list(model.features.parameters()))),
        (0.01, 0.05, 2),
    ]
    optimiser = build_optimiser(model, "adamw", 0.01, 0.05, backbone_lr_scale=0.1)
    assert type(optimiser) is torch.optim.AdamW
    names = {id(p): n for n, p in model.named_parameters()}
    summary = [
        (g["lr"], g["weight_decay"], sorted(names[id(p)].rsplit(".", 1)[-1] for p in g["params"]))
        for g in optimiser.param_groups
    ]
    # conv and linear weights decay; BatchNorm weights and every bias do not; the backbone at lr / 10
    assert summary[0][:2] == (pytest.approx(0.001), 0.05) and set(summary[0][2]) == {"weight"}
    assert all(p.ndim == 4 for p in optimiser.param_groups[0]["params"])
    assert summary[1][:2] == (pytest.approx(0.001), 0.0) and set(summary[1][2]) == {"weight", "bias"}
    assert summary[2] == (0.01, 0.05, ["weight"]) and summary[3] == (0.01, 0.0, ["bias"])


def test_nothing_to_train_means_no_optimiser() -> None:
    model = build_model("tiny_cnn")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    assert build_optimiser(model, "adamw", 0.01) is None
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; valid: adam, adamw"):
        build_optimiser(model, "sgd", 0.01)


def test_progressive_sizes_per_epoch() -> None:
    sizes = [160, 160, 192]
    assert [epoch_side(e, 224, sizes) for e in range(1, 6)] == [160, 160, 192, 224, 224]
    assert [epoch_side(e, 224, None) for e in (1, 7)] == [224, 224]
    with pytest.raises(ValueError, match="epochs count from 1"):
        epoch_side(0, 224, sizes)


def test_resize_batch_shrinks_as_the_decoded_image_resize_does() -> None:
    # the decoded-image cache resizes with PIL's bilinear filter (components.data.images.square_resize); a batch
    # resized for an early epoch gets the same pixels, to within a grey level
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(image).resize((5, 5), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous()
    small = resize_batch(batch, 5)
    assert small.dtype == torch.float32 and small.shape == (1, 3, 5, 5)
    assert np.abs(small[0].permute(1, 2, 0).numpy() - reference).max() <= 1 / 255
    assert resize_batch(batch, 12) is batch
    flat = torch.full((2, 3, 8, 8), 0.25)
    assert torch.allclose(resize_batch(flat, 3), torch.full((2, 3, 3, 3), 0.25))
