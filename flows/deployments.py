"""Deployments served from this checkout without a worker (``odir serve``): ``odir/full`` (manual),
``odir/retrain`` (nightly, and when ``odir upload`` or ``odir ingest`` announces changed data:
:mod:`flows.events`; trains only when the data or the profile changed since the champion) and
``odir-train/gpu`` (one model; what ``odir`` dispatches to with ``dispatch=deployment``) and
``odir-experiments/seed`` (the study's grid and its results table).

``prefect.yaml`` declares the same four (and ``odir-train/gpu-k8s``) for work pools; use one mechanism per
environment, since serving a deployment replaces the one of the same name.
"""

from __future__ import annotations

import os

RETRAIN_CRON = os.environ.get("ODIR_RETRAIN_CRON", "0 2 * * *")

# what ``odir serve`` registers, as ``flow/deployment``: ``odir up`` waits until each of them answers
SERVED = ("odir/full", "odir/retrain", "odir-train/gpu", "odir-experiments/seed")


def served_deployments() -> list:
    """The deployments of :data:`SERVED`, in that order, as ``odir serve`` registers them."""
    from flows.events import retrain_trigger
    from flows.experiments import odir_experiments
    from flows.odir import odir, odir_train

    return [
        odir.to_deployment(name="full", description="The whole pipeline, started by hand."),
        odir.to_deployment(
            name="retrain",
            cron=RETRAIN_CRON,
            triggers=[retrain_trigger()],
            parameters={"only_if_changed": True},
            description="Nightly and on odir.dataset.changed: retrains only when the data or profile changed, "
            "promotes only on improvement.",
        ),
        odir_train.to_deployment(
            name="gpu", description="Trains one model; odir dispatches here with dispatch=deployment."
        ),
        odir_experiments.to_deployment(
            name="seed", parameters={"grid": "seed"}, description="The study's grid (Tasks 1-4) and its results table."
        ),
    ]


def serve_all(limit: int = 4) -> None:
    """Serves the four deployments of :data:`SERVED` until interrupted."""
    from prefect import serve

    serve(*served_deployments(), limit=limit)
