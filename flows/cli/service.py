"""The service commands of ``odir``: ``serve`` (the deployments), ``up`` and ``down`` (the local stack)."""

from __future__ import annotations

import argparse
import sys

from flows.cli.common import runs_page
from flows.deployments import SERVED
from flows.failures import EXIT_FAILED


def _port(text: str) -> int:
    """An argparse type: a TCP port a user may bind (1024-65535)."""
    if not text.isdigit() or not 1024 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port between 1024 and 65535")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve_all

    serve_all(limit=args.limit)
    return 0


def add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help=f"serve the deployments {', '.join(SERVED)}")
    serve.add_argument("--limit", type=_positive, default=4, help="flow runs at once (default 4)")
    serve.set_defaults(handler=_cmd_serve)


def _cmd_up(args: argparse.Namespace) -> int:
    from flows.stack import up

    try:
        urls = up(args.prefect_port, args.mlflow_port)  # OdirError (exit 2): it already runs on other ports
    except RuntimeError as error:  # a service that did not come up: the message names it and its log
        print(f"odir up: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nPrefect UI  {urls['prefect_ui']}\nMLflow UI   {runs_page(urls['mlflow_ui'])}\n")
    if "prefect_toml" in urls:
        print(f"Run the pipeline from this folder ({urls['prefect_toml']} points Prefect at the stack until "
              f"`odir down`; elsewhere, export PREFECT_API_URL={urls['api']} first):")  # fmt: skip
    else:
        print(f"Run the pipeline:\n  export PREFECT_API_URL={urls['api']}")
    print("  .venv/bin/prefect deployment run odir/full --watch")
    print("Stop everything:  make down")
    return 0


def add_up(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser(
        "up", help="start a local Prefect server, the MLflow UI and odir serve (127.0.0.1)",
        description="Starts a local Prefect server, the MLflow UI and odir serve on 127.0.0.1 (each once: a running "
        "one is reused), and writes prefect.toml in the project so that Prefect commands run there use the stack "
        "(odir down removes it; a prefect.toml of your own is left alone).",
        epilog="Exit status: 0 running, 1 a service did not come up (its log is named), 2 the stack already runs on "
        "other ports (named).",
    )  # fmt: skip
    up.add_argument("--prefect-port", type=_port, default=4200, help="Prefect server and UI port (default 4200)")
    up.add_argument("--mlflow-port", type=_port, default=5000, help="MLflow UI port (default 5000)")
    up.set_defaults(handler=_cmd_up)


def _cmd_down(args: argparse.Namespace) -> int:
    from flows.stack import down

    stopped = down()
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def add_down(commands: argparse._SubParsersAction) -> None:
    down = commands.add_parser("down", help="stop what odir up started")
    down.set_defaults(handler=_cmd_down)


def _cmd_mlflow_users(args: argparse.Namespace) -> int:
    from steps.support.users import ensure_users

    print("\n".join(ensure_users()))
    return 0


def add_mlflow_users(commands: argparse._SubParsersAction) -> None:
    users = commands.add_parser(
        "mlflow-users",
        help="create the pipeline and reader users of a tracking server with basic-auth (as its admin)",
        description="Creates the pipeline and reader users (ODIR_PIPELINE_USERNAME / _PASSWORD, ODIR_READER_USERNAME "
        "/ _PASSWORD) on the MLFLOW_TRACKING_URI server, or sets the password of one that exists; run with the "
        "admin's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/security.md).",
    )
    users.set_defaults(handler=_cmd_mlflow_users)
