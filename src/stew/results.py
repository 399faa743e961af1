"""A protocol's tables from its run store: mean +- std over seeds, best per column, p against the baseline.

Used by ``stew reproduce`` (terminal tables) and ``stew report`` (HTML).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from stew import metrics
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
    values: dict[str, list[float]]  # metric -> one value per seed
    paper: dict[str, float | None]
    p: dict[str, float | None] = field(default_factory=dict)  # paired t-test against the baseline
    best: dict[str, bool] = field(default_factory=dict)

    def mean(self, m: str) -> float:
        v = self.values.get(m) or []
        return float(np.mean(v)) if v else float("nan")

    def std(self, m: str) -> float:
        v = self.values.get(m) or []
        return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


@dataclass
class TableResult:
    spec: TableSpec
    columns: list[Column | None]
    rows: list[tuple[Row, list[Cell]]]  # one cell per column

    @property
    def title(self) -> str:
        return self.spec.title


def tables(protocol: Protocol, collected: dict[str, dict[int, dict[str, Any]]]) -> list[TableResult]:
    out = []
    for spec in protocol.tables:
        cols: list[Column | None] = list(spec.columns) or [None]
        rows = []
        for row in spec.rows:
            cells = []
            for col in cols:
                group = fill_col(row.group, col) if row.group else None
                runs = collected.get(group, {}) if group else {}
                seeds = sorted(runs)
                values = {m: [runs[s]["metrics"][spec.split].get(m, float("nan")) for s in seeds] for m in spec.metrics}
                paper = {m: spec.paper_value(row, col, m) for m in spec.metrics}
                cell = Cell(group, seeds, values, paper)
                base = spec.baseline_for(col)
                if base is not None and group is not None and base != group:
                    b = collected.get(base, {})
                    common = [s for s in seeds if s in b]
                    for m in spec.metrics:
                        ours = [runs[s]["metrics"][spec.split].get(m, float("nan")) for s in common]
                        theirs = [b[s]["metrics"][spec.split].get(m, float("nan")) for s in common]
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
        out.append(TableResult(spec, cols, rows))
    return out


def fmt(cell: Cell, m: str, digits: int) -> str:
    if not cell.values.get(m) or not np.isfinite(cell.mean(m)):
        return "-"
    s = f"{cell.mean(m):.{digits}f}"
    if len(cell.values[m]) > 1:
        s += f" ± {cell.std(m):.{digits}f}"
    return s


def digits_for(metric: str) -> int:
    return 3 if metric.startswith(("ccc", "pcc")) else 1


def render(results: list[TableResult], console: Console) -> None:
    """The tables in the terminal: ours (mean ± std, n seeds), p against the baseline, the paper's value."""
    for t in results:
        table = Table(title=t.title, title_justify="left")
        table.add_column("")
        for col in t.columns:
            for m in t.spec.metrics:
                head = f"{col.label} {m}" if col is not None else m
                table.add_column(head, justify="right")
                table.add_column("paper", justify="right", style="dim")
        for row, cells in t.rows:
            values = []
            for cell in cells:
                for m in t.spec.metrics:
                    d = digits_for(m)
                    s = fmt(cell, m, d)
                    if cell.best.get(m):
                        s = f"[bold]{s}[/bold]"
                    if cell.p.get(m) is not None:
                        s += f" (p {cell.p[m]:.2f})"
                    values.append(s)
                    values.append("-" if cell.paper.get(m) is None else f"{cell.paper[m]:.{d}f}")
            n = max((len(c.seeds) for c in cells), default=0)
            table.add_row(f"{row.label} [dim](n={n})[/dim]", *values)
        console.print(table)
        if t.spec.baseline:
            console.print(f"[dim]p: two-sided paired t-test over seeds against {t.spec.baseline}; "
                          f"bold: best mean per column; split: {t.spec.split}[/dim]")


def load(out: Path) -> tuple[Protocol, RunStore]:
    """The protocol and run store of a ``stew reproduce`` output folder."""
    path = Path(out) / "store.sqlite"
    if not path.is_file():
        raise DataError("not a stew reproduce folder (no store.sqlite)", file=out)
    store = RunStore(path)
    raw = store.meta().get("protocol_yaml")
    if raw is None:
        store.close()
        raise DataError("run store has no protocol recorded", file=path)
    return Protocol.model_validate_json(raw), store
