"""The one error type that crosses the data boundary.

Every reader and writer raises :class:`DataError` for bad input. The CLI turns it into one line on
stderr and exit code 2, and nothing is written (writers build in a temporary folder and rename).
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data: names the file, and the row and column where they are known."""

    def __init__(
        self,
        message: str,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | int | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.row = row
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return (": ".join([", ".join(where), self.message])) if where else self.message


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name when it has none): the text of a one-line DataError
    made from a foreign library's exception."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
