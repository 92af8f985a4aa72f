"""Event-driven retraining: a dataset that differs from the champion's announces itself as a Prefect event, and the
``odir/retrain`` deployment has a trigger on that event (besides its nightly cron).

Who announces: ``odir upload`` (after the upload) and ``odir ingest`` (a dataset checked and logged on its own),
each only when the dataset's digest differs from the champion's ``data_digest``. The pipeline's own ingest does not
announce: the run that ingests is already training, and a retrain run announcing the data it was started for would
start another one.

The event is ``odir.dataset.changed`` on the resource ``odir.dataset.<digest>``, with the URI and digest in its
payload; the trigger passes the URI to the retrain run as its ``data`` parameter. Unchanged data sends nothing,
so it starts nothing. Without a Prefect server (``PREFECT_API_URL`` unset) there is nothing to announce to: the
caller is told, and nothing is sent. An event that cannot be delivered (the server down, or refusing the auth
string ``PREFECT_API_AUTH_STRING``) fails the command instead of being dropped.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.events import Event

DATASET_CHANGED = "odir.dataset.changed"
RESOURCE_PREFIX = "odir.dataset."


def retrain_trigger():
    """The retrain deployment's trigger: one run per ``odir.dataset.changed`` event, on the event's URI."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="odir dataset changed",
        description="Retrain when odir upload or odir ingest announces data that differs from the champion's.",
        expect={DATASET_CHANGED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        parameters={"data": "{{ event.payload.uri }}", "only_if_changed": True},
    )


def champion_digest() -> str | None:
    """The ``data_digest`` of the champion's data, or None when there is no champion."""
    from steps import promote
    from steps.support import pipeline_run, registry

    champion = promote.current_champion(registry.ENSEMBLE_MODEL)
    if champion is None:
        return None
    return pipeline_run.version_tags(registry.ENSEMBLE_MODEL, champion).get("data_digest")


def announce_dataset(uri: str, digest: str, source: str) -> str:
    """Emits ``odir.dataset.changed`` for ``uri`` when ``digest`` differs from the champion's; returns a sentence
    saying what happened (for the command's output)."""
    if digest == champion_digest():
        return f"data {digest[:12]} is the champion's: no retraining event"
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:  # PREFECT_API_URL, or set with `prefect config set`
        return f"data {digest[:12]} differs from the champion's; PREFECT_API_URL is not set, so no event was sent"
    from prefect.events import Event

    resource = {"prefect.resource.id": f"{RESOURCE_PREFIX}{digest}", "prefect.resource.name": uri}
    event = Event(event=DATASET_CHANGED, resource=resource, payload={"uri": uri, "digest": digest, "source": source})
    asyncio.run(_send(event))
    return f"data {digest[:12]} differs from the champion's: sent {DATASET_CHANGED} (odir/retrain starts on it)"


async def _send(event: Event) -> None:
    """Sends one event and fails if it could not: checks the API credentials first (a refused auth string is an
    HTTP 401, which the command words as one line), then sends on the events socket with Prefect's own client.

    Why not ``emit_event``: its background worker drops an event it cannot deliver (a wrong
    ``PREFECT_API_AUTH_STRING`` fails the socket's auth handshake) with a log line, and the command would say "sent".
    """
    from prefect.client.orchestration import get_client
    from prefect.events.clients import get_events_client

    async with get_client() as client:
        await client.hello()  # raises on HTTP 401 / 403
    async with get_events_client(reconnection_attempts=3) as events:
        await events.emit(event)
