"""The model spec's optimisation, augmentation and preprocessing fields: defaults that change nothing, validation
that names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError, load_profile, parse_model_spec
from components.data.augment import Affine, Flips

BASE = {"name": "a", "backbone": "tiny_cnn"}
DUMP_BEFORE = [
    "name", "backbone", "weights", "mode", "loss", "loss_params", "epochs", "lr", "weight_decay", "batch_size",
    "image_size", "seed", "augment", "monitor", "patience", "grad_clip", "amp", "channels_last",
]  # fmt: skip


def test_a_spec_that_uses_none_of_them_dumps_as_before() -> None:
    # checkpoints compare dumps on resume, and runs and reuse are keyed on them: nothing may change for old specs
    spec = parse_model_spec({**BASE, "augment": True})
    assert list(spec.model_dump()) == DUMP_BEFORE == list(spec.model_dump(mode="json"))
    assert (spec.optimizer, spec.schedule, spec.warmup_epochs, spec.backbone_lr_scale) == ("adam", "constant", 0, 1)
    assert (spec.label_smoothing, spec.ema, spec.preprocess) == (0, None, "none")
    assert not spec.fundus_preprocess().active
    assert spec.augmentation().steps == (("flips", Flips()),)
    assert parse_model_spec(BASE).augmentation() is None


def test_used_fields_are_dumped_and_round_trip() -> None:
    settings = {
        **BASE, "epochs": 5, "augment": {"affine": {"degrees": 90}}, "preprocess": ["fov_crop"], "optimizer": "adamw",
        "schedule": "cosine", "warmup_epochs": 0.5, "backbone_lr_scale": 0.1, "label_smoothing": 0.05, "ema": 0.99,
    }  # fmt: skip
    spec = parse_model_spec(settings)
    dumped = spec.model_dump()
    assert {key: dumped[key] for key in settings} == settings
    assert parse_model_spec(dumped) == spec == parse_model_spec(spec.model_dump(mode="json"))
    assert spec.augmentation().steps == (("affine", Affine(90)),) and spec.augmentation().fill == 0
    with_contrast = parse_model_spec({**BASE, "augment": "fundus", "preprocess": "local_contrast"})
    assert with_contrast.augmentation().fill == 128  # rotated corners match the grey outside the field of view


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_the_new_backbones_are_accepted(backbone: str) -> None:
    assert parse_model_spec({**BASE, "backbone": backbone}).backbone == backbone


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("augment: spin", r"models\[0\].augment: unknown augmentation 'spin'; valid: affine, brightness"),
        ("augment: 3", r"models\[0\].augment: augment must be true, false, a name, a list of names or a mapping"),
        ("augment: {affine: {degree: 30}}", r"augment: augmentation 'affine' has no parameter 'degree'"),
        ("augment: {contrast: {strength: 2}}", r"augment: augmentation 'contrast': strength must be in \[0, 1\)"),
        ("preprocess: [fov_crop, sharpen]", r"models\[0\].preprocess: unknown preprocessing step 'sharpen'"),
        ("preprocess: {local_contrast: {gain: -1}}", r"preprocess: preprocessing step 'local_contrast': gain must be"),
        ("optimizer: sgd", r"models\[0\].optimizer: Input should be 'adam' or 'adamw' \(got 'sgd'\)"),
        ("schedule: step", r"models\[0\].schedule: Input should be 'constant' or 'cosine'"),
        ("warmup_epochs: -1", r"models\[0\].warmup_epochs: Input should be greater than or equal to 0"),
        ("warmup_epochs: 3", r"models\[0\]: warmup_epochs \(3\) must be less than epochs \(3\)"),
        ("backbone_lr_scale: 0", r"models\[0\].backbone_lr_scale: Input should be greater than 0"),
        ("label_smoothing: 0.6", r"models\[0\].label_smoothing: Input should be less than or equal to 0.5"),
        ("ema: 1", r"models\[0\].ema: Input should be less than 1"),
        ("ema: 0", r"models\[0\].ema: Input should be greater than 0"),
        ("monitor: last\n    patience: 2", r"models\[0\]: monitor 'last' picks no epoch, so it never stops early"),
    ],
)
def test_bad_values_name_the_file_and_the_field(tmp_path: Path, field: str, message: str) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(f"name: x\nmodels:\n  - name: a\n    backbone: tiny_cnn\n    epochs: 3\n    {field}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_profile(path)
    assert str(caught.value).startswith(str(path))
