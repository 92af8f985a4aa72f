"""A profile's inputs checked before any run starts: every ``weights:`` checkpoint exists and loads as plain tensors,
and the dataset has the splits the profile's protocol needs. A mistake there fails in a second with one line
naming the file and the field, instead of inside a run after the work before it (as ``components.outputs`` does for
outputs).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from components.config import ConfigError, Profile
from components.data.splits import SPLITS
from components.errors import DataError, Problem
from components.models.weight_files import WeightsError, read_checkpoint

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

NAMED_WEIGHTS = ("none", "imagenet")


def check_checkpoints(profile: Profile, source: str) -> None:
    """Every model's ``weights:`` that names a file loads as a state dict of plain tensors.

    Args:
        source: where the profile came from (its file), named in the message.

    Raises:
        ConfigError: naming the profile file, the field (``models[<i>].weights``) and what is wrong with the file.
    """
    for index, spec in enumerate(profile.models):
        if spec.weights in NAMED_WEIGHTS:
            continue
        try:
            read_checkpoint(Path(spec.weights))
        except WeightsError as error:
            raise ConfigError(f"{source}: models[{index}].weights: {error}") from None


def check_splits(profile: Profile, present: Collection[str], root: str) -> None:
    """The dataset at ``root``, which holds the splits ``present``, has every split the profile's protocol needs.

    Raises:
        DataError: naming the dataset root, the missing splits and the protocol that needs them.
    """
    missing = [split for split in profile.needed_splits() if split not in present]
    if missing:
        has = ", ".join(split for split in SPLITS if split in present) or "none"
        raise DataError([Problem(root, f"the dataset has no {' and no '.join(missing)} split (present: {has}), which "
                                       f"profile {profile.name}'s protocol ({profile.protocol}) needs")])  # fmt: skip


def check_dataset_splits(profile: Profile, root: str | Path) -> None:
    """:func:`check_splits` for a dataset folder: a split is present when its CSV is (its rows are checked at ingest).

    Raises:
        DataError: as :func:`check_splits`.
    """
    present = [name for name, layout in SPLITS.items() if (Path(root) / layout.csv_name).is_file()]
    check_splits(profile, present, str(root))
