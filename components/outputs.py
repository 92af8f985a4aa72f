"""Output paths checked before any work starts: a command that would write its result at the end fails in a second
when it could not, instead of after all the work."""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.errors import OdirError

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


def check_output(path: str | Path, folder: bool = False) -> Path:
    """``path`` can be written: an output file (or, with ``folder``, an output folder) that is not the wrong kind of
    thing, in a place where a file can really be created (tried: permission bits say nothing to root, and a
    read-only or virtual file system such as ``/proc`` refuses what they allow).

    Raises:
        OdirError: naming the path and the problem.
    """
    target = Path(path)
    if target.is_dir() and not folder:
        raise OdirError(f"{target}: output file is a folder")
    if target.exists() and not target.is_dir() and folder:
        raise OdirError(f"{target}: output folder is a file")
    place = target if folder and target.is_dir() else target.parent
    while not place.exists():  # the command creates the missing folders
        place = place.parent
    if not place.is_dir():
        raise OdirError(f"{target}: cannot be created, {place} is a file")
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
        if target.is_file():
            with open(target, "ab"):
                pass
    except OSError as error:
        raise OdirError(f"{target}: cannot be written ({error.strerror or error})") from None
    return target
