"""The backbone registry's contract, attention blocks, weights loading and fine-tuning modes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from components.models.attention import SpatialSelfAttention, SqueezeExcitation
from components.models.backbones import (
    BACKBONES,
    IMAGENET,
    Normalisation,
    build_model,
    lite0_checkpoint,
    lite0_key,
    lite_checkpoint,
    lite_key,
    parameter_count,
    preprocessing_config,
)
from components.models.weight_files import WeightsError
from components.training.loop import set_train_mode, set_trainable


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_builds_runs_and_learns(name: str, batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    out = model(batch)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert model.forward_head(model.forward_features(batch)).shape == (2, 3)
    out.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad


def test_parameter_counts_by_hand() -> None:
    # torchvision ResNet18 has 11,689,512 parameters with its 1000-class fc (512*1000 + 1000 = 513,000):
    # backbone 11,176,512 + our head 512*3 + 3 = 1,539  ->  11,178,051
    assert parameter_count(build_model("resnet18")) == 11_176_512 + 1_539
    # SE block on C channels, hidden h = C/16: C*h + h + h*C + C
    #   64: 580   128: 2,184   256: 8,464   512: 33,312   ->  44,540
    assert parameter_count(build_model("se_resnet18")) == 11_178_051 + 44_540
    # MHA on C channels: in_proj 3C*C + 3C, out_proj C*C + C  ->  256: 263,168   512: 1,050,624
    assert parameter_count(build_model("mha_resnet18")) == 11_178_051 + 263_168 + 1_050_624


def test_se_keeps_shape_and_rescales_channels() -> None:
    torch.manual_seed(0)
    block = SqueezeExcitation(32, 16)
    x = torch.randn(2, 32, 5, 5)
    y = block(x)
    assert y.shape == x.shape and not torch.allclose(x, y)
    ratio = y / x  # one sigmoid scale per (image, channel), in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def _naive_attention(block: SpatialSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention written out: per head softmax(Q K^T / sqrt(d)) V, then the output projection."""
    mha = block.attention
    b, c, h, w = x.shape
    heads, d = mha.num_heads, c // mha.num_heads
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = (
        tokens @ mha.in_proj_weight[i * c : (i + 1) * c].T + mha.in_proj_bias[i * c : (i + 1) * c] for i in range(3)
    )
    outs = []
    for head in range(heads):
        sl = slice(head * d, (head + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / d**0.5, dim=-1)
        outs.append(weights @ v[..., sl])
    attended = torch.cat(outs, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias
    return x + attended.transpose(1, 2).reshape(b, c, h, w)


def test_mha_matches_a_naive_reference() -> None:
    torch.manual_seed(0)
    block = SpatialSelfAttention(16, heads=4, dropout=0.1).eval()
    x = torch.randn(2, 16, 3, 4)
    y = block(x)
    assert y.shape == x.shape and not torch.allclose(x, y)
    torch.testing.assert_close(y, _naive_attention(block, x), atol=1e-5, rtol=1e-5)


def test_attention_changes_the_resnet_output(batch: torch.Tensor) -> None:
    outputs = {}
    for name in ("resnet18", "se_resnet18", "mha_resnet18"):
        torch.manual_seed(0)
        outputs[name] = build_model(name).eval()(batch)
    assert not torch.allclose(outputs["resnet18"], outputs["se_resnet18"])
    assert not torch.allclose(outputs["resnet18"], outputs["mha_resnet18"])


def test_bad_attention_settings_raise() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        SpatialSelfAttention(10, heads=4)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'.*Did you mean 'resnet18'"):
        build_model("resnet19")


def test_lite0_mapping_loads_every_tensor() -> None:
    source = torch.load(lite0_checkpoint(), map_location="cpu", weights_only=True)
    mapped = {lite0_key(k) for k in source} - {None}
    model = build_model("efficientnet_lite0")
    assert mapped == set(model.features.body.state_dict())  # nothing missing, nothing unexpected
    assert len(source) - len(mapped) == 2  # only the ImageNet classifier (_fc.weight, _fc.bias) is left out


def test_lite0_matches_the_reference_implementation() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0_checkpoint())).eval()
    model = build_model("efficientnet_lite0", "imagenet").eval()
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the reference takes what TF's Lite pipeline fed the checkpoint: (x - 127) / 128
        expected = nn.functional.adaptive_avg_pool2d(reference.extract_features((x.float() - 127) / 128), 1)
        torch.testing.assert_close(model.forward_features(x), expected.flatten(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_mappings_load_every_tensor(variant: int) -> None:
    source = torch.load(lite_checkpoint(variant), map_location="cpu", weights_only=True)
    mapped = {lite_key(k, variant) for k in source} - {None}
    model = build_model(f"efficientnet_lite{variant}")
    assert mapped == set(model.features.body.state_dict())  # nothing missing, nothing unexpected
    assert len(source) - len(mapped) == 2  # only the ImageNet classifier (_fc.weight, _fc.bias) is left out
    with pytest.raises(
        WeightsError, match=f"unexpected key '_blocks.21._bn0.weight' in the efficientnet_lite{variant}"
    ):
        lite_key("_blocks.21._bn0.weight", variant)  # Lite1 and Lite2 have 21 blocks (0-20)


@pytest.mark.parametrize(("variant", "size"), [(1, 240), (2, 260)])
def test_lite1_and_lite2_match_the_reference_implementation(variant: int, size: int) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    # the reference pads for its native resolution (static "same" padding), so compare there
    name, path = f"efficientnet-lite{variant}", str(lite_checkpoint(variant))
    reference = EfficientNet.from_pretrained(name, weights_path=path).eval()
    model = build_model(f"efficientnet_lite{variant}", "imagenet").eval()
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = nn.functional.adaptive_avg_pool2d(reference.extract_features((x.float() - 127) / 128), 1)
        torch.testing.assert_close(model.forward_features(x), expected.flatten(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_are_registered_with_the_tf_lite_preprocessing(variant: int) -> None:
    """As for Lite0: the registration's (x - 127) / 128, and the stem BatchNorm statistics that confirm it."""
    name = f"efficientnet_lite{variant}"
    assert preprocessing_config(name) == preprocessing_config("efficientnet_lite0")
    assert BACKBONES.get(name).dropout == (0.2, 0.3)[variant - 1]  # the TF builder's
    state = torch.load(lite_checkpoint(variant), map_location="cpu", weights_only=True)
    per_input_channel = state["_conv_stem.weight"].double().sum(dim=(2, 3))
    running_mean = state["_bn0.running_mean"].double()
    config = preprocessing_config(name)
    tf_input_mean = (torch.tensor(IMAGENET.mean, dtype=torch.float64) - torch.tensor(config["mean"])) / torch.tensor(
        config["std"]
    )
    assert (running_mean - per_input_channel @ tf_input_mean).norm() < 0.6 * running_mean.norm()
    assert torch.corrcoef(torch.stack([per_input_channel @ tf_input_mean, running_mean]))[0, 1] > 0.95


# one crafted pixel per value of interest, per channel: black, TF's Lite mean (127), 128, white
_PIXELS = torch.tensor([[0, 127], [128, 255]], dtype=torch.uint8)
_CRAFTED = torch.stack([_PIXELS, 255 - _PIXELS, _PIXELS.flip(0)]).unsqueeze(0)  # (1, 3, 2, 2)


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("efficientnet_lite0", (127 / 255,) * 3, (128 / 255,) * 3),
        ("resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_the_model_normalises_as_registered(name: str, mean: tuple, std: tuple) -> None:
    model = build_model(name)
    expected = torch.empty(1, 3, 2, 2)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                expected[0, c, i, j] = (int(_CRAFTED[0, c, i, j]) / 255 - mean[c]) / std[c]
    torch.testing.assert_close(model.normalise(_CRAFTED), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.normalise(_CRAFTED.float() / 255), expected, atol=1e-6, rtol=1e-6)
    assert model.normalise(_CRAFTED).dtype == torch.float32
    batch = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():  # every path (forward, forward_features) normalises before the backbone
        by_hand = (batch.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(model.forward_features(batch), model.features(by_hand), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(batch), model.head(model.features(by_hand)), atol=1e-4, rtol=1e-4)


def test_lite0_normalisation_is_the_tf_lite_preprocessing() -> None:
    import timm

    config = preprocessing_config("efficientnet_lite0")
    # tensorflow/tpu efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on 0-255 pixels
    assert config["mean"] == pytest.approx([127 / 255] * 3) and config["std"] == pytest.approx([128 / 255] * 3)
    model = build_model("efficientnet_lite0")
    assert model.normalise(_CRAFTED)[0, 0].flatten().tolist() == pytest.approx([-127 / 128, 0, 1 / 128, 1], abs=1e-6)
    # timm's config for the same TF checkpoints rounds it to 0.5 / 0.5; not ImageNet's statistics
    cfg = timm.create_model("tf_efficientnet_lite0", pretrained=False).pretrained_cfg
    assert config["mean"] == pytest.approx(list(cfg["mean"]), abs=0.002)
    assert config["std"] == pytest.approx(list(cfg["std"]), abs=0.002)
    assert config["mean"] != pytest.approx(list(IMAGENET.mean), abs=0.002)


def test_lite0_checkpoint_statistics_say_it_saw_tf_lite_preprocessing() -> None:
    """The stem BatchNorm's running mean is what the checkpoint's training inputs looked like after the stem conv.

    The stem conv has no bias, so over ImageNet its mean output is ``sum(W) @ mean(normalised input)``: about 0
    under ImageNet statistics, ``(imagenet_mean - 127/255) / (128/255)`` per channel under TF Lite's. The stored
    running means follow the second (correlation 0.97), not zero.
    """
    state = torch.load(lite0_checkpoint(), map_location="cpu", weights_only=True)
    per_input_channel = state["_conv_stem.weight"].double().sum(dim=(2, 3))  # (32, 3)
    running_mean = state["_bn0.running_mean"].double()
    pixel_mean = torch.tensor(IMAGENET.mean, dtype=torch.float64)
    config = preprocessing_config("efficientnet_lite0")
    tf_input_mean = (pixel_mean - torch.tensor(config["mean"])) / torch.tensor(config["std"])
    residual_tf = (running_mean - per_input_channel @ tf_input_mean).norm()
    residual_imagenet = running_mean.norm()  # ImageNet statistics centre the input: predicted running mean 0
    assert residual_tf < 0.5 * residual_imagenet
    assert torch.corrcoef(torch.stack([per_input_channel @ tf_input_mean, running_mean]))[0, 1] > 0.95


@pytest.mark.parametrize(("name", "weights"), [("resnet18", "resnet18"), ("efficientnet_b0", "efficientnet_b0")])
def test_torchvision_backbones_use_their_weights_transforms(name: str, weights: str) -> None:
    import torchvision

    transforms = torchvision.models.get_model_weights(weights).DEFAULT.transforms()
    config = preprocessing_config(name)
    assert config["mean"] == pytest.approx(list(transforms.mean))
    assert config["std"] == pytest.approx(list(transforms.std))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_normalisation_stays_out_of_the_state_dict(name: str) -> None:
    import json

    model = build_model(name)
    keys = set(model.state_dict())
    assert keys == {f"features.{k}" for k in model.features.state_dict()} | {"head.1.weight", "head.1.bias"}
    assert {"input_scale", "input_scale_uint8", "input_shift"} <= {n for n, _ in model.named_buffers()}
    config = preprocessing_config(name)
    assert json.loads(json.dumps(config)) == config
    assert "uint8 in [0, 255] or float in [0, 1]" in config["input"] and config["source"]


def test_a_recorded_normalisation_overrides_the_registration() -> None:
    config = preprocessing_config("efficientnet_lite0")
    assert Normalisation.from_config(config) == BACKBONES.get("efficientnet_lite0").normalisation
    old = build_model("efficientnet_lite0", normalisation=Normalisation.from_config(preprocessing_config("resnet18")))
    assert old.normalisation == IMAGENET  # e.g. a Lite0 checkpoint trained before its registration changed
    torch.testing.assert_close(old.normalise(_CRAFTED), build_model("resnet18").normalise(_CRAFTED))


def test_normalise_rejects_integer_batches_other_than_uint8() -> None:
    with pytest.raises(ValueError, match=r"expected uint8 images in \[0, 255\] or float .*, got torch.int64"):
        build_model("tiny_cnn")(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_lite0_pretrained_is_deterministic(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    first = build_model("efficientnet_lite0", "imagenet").eval()
    torch.manual_seed(0)
    second = build_model("efficientnet_lite0", "imagenet").eval()
    with torch.no_grad():
        assert torch.equal(first(batch), second(batch))


def test_imagenet_offline_fails_fast_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(WeightsError) as caught:
        build_model("resnet18", "imagenet")
    assert time.perf_counter() - started < 10  # a hang guard, not a speed goal: hub retries took 47 s
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "empty-cache") in message
    assert "weights: none" in message and "efficientnet_lite0" in message


def test_imagenet_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    imagenet_like = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet_like, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("se_resnet18", "imagenet")
    torch.testing.assert_close(model.features.body.conv1.weight, imagenet_like["conv1.weight"])


def test_backbone_only_and_full_checkpoints(tmp_path: Path, batch: torch.Tensor) -> None:
    import torchvision

    course = torchvision.models.resnet18(weights=None, num_classes=3)  # the course shipped such backbones
    torch.save(course.state_dict(), tmp_path / "ckpt_resnet18_ep50.pt")
    model = build_model("resnet18", str(tmp_path / "ckpt_resnet18_ep50.pt")).eval()
    with torch.no_grad():  # the course's network took ImageNet-normalised input; ours normalises itself
        torch.testing.assert_close(model(batch), course.eval()(model.normalise(batch)))
    torch.save({"model": model.state_dict()}, tmp_path / "full.pt")
    again = build_model("resnet18", str(tmp_path / "full.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match=r"does not fit the model \(missing: .*wrong shape: conv1.weight"):
        build_model("resnet18", str(tmp_path / "wrong.pt"))
    with pytest.raises(WeightsError, match=r"absent\.pt: not found"):
        build_model("resnet18", str(tmp_path / "absent.pt"))

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "pwned", "x"))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"refused: it holds Python objects other than tensors"):
        build_model("resnet18", str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("mode", "trains_features", "trains_head"), [("full", True, True), ("head", False, True)])
def test_modes_train_the_right_parameters(
    mode: str, trains_features: bool, trains_head: bool, batch: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    set_trainable(model, mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_train_mode(model, mode)
    model(batch).sum().backward()
    optimiser.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    feature_keys = {k for k in before if k.startswith("features.")}
    assert bool(changed & feature_keys) == trains_features  # includes BatchNorm running statistics
    assert bool(changed & {"head.1.weight", "head.1.bias"}) == trains_head


def test_frozen_mode_trains_nothing() -> None:
    model = build_model("tiny_cnn")
    set_trainable(model, "frozen")
    set_train_mode(model, "frozen")
    assert parameter_count(model, trainable_only=True) == 0 and not model.training
