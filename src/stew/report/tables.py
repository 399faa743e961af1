"""The report's HTML tables: the paper-style tables, the missing-modality tables and the analysis counts."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from stew.experiments import results
from stew.experiments.results import Cell, MissingTableResult, TableResult


def esc(s: Any) -> str:
    """``s`` as HTML text, quotes escaped too (safe inside attributes)."""
    return html.escape(str(s), quote=True)


def fmt_num(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, or n/a when it is not finite."""
    return f"{x:.{digits}f}" if np.isfinite(x) else "n/a"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def table_html(t: TableResult) -> str:
    """One protocol table: ours on the headline split (mean ± std over seeds, best per column in bold, p),
    the other split beside it, and the paper's values beside the split the paper reports."""
    metrics = t.spec.metrics
    cols = results.layout(t)
    head = ["<thead>"]
    if t.columns != [None]:
        head.append("<tr><th rowspan='2' class='rowlabel'></th>"
                    + "".join(f"<th colspan='{len(cols) * len(metrics)}' class='colgroup'>{esc(c.label)}</th>"
                              for c in t.columns) + "</tr>")
        head.append("<tr>" + "".join(_metric_heads(t, cols) for _ in t.columns) + "</tr>")
    else:
        head.append("<tr><th class='rowlabel'></th>" + _metric_heads(t, cols) + "</tr>")
    head.append("</thead>")
    body = ["<tbody>"]
    for row, cells in t.rows:
        n = max((len(c.seeds) for c in cells), default=0)
        label = esc(row.label) + (f" <span class='n'>(n={n})</span>" if row.group
                                  else " <span class='n'>(paper)</span>")
        tds = []
        for c in cells:
            for m in metrics:
                for kind, sp in cols:
                    if kind == "ours":
                        tds.append(_ours_td(c, m, n, sp))
                    else:
                        v = c.paper.get(m)
                        text = "-" if v is None else f"{v:.{results.digits_for(m)}f}"
                        tds.append(f"<td class='paper' data-split='{esc(sp)}'>{text}</td>")
        cls = "paper-only" if row.group is None else "run-row"
        body.append(f"<tr class='{cls}'><th class='rowlabel' scope='row'>{label}</th>{''.join(tds)}</tr>")
    body.append("</tbody>")
    notes = [results.note(t), f"mean ± std over {t.runs_name} (n: {t.runs_name} per row)"]
    note = f"<p class='table-note'>{esc('; '.join(notes))}.{' ' + esc(t.spec.note) if t.spec.note else ''}</p>"
    return (f"<table class='paper-table' data-title='{esc(t.title)}' data-split='{esc(t.split)}'>"
            f"<caption>{esc(t.title)}</caption>{''.join(head)}{''.join(body)}</table>{note}")


def _metric_heads(t: TableResult, cols: list[tuple[str, str]]) -> str:
    out = []
    for m in t.spec.metrics:
        for kind, sp in cols:
            name = esc(t.split_name(sp))
            if kind == "paper":
                out.append(f"<th class='paper'>paper ({name})</th>")
            else:
                out.append(f"<th{'' if sp == t.split else ' class=secondary'}>{esc(m)} ({name})</th>")
    return "".join(out)


def _ours_td(c: Cell, m: str, row_n: int, split: str) -> str:
    """Our cell on ``split``: best, p and the per-seed tooltip only on the headline split."""
    attrs = f"data-split='{esc(split)}'"
    if c.group is None:
        return f"<td class='ours none' {attrs}></td>"
    headline = split == c.split
    text = results.fmt(c, m, results.digits_for(m), split)
    if text == "-":
        return f"<td class='ours missing{'' if headline else ' secondary'}' data-group='{esc(c.group)}' {attrs}>-</td>"
    if not headline:
        return f"<td class='ours secondary' data-group='{esc(c.group)}' {attrs}>{esc(text)}</td>"
    classes = ["ours"] + (["best"] if c.best.get(m) else [])
    inner = f"<b>{esc(text)}</b>" if c.best.get(m) else esc(text)
    if len(c.seeds) != row_n:
        inner += f" <span class='n'>(n={len(c.seeds)})</span>"
    p = c.p.get(m)
    if p is not None:
        inner += f"<br><span class='p{' sig' if p < 0.05 else ''}'>{_p(p)}</span>"
    vals = ", ".join(f"{v:.{results.digits_for(m) + 1}f}" for v in c.values.get(m, []))
    tip = f"{c.group}, seeds {', '.join(map(str, c.seeds))}: {vals}"
    return (f"<td class='{' '.join(classes)}' data-group='{esc(c.group)}' {attrs} "
            f"title='{esc(tip)}'>{inner}</td>")


def subset_label(t: MissingTableResult, subset: tuple[str, ...]) -> str:
    """A modality subset as ``a+v``, in the table's modality order."""
    return "+".join(m for m in t.spec.modalities if m in subset)


def missing_table_html(t: MissingTableResult) -> str:
    """A missing-modality table's numbers: presence marks, then mean ± std (and the paper) per column and metric."""
    mods, metrics = t.spec.modalities, t.spec.metrics
    head = "".join(f"<th rowspan='2'>{esc(m)}</th>" for m in mods)
    for j, col in enumerate(t.columns):
        span = len(metrics) * (2 if t.has_paper(j) else 1)
        n = f" <span class='n'>(n={t.n(j)})</span>" if t.n(j) else ""
        head += f"<th colspan='{span}' class='colgroup'>{esc(col.label)}{n}</th>"
    sub = ""
    for j in range(len(t.columns)):
        for m in metrics:
            sub += f"<th>{esc(m)}</th>" + ("<th class='paper'>paper</th>" if t.has_paper(j) else "")
    body = []
    for subset, cells in t.rows:
        tds = "".join(f"<td class='mark'>{mark}</td>" for mark in results.marks(t, subset))
        for j, c in enumerate(cells):
            for m in metrics:
                d = results.digits_for(m)
                text = results.missing_fmt(c, m, d)
                cls = "ours" if text not in ("-", "N.A.") else "ours missing"
                tip = (f" title='{esc(c.group)}: {esc(', '.join(f'{v:.{d + 1}f}' for v in c.values.get(m, [])))}'"
                       if c.seeds else "")
                tds += f"<td class='{cls}' data-group='{esc(c.group or '')}'{tip}>{esc(text)}</td>"
                if t.has_paper(j):
                    v = c.paper.get(m)
                    tds += f"<td class='paper'>{'-' if v is None else f'{v:.{d}f}'}</td>"
        body.append(f"<tr class='subset' data-subset='{esc(subset_label(t, subset))}'>{tds}</tr>")
    note = f"<p class='table-note'>{esc(results.missing_note(t))}.{' ' + esc(t.spec.note) if t.spec.note else ''}</p>"
    return (f"<table class='paper-table missing-table' data-title='{esc(t.title)}' data-split='{esc(t.split)}'>"
            f"<caption>{esc(t.title)}</caption><thead><tr>{head}</tr><tr>{sub}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def counts_table(rows: list[tuple[str, str, int, str, dict[str, int]]], categories: tuple[str, ...]) -> str:
    """Clips per analysis category of each (label, group, seed, split, counts) row, with their share."""
    head = "".join(f"<th>{k}: {esc(c.replace('_', ' '))}</th>" for k, c in enumerate(categories, start=1))
    body = []
    for name, g, seed, split, counts in rows:
        total = counts["total"]
        tds = "".join(f"<td data-category='{k}'>{counts[c]} <span class='n'>({100 * counts[c] / total:.0f} %)"
                      f"</span></td>" if total else f"<td data-category='{k}'>0</td>"
                      for k, c in enumerate(categories, start=1))
        body.append(f"<tr data-group='{esc(g)}'><th class='rowlabel' scope='row'>{esc(name)} "
                    f"<span class='n'>(seed {seed}, {esc(split)})</span></th>{tds}<td>{total}</td></tr>")
    return (f"<table class='paper-table analysis-counts'><caption>Analysis categories (clips per category, "
            f"first seed)</caption><thead><tr><th class='rowlabel'></th>{head}<th>total</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")
