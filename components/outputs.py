"""Output paths checked before any work starts: a command that would write its result at the end fails in a second
when it could not, instead of after all the work."""

from __future__ import annotations

import os
from pathlib import Path

from components.errors import OdirError


def check_output(path: str | Path, folder: bool = False) -> Path:
    """``path`` can be written: an output file (or, with ``folder``, an output folder) that is not the wrong kind of
    thing and whose nearest existing parent is a writable folder.

    Raises:
        OdirError: naming the path and the problem.
    """
    target = Path(path)
    if target.exists():
        if folder and not target.is_dir():
            raise OdirError(f"{target}: output folder is a file")
        if not folder and target.is_dir():
            raise OdirError(f"{target}: output file is a folder")
        if not os.access(target, os.W_OK):
            raise OdirError(f"{target}: not writable")
        return target
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OdirError(f"{target}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OdirError(f"{target}: cannot be created, {parent} is not writable")
    return target
