"""``python -m steps.<name> --field value ...``: the same entry point locally and as a container command.

Each step's options are its config dataclass's fields (``--manifest-uri``, ``--split`` ...); a field holding a
pydantic model (the train step's ``--spec``) takes its JSON, or the path of a YAML or JSON file with it. The step's
typed result is printed as one JSON object on stdout, so the next step can read its URIs. Bad input, and credentials
the tracking server refuses, exit 2 with one line on stderr; a tracking server still unreachable after MLflow's
retries exits 3; any other failure exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from components.errors import OdirError
from steps.support.tracking import access_refused, store_unreachable, unreachable_message

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


def _pydantic_value(model: type) -> Callable[[str], Any]:
    """An argparse type: a pydantic ``model`` from JSON text or from a YAML/JSON file."""
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    def parse(text: str) -> Any:
        source = "JSON"
        if not text.lstrip().startswith("{") and Path(text).is_file():
            source, text = text, Path(text).read_text()
        try:
            return model.model_validate(yaml.safe_load(text))  # YAML reads JSON too
        except (yaml.YAMLError, ValidationError) as error:
            raise argparse.ArgumentTypeError(f"{source}: not a valid {model.__name__}: {error}") from None

    parse.__name__ = model.__name__  # argparse names the type in its messages
    return parse


def _option(parser: argparse.ArgumentParser, field: dataclasses.Field, hint: Any) -> None:
    flag = "--" + field.name.replace("_", "-")
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = (
        None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
    )
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    from pydantic import BaseModel

    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
    elif isinstance(hint, type) and issubclass(hint, BaseModel):
        parser.add_argument(flag, type=_pydantic_value(hint), default=default, required=required)
    elif typing.get_origin(hint) in (tuple, list):
        inner = typing.get_args(hint)[0]
        parser.add_argument(flag, nargs="*", type=inner, default=default, required=required)
    else:
        parser.add_argument(flag, type=hint, default=default, required=required)


def parse_config(config_cls: type, argv: Sequence[str] | None, prog: str) -> Any:
    """The config dataclass filled from command-line options."""
    parser = argparse.ArgumentParser(prog=prog, description=(config_cls.__doc__ or "").splitlines()[0])
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        _option(parser, field, hints[field.name])
    values = vars(parser.parse_args(argv))
    for field in dataclasses.fields(config_cls):
        if typing.get_origin(hints[field.name]) is tuple and values[field.name] is not None:
            values[field.name] = tuple(values[field.name])
    return config_cls(**values)


def main(config_cls: type, run: Callable[[Any], Any], argv: Sequence[str] | None = None) -> int:
    """Parses the options, runs the step, prints its result as JSON; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    module = sys.modules[run.__module__]  # under ``python -m`` it is __main__, whose spec knows the real name
    prog = f"python -m {getattr(module.__spec__, 'name', None) or run.__module__}"
    config = parse_config(config_cls, argv, prog)
    try:
        result = run(config)
    except OdirError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if (refused := access_refused(error)) is not None:
            print(f"{prog}: {refused}", file=sys.stderr)
            return 2
        if not store_unreachable(error):
            raise
        print(f"{prog}: {unreachable_message(error)}", file=sys.stderr)
        return 3
    print(json.dumps(dataclasses.asdict(result), default=str))
    return 0
