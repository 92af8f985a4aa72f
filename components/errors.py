"""The project's own error types: every bad input ends in one of these, with file, row and problem named."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint


@dataclass(frozen=True)
class Problem:
    """One problem found in the input.

    Attributes:
        file: the file the problem is in (a CSV, an image, a YAML profile).
        message: what is wrong, in words a user can act on.
        line: 1-based line of the file (the CSV header is line 1), when the problem is on one line.
    """

    file: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class OdirError(ValueError):
    """Base class of the errors odir raises for bad input."""


class DataError(OdirError):
    """A dataset (CSV, images) breaks the contract; carries every problem found, not only the first (one problem
    reads as one line: ``file, line n: message``).

    Args:
        problems: the problems, at least one.
    """

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("DataError needs at least one problem")
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line, as every other bad input
            super().__init__(str(self.problems[0]))
            return
        head = f"{len(self.problems)} problems in the dataset:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` with the closest of ``choices`` to ``name`` (``difflib``'s ratio, at least 0.6), or ""
    when none is close: the hint every "unknown name" message of odir ends with."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
