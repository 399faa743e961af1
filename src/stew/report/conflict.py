"""The report's ConflictNET section: the true-vs-predicted analysis plot per group, its category counts,
and a LIME explanation of the full ConflictNET group's highest-predicted clip (docs/methods/conflictnet.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stew.errors import DataError
from stew.eval.explain import CATEGORIES, analysis_figure, run_predictions
from stew.experiments import results
from stew.report.figures import fig_img, figure_html
from stew.report.lime import lime_html
from stew.report.runs import Report, cell_label
from stew.report.tables import counts_table, esc


def conflict_groups(rep: Report) -> list[str]:
    """Groups with finished ``conflictnet`` runs, in the protocol's order."""
    names = rep.protocol.group_names()
    order = names + [g for g in rep.collected if g not in names]
    return [g for g in order
            if any(r["config"].get("method") == "conflictnet" for r in rep.collected.get(g, {}).values())]


def _group_labels(rep: Report) -> dict[str, str]:
    """group -> its first row label in the tables (the group name where no table shows it)."""
    out: dict[str, str] = {}
    for t in rep.tables:
        for r, cells in t.rows:
            for col, c in zip(t.columns, cells, strict=True):
                if c.group is not None:
                    out.setdefault(c.group, cell_label(r.label, col))
    return out


def _group_split(rep: Report, group: str) -> str:
    """The headline split of the first table showing ``group``; else test when all its runs have test scores."""
    for t in rep.tables:
        if any(c.group == group for _, cells in t.rows for c in cells):
            return t.split
    rows = list(rep.collected.get(group, {}).values())
    return "test" if rows and all(results.split_scores(r, "test") for r in rows) else "val"


def conflict_section(rep: Report, *, lime_samples: int = 300) -> str:
    """Per group, the true-vs-predicted analysis plot of its first seed on the headline split, the category
    counts, and a LIME explanation of the full ConflictNET group's highest-predicted clip."""
    labels = _group_labels(rep)
    figures, count_rows, notes = [], [], []
    first: tuple[str, int, Path, str, pd.DataFrame, str] | None = None  # the LIME run, once chosen
    groups = conflict_groups(rep)
    full = next((g for g in groups if _ablation(rep, g) == "conflictnet"), groups[0] if groups else None)
    for g in groups:
        seed = min(rep.collected[g])
        run_dir = rep.run_dir(g, seed)
        split = _group_split(rep, g)
        try:
            try:
                rows, target = run_predictions(run_dir, split)
            except DataError:
                if split == "val":
                    raise
                split = "val"  # the run's test split is unlabelled: fall back as the tables do
                rows, target = run_predictions(run_dir, split)
        except DataError as e:
            notes.append(f"<p class='note'>{esc(labels.get(g, g))}: no analysis plot ({esc(e)}).</p>")
            continue
        y, pred = rows[f"y_{target}"].to_numpy(np.float64), rows[f"pred_{target}"].to_numpy(np.float64)
        name = labels.get(g, g)
        fig, counts = analysis_figure(y, pred, title=f"{name}, seed {seed}, {split} (n={len(rows)})")
        figures.append(figure_html(
            fig_img(fig, f"analysis plot: {g}"),
            f"<b>{esc(name)}</b> (<code>{esc(g)}</code>, seed {seed}): {esc(target)} on {esc(split)}; clips in "
            f"categories 1/2/3/4: {'/'.join(str(counts[c]) for c in CATEGORIES)} of {counts['total']}."))
        count_rows.append((name, g, seed, split, counts))
        if g == full:
            first = (g, seed, run_dir, split, rows, target)
    if not figures and not notes:
        return "<p class='note'>No finished ConflictNET runs.</p>"
    intro = ("<p>True vs predicted per clip (docs/methods/conflictnet.md#evaluation), first seed of each group: "
             "yellow quadrants are opposite polarity, dashed lines y = x ± 0.5. Categories: 1 same polarity and "
             "|y − ŷ| ≤ 0.5; 2 y ≥ 0 > ŷ; "
             "3 y &lt; 0 ≤ ŷ; 4 same polarity and |y − ŷ| &gt; 0.5 (0 counts as positive).</p>")
    table = counts_table(count_rows, CATEGORIES) if count_rows else ""
    grid = f"<div class='plots'>{''.join(figures)}</div>" if figures else ""
    lime = (lime_html(rep, labels, *first, lime_samples=lime_samples) if first is not None
            else "<p class='note'>No LIME explanation: no ConflictNET run has predictions to choose a clip from.</p>")
    return intro + table + "".join(notes) + grid + "<h3 id='lime'>LIME explanation</h3>" + lime


def _ablation(rep: Report, group: str) -> str:
    """The ConflictNET variant of ``group``'s first run ("conflictnet" for the full model)."""
    row = rep.row(group, min(rep.collected[group]))
    return (row["config"].get("ablation") or "conflictnet") if row is not None else ""
