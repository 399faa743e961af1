"""A protocol's tables from its run store: mean +- std over seeds, best per column, p against the baseline.

Also its missing-modality tables (modality subset x model, mean +- std of each model's scores with
only that subset present). Used by ``stew reproduce`` (terminal tables) and ``stew report`` (HTML).
With the protocol's ``folds``, a "seed" is a run index (seed x fold; stew.experiments.protocols), so
every mean and std is over all seeds x folds runs and p-values pair runs of the same seed and fold.
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

from stew.config import first_error
from stew.errors import DataError
from stew.experiments.plan import select
from stew.experiments.protocols import Column, MissingColumn, MissingTableSpec, Protocol, Row, TableSpec, fill_col
from stew.experiments.store import RunStore
from stew.scoring import metrics


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
    folds: int | None = None  # the protocol's folds: a "seed" is then a run (seed x fold)
    val_from: str = "train"  # where validation came from (test: whole test groups, label-fitted features)

    @property
    def runs_name(self) -> str:
        return runs_name(self.folds)

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
        if self.split == "test" and self.val_from == "test":
            return (f"on the test groups not taken for {val} ({val}, whole test groups, beside: it chose the "
                    "epochs and grids)")
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
    groups = {g for _, _, g in spec.cells()} | set(spec.baselines())
    rows = [r for g in groups for r in collected.get(g, {}).values()]
    if not rows:  # nothing of this table finished: the data decides through the other tables' runs
        rows = [r for runs in collected.values() for r in runs.values()]
    return "test" if rows and all(split_scores(r, "test") for r in rows) else "val"


def runs_name(folds: int | None) -> str:
    """What n counts and mean ± std runs over: seeds, or runs (seeds × folds)."""
    return f"runs (seeds × {folds} folds)" if folds else "seeds"


def tables(
    protocol: Protocol, collected: dict[str, dict[int, dict[str, Any]]]
) -> list[TableResult | MissingTableResult]:
    """The protocol's tables, then its missing-modality tables (what ``render`` prints)."""
    return [*paper_tables(protocol, collected), *missing_tables(protocol, collected)]


def paper_tables(protocol: Protocol, collected: dict[str, dict[int, dict[str, Any]]]) -> list[TableResult]:
    """The protocol's ``tables``: rows x columns of groups, mean ± std, best per column, p against baselines."""
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
                base = spec.baseline_for(col, row)
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
        shown = [r for g in {g for _, _, g in spec.cells()} for r in collected.get(g, {}).values()]
        from_test = any(r["metrics"].get("data", {}).get("val_from") == "test" for r in shown)
        out.append(TableResult(spec, cols, rows, split, splits, protocol.val_name, protocol.folds,
                               "test" if from_test else "train"))
    return out


# --------------------------------------------------------------------------------------------------
# Missing-modality tables


@dataclass
class MissingTableResult:
    """Rows: the modality subsets (full set first); one Cell per column, on the headline split only.

    A cell's ``group`` is None where the column has no model for that subset (N.A., e.g. a cross
    model of one modality); its values are one per run that has the column's evaluation.
    """

    spec: MissingTableSpec
    rows: list[tuple[tuple[str, ...], list[Cell]]]
    split: str = "val"
    val_name: str = "validation"
    folds: int | None = None

    @property
    def columns(self) -> list[MissingColumn]:
        return self.spec.columns

    @property
    def runs_name(self) -> str:
        return runs_name(self.folds)

    def split_name(self, split: str) -> str:
        return self.val_name if split == "val" else split

    @property
    def title(self) -> str:
        return f"{self.spec.title} — on {self.split_name(self.split)}"

    def n(self, j: int) -> int:
        """Runs behind column ``j`` (the most over its rows)."""
        return max((len(cells[j].seeds) for _, cells in self.rows), default=0)

    def has_paper(self, j: int) -> bool:
        return any(v is not None for _, cells in self.rows for v in cells[j].paper.values())


def subset_scores(row: dict[str, Any], entry: str, subset: tuple[str, ...]) -> dict[str, dict[str, float]] | None:
    """A store row's scores (split -> metrics) with only ``subset`` present under missing entry ``entry``."""
    result = (row["metrics"].get("missing") or {}).get(entry) or {}
    return next((v for k, v in result.items() if frozenset(k.split("+")) == frozenset(subset)), None)


def missing_tables(protocol: Protocol, collected: dict[str, dict[int, dict[str, Any]]]) -> list[MissingTableResult]:
    """The protocol's ``missing_tables``: each subset x column cell from the store rows' ``metrics["missing"]``
    (zero, zero-input, knnK) or, for ``orig``, the subset's own group's scores; test when every cell's runs have it."""
    names = set(protocol.group_names())
    out = []
    for spec in protocol.missing_tables:
        # (column, subset) -> seed -> split -> metrics; None where the column has no model for the subset.
        sources: dict[tuple[int, tuple[str, ...]], dict[int, dict[str, dict[str, float]]] | None] = {}
        for j, col in enumerate(spec.columns):
            for subset in spec.subsets():
                group = col.group_for(subset, spec.modalities)
                if group not in names:
                    sources[j, subset] = None
                    continue
                runs = collected.get(group, {})
                if col.impute == "orig":
                    got = {s: {sp: split_scores(r, sp) for sp in ("val", "test")} for s, r in runs.items()}
                else:
                    got = {s: v for s, r in runs.items() if (v := subset_scores(r, col.impute, subset)) is not None}
                sources[j, subset] = got
        split = spec.split
        if split == "auto":
            found = [sc for got in sources.values() if got for sc in got.values()]
            split = "test" if found and all(sc.get("test") for sc in found) else "val"
        rows = []
        for subset in spec.subsets():
            cells = []
            for j, col in enumerate(spec.columns):
                got = sources[j, subset]
                paper = {m: spec.paper_value(col, subset, m) for m in spec.metrics}
                if got is None:
                    cells.append(Cell(None, [], {}, paper, split))
                    continue
                seeds = sorted(got)
                values = {m: [(got[s].get(split) or {}).get(m, float("nan")) for s in seeds] for m in spec.metrics}
                cells.append(Cell(col.group_for(subset, spec.modalities), seeds, {split: values}, paper, split))
            rows.append((subset, cells))
        out.append(MissingTableResult(spec, rows, split, protocol.val_name, protocol.folds))
    return out


def marks(t: MissingTableResult, subset: tuple[str, ...]) -> list[str]:
    """● for each of the table's modalities present in ``subset``, ○ for each absent."""
    return ["●" if m in subset else "○" for m in t.spec.modalities]


def missing_fmt(cell: Cell, m: str, digits: int) -> str:
    """mean ± std of a missing-table cell; N.A. where the column has no model for the subset."""
    return "N.A." if cell.group is None else fmt(cell, m, digits)


def missing_note(t: MissingTableResult) -> str:
    imputes = {c.impute for c in t.columns}
    parts = ["●: modality present, ○: absent at evaluation"]
    if "zero" in imputes:
        parts.append("zero: a model trained on every modality, absent modalities masked out (stew's definition)")
    if "zero-input" in imputes:
        parts.append("zero-input: a model trained on every modality, each absent modality fed as an all-zero input "
                     "through its encoder (the thesis's definition, Table 4.4)")
    if any(i.startswith("knn") for i in imputes):
        parts.append("knnK: an intra model, absent modality vectors imputed as the mean of the K nearest training "
                     "samples' vectors")
    if "orig" in imputes:
        parts.append("orig: a model trained and tested on that subset only")
    if any(c.group is None for _, cells in t.rows for c in cells):
        parts.append("N.A.: the column has no model of that subset (e.g. cross attention needs two modalities)")
    parts.append(f"mean ± std over {t.runs_name} on {t.split_name(t.split)}")
    if any(t.has_paper(j) for j in range(len(t.columns))):
        parts.append(f"paper: the paper's value, on {t.split_name(t.spec.paper_split)}")
    return "; ".join(parts)


def missing_table(t: MissingTableResult) -> Table:
    """One missing-modality table as a rich Table: the presence marks, then each column's metrics."""
    table = Table(title=t.title, title_justify="left")
    for m in t.spec.modalities:
        table.add_column(m, justify="center")
    for j, col in enumerate(t.columns):
        n = t.n(j)
        for m in t.spec.metrics:
            table.add_column(f"{col.label} {m}" + (f" (n={n})" if n else ""), justify="right")
            if t.has_paper(j):
                table.add_column("paper", justify="right", style="dim")
    for subset, cells in t.rows:
        values = []
        for j, cell in enumerate(cells):
            for m in t.spec.metrics:
                d = digits_for(m)
                values.append(missing_fmt(cell, m, d))
                if t.has_paper(j):
                    values.append("-" if cell.paper.get(m) is None else f"{cell.paper[m]:.{d}f}")
        table.add_row(*marks(t, subset), *values)
    return table


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


def render(results: list[TableResult | MissingTableResult], console: Console) -> None:
    """The tables in the terminal: ours on the headline split (mean ± std, p against the baseline), the
    other split beside it, and the paper's value beside the split the paper reports; missing-modality
    tables with a presence mark per modality (● present, ○ absent)."""
    for t in results:
        if isinstance(t, MissingTableResult):
            console.print(missing_table(t))
            console.print(f"[dim]{missing_note(t)}[/dim]")
            continue
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
        parts.append(f"p: two-sided paired t-test over {t.runs_name} against {t.spec.baseline}, on {head}")
    own = [(r.label, r.baseline) for r in t.spec.rows if r.group and r.baseline]
    if own:
        pairs = ", ".join(f"{label} against {base}" for label, base in own)
        parts.append(f"p: two-sided paired t-test over {t.runs_name} on {head}, {pairs}")
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
