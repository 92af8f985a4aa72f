"""A registered model URI the registry does not have: the message names the store and what it has in its place (the
model's aliases for an unknown alias, its versions for an unknown version, odir's models for an unknown model), with a
"Did you mean" where one is close."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.errors import OdirError
from steps.support import tracking
from steps.support.registry import registered_version


@pytest.fixture(scope="module")
def registry(odir_home: Path) -> str:
    """odir-ensemble with versions 1 and 2 (@champion on 1, @challenger on 2), and odir-bare with no alias."""
    from mlflow import MlflowClient

    tracking.connect()
    client = MlflowClient()
    for name in ("odir-ensemble", "odir-bare"):
        client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version("odir-ensemble", source=(odir_home / "model").as_uri())
    client.create_model_version("odir-bare", source=(odir_home / "model").as_uri())
    client.set_registered_model_alias("odir-ensemble", "champion", "1")
    client.set_registered_model_alias("odir-ensemble", "challenger", "2")
    return tracking.tracking_uri()


@pytest.mark.parametrize(
    ("uri", "instead"),
    [
        ("models:/odir-ensemble@prod", "odir-ensemble has no alias @prod; its aliases: @challenger (version 2), "
         "@champion (version 1)"),
        ("models:/odir-ensemble@champoin", "odir-ensemble has no alias @champoin; its aliases: @challenger "
         "(version 2), @champion (version 1). Did you mean 'champion'?"),
        ("models:/odir-bare@champion", "odir-bare has no alias @champion, nor any other (`odir full` sets @champion "
         "or @challenger)"),
        ("models:/odir-ensemble/7", "odir-ensemble has no version 7; it has versions 1 to 2"),
        ("models:/odir-ensembel@champion", "no model odir-ensembel (registered: odir-bare, odir-ensemble). Did you "
         "mean 'odir-ensemble'?"),
        ("models:/nosuch/1", "no model nosuch (registered: odir-bare, odir-ensemble)"),
    ],
)  # fmt: skip
def test_a_missing_model_version_or_alias_names_what_is_there(registry: str, uri: str, instead: str) -> None:
    with pytest.raises(OdirError) as missing:
        registered_version(uri)
    assert str(missing.value) == f"{uri}: not found in {registry}: {instead}"


def test_a_registered_alias_and_version_are_found(registry: str) -> None:
    assert registered_version("models:/odir-ensemble@challenger") == ("odir-ensemble", "2")
    assert registered_version("models:/odir-ensemble/1") == ("odir-ensemble", "1")
