"""The ``odir`` command line: one entry point for users, each sub-command a thin call into the library.

The commands live by group: :mod:`flows.cli.data` (validate, demo-data, bucket, ingest, upload),
:mod:`flows.cli.pipeline` (full, experiments, train), :mod:`flows.cli.models` (predict, explain, check-drift,
verify, compare) and :mod:`flows.cli.service` (serve, up, down, mlflow-users); each module adds its commands' parsers
next to their handlers, and :func:`build_parser` lists them in the order ``odir --help`` shows.

A failure its user can fix ends with one sentence on stderr and never a traceback, wherever it is found, in a flow
run's tasks included (:mod:`flows.failures`): bad input (``OdirError``) and credentials the tracking server or the
Prefect server refuses (:func:`flows.access.refused`) exit 2; a tracking server or object store that does not answer
under the retry policy (:class:`steps.support.tracking.RetryPolicy`) exits 3. Inputs (a profile's checkpoints, the
splits its protocol needs) and outputs are checked before the work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from flows.cli import data, models, pipeline, service
from flows.failures import failure_of, no_fixable_traceback
from steps.support import tracking

# the commands that check the tracking server and object store answer before any work
STORE_COMMANDS = ("full", "experiments", "predict", "explain", "check-drift", "compare", "verify", "bucket",
                  "upload", "ingest")  # fmt: skip

# each adds one command's parser; in the order of `odir --help`
COMMANDS = (
    data.add_validate, data.add_demo_data, pipeline.add_train, models.add_predict, models.add_explain,
    models.add_check_drift, models.add_compare, pipeline.add_full, pipeline.add_experiments, models.add_verify,
    service.add_serve, service.add_up, service.add_down, data.add_bucket, data.add_ingest, service.add_mlflow_users,
    data.add_upload,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="odir",
        description="Train, evaluate, ensemble and ship multi-label classifiers for fundus photographs (D, G, A). "
        "Start with `odir full` (the whole pipeline on the demo data) or `odir up` (Prefect and MLflow UIs).",
        epilog="Exit status: 0 done, 1 failed, 2 bad input, 3 tracking server or object store unreachable. "
        "`odir COMMAND --help` describes each command.",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    for command in commands.choices.values():  # each command's page opens with what it does
        if command.description is None:
            command.description = next(a.help for a in commands._choices_actions if a.dest == command.prog.split()[-1])
    return parser


def _quiet_prefect(record: logging.LogRecord) -> bool:
    """Drops Prefect's lines that say nothing on a console: "Finished in state ..." after every task and flow run
    (it does not name the task; the Prefect UI shows the states, and the command says how it ended: its summary, or
    one sentence for a failure), and the pointer to its docs under the temporary server's start line."""
    if not record.name.startswith("prefect"):
        return True
    message = record.getMessage()
    if message.startswith("Starting temporary server") and "\n" in message:
        record.msg, record.args = message.splitlines()[0], ()
    return not message.startswith("Finished in state")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one sub-command; returns its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore", "alembic", "mlflow.system_metrics"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_prefect)
        handler.addFilter(no_fixable_traceback)  # a failure a user can fix: one sentence below instead
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    # pickled models are chosen on purpose (steps/train.py: _log_model; the ensemble's pyfunc) and odir loads
    # checkpoints with weights_only: a warning per model that a user cannot act on
    for logger in ("mlflow.pytorch", "mlflow.pyfunc"):
        logging.getLogger(logger).addFilter(lambda record: "CloudPickle" not in record.getMessage())
    try:
        if args.command in STORE_COMMANDS:
            tracking.check_store()
        return args.handler(args)
    except Exception as error:
        if (failure := failure_of(error)) is None:
            raise  # a bug: its traceback is for whoever fixes it
        print(f"odir {args.command}: {failure.sentence}", file=sys.stderr)
        return failure.status
