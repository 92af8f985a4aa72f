"""Artifact integrity: the SHA-256 of every file of a registered version, recorded at registration, checked on use.

At registration (:func:`register`) each file of the logged model (its bundled code aside: ``code/``) and each
checkpoint of the run (``checkpoints/``) is hashed; the digests become version tags ``odir.sha256.model/<path>``
and ``odir.sha256.checkpoints/<file>``. Registration is idempotent: a run that already has a version of the model
gets that version back, never a second one.

Whatever loads a version (predict, evaluate, submit, promote) goes through :func:`verified_model_dir` or
:func:`verified_checkpoints`, which fail with :class:`IntegrityError` naming the version, the file and the recovery
command; reuse of a finished run (``steps.support.base.run_step``) checks its version the same way and does the work
again when it fails, marking the broken run FAILED so it is never picked again. Versions registered before this had no
digests: they are used unchecked (:attr:`Check.recorded` says so).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from components.errors import OdirError
from steps.support import registry, tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

log = logging.getLogger(__name__)

TAG_PREFIX = "odir.sha256."
MODEL_PART, CHECKPOINT_PART = "model/", "checkpoints/"
# the bundled source (not produced by training, and many small files), and what MLflow writes into a download of a
# registered version
SKIPPED = ("code/", "registered_model_meta")
BROKEN_TAG = "odir.integrity"


class IntegrityError(OdirError):
    """A registered version whose files do not match the digests recorded when it was registered."""


def recovery_hint(name: str, version: str) -> str:
    return f"run `odir verify --fix` to set models:/{name}/{version} aside, then `odir full` to rebuild it"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digests(root: Path, part: str) -> dict[str, str]:
    return {
        f"{part}{path.relative_to(root).as_posix()}": sha256_of(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.relative_to(root).as_posix().startswith(SKIPPED)
    }


def _run_checkpoints(run_id: str) -> Path | None:
    """The run's local ``checkpoints/`` folder, or None when it logged none."""
    import mlflow

    if not mlflow.MlflowClient().list_artifacts(run_id, CHECKPOINT_PART.rstrip("/")):
        return None
    return Path(tracking.download(f"runs:/{run_id}/{CHECKPOINT_PART.rstrip('/')}"))


def register(logged_model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Registers the active run's logged model as a version of ``name`` with ``tags`` and the files' digests;
    returns the version (the existing one when this run has already registered one)."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        log.info("run %s already registered %s version %s", run_id, name, existing[0].version)
        return str(existing[0].version)
    digests = _digests(Path(tracking.download(logged_model_uri)), MODEL_PART)
    if (checkpoints := _run_checkpoints(run_id)) is not None:
        digests.update(_digests(checkpoints, CHECKPOINT_PART))
    version = mlflow.register_model(logged_model_uri, name, tags={**tags, **_as_tags(digests)})
    return str(version.version)


def _as_tags(digests: dict[str, str]) -> dict[str, str]:
    return {f"{TAG_PREFIX}{path}": digest for path, digest in digests.items()}


@dataclass(frozen=True)
class Check:
    """What verifying a version found: its local model folder, checkpoints folder and problems (empty: sound)."""

    model_dir: Path | None
    checkpoint_dir: Path | None
    problems: tuple[str, ...]
    recorded: bool


def check(name: str, version: str, parts: tuple[str, ...] = (MODEL_PART, CHECKPOINT_PART)) -> Check:
    """Downloads a version's files of ``parts`` (its model, its run's checkpoints) and compares them with the
    digests recorded at registration; a caller that loads only one part downloads and hashes only that one."""
    from mlflow import MlflowClient

    model_version = MlflowClient().get_model_version(name, version)
    expected = {k.removeprefix(TAG_PREFIX): v for k, v in model_version.tags.items() if k.startswith(TAG_PREFIX)}
    problems: list[str] = []
    model_dir = checkpoint_dir = None
    try:
        if MODEL_PART in parts:
            model_dir = Path(tracking.download(f"models:/{name}/{version}"))
        if CHECKPOINT_PART in parts and (any(path.startswith(CHECKPOINT_PART) for path in expected) or not expected):
            checkpoint_dir = _run_checkpoints(model_version.run_id)
    except Exception as error:  # files gone from the artifact store
        if tracking.store_unreachable(error):
            raise
        problems.append(f"its files cannot be read: {error}")
    roots = {MODEL_PART: model_dir, CHECKPOINT_PART: checkpoint_dir}
    for path, digest in sorted(expected.items()):
        part = MODEL_PART if path.startswith(MODEL_PART) else CHECKPOINT_PART
        if roots[part] is None:
            continue
        local = roots[part] / path.removeprefix(part)
        if not local.is_file():
            problems.append(f"{path} is missing")
        elif (found := sha256_of(local)) != digest:
            problems.append(f"{path} fails its SHA-256 check (recorded {digest[:12]}, found {found[:12]})")
    return Check(model_dir, checkpoint_dir, tuple(problems), bool(expected))


def _verified(name: str, version: str, part: str) -> Check:
    found = check(name, version, (part,))
    if found.problems:
        raise IntegrityError(f"models:/{name}/{version}: {'; '.join(found.problems)}. {recovery_hint(name, version)}")
    return found


def verified_model_dir(model_uri: str) -> Path:
    """The local folder of a registered version's model, its files checked (:class:`IntegrityError` if not)."""
    name, version = registry.split_model_uri(model_uri)
    return _verified(name, version, MODEL_PART).model_dir


def verified_checkpoints(model_uri: str) -> Path | None:
    """The local ``checkpoints/`` folder of a registered version's run, its files checked."""
    name, version = registry.split_model_uri(model_uri)
    return _verified(name, version, CHECKPOINT_PART).checkpoint_dir


def sound_reuse(run) -> bool:
    """Whether a finished run's registered version (if it has one) still verifies; a broken one is set aside
    (:func:`set_aside`: its run marked FAILED, so no later reuse picks it) and the caller does the work again."""
    from mlflow import MlflowClient

    uri = run.data.tags.get("registered_model_uri")
    if not uri:
        return True
    from mlflow.exceptions import MlflowException

    name, version = registry.split_model_uri(uri)
    client = MlflowClient()
    try:
        found = check(name, version)
    except MlflowException as error:  # the version was deleted from the registry: redo the work, once
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning("not reusing run %s: its version %s is gone from the registry", run.info.run_id, uri)
        return False
    if not found.problems:
        return True
    set_aside(name, version, found.problems)
    if client.get_run(run.info.run_id).info.status == "FINISHED":  # set_aside marks the version's run; be sure
        client.set_terminated(run.info.run_id, "FAILED")
    log.warning("%s: not reusing run %s, its version fails verification (%s); doing the work again",
                run.data.tags.get(tracking.STEP_TAG, "step"), run.info.run_id, "; ".join(found.problems))  # fmt: skip
    return False


def set_aside(name: str, version: str, problems: tuple[str, ...] | list[str]) -> list[str]:
    """Marks a broken version: tags it, removes its aliases (so no champion is broken) and marks the run that made
    it FAILED (so no reuse picks it). Returns the aliases removed."""
    from mlflow import MlflowClient

    client = MlflowClient()
    model_version = client.get_model_version(name, version)
    client.set_model_version_tag(name, version, BROKEN_TAG, "failed: " + "; ".join(problems)[:4000])
    for alias in model_version.aliases:
        client.delete_registered_model_alias(name, alias)
    run = client.get_run(model_version.run_id)
    if run.info.status == "FINISHED":
        client.set_terminated(model_version.run_id, "FAILED")
        client.set_tag(model_version.run_id, "odir.failure", f"version {version} failed verification")
    return list(model_version.aliases)


@dataclass(frozen=True)
class VersionReport:
    """One checked version: ``models:/name/version``, its aliases, its problems, and whether it was set aside."""

    uri: str
    aliases: tuple[str, ...]
    problems: tuple[str, ...]
    recorded: bool
    set_aside: bool = False


def verify_registry(fix: bool = False) -> list[VersionReport]:
    """Checks every version that holds an alias of an odir model (the champion, challengers) and the members of
    aliased ensembles; with ``fix``, sets the broken ones aside (:func:`set_aside`) so the next ``odir full``
    rebuilds them and promotes a sound version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    pending = [
        (model.name, str(version))
        for model in client.search_registered_models(f"name LIKE '{registry.MODEL_PREFIX}%'")
        if not model.name.startswith("odir-lock-")
        for version in sorted(set(model.aliases.values()), key=int)
    ]
    reports, seen = [], set()
    while pending:
        name, version = pending.pop(0)
        if (name, version) in seen:
            continue
        seen.add((name, version))
        found = check(name, version)
        pending += [registry.split_model_uri(uri) for uri in _members(found.model_dir)]
        aliases = tuple(client.get_model_version(name, version).aliases)
        if found.problems and fix:
            set_aside(name, version, found.problems)
        reports.append(VersionReport(f"models:/{name}/{version}", aliases, found.problems, found.recorded,
                                     bool(found.problems) and fix))  # fmt: skip
    return reports


def _members(model_dir: Path | None) -> list[str]:
    """The member model URIs an ensemble's config names (none for a member model)."""
    import json

    if model_dir is None:
        return []
    for config in model_dir.glob("artifacts/*.json"):
        data = json.loads(config.read_text())
        if isinstance(data, dict) and "model_uris" in data:
            return list(data["model_uris"])
    return []
