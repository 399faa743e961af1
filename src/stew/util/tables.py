"""Tables that survive a pipe: full width off a terminal, or markdown / CSV / JSON on request.

The commands render rich ``Table`` objects on a console. Two consoles here change how those tables
come out without touching the commands' rendering code:

- ``WideConsole`` (stdout not a terminal: logs, CI, ``| tee``): each table is printed at its natural
  width, so no cell is ever cut to ``Acoust…`` however wide the table (mosi-cmstew's is);
- ``FormatConsole`` (``--format md|csv|json``): each table becomes markdown, CSV or one JSON line on
  stdout; everything else the command prints (progress, notes, warnings) goes to stderr, so stdout
  holds the tables only and can be redirected to a file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


class TableFormat(StrEnum):
    table = "table"  # rich's boxed table (the default)
    md = "md"
    csv = "csv"
    json = "json"


def plain(cell: Any) -> str:
    """A cell's text without rich markup or styles."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def title_of(table: Table) -> str:
    return plain(table.title) if table.title is not None else ""


def rows_of(table: Table) -> tuple[list[str], list[list[str]]]:
    """(header, rows) as plain strings: the same cells the boxed table shows."""
    header = [plain(c.header) for c in table.columns]
    cols = [[plain(x) for x in c.cells] for c in table.columns]
    return header, [list(r) for r in zip(*cols, strict=True)] if cols else []


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    header, rows = rows_of(table)
    lines = [f"### {esc(title_of(table))}", ""] if table.title is not None else []
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One CSV block; the title on a leading ``# `` line (pandas: ``read_csv(..., comment="#")``)."""
    header, rows = rows_of(table)
    buf = io.StringIO()
    if table.title is not None:
        buf.write(f"# {title_of(table)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def to_json(table: Table) -> str:
    """One line: ``{"title", "columns", "rows": [{column: cell}]}`` (JSON Lines: one object per table).

    Column names are made unique (a repeated "paper (test)" beside each metric becomes "paper (test) [2]",
    ...), so that no cell is lost to a duplicate key of the row objects."""
    header, rows = rows_of(table)
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        seen[h] = seen.get(h, 0) + 1
        if seen[h] > 1:
            header[j] = f"{h} [{seen[h]}]"
    return json.dumps({"title": title_of(table), "columns": header,
                       "rows": [dict(zip(header, r, strict=True)) for r in rows]}, ensure_ascii=False)


RENDER = {TableFormat.md: to_markdown, TableFormat.csv: to_csv, TableFormat.json: to_json}


class WideConsole(Console):
    """A console for a stream that is not a terminal: tables are printed at their natural width (never
    narrower than the console's), so no cell is cut to ``…``; other output keeps the console's width."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if kwargs.get("width") is not None or not any(isinstance(o, Table) for o in objects):
            super().print(*objects, **kwargs)
            return
        # Measured without the console's width as a cap (measure() clamps to it otherwise); print()
        # also caps a width= argument at the console's, so the console itself widens for this call.
        free = self.options.update_width(100_000)
        widest = max(self.measure(o, options=free).maximum for o in objects if isinstance(o, Table))
        before = self.width
        self.width = max(before, widest)
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = before


class FormatConsole(Console):
    """Tables as markdown, CSV or JSON on stdout; anything else to ``messages`` (stderr).

    Never a terminal, so progress (``stew.util.progress.Runs``) comes as plain lines, and on stderr.
    """

    def __init__(self, fmt: TableFormat, messages: Console | None = None) -> None:
        super().__init__(soft_wrap=True, highlight=False, markup=False)
        self.fmt = fmt
        self.messages = messages or Console(stderr=True, soft_wrap=True)
        self._written = 0

    @property
    def is_terminal(self) -> bool:  # type: ignore[override]
        return False

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        others = [o for o in objects if not isinstance(o, Table)]
        if others:
            self.messages.print(*others, **kwargs)
        for t in objects:
            if isinstance(t, Table):
                # Markdown and CSV blocks are separated by a blank line; JSON Lines are not.
                sep = "\n" if self._written and self.fmt != TableFormat.json else ""
                sys.stdout.write(sep + RENDER[self.fmt](t).rstrip("\n") + "\n")
                sys.stdout.flush()
                self._written += 1

    def print_json(self, *args: Any, **kwargs: Any) -> None:
        self.messages.print_json(*args, **kwargs)


def console_for(fmt: TableFormat | str, default: Console) -> Console:
    """The console a table-printing command renders on: ``default`` for rich tables, else a FormatConsole."""
    fmt = TableFormat(fmt)
    return default if fmt == TableFormat.table else FormatConsole(fmt)
