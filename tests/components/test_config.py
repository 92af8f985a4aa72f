"""Profiles and model specs: every shipped config loads; bad ones name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError, load_profile, parse_model_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem and profile.models


def test_defaults_apply_and_model_keys_win() -> None:
    seed = load_profile(CONFIGS / "seed.yaml")
    mha = seed.model("mha-resnet18")
    assert (mha.image_size, mha.epochs, mha.weights, mha.batch_size, mha.lr) == (256, 20, "imagenet", 8, 0.00015)
    assert seed.ensemble_weights == {"se-resnet18": 0.5, "mha-resnet18": 0.2, "resnet18-class-balanced": 0.3}


def test_profiles_resolve_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS.parent)
    assert load_profile("demo").name == "demo"
    known = "cpu, cpu-cv, cpu-fast, cpu-given, demo, gpu, seed"
    with pytest.raises(ConfigError, match=f"profile not found; known profiles: {known}"):
        load_profile("nope")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn, lr: -1}\n",
            r"models\[0\].lr: Input should be greater than 0 \(got -1\)",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn, learning_rate: 1}\n",
            r"models\[0\].learning_rate: unknown setting. Settings here: name, backbone,",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn, epoch: 3}\n",
            r"models\[0\].epoch: unknown setting. Did you mean 'epochs'\?$",
        ),
        (
            "name: x\ndefaults: {batchsize: 8}\nmodels:\n  - {name: a, backbone: tiny_cnn}\n",
            r"defaults.batchsize: unknown model setting. Did you mean 'batch_size'\?$",
        ),
        (
            "name: x\nmodel:\n  - {name: a, backbone: tiny_cnn}\n",
            r"model: unknown setting. Did you mean 'models'\?",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn}\ncv: {fold: 5}\n",
            r"cv.fold: unknown setting. Did you mean 'folds'\?$",
        ),
        ("name: x\nmodels:\n  - {name: a, backbone: resnet81}\n", r"models\[0\].backbone: unknown backbone 'resnet81'"),
        ("name: x\nmodels:\n  - {name: a, backbone: tiny_cnn, loss: dice}\n", r"models\[0\].loss: unknown loss 'dice'"),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn, mode: partial}\n",
            r"models\[0\].mode: Input should be 'frozen', 'head' or 'full'",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn}\n  - {name: a, backbone: tiny_cnn}\n",
            "model names must be unique; repeated: a",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn}\nensemble_weights: {b: 1}\n",
            "ensemble_weights name unknown model",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn}\ntta_views: [identity, spin]\n",
            "tta_views: unknown TTA view 'spin'",
        ),
        (
            "name: x\nmodels:\n  - {name: a, backbone: tiny_cnn}\nseeds: [42, 1, 42]\n",
            r"seeds: each seed once: \[42\] repeated",
        ),
        ("name: x\nmodels: []\n", "models: List should have at least 1 item"),
        ("name: x\nmodels: [{name: A b, backbone: tiny_cnn}]\n", r"models\[0\].name: String should match pattern"),
        ("name: x\nmodels: [{name: a, backbone: tiny_cnn, epochs: 0}]\n", "epochs must be >= 1"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_profiles_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_profile(path)
    assert str(caught.value).startswith(str(path))


def test_frozen_needs_no_epochs() -> None:
    assert parse_model_spec({"name": "f", "backbone": "tiny_cnn", "mode": "frozen", "epochs": 0}).epochs == 0
