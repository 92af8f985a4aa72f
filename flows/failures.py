"""How a command or a flow run ends when it fails for a reason its user can fix: one sentence naming the file, field
or parameter and the problem, an exit status, and no traceback on a console.

Such a failure (:func:`failure_of`) is bad input (:class:`components.errors.OdirError`: exit 2), credentials a
server refuses (:func:`flows.access.refused`: exit 2), or a Prefect server, tracking server or object store that does
not answer under the retry policy (exit 3). Anything else is a bug, and its traceback is shown wherever it goes.

The sentence is the same wherever the failure surfaces:

- **odir's console**: ``odir <command>: <sentence>`` on stderr, last (``flows.cli.main``). Prefect logs a failing
  task or flow run with its traceback on loggers that reach the console as well as the run's log in the Prefect
  API; :func:`no_fixable_traceback` keeps such records off the console's handler only (the records themselves are
  not touched, so the API handler still gets the traceback), and the command drops Prefect's ``Finished in state``
  lines (the run's states are in the Prefect UI; the command says how it ended).
- **the flow run**: each flow ends with :func:`failed_state` (``Failed(message=<sentence>)``, Prefect's way for a
  flow to end in a state it chose), so the run's state message, shown by the Prefect UI's run header,
  ``prefect flow-run inspect`` and the run's ``Finished in state`` log line, is the sentence; its log holds the
  sentence once more with the traceback, for whoever debugs it. A caller in the same process (``odir full``) gets
  the error itself raised, and ends as above.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from components.errors import OdirError

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3


@dataclass(frozen=True)
class Failure:
    """A failure its user can fix: the sentence that says what is wrong, and the exit status it ends with."""

    sentence: str
    status: int


def _raised_from(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the errors it was explicitly raised from (``raise ... from``), outermost first; not the errors
    being handled when it was raised (a bug raised in an ``except OdirError`` block stays a bug)."""
    while error is not None:
        yield error
        error = error.__cause__


def failure_of(error: BaseException) -> Failure | None:
    """The sentence and exit status of an error its user can fix; None for a bug."""
    from flows.access import refused
    from steps.support import tracking

    for link in _raised_from(error):
        if isinstance(link, OdirError):
            return Failure(str(link), EXIT_INVALID)
    if (line := refused(error)) is not None:
        return Failure(line, EXIT_INVALID)
    if (line := prefect_unreachable(error)) is not None:
        return Failure(line, EXIT_UNREACHABLE)
    if tracking.store_unreachable(error):
        return Failure(tracking.unreachable_message(error), EXIT_UNREACHABLE)
    return None


def prefect_unreachable(error: BaseException) -> str | None:
    """One line when ``error`` (or what caused it) is the Prefect server at ``PREFECT_API_URL`` not answering (after
    the Prefect client's own retries), naming it and what to do; None for any other error."""
    import httpx
    from prefect.settings import get_current_settings

    from steps.support import tracking

    url = get_current_settings().api.url
    for cause in tracking.causes(error):
        if not (url and isinstance(cause, httpx.TransportError)):
            continue
        try:
            requested = str(cause.request.url)
        except RuntimeError:  # an error raised without its request
            continue
        if requested.startswith(url):
            return (f"Prefect server {url} does not answer ({type(cause).__name__}): start it (`odir up` for the "
                    "local stack), or unset PREFECT_API_URL (a prefect.toml here that `odir up` wrote: `odir down` "
                    "removes it) to run on a temporary server")  # fmt: skip
    return None


def failed_state(error: Exception) -> Any | None:
    """The state a flow ends in when ``error`` escapes its body: ``Failed`` with the failure's sentence as its message
    (the traceback logged with it, to the run's log), or None for a bug, which the flow re-raises for Prefect to
    record as it records any exception. Every odir flow ends through here::

        try:
            ...
        except Exception as error:
            if (state := failed_state(error)) is None:
                raise
            return state
    """
    from prefect.context import FlowRunContext
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import Failed

    failure = failure_of(error)
    if failure is None:
        return None
    # the flow run's own logger: get_run_logger() in a subflow started by a task (odir-train) is the task's
    context = FlowRunContext.get()
    flow_run_logger(context.flow_run, context.flow).error("%s", failure.sentence, exc_info=error,
                                                          extra={FAILURE_RECORD: True})  # fmt: skip
    return Failed(message=failure.sentence, data=error)  # a caller in this process gets ``error`` raised


FAILURE_RECORD = "odir_failure"  # marks the one record of a fixable failure that carries its traceback


def _traceback_once(record: logging.LogRecord) -> bool:
    """A filter for Prefect's flow-run logger: a fixable failure's traceback goes into the run's log once, with its
    sentence (:func:`failed_state`), not again when the engine of a deployment's run exits with it ("Engine execution
    exited with unexpected exception", which ``prefect deployment run --watch`` would print as a second traceback)."""
    error = record.exc_info[1] if record.exc_info else None
    return error is None or getattr(record, FAILURE_RECORD, False) or failure_of(error) is None


logging.getLogger("prefect.flow_runs").addFilter(_traceback_once)


# how Prefect words a Failed state it makes of an exception (a bug in a run, since odir's flows end in failed_state)
PREFECT_EXCEPTION_MESSAGE = "Flow run encountered an exception"


class FailedElsewhere(OdirError):
    """A flow run this one waited for in another process (a deployment's run) ended for a reason its user can fix:
    its sentence, raised here so that this run ends with it too (exit 2)."""


def raise_if_failed(name: str, state: Any) -> None:
    """Raises when the flow run ``name`` ended in ``state`` other than Completed: :class:`FailedElsewhere` with the
    run's sentence when it ended through :func:`failed_state` (a plain ``Failed`` whose message is not Prefect's
    words for an exception), else ``RuntimeError`` naming the run, its state and Prefect's message."""
    if state is not None and state.is_completed():
        return
    message = state.message if state is not None else None
    if state is not None and state.name == "Failed" and message and not message.startswith(PREFECT_EXCEPTION_MESSAGE):
        raise FailedElsewhere(message)
    raise RuntimeError(f"{name} ended {state and state.name}{f': {message}' if message else ''}")


def no_fixable_traceback(record: logging.LogRecord) -> bool:
    """A console handler's filter: False for a record that carries the traceback of a failure its user can fix
    (:func:`failure_of`; Prefect logs a failed task or flow run so), which the command then says in one sentence.
    The record is left as it is: the Prefect API's handler, which gets it too, keeps the traceback in the run's log."""
    error = record.exc_info[1] if record.exc_info else None
    return error is None or failure_of(error) is None
