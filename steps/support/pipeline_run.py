"""What the flows record in MLflow and read back from it, so that ``flows/`` imports no MLflow (the layer rule).

A flow (``odir``, ``odir-experiments``) opens one parent run before its steps (:func:`start`); the steps' runs hang
under it; it ends FINISHED or FAILED with the flow (:func:`ended`), and ``odir`` writes its headline on it
(:func:`record`). Retraining asks whether the champion was built from the same data and profile (its
:func:`version_tags`), and the summary finds the Grad-CAM gallery through a tag of the evaluate run (:func:`run_tag`).
What goes into the tags and metrics is the flows' business; this module only moves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from steps.support import processes, tracking

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


def start(
    experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Opens a flow's parent run in ``experiment`` with ``tags`` and the process's tags (who may reap it), logs
    ``params`` and ``texts`` (``{artifact path: text}``); returns its run id."""
    from mlflow import MlflowClient

    experiment_id = tracking.setup(experiment)
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=run_name, tags={**tags, **processes.process_tags()}).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
    return run_id


@contextmanager
def ended(run_id: str) -> Iterator[None]:
    """Ends the run FINISHED when the block completes, FAILED when anything escapes it (a cancelled or crashed flow
    included), and lets the exception go on."""
    from mlflow import MlflowClient

    try:
        yield
    except BaseException:
        MlflowClient().set_terminated(run_id, "FAILED")
        raise
    MlflowClient().set_terminated(run_id, "FINISHED")


def record(run_id: str, metrics: dict[str, float], tags: dict[str, str], texts: dict[str, str] | None = None) -> None:
    """Logs ``metrics``, sets ``tags`` on a run, in their order (a later tag of the same key wins), and logs
    ``texts`` (``{artifact path: text}``)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of a registered model version (``data_digest``, ``profile_key`` ...)."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, version).tags


def run_tag(run_id: str, key: str) -> str | None:
    """A tag of a run, or None when it has none of that key."""
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get(key)


def save_a_throwaway_model() -> None:
    """Saves an identity model to a temporary folder and deletes it: MLflow's first model save in a process scans
    every installed package (1 s), and a command that is about to train pays it here, while Prefect's server starts
    (``flows.cli``'s warm start)."""
    import tempfile

    import mlflow.pytorch
    import torch

    mlflow_pytorch_log = logging.getLogger("mlflow.pytorch")
    level = mlflow_pytorch_log.level
    mlflow_pytorch_log.setLevel(logging.ERROR)  # its pickle-format warning belongs to the real models
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(
                torch.nn.Identity(), f"{tmp}/model", serialization_format="pickle", pip_requirements=["torch"]
            )
    finally:
        mlflow_pytorch_log.setLevel(level)
