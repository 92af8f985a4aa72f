"""The model registry as the steps name it: odir's registered models and the URIs of their versions.

Members register as ``odir-<member name>``, the ensemble as :data:`ENSEMBLE_MODEL`; a version is addressed as
``models:/NAME/VERSION`` or through an alias, ``models:/NAME@ALIAS`` (``@champion`` is what ``odir predict`` uses).
"""

from __future__ import annotations

from steps.support import tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

MODEL_PREFIX = "odir-"
ENSEMBLE_MODEL = "odir-ensemble"


def split_model_uri(model_uri: str) -> tuple[str, str]:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> (name, version), resolving the alias.

    Raises:
        ValueError: for any other form of URI.
    """
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        raise ValueError(
            f"expected a registered model URI models:/NAME/VERSION or models:/NAME@ALIAS, got {model_uri!r}"
        )
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = rest.partition("/")
    if not version:
        raise ValueError(f"model URI {model_uri!r} names no version or alias")
    return name, version


def registered_version(model_uri: str) -> tuple[str, str]:
    """(name, version) of a registered model URI that exists in the store.

    Raises:
        OdirError: a malformed URI, or a model, version or alias the registry does not have, naming the store and
            what it has instead: odir's models for an unknown model, the model's aliases for an unknown alias, its
            versions for an unknown version.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.errors import OdirError

    try:
        name, version = split_model_uri(model_uri)
        MlflowClient().get_model_version(name, version)
        return name, version
    except ValueError as error:
        raise OdirError(str(error)) from None
    except MlflowException as error:
        missing_alias = error.error_code == "INVALID_PARAMETER_VALUE" and "alias" in error.message  # MLflow's code
        if error.error_code != "RESOURCE_DOES_NOT_EXIST" and not missing_alias:
            raise
    raise OdirError(f"{model_uri}: not found in {tracking.tracking_uri()}: {_what_is_there(model_uri)}")


def _what_is_there(model_uri: str) -> str:
    """What the registry has in place of a missing ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.errors import did_you_mean

    client = MlflowClient()
    rest = model_uri.removeprefix("models:/")
    name, alias = rest.split("@", 1) if "@" in rest else (rest.partition("/")[0], None)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(
            m.name for m in client.search_registered_models(f"name LIKE '{MODEL_PREFIX}%'")
            if not m.name.startswith("odir-lock-")
        )  # fmt: skip
        return f"no model {name} (registered: {', '.join(known) or 'none'}).{did_you_mean(name, known)}".rstrip(".")
    if alias is not None:
        aliases = dict(sorted(model.aliases.items()))
        held = ", ".join(f"@{a} (version {v})" for a, v in aliases.items())
        if not held:
            return f"{name} has no alias @{alias}, nor any other (`odir full` sets @champion or @challenger)"
        return f"{name} has no alias @{alias}; its aliases: {held}.{did_you_mean(alias, aliases)}".rstrip(".")
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    have = f"versions {versions[0]} to {versions[-1]}" if versions else "no versions"
    return f"{name} has no version {rest.partition('/')[2]}; it has {have}"


def logged_model_id(model_uri: str) -> str | None:
    """The logged model (``m-...``) a registered version was made from: its source ``models:/m-...`` (MLflow 3.18
    leaves the version's ``model_id`` empty); None for a version registered from a run path (before MLflow 3)."""
    from mlflow import MlflowClient

    name, version = split_model_uri(model_uri)
    found = MlflowClient().get_model_version(name, version)
    source = found.source or ""
    return found.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
