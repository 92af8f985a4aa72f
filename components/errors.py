"""The project's own error types: every bad input ends in one of these, with file, row and problem named."""

from __future__ import annotations

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
    """A dataset (CSV, images) breaks the contract; carries every problem found, not only the first.

    Args:
        problems: the problems, at least one.
    """

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("DataError needs at least one problem")
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count > 1 else ''} in the dataset:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))
