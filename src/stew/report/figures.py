"""The report's plots: matplotlib figures embedded as base64 PNG, each section with its captions and notes.

Prediction vs gold traces, ablation bars against the baseline, latents before and after CM-StEW's
transfer (EmoBed's Figure 3) with their linear CKA, training curves and missing-modality heat maps.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from stew.experiments import results
from stew.experiments.protocols import Column
from stew.experiments.results import Cell, MissingTableResult, TableResult
from stew.report.projections import even_indices, linear_cka, pair_latents, pca_2d, tsne_2d
from stew.report.runs import Report, cell_label, read_curves, read_latents, read_predictions, run_task
from stew.report.tables import esc, fmt_num, missing_table_html, subset_label
from stew.util.figures import figure

WEAK_COLOUR, STRONG_COLOUR = "#d95f02", "#1b9e77"
MAX_POINTS = 800  # per latent set in the projection plots
TSNE_POINTS = 1500  # union size t-SNE is fitted on
DPI = 90  # the report's PNG resolution: small files, still sharp at the page's width


def fig_img(fig: Any, alt: str) -> str:
    """``fig`` as an inline ``<img>`` (base64 PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return png_img(buf.getvalue(), alt)


def png_img(png: bytes, alt: str) -> str:
    """PNG bytes as an inline ``<img>``."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure_html(img: str, caption: str) -> str:
    """An image with its caption (HTML, not escaped)."""
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


@dataclass
class _Trace:
    """One row of the traces figure: the best group of a table column, with the baseline beside it."""

    column: Column | None
    label: str  # the best row's label
    group: str
    seed: int
    pred: pd.DataFrame
    baseline: str | None
    base_pred: pd.DataFrame | None


def _best_cells(t: TableResult) -> list[tuple[Column | None, str, Cell, Cell | None]]:
    """(column, best row label, best cell, baseline cell or None) per column of ``t``, on its first metric."""
    m = t.spec.metrics[0]
    out = []
    for j, col in enumerate(t.columns):
        best = next(((r.label, cells[j]) for r, cells in t.rows if cells[j].group and cells[j].best.get(m)), None)
        if best is None:
            continue
        base = _baseline_cell(t, j)
        out.append((col, best[0], best[1], base if base is not best[1] else None))
    return out


def _baseline_cell(t: TableResult, j: int) -> Cell | None:
    """Column ``j``'s baseline cell when the baseline is a row of ``t`` with finished runs."""
    name = t.spec.baseline_for(t.columns[j])
    return next((cells[j] for _, cells in t.rows if cells[j].group == name and cells[j].seeds), None)


def traces_section(rep: Report) -> str:
    """Prediction vs gold over steps on one or two headline-split sequences of each transfer table's best group."""
    chosen = [t for t in rep.tables if t.spec.baseline] or rep.tables[:1]
    parts = []
    for t in chosen:
        traces: list[_Trace] = []
        task = None
        for col, label, best, base in _best_cells(t):
            seed = best.seeds[0]
            run_dir = rep.run_dir(best.group, seed)
            task = run_task(run_dir) if run_dir is not None else None
            if task is None:
                continue  # no predictions.csv
            if task != "regression":
                break
            base_pred = read_predictions(rep.run_dir(base.group, seed)) if base is not None else None
            traces.append(_Trace(col, label, best.group, seed, read_predictions(run_dir),
                                 base.group if base is not None else None, base_pred))
        if task not in (None, "regression"):
            parts.append(f"<p class='note'>{esc(t.title)}: a {task} task has no continuous trace to draw "
                         f"(prediction vs gold traces are drawn for regression targets only).</p>")
            continue
        if not traces:
            parts.append(f"<p class='note'>{esc(t.title)}: no finished runs to draw.</p>")
            continue
        split = t.split if (traces[0].pred["split"] == t.split).any() else "val"
        n_seq = min(2, max(1, traces[0].pred.loc[traces[0].pred["split"] == split, "sequence"].nunique()))
        fig, axes = figure(12, 2.6 * len(traces), len(traces), n_seq, dpi=DPI)
        for i, tr in enumerate(traces):
            target = next(c[2:] for c in tr.pred.columns if c.startswith("y_"))
            val = tr.pred[tr.pred["split"] == split]
            for k, seq in enumerate(list(dict.fromkeys(val["sequence"]))[:n_seq]):
                ax = axes[i, k]
                s = val[val["sequence"] == seq].sort_values("step")
                ax.plot(s["step"], s[f"y_{target}"], color="black", lw=1.2, label="gold")
                ax.plot(s["step"], s[f"pred_{target}"], color=WEAK_COLOUR, lw=1, label=tr.label)
                if tr.base_pred is not None and f"pred_{target}" in tr.base_pred:
                    b = tr.base_pred
                    b = b[(b["split"] == split) & (b["sequence"] == seq)].sort_values("step")
                    ax.plot(b["step"], b[f"pred_{target}"], color="#7570b3", lw=1, ls="--", alpha=0.8,
                            label=f"baseline ({tr.baseline})")
                head = f"{tr.column.label}: " if tr.column is not None else ""
                ax.set_title(f"{head}{tr.group}, seed {tr.seed}, {split} sequence {seq}", fontsize=9)
                ax.set_xlabel("step")
                ax.set_ylabel(target)
                ax.legend(fontsize=7, loc="best")
        parts.append(figure_html(
            fig_img(fig, f"prediction vs gold: {t.title}"),
            f"<b>{esc(t.title)}</b>: gold and prediction over steps on {split} sequences, for the best row of each "
            f"column on {esc(t.spec.metrics[0])} (first seed), with the baseline's prediction dashed."))
    return "".join(parts) or "<p class='note'>No traces: no table has finished runs.</p>"


def bars_section(rep: Report) -> str:
    """Mean ± std per row on the first metric, one bar group per column, the baseline as a reference line."""
    parts = []
    for t in rep.tables:
        if not t.spec.baseline:
            continue
        m = t.spec.metrics[0]
        rows = [(r, cells) for r, cells in t.rows if r.group]
        fig, axes = figure(min(12, 3 + 1.6 * len(t.columns) * max(1, len(rows)) / 3), 3.8, dpi=DPI)
        ax = axes[0, 0]
        width = 0.8 / max(1, len(rows))
        colours = [f"C{i % 10}" for i in range(len(rows))]
        seen: list[float] = []
        for j in range(len(t.columns)):
            for i, (r, cells) in enumerate(rows):
                c = cells[j]
                x = j - 0.4 + width * (i + 0.5)
                mean, std = c.mean(m), c.std(m)
                if np.isfinite(mean):
                    ax.bar(x, mean, width * 0.9, yerr=std if np.isfinite(std) else None, capsize=3,
                           color=colours[i], edgecolor="black" if c.best.get(m) else "none",
                           label=r.label if j == 0 else None)
                    seen += [mean - (std if np.isfinite(std) else 0), mean + (std if np.isfinite(std) else 0)]
                if c.paper.get(m) is not None:
                    ax.plot(x, c.paper[m], "D", mfc="white", mec="black", ms=5,
                            label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
                    seen.append(c.paper[m])
            base = _baseline_mean(rep, t, j, m)
            if np.isfinite(base):
                ax.hlines(base, j - 0.45, j + 0.45, colors="black", linestyles="--", lw=1,
                          label="baseline" if j == 0 else None)
        if not seen:
            parts.append(f"<p class='note'>{esc(t.title)}: no finished runs to draw.</p>")
            continue
        lo, hi = min(seen), max(seen)
        pad = 0.15 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
        ax.set_ylim(0 if 0 <= lo < pad else lo - pad, hi + pad)
        ax.set_xticks(range(len(t.columns)), [c.label if c is not None else m for c in t.columns])
        ax.set_ylabel(f"{m} ({t.split_name(t.split)})")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        parts.append(figure_html(
            fig_img(fig, f"ablation bars: {t.title}"),
            f"<b>{esc(t.title)}</b>: mean ± std over {esc(t.runs_name)} of {esc(m)} on {esc(t.split_name(t.split))}; "
            f"dashed line: the baseline ({esc(t.spec.baseline)}); outlined bar: best per column; diamonds: the paper's "
            f"values (on {esc(t.split_name(t.paper_split))})."))
    return "".join(parts) or "<p class='note'>No table has a baseline, so there are no ablation bars.</p>"


def _baseline_mean(rep: Report, t: TableResult, j: int, m: str) -> float:
    """The baseline's mean of ``m`` in column ``j``: its cell when it is a row, else from its runs."""
    cell = _baseline_cell(t, j)
    if cell is not None:
        return cell.mean(m)
    name = t.spec.baseline_for(t.columns[j])
    values = [results.split_scores(r, t.split).get(m, float("nan")) for r in rep.collected.get(name or "", {}).values()]
    return float(np.mean(values)) if values else float("nan")


def latent_section(rep: Report, *, tsne: bool = False) -> str:
    """Weaker and stronger latents before (unimodal weak run) and after (CM-StEW) transfer, in one 2-D space."""
    groups = rep.protocol.expand_groups()
    parts: list[str] = []
    done: set[tuple[str, str]] = set()
    for t in rep.tables:
        if not t.spec.baseline:
            continue
        for j, col in enumerate(t.columns):
            base = t.spec.baseline_for(col)
            for _, cells in t.rows:
                g = cells[j].group
                if g is None or (g, base) in done or g not in groups:
                    continue
                cfg, spec = groups[g]
                if cfg.get("method") != "cmstew" or cfg.get("ablation") is not None or spec.teacher_run is None:
                    continue
                done.add((g, base))
                parts.append(_latent_figure(rep, g, spec.teacher_run, base, tsne=tsne))
    return "".join(parts) or ("<p class='note'>No latent projection: no table with a baseline has a full CM-StEW "
                              "group with a teacher_run.</p>")


def _latent_figure(rep: Report, cmstew: str, teacher: str, base: str, *, tsne: bool) -> str:
    seeds = [s for s in sorted(rep.collected.get(cmstew, {}))
             if s in rep.collected.get(teacher, {}) and s in rep.collected.get(base, {})]
    what = f"{esc(cmstew)} (teacher {esc(teacher)}, baseline {esc(base)})"
    if not seeds:
        return f"<p class='note'>Latents of {what}: the three groups have no finished seed in common.</p>"
    seed = seeds[0]
    sets = {name: read_latents(rep.run_dir(name, seed)) for name in (base, teacher, cmstew)}
    missing = [n for n, z in sets.items() if z is None]
    if missing:
        return f"<p class='note'>Latents of {what}: no latents.npz in {', '.join(map(esc, missing))}.</p>"
    dims = {n: z["latent"].shape[1] for n, z in sets.items()}
    if len(set(dims.values())) != 1:
        return (f"<p class='note'>Latents of {what}: dimensions differ "
                f"({', '.join(f'{esc(n)} {d}' for n, d in dims.items())}), so they share no projection.</p>")
    weak_mod = rep.row(base, seed)["config"].get("modality") or "weak"
    strong_mod = rep.row(teacher, seed)["config"].get("modality") or "strong"
    before_b, before_t = pair_latents(sets[base], sets[teacher])
    after_c, after_t = pair_latents(sets[cmstew], sets[teacher])
    cka_before = linear_cka(before_b, before_t) if len(before_b) > 2 else float("nan")
    cka_after = linear_cka(after_c, after_t) if len(after_c) > 2 else float("nan")

    task = run_task(rep.run_dir(base, seed)) or "regression"
    threshold = 0.0 if task == "regression" else 0.5
    pick = {n: even_indices(len(z["latent"]), TSNE_POINTS // 3 if tsne else MAX_POINTS) for n, z in sets.items()}
    names = [base, teacher, cmstew]
    stacked = np.concatenate([sets[n]["latent"][pick[n]] for n in names]).astype(np.float64)
    if tsne:
        proj, method = tsne_2d(stacked, seed=0), "t-SNE"
    else:
        union = np.concatenate([sets[n]["latent"] for n in names]).astype(np.float64)
        proj, method = pca_2d(union, stacked), "PCA"
    bounds = np.cumsum([0] + [len(pick[n]) for n in names])
    z = {n: proj[bounds[i]:bounds[i + 1]] for i, n in enumerate(names)}
    ys = {n: sets[n]["y"][pick[n]] for n in names}

    fig, axes = figure(11, 4.6, 1, 2, dpi=DPI)
    panels = [(axes[0, 0], "before transfer", base, f"{weak_mod} (unimodal {base})"),
              (axes[0, 1], "after transfer", cmstew, f"{weak_mod} (CM-StEW {cmstew})")]
    for ax, title, weak, weak_label in panels:
        for name, colour, label in ((teacher, STRONG_COLOUR, f"{strong_mod} (teacher {teacher})"),
                                    (weak, WEAK_COLOUR, weak_label)):
            hi = ys[name] >= threshold
            ax.scatter(*z[name][hi].T, s=9, c=colour, marker="o", alpha=0.55, linewidths=0,
                       label=f"{label}, y ≥ {threshold:g}")
            ax.scatter(*z[name][~hi].T, s=11, c=colour, marker="x", alpha=0.35, linewidths=0.8,
                       label=f"{label}, y < {threshold:g}")
        ax.set_title(f"{title}: seed {seed}", fontsize=10)
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.legend(fontsize=7, loc="best", markerscale=1.5)
    shared = np.concatenate(list(z.values()))
    lo, hi = shared.min(0), shared.max(0)
    pad = 0.05 * (hi - lo + 1e-9)
    for ax in axes[0]:
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    caption = (f"<b>{esc(weak_mod)} vs {esc(strong_mod)} latents before and after transfer</b> ({what}, seed {seed}; "
               f"one {method} fitted on the union of the sets, so both panels share axes; colour: modality, "
               f"marker: label). <span class='cka'>Linear CKA between paired {esc(weak_mod)}/{esc(strong_mod)} "
               f"latents: before {fmt_num(cka_before)} (n={len(before_b)} paired steps) → after {fmt_num(cka_after)} "
               f"(n={len(after_c)})</span>.")
    return figure_html(fig_img(fig, f"latent projection: {cmstew}"), caption)


def curves_section(rep: Report) -> str:
    """val_score and train_loss per epoch for the first seed of every group in each table."""
    parts = []
    for t in rep.tables:
        entries: list[tuple[str, pd.DataFrame]] = []
        seen: set[str] = set()
        for r, cells in t.rows:
            for col, c in zip(t.columns, cells, strict=True):
                if c.group is None or c.group in seen or not c.seeds:
                    continue
                seen.add(c.group)
                curves = read_curves(rep.run_dir(c.group, c.seeds[0]))
                if curves is not None:
                    entries.append((f"{cell_label(r.label, col)}, seed {c.seeds[0]}", curves))
        if not entries:
            parts.append(f"<p class='note'>{esc(t.title)}: no training logs to draw.</p>")
            continue
        fig, axes = figure(12, 3.6, 1, 2, dpi=DPI)
        for k, (label, df) in enumerate(entries):
            style = {"color": f"C{k % 10}", "ls": "-" if k < 10 else "--", "marker": "o", "ms": 3, "lw": 1.2}
            for ax, column in zip(axes[0], ("val_score", "train_loss"), strict=True):
                if column in df:
                    d = df.dropna(subset=[column])
                    ax.plot(d["epoch"], d[column], label=label, **style)
        sel = _selection_key(rep, t)
        axes[0, 0].set_title(f"validation score ({sel})" if sel else "validation score", fontsize=10)
        axes[0, 1].set_title("training loss", fontsize=10)
        for ax in axes[0]:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        parts.append(figure_html(fig_img(fig, f"training curves: {t.title}"),
                                 f"<b>{esc(t.title)}</b>: per-epoch validation score (the model-selection metric) "
                                 f"and training loss (each method's own total loss), first seed of each group."))
    return "".join(parts) or "<p class='note'>No training curves.</p>"


def _selection_key(rep: Report, t: TableResult) -> str | None:
    for _, cells in t.rows:
        for c in cells:
            if c.group and c.seeds:
                sel = rep.row(c.group, c.seeds[0])["metrics"].get("selection") or {}
                if sel.get("key"):
                    return str(sel["key"])
    return None


def missing_section(rep: Report) -> str:
    """Each missing-modality table as heat maps (one per metric: subset x model, colour = mean) and numbers."""
    parts = []
    for t in rep.missing:
        if not any(c.seeds for _, cells in t.rows for c in cells):
            parts.append(f"<p class='note'>{esc(t.title)}: no finished runs to draw.</p>{missing_table_html(t)}")
            continue
        parts.append(figure_html(fig_img(_heat_map(t), f"missing-modality heat map: {t.title}"),
                                 f"<b>{esc(t.title)}</b>: {esc(results.missing_note(t))}; colour: the mean."))
        parts.append(missing_table_html(t))
    return "".join(parts) or "<p class='note'>The protocol has no missing-modality tables.</p>"


def _heat_map(t: MissingTableResult) -> Any:
    """One panel per metric: rows the subsets, columns the models, cells mean ± std (N.A. hatched grey)."""
    rows, cols, metrics = len(t.rows), len(t.columns), t.spec.metrics
    width = 2.4 + 1.1 * cols
    # Side by side while the figure stays page-wide; stacked when the tables are wide.
    side = width * len(metrics) <= 14
    shape = (1, len(metrics)) if side else (len(metrics), 1)
    fig, axes = figure(width * shape[1], (1.4 + 0.5 * rows) * shape[0], *shape, dpi=DPI)
    for ax, m in zip(axes.ravel(), metrics, strict=True):
        means = np.array([[c.mean(m) if c.group is not None else np.nan for c in cells] for _, cells in t.rows])
        masked = np.ma.masked_invalid(means)
        im = ax.imshow(masked, cmap=colormaps["viridis"], aspect="auto")
        finite = means[np.isfinite(means)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for i, (_, cells) in enumerate(t.rows):
            for j, c in enumerate(cells):
                text = results.missing_fmt(c, m, results.digits_for(m)).replace(" ± ", "\n± ")
                x = means[i, j]
                # Dark cells get white text (the lower half of viridis).
                dark = np.isfinite(x) and hi > lo and (x - lo) / (hi - lo) < 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(cols), [c.label for c in t.columns], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(rows), [subset_label(t, s) for s, _ in t.rows], fontsize=8)
        ax.set_title(f"{m} ({t.split_name(t.split)})", fontsize=10)
        ax.set_facecolor("#e0e0e0")  # masked (N.A. or not yet run) cells
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
