"""A protocol's tables from its run store: mean +- std over seeds, best per column, p against the baseline.

Used by ``stew reproduce`` (terminal tables) and ``stew report`` (HTML).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from stew import metrics
from stew.config import first_error
from stew.errors import DataError
from stew.protocols import Column, Protocol, Row, TableSpec, fill_col
from stew.store import RunStore


def collect(store: RunStore) -> dict[str, dict[int, dict[str, Any]]]:
    """group -> seed -> the store row standing for it (a grid's selected candidate).

    ``stew reproduce`` records which rows its last plan used (meta ``selected``), so rows of an
    earlier, different configuration in the same store are ignored.
    """
    by_key = {r["key"]: r for r in store.runs()}
    selected = store.meta().get("selected")
    out: dict[str, dict[int, dict[str, Any]]] = {}
    if selected is not None:
        for group, seeds in json.loads(selected).items():
            for seed, key in seeds.items():
                if key in by_key:
                    out.setdefault(group, {})[int(seed)] = by_key[key]
        return out
    from stew.reproduce import select

    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in by_key.values():
        grouped.setdefault((r["group"], r["seed"]), []).append(r)
    for (group, seed), rows in grouped.items():
        out.setdefault(group, {})[seed] = select(rows)
    return out


@dataclass
class Cell:
    group: str | None  # None: a row of the paper's numbers only
    seeds: list[int]
    # split -> metric -> one value per seed; the headline split first, then the others shown beside it.
    by_split: dict[str, dict[str, list[float]]]
    paper: dict[str, float | None]
    split: str = "val"  # the headline split: what ``values``, ``mean``, ``p`` and ``best`` are on
    p: dict[str, float | None] = field(default_factory=dict)  # paired t-test against the baseline, on ``split``
    best: dict[str, bool] = field(default_factory=dict)  # on ``split``

    @property
    def values(self) -> dict[str, list[float]]:
        return self.by_split.get(self.split, {})

    def scores(self, m: str, split: str | None = None) -> list[float]:
        """One value of ``m`` per seed on ``split`` (the headline split by default)."""
        return self.by_split.get(split or self.split, {}).get(m) or []

    def mean(self, m: str, split: str | None = None) -> float:
        v = self.scores(m, split)
        return float(np.mean(v)) if v else float("nan")

    def std(self, m: str, split: str | None = None) -> float:
        v = self.scores(m, split)
        return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


@dataclass
class TableResult:
    spec: TableSpec
    columns: list[Column | None]
    rows: list[tuple[Row, list[Cell]]]  # one cell per column
    split: str = "val"  # the headline split (test where the data has test labels)
    splits: list[str] = field(default_factory=lambda: ["val"])  # the headline, then the splits beside it
    val_name: str = "validation"

    @property
    def paper_split(self) -> str:
        return self.spec.paper_split

    def split_name(self, split: str) -> str:
        return self.val_name if split == "val" else split

    @property
    def title(self) -> str:
        """The protocol's title plus the split the numbers are on, as the data decided it."""
        return f"{self.spec.title} — {self.split_phrase()}"

    def split_phrase(self) -> str:
        val = self.val_name
        if self.split == "test":
            return f"on test ({val} beside: it chose the epochs and grids)"
        if self.spec.split == "val":
            phrase = f"on {val}"
        else:
            phrase = f"on {val} only: the data has no labelled test split"
        if self.paper_split == "test":
            phrase += "; the paper's values are on test, not comparable"
        return phrase


def split_scores(row: dict[str, Any], split: str) -> dict[str, float]:
    """A store row's metrics on ``split`` (empty when the run has no scores there, e.g. no test labels)."""
    return row["metrics"].get(split) or {}


def headline_split(spec: TableSpec, collected: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The split a table reports: test when every finished run it shows has test scores, else val.

    The runs never chose anything on test (early stopping and grids read val), so test is the
    unbiased number wherever the data has labels for it.
    """
    if spec.split != "auto":
        return spec.split
    groups = {g for _, _, g in spec.cells()}
    groups |= {b for c in (spec.columns or [None]) if (b := spec.baseline_for(c)) is not None}
    rows = [r for g in groups for r in collected.get(g, {}).values()]
    if not rows:  # nothing of this table finished: the data decides through the other tables' runs
        rows = [r for runs in collected.values() for r in runs.values()]
    return "test" if rows and all(split_scores(r, "test") for r in rows) else "val"


def tables(protocol: Protocol, collected: dict[str, dict[int, dict[str, Any]]]) -> list[TableResult]:
    out = []
    for spec in protocol.tables:
        split = headline_split(spec, collected)
        splits = [split] + (["val"] if split != "val" else [])
        cols: list[Column | None] = list(spec.columns) or [None]
        rows = []
        for row in spec.rows:
            cells = []
            for col in cols:
                group = fill_col(row.group, col) if row.group else None
                runs = collected.get(group, {}) if group else {}
                seeds = sorted(runs)
                by_split = {sp: {m: [split_scores(runs[s], sp).get(m, float("nan")) for s in seeds]
                                 for m in spec.metrics} for sp in splits}
                paper = {m: spec.paper_value(row, col, m) for m in spec.metrics}
                cell = Cell(group, seeds, by_split, paper, split)
                base = spec.baseline_for(col)
                if base is not None and group is not None and base != group:
                    b = collected.get(base, {})
                    common = [s for s in seeds if s in b]
                    for m in spec.metrics:
                        # On the headline split: a p-value on val would test numbers that chose the models.
                        ours = [split_scores(runs[s], split).get(m, float("nan")) for s in common]
                        theirs = [split_scores(b[s], split).get(m, float("nan")) for s in common]
                        p = metrics.paired_ttest(ours, theirs)[1] if len(common) > 1 else float("nan")
                        cell.p[m] = None if np.isnan(p) else float(p)
                cells.append(cell)
            rows.append((row, cells))
        # Best per column and metric: the highest mean (every protocol metric is higher-is-better).
        for j in range(len(cols)):
            for m in spec.metrics:
                means = [cells[j].mean(m) for _, cells in rows]
                finite = [x for x in means if np.isfinite(x)]
                if finite:
                    top = max(finite)
                    for (_, cells), x in zip(rows, means, strict=True):
                        cells[j].best[m] = bool(np.isfinite(x) and x == top)
        out.append(TableResult(spec, cols, rows, split, splits, protocol.val_name))
    return out


def fmt(cell: Cell, m: str, digits: int, split: str | None = None) -> str:
    v = cell.scores(m, split)
    if not v or not np.isfinite(cell.mean(m, split)):
        return "-"
    s = f"{cell.mean(m, split):.{digits}f}"
    if len(v) > 1:
        s += f" ± {cell.std(m, split):.{digits}f}"
    return s


def digits_for(metric: str) -> int:
    return 3 if metric.startswith(("ccc", "pcc")) else 1


def has_paper(t: TableResult) -> bool:
    return any(v is not None for _, cells in t.rows for c in cells for v in c.paper.values())


def layout(t: TableResult) -> list[tuple[str, str]]:
    """The columns under each (column, metric): ("ours", split) per split, and ("paper", paper split).

    The paper's value stands right after our number on the split the paper used, so like is read
    beside like; where we have no score on that split (no test labels) it comes last.
    """
    cols: list[tuple[str, str]] = []
    paper = has_paper(t)
    for sp in t.splits:
        cols.append(("ours", sp))
        if paper and sp == t.paper_split:
            cols.append(("paper", sp))
    if paper and t.paper_split not in t.splits:
        cols.append(("paper", t.paper_split))
    return cols


def render(results: list[TableResult], console: Console) -> None:
    """The tables in the terminal: ours on the headline split (mean ± std, p against the baseline), the
    other split beside it, and the paper's value beside the split the paper reports."""
    for t in results:
        cols = layout(t)
        table = Table(title=t.title, title_justify="left")
        table.add_column("")
        for col in t.columns:
            for m in t.spec.metrics:
                for kind, sp in cols:
                    name = t.split_name(sp)
                    if kind == "paper":
                        table.add_column(f"paper ({name})", justify="right", style="dim")
                    else:
                        head = f"{col.label} {m}" if col is not None else m
                        table.add_column(f"{head} ({name})", justify="right",
                                         style=None if sp == t.split else "dim")
        for row, cells in t.rows:
            values = []
            for cell in cells:
                for m in t.spec.metrics:
                    d = digits_for(m)
                    for kind, sp in cols:
                        if kind == "paper":
                            values.append("-" if cell.paper.get(m) is None else f"{cell.paper[m]:.{d}f}")
                            continue
                        s = fmt(cell, m, d, sp)
                        if sp == t.split:
                            if cell.best.get(m):
                                s = f"[bold]{s}[/bold]"
                            if cell.p.get(m) is not None:
                                s += f" (p {cell.p[m]:.2f})"
                        values.append(s)
            n = max((len(c.seeds) for c in cells), default=0)
            table.add_row(f"{row.label} [dim](n={n})[/dim]", *values)
        console.print(table)
        console.print(f"[dim]{note(t)}[/dim]")


def note(t: TableResult) -> str:
    """What the numbers of ``t`` are: split, selection, p and best, the paper's split."""
    head = t.split_name(t.split)
    parts = [f"headline: {head}"]
    if t.split == "test":
        parts.append(f"epochs and grids were chosen on {t.val_name} only; test was read once, after")
    if t.spec.baseline:
        parts.append(f"p: two-sided paired t-test over seeds against {t.spec.baseline}, on {head}")
    parts.append(f"bold: best mean per column on {head}")
    if has_paper(t):
        parts.append(f"paper: the paper's value, on {t.split_name(t.paper_split)}")
    return "; ".join(parts)


def load(out: Path) -> tuple[Protocol, RunStore]:
    """The protocol and run store of a ``stew reproduce`` output folder.

    Read-only (SQLite mode=ro): tables and reports never create, convert or touch the store they read.
    """
    path = Path(out) / "store.sqlite"
    if not path.is_file():
        raise DataError("not a stew reproduce folder (no store.sqlite)", file=out)
    store = RunStore(path, readonly=True)
    try:
        raw = store.meta().get("protocol_yaml")
        if raw is None:
            raise DataError("run store has no protocol recorded", file=path)
        try:
            return Protocol.model_validate_json(raw), store
        except ValidationError as e:
            raise DataError(f"run store's recorded protocol is invalid: {first_error(e)[1]}", file=path) from None
    except BaseException:
        store.close()
        raise
