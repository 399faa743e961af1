"""``stew report``: one self-contained HTML file from a ``stew reproduce`` output folder.

The file holds the protocol's header (data, seeds, run count, wall time, departures from the paper),
the paper-style tables (numbers from :mod:`stew.results`: mean ± std over seeds on the headline split,
test where the data has test labels, validation beside it; best per column and p against the
baseline on the headline; the paper's values beside our number on the paper's split) and several kinds
of plot, embedded as base64 PNG so the file opens anywhere without a network:

- prediction vs gold traces on sequences of the headline split (regression only);
- ablation bars (mean ± std per row, the baseline as a reference line) for tables with a baseline;
  like the tables, on the headline split (test where the data labels it, else validation);
- a 2-D projection of weaker and stronger latents before and after CM-StEW's transfer (EmoBed's
  Figure 3), with the linear CKA between paired weak/strong latents before and after;
- training curves (validation score and training loss per epoch);
- heat maps of the missing-modality tables (modality subset x model, colour = mean score), each with
  its numbers as a table beneath;
- for ConflictNET runs, the true-vs-predicted analysis plot per group (spec §3.6) with its category
  counts, and a LIME explanation (§3.7) of the full ConflictNET group's highest-predicted clip, cached
  in the run folder (RUN/explain-report/) so regenerating the report is fast.

Everything is read from the run store and the run folders; a partially finished store gives "-"
cells and notes where a plot has nothing to draw.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from stew.errors import DataError
from stew.experiments import results
from stew.experiments.protocols import Column, Protocol, available
from stew.experiments.results import Cell, MissingTableResult, TableResult
from stew.util.atomic import check_output_file, write_text_atomic

Collected = dict[str, dict[int, dict[str, Any]]]  # group -> seed -> store row (results.collect)

WEAK_COLOUR, STRONG_COLOUR = "#d95f02", "#1b9e77"
MAX_POINTS = 800  # per latent set in the projection plots
TSNE_POINTS = 1500  # union size t-SNE is fitted on


# --------------------------------------------------------------------------------------------------
# Numbers


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment between paired rows of ``x`` [n, p] and ``y`` [n, q].

    1 for representations equal up to rotation and isotropic scaling, 0 for unrelated ones
    (Kornblith et al., 2019): ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) on column-centred X and Y.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"linear_cka needs paired 2-D arrays, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


def pair_latents(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``a['latent']`` and ``b['latent']`` at the same (validation sequence, step)."""
    if len(a["step"]) == len(b["step"]) and np.array_equal(a["sequence"], b["sequence"]) \
            and np.array_equal(a["step"], b["step"]):
        return a["latent"], b["latent"]
    index = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(b["sequence"], b["step"], strict=True))}
    ia, ib = [], []
    for i, (s, t) in enumerate(zip(a["sequence"], a["step"], strict=True)):
        j = index.get((int(s), int(t)))
        if j is not None:
            ia.append(i)
            ib.append(j)
    return a["latent"][ia], b["latent"][ib]


def pca_2d(fit: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """``x`` (default ``fit``) on the first two principal axes of ``fit``; signs fixed, so deterministic."""
    mean = fit.mean(0)
    xc = fit - mean
    # Eigenvectors of the d x d scatter matrix: the principal axes, far cheaper than an SVD of [n, d].
    _, vecs = np.linalg.eigh(xc.T @ xc)
    vt = vecs[:, ::-1][:, :2].T
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
    z = ((fit if x is None else x) - mean) @ vt.T
    return z if z.shape[1] == 2 else np.pad(z, ((0, 0), (0, 2 - z.shape[1])))


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)


# --------------------------------------------------------------------------------------------------
# Reading run folders


@dataclass
class Report:
    """What the HTML is built from: the protocol, its results and where the runs lie."""

    folder: Path
    protocol: Protocol
    meta: dict[str, str]
    runs: list[dict[str, Any]]
    collected: Collected
    tables: list[TableResult]
    root: Path
    missing: list[MissingTableResult] = field(default_factory=list)  # the missing-modality tables

    def run_dir(self, group: str, seed: int) -> Path | None:
        """The folder of ``group``'s run for ``seed``, None when not finished."""
        row = self.row(group, seed)
        return self.root / row["run_dir"] if row is not None else None

    def row(self, group: str, seed: int) -> dict[str, Any] | None:
        return self.collected.get(group, {}).get(seed)


def _task(run_dir: Path) -> str | None:
    """regression, binary or multiclass, from the header of the run's predictions.csv."""
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return None
    cols = pd.read_csv(path, nrows=0).columns
    if any(c.startswith("y_") for c in cols):
        return "regression"
    return "binary" if "prob" in cols else "multiclass"


def _curves(run_dir: Path) -> pd.DataFrame | None:
    """Per-epoch train_loss and val_score from logs/metrics.csv and logs/resumed-N/metrics.csv."""
    logs = run_dir / "logs"
    files = [logs / "metrics.csv"] + sorted(logs.glob("resumed-*/metrics.csv"),
                                            key=lambda p: int(p.parent.name.split("-")[-1]))
    frames = []
    for order, f in enumerate(p for p in files if p.is_file()):
        try:
            df = pd.read_csv(f)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if "epoch" in df:
            frames.append(df.assign(_order=order))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).dropna(subset=["epoch"])
    cols = [c for c in ("train_loss", "val_score") if c in df]
    if not cols:
        return None
    # Lightning writes train and validation values on separate rows; a resumed run may repeat an epoch.
    out = df.sort_values(["_order"]).groupby("epoch")[cols].last()
    return out.reset_index().astype({"epoch": int})


def _latents(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = run_dir / "latents.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    return d if {"latent", "y", "sequence", "step"} <= set(d) and len(d["latent"]) else None


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, embedded as base64 PNG)


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _png_img(buf.getvalue(), alt)


def _png_img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _figure_html(img: str, caption: str) -> str:
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _cell_label(row_label: str, col: Column | None) -> str:
    return f"{row_label} ({col.label})" if col is not None else row_label


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


def _read_predictions(run_dir: Path | None) -> pd.DataFrame | None:
    path = run_dir / "predictions.csv" if run_dir is not None else None
    return pd.read_csv(path) if path is not None and path.is_file() else None


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
            task = _task(run_dir) if run_dir is not None else None
            if task is None:
                continue  # no predictions.csv
            if task != "regression":
                break
            base_pred = _read_predictions(rep.run_dir(base.group, seed)) if base is not None else None
            traces.append(_Trace(col, label, best.group, seed, _read_predictions(run_dir),
                                 base.group if base is not None else None, base_pred))
        if task not in (None, "regression"):
            parts.append(f"<p class='note'>{_e(t.title)}: a {task} task has no continuous trace to draw "
                         f"(prediction vs gold traces are drawn for regression targets only).</p>")
            continue
        if not traces:
            parts.append(f"<p class='note'>{_e(t.title)}: no finished runs to draw.</p>")
            continue
        split = t.split if (traces[0].pred["split"] == t.split).any() else "val"
        n_seq = min(2, max(1, traces[0].pred.loc[traces[0].pred["split"] == split, "sequence"].nunique()))
        fig, axes = _figure(12, 2.6 * len(traces), len(traces), n_seq)
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
        parts.append(_figure_html(
            _img(fig, f"prediction vs gold: {t.title}"),
            f"<b>{_e(t.title)}</b>: gold and prediction over steps on {split} sequences, for the best row of each "
            f"column on {_e(t.spec.metrics[0])} (first seed), with the baseline's prediction dashed."))
    return "".join(parts) or "<p class='note'>No traces: no table has finished runs.</p>"


def bars_section(rep: Report) -> str:
    """Mean ± std per row on the first metric, one bar group per column, the baseline as a reference line."""
    parts = []
    for t in rep.tables:
        if not t.spec.baseline:
            continue
        m = t.spec.metrics[0]
        rows = [(r, cells) for r, cells in t.rows if r.group]
        fig, axes = _figure(min(12, 3 + 1.6 * len(t.columns) * max(1, len(rows)) / 3), 3.8)
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
            parts.append(f"<p class='note'>{_e(t.title)}: no finished runs to draw.</p>")
            continue
        lo, hi = min(seen), max(seen)
        pad = 0.15 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
        ax.set_ylim(0 if 0 <= lo < pad else lo - pad, hi + pad)
        ax.set_xticks(range(len(t.columns)), [c.label if c is not None else m for c in t.columns])
        ax.set_ylabel(f"{m} ({t.split_name(t.split)})")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        parts.append(_figure_html(
            _img(fig, f"ablation bars: {t.title}"),
            f"<b>{_e(t.title)}</b>: mean ± std over {_e(t.runs_name)} of {_e(m)} on {_e(t.split_name(t.split))}; "
            f"dashed line: the baseline ({_e(t.spec.baseline)}); outlined bar: best per column; diamonds: the paper's "
            f"values (on {_e(t.split_name(t.paper_split))})."))
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
    what = f"{_e(cmstew)} (teacher {_e(teacher)}, baseline {_e(base)})"
    if not seeds:
        return f"<p class='note'>Latents of {what}: the three groups have no finished seed in common.</p>"
    seed = seeds[0]
    sets = {name: _latents(rep.run_dir(name, seed)) for name in (base, teacher, cmstew)}
    missing = [n for n, z in sets.items() if z is None]
    if missing:
        return f"<p class='note'>Latents of {what}: no latents.npz in {', '.join(map(_e, missing))}.</p>"
    dims = {n: z["latent"].shape[1] for n, z in sets.items()}
    if len(set(dims.values())) != 1:
        return (f"<p class='note'>Latents of {what}: dimensions differ "
                f"({', '.join(f'{_e(n)} {d}' for n, d in dims.items())}), so they share no projection.</p>")
    weak_mod = rep.row(base, seed)["config"].get("modality") or "weak"
    strong_mod = rep.row(teacher, seed)["config"].get("modality") or "strong"
    before_b, before_t = pair_latents(sets[base], sets[teacher])
    after_c, after_t = pair_latents(sets[cmstew], sets[teacher])
    cka_before = linear_cka(before_b, before_t) if len(before_b) > 2 else float("nan")
    cka_after = linear_cka(after_c, after_t) if len(after_c) > 2 else float("nan")

    task = _task(rep.run_dir(base, seed)) or "regression"
    threshold = 0.0 if task == "regression" else 0.5
    pick = {n: _even(len(z["latent"]), TSNE_POINTS // 3 if tsne else MAX_POINTS) for n, z in sets.items()}
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

    fig, axes = _figure(11, 4.6, 1, 2)
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
    caption = (f"<b>{_e(weak_mod)} vs {_e(strong_mod)} latents before and after transfer</b> ({what}, seed {seed}; "
               f"one {method} fitted on the union of the sets, so both panels share axes; colour: modality, "
               f"marker: label). <span class='cka'>Linear CKA between paired {_e(weak_mod)}/{_e(strong_mod)} "
               f"latents: before {_num(cka_before)} (n={len(before_b)} paired steps) → after {_num(cka_after)} "
               f"(n={len(after_c)})</span>.")
    return _figure_html(_img(fig, f"latent projection: {cmstew}"), caption)


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
                curves = _curves(rep.run_dir(c.group, c.seeds[0]))
                if curves is not None:
                    entries.append((f"{_cell_label(r.label, col)}, seed {c.seeds[0]}", curves))
        if not entries:
            parts.append(f"<p class='note'>{_e(t.title)}: no training logs to draw.</p>")
            continue
        from matplotlib.ticker import MaxNLocator

        fig, axes = _figure(12, 3.6, 1, 2)
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
        parts.append(_figure_html(_img(fig, f"training curves: {t.title}"),
                                  f"<b>{_e(t.title)}</b>: per-epoch validation score (the model-selection metric) "
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
            parts.append(f"<p class='note'>{_e(t.title)}: no finished runs to draw.</p>{missing_table_html(t)}")
            continue
        parts.append(_figure_html(_img(_heat_map(t), f"missing-modality heat map: {t.title}"),
                                  f"<b>{_e(t.title)}</b>: {_e(results.missing_note(t))}; colour: the mean."))
        parts.append(missing_table_html(t))
    return "".join(parts) or "<p class='note'>The protocol has no missing-modality tables.</p>"


def _subset_label(t: MissingTableResult, subset: tuple[str, ...]) -> str:
    return "+".join(m for m in t.spec.modalities if m in subset)


def _heat_map(t: MissingTableResult) -> Any:
    """One panel per metric: rows the subsets, columns the models, cells mean ± std (N.A. hatched grey)."""
    rows, cols, metrics = len(t.rows), len(t.columns), t.spec.metrics
    width = 2.4 + 1.1 * cols
    # Side by side while the figure stays page-wide; stacked when the tables are wide.
    side = width * len(metrics) <= 14
    shape = (1, len(metrics)) if side else (len(metrics), 1)
    fig, axes = _figure(width * shape[1], (1.4 + 0.5 * rows) * shape[0], *shape)
    for ax, m in zip(axes.ravel(), metrics, strict=True):
        means = np.array([[c.mean(m) if c.group is not None else np.nan for c in cells] for _, cells in t.rows])
        masked = np.ma.masked_invalid(means)
        cmap = _cmap()
        im = ax.imshow(masked, cmap=cmap, aspect="auto")
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
        ax.set_yticks(range(rows), [_subset_label(t, s) for s, _ in t.rows], fontsize=8)
        ax.set_title(f"{m} ({t.split_name(t.split)})", fontsize=10)
        ax.set_facecolor("#e0e0e0")  # masked (N.A. or not yet run) cells
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"]


def missing_table_html(t: MissingTableResult) -> str:
    """A missing-modality table's numbers: presence marks, then mean ± std (and the paper) per column and metric."""
    mods, metrics = t.spec.modalities, t.spec.metrics
    head = "".join(f"<th rowspan='2'>{_e(m)}</th>" for m in mods)
    for j, col in enumerate(t.columns):
        span = len(metrics) * (2 if t.has_paper(j) else 1)
        n = f" <span class='n'>(n={t.n(j)})</span>" if t.n(j) else ""
        head += f"<th colspan='{span}' class='colgroup'>{_e(col.label)}{n}</th>"
    sub = ""
    for j in range(len(t.columns)):
        for m in metrics:
            sub += f"<th>{_e(m)}</th>" + ("<th class='paper'>paper</th>" if t.has_paper(j) else "")
    body = []
    for subset, cells in t.rows:
        tds = "".join(f"<td class='mark'>{mark}</td>" for mark in results.marks(t, subset))
        for j, c in enumerate(cells):
            for m in metrics:
                d = results.digits_for(m)
                text = results.missing_fmt(c, m, d)
                cls = "ours" if text not in ("-", "N.A.") else "ours missing"
                tip = (f" title='{_e(c.group)}: {_e(', '.join(f'{v:.{d + 1}f}' for v in c.values.get(m, [])))}'"
                       if c.seeds else "")
                tds += f"<td class='{cls}' data-group='{_e(c.group or '')}'{tip}>{_e(text)}</td>"
                if t.has_paper(j):
                    v = c.paper.get(m)
                    tds += f"<td class='paper'>{'-' if v is None else f'{v:.{d}f}'}</td>"
        body.append(f"<tr class='subset' data-subset='{_e(_subset_label(t, subset))}'>{tds}</tr>")
    note = f"<p class='table-note'>{_e(results.missing_note(t))}.{' ' + _e(t.spec.note) if t.spec.note else ''}</p>"
    return (f"<table class='paper-table missing-table' data-title='{_e(t.title)}' data-split='{_e(t.split)}'>"
            f"<caption>{_e(t.title)}</caption><thead><tr>{head}</tr><tr>{sub}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def _even(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(int)) if n else np.zeros(0, int)


# --------------------------------------------------------------------------------------------------
# ConflictNET: the §3.6 analysis plot and a LIME explanation (spec methods.md §3.6-3.7)


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
                    out.setdefault(c.group, _cell_label(r.label, col))
    return out


def _group_split(rep: Report, group: str) -> str:
    """The headline split of the first table showing ``group``; else test when all its runs have test scores."""
    for t in rep.tables:
        if any(c.group == group for _, cells in t.rows for c in cells):
            return t.split
    rows = list(rep.collected.get(group, {}).values())
    return "test" if rows and all(results.split_scores(r, "test") for r in rows) else "val"


def conflict_section(rep: Report, *, lime_samples: int = 300) -> str:
    """Per group, the §3.6 analysis plot of its first seed on the headline split, the category counts, and a
    LIME explanation of the full ConflictNET group's highest-predicted clip."""
    from stew.eval.explain import CATEGORIES, analysis_figure, run_predictions

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
            notes.append(f"<p class='note'>{_e(labels.get(g, g))}: no analysis plot ({_e(e)}).</p>")
            continue
        y, pred = rows[f"y_{target}"].to_numpy(np.float64), rows[f"pred_{target}"].to_numpy(np.float64)
        name = labels.get(g, g)
        fig, counts = analysis_figure(y, pred, title=f"{name}, seed {seed}, {split} (n={len(rows)})")
        figures.append(_figure_html(
            _img(fig, f"analysis plot: {g}"),
            f"<b>{_e(name)}</b> (<code>{_e(g)}</code>, seed {seed}): {_e(target)} on {_e(split)}; clips in "
            f"categories 1/2/3/4: {'/'.join(str(counts[c]) for c in CATEGORIES)} of {counts['total']}."))
        count_rows.append((name, g, seed, split, counts))
        if g == full:
            first = (g, seed, run_dir, split, rows, target)
    if not figures and not notes:
        return "<p class='note'>No finished ConflictNET runs.</p>"
    intro = ("<p>True vs predicted per clip (spec §3.6), first seed of each group: yellow quadrants are opposite "
             "polarity, dashed lines y = x ± 0.5. Categories: 1 same polarity and |y − ŷ| ≤ 0.5; 2 y ≥ 0 > ŷ; "
             "3 y &lt; 0 ≤ ŷ; 4 same polarity and |y − ŷ| &gt; 0.5 (0 counts as positive).</p>")
    table = _counts_table(count_rows, CATEGORIES) if count_rows else ""
    grid = f"<div class='plots'>{''.join(figures)}</div>" if figures else ""
    lime = (_lime_html(rep, labels, *first, lime_samples=lime_samples) if first is not None
            else "<p class='note'>No LIME explanation: no ConflictNET run has predictions to choose a clip from.</p>")
    return intro + table + "".join(notes) + grid + "<h3 id='lime'>LIME explanation</h3>" + lime


def _ablation(rep: Report, group: str) -> str:
    row = rep.row(group, min(rep.collected[group]))
    return (row["config"].get("ablation") or "conflictnet") if row is not None else ""


def _counts_table(rows: list[tuple[str, str, int, str, dict[str, int]]], categories: tuple[str, ...]) -> str:
    head = "".join(f"<th>{k}: {_e(c.replace('_', ' '))}</th>" for k, c in enumerate(categories, start=1))
    body = []
    for name, g, seed, split, counts in rows:
        total = counts["total"]
        tds = "".join(f"<td data-category='{k}'>{counts[c]} <span class='n'>({100 * counts[c] / total:.0f} %)"
                      f"</span></td>" if total else f"<td data-category='{k}'>0</td>"
                      for k, c in enumerate(categories, start=1))
        body.append(f"<tr data-group='{_e(g)}'><th class='rowlabel' scope='row'>{_e(name)} "
                    f"<span class='n'>(seed {seed}, {_e(split)})</span></th>{tds}<td>{total}</td></tr>")
    return (f"<table class='paper-table analysis-counts'><caption>Analysis categories (clips per category, "
            f"first seed)</caption><thead><tr><th class='rowlabel'></th>{head}<th>total</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


LIME_CACHE = "explain-report"  # inside the run folder: explanation.json, explanation.png, clip.json
LIME_SEED = 0


def _lime_html(rep: Report, labels: dict[str, str], group: str, seed: int, run_dir: Path, split: str,
               rows: pd.DataFrame, target: str, *, lime_samples: int) -> str:
    """LIME over the clip with the highest predicted ``target`` on ``split``, cached in RUN/explain-report/."""
    from stew.eval.explain import audio_file_for

    i = int(rows[f"pred_{target}"].to_numpy(np.float64).argmax())
    seq = str(rows["sequence"].iloc[i])
    y, pred = float(rows[f"y_{target}"].iloc[i]), float(rows[f"pred_{target}"].iloc[i])
    what = (f"{_e(labels.get(group, group))} (<code>{_e(group)}</code>, seed {seed}), {_e(split)} clip "
            f"<code>{_e(seq)}</code> (the highest predicted {_e(target)}: ŷ = {pred:.3f}, y = {y:.3f})")
    if lime_samples == 0:
        return f"<p class='note'>LIME explanation skipped (a budget of 0 perturbations) for {what}.</p>"
    cache = run_dir / LIME_CACHE
    key = {"sequence": seq, "n_samples": int(lime_samples), "seed": LIME_SEED, "model": _model_stamp(run_dir)}
    cached = _cached_explanation(cache, key)
    where = f"reused from the cache in <code>{_e(cache)}</code>"
    if cached is None:
        data = rep.row(group, seed)["config"].get("data")
        audio = None
        for root in ([Path(data), rep.folder / Path(data)] if data else []) + [rep.folder / "data"]:
            audio = audio_file_for(root, seq)
            if audio is not None:
                break
        if audio is None:
            return (f"<p class='note'>No LIME explanation for {what}: its audio is not reachable (data folder "
                    f"<code>{_e(data or '?')}</code>, as the run recorded it); move the data back or regenerate "
                    f"the report where it is.</p>")
        try:
            cached, where = _explain(run_dir, audio, cache, key, lime_samples)
        except (DataError, OSError, ValueError) as e:
            return f"<p class='note'>No LIME explanation for {what}: {_e(e)}.</p>"
    expl, png = cached
    segs = expl["segments"]
    seg_rows = "".join(f"<tr><td>{s['index']}</td><td>{s['start_s']:.2f}–{s['end_s']:.2f}</td>"
                       f"<td>{s['weight']:+.4f}</td></tr>" for s in segs)
    seg_table = (f"<table class='paper-table lime-segments'><caption>Super-samples, most relevant first</caption>"
                 f"<thead><tr><th>segment</th><th>time (s)</th><th>weight</th></tr></thead>"
                 f"<tbody>{seg_rows}</tbody></table>")
    caption = (f"<b>LIME explanation</b> of {what}: log-magnitude spectrogram with the top super-samples shaded "
               f"(red: towards more conflict, blue: towards less); {expl['n_samples']} perturbations (the thesis "
               f"used 2,000), surrogate R² {expl['score']:.3f}, kernel width {expl['kernel_width']:g}; {where}.")
    return _figure_html(_png_img(png, f"LIME explanation: {group} {seq}"), caption) + seg_table


def _model_stamp(run_dir: Path) -> str:
    """Size and mtime of the run's weights: a retrained run invalidates the cached explanation."""
    model = run_dir / "model"
    files = sorted(model.glob("*.safetensors")) or [model / "model.json"]
    try:
        return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    except OSError:
        return ""


def _cached_explanation(cache: Path, key: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
    """The cached (explanation dict, PNG bytes) when clip.json matches ``key`` and both files are there."""
    try:
        if json.loads((cache / "clip.json").read_text()).get("key") != key:
            return None
        return json.loads((cache / "explanation.json").read_text()), (cache / "explanation.png").read_bytes()
    except (OSError, ValueError):
        return None


def _explain(run_dir: Path, audio: Path, cache: Path, key: dict[str, Any],
             lime_samples: int) -> tuple[tuple[dict[str, Any], bytes], str]:
    """Run explain_model into ``cache`` (or a temporary folder when the run folder is read-only)."""
    from stew.eval.explain import explain_model

    def read(folder: Path) -> tuple[dict[str, Any], bytes]:
        return json.loads((folder / "explanation.json").read_text()), (folder / "explanation.png").read_bytes()

    if not os.access(run_dir, os.W_OK | os.X_OK) or (cache.exists() and not os.access(cache, os.W_OK | os.X_OK)):
        with tempfile.TemporaryDirectory(prefix="stew-lime-") as tmp:
            explain_model(run_dir / "model", audio, Path(tmp) / "out", n_samples=lime_samples, seed=LIME_SEED)
            return read(Path(tmp) / "out"), "not cached (the run folder is read-only)"
    # clip.json goes first, so an interrupted run leaves no stale key, and explain_model's output check only
    # sees its own files; it is written back last, once both outputs are complete.
    (cache / "clip.json").unlink(missing_ok=True)
    explain_model(run_dir / "model", audio, cache, n_samples=lime_samples, seed=LIME_SEED)
    write_text_atomic(cache / "clip.json", json.dumps({"key": key, "audio": str(audio)}, indent=2) + "\n")
    return read(cache), f"computed now and cached in <code>{_e(cache)}</code>"


# --------------------------------------------------------------------------------------------------
# HTML


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _num(x: float, digits: int = 3) -> str:
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
                    + "".join(f"<th colspan='{len(cols) * len(metrics)}' class='colgroup'>{_e(c.label)}</th>"
                              for c in t.columns) + "</tr>")
        head.append("<tr>" + "".join(_metric_heads(t, cols) for _ in t.columns) + "</tr>")
    else:
        head.append("<tr><th class='rowlabel'></th>" + _metric_heads(t, cols) + "</tr>")
    head.append("</thead>")
    body = ["<tbody>"]
    for row, cells in t.rows:
        n = max((len(c.seeds) for c in cells), default=0)
        label = _e(row.label) + (f" <span class='n'>(n={n})</span>" if row.group else " <span class='n'>(paper)</span>")
        tds = []
        for c in cells:
            for m in metrics:
                for kind, sp in cols:
                    if kind == "ours":
                        tds.append(_ours_td(c, m, n, sp))
                    else:
                        v = c.paper.get(m)
                        text = "-" if v is None else f"{v:.{results.digits_for(m)}f}"
                        tds.append(f"<td class='paper' data-split='{_e(sp)}'>{text}</td>")
        cls = "paper-only" if row.group is None else "run-row"
        body.append(f"<tr class='{cls}'><th class='rowlabel' scope='row'>{label}</th>{''.join(tds)}</tr>")
    body.append("</tbody>")
    notes = [results.note(t), f"mean ± std over {t.runs_name} (n: {t.runs_name} per row)"]
    note = f"<p class='table-note'>{_e('; '.join(notes))}.{' ' + _e(t.spec.note) if t.spec.note else ''}</p>"
    return (f"<table class='paper-table' data-title='{_e(t.title)}' data-split='{_e(t.split)}'>"
            f"<caption>{_e(t.title)}</caption>{''.join(head)}{''.join(body)}</table>{note}")


def _metric_heads(t: TableResult, cols: list[tuple[str, str]]) -> str:
    out = []
    for m in t.spec.metrics:
        for kind, sp in cols:
            name = _e(t.split_name(sp))
            if kind == "paper":
                out.append(f"<th class='paper'>paper ({name})</th>")
            else:
                out.append(f"<th{'' if sp == t.split else ' class=secondary'}>{_e(m)} ({name})</th>")
    return "".join(out)


def _ours_td(c: Cell, m: str, row_n: int, split: str) -> str:
    """Our cell on ``split``: best, p and the per-seed tooltip only on the headline split."""
    attrs = f"data-split='{_e(split)}'"
    if c.group is None:
        return f"<td class='ours none' {attrs}></td>"
    headline = split == c.split
    text = results.fmt(c, m, results.digits_for(m), split)
    if text == "-":
        return f"<td class='ours missing{'' if headline else ' secondary'}' data-group='{_e(c.group)}' {attrs}>-</td>"
    if not headline:
        return f"<td class='ours secondary' data-group='{_e(c.group)}' {attrs}>{_e(text)}</td>"
    classes = ["ours"] + (["best"] if c.best.get(m) else [])
    inner = f"<b>{_e(text)}</b>" if c.best.get(m) else _e(text)
    if len(c.seeds) != row_n:
        inner += f" <span class='n'>(n={len(c.seeds)})</span>"
    p = c.p.get(m)
    if p is not None:
        inner += f"<br><span class='p{' sig' if p < 0.05 else ''}'>{_p(p)}</span>"
    vals = ", ".join(f"{v:.{results.digits_for(m) + 1}f}" for v in c.values.get(m, []))
    tip = f"{c.group}, seeds {', '.join(map(str, c.seeds))}: {vals}"
    return (f"<td class='{' '.join(classes)}' data-group='{_e(c.group)}' {attrs} "
            f"title='{_e(tip)}'>{inner}</td>")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1240px;margin:1.5em auto;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dl.meta dt{font-weight:600}
dl.meta dd{margin:0}code,pre{background:#f5f5f5;border-radius:3px}pre{padding:.6em;overflow-x:auto}
table.paper-table{border-collapse:collapse;margin:1.2em 0 .3em;font-size:.92em}
table.paper-table caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.4em}
table.paper-table th,table.paper-table td{border:1px solid #ccc;padding:.3em .55em;text-align:right;
 vertical-align:top}
table.paper-table th.rowlabel{text-align:left;font-weight:normal}table.paper-table thead th{background:#f0f0f0}
td.mark{text-align:center}td.best{background:#e6f4ea}td.paper{color:#777;background:#fafafa}td.secondary,th.secondary{color:#666}td.missing{color:#aaa;text-align:center}
tr.paper-only th{font-style:italic;color:#666}span.n{color:#888;font-size:.85em}
span.p{color:#666;font-size:.8em}span.p.sig{color:#b35900;font-weight:600}
p.table-note{font-size:.82em;color:#666;margin-top:0}p.note{color:#8a6d3b;background:#fcf8e3;padding:.4em .6em}
figure{margin:1.2em 0}img.plot{max-width:100%;height:auto;border:1px solid #eee}
div.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:0 1.2em}
figcaption{font-size:.88em;color:#444;margin-top:.3em}footer{margin-top:2.5em;border-top:1px solid #ccc;
 font-size:.9em;color:#444}
"""


def _header(rep: Report) -> str:
    p, meta = rep.protocol, rep.meta
    seeds = json.loads(meta.get("seeds", "[]"))
    folds = p.folds
    walls = [float(r["wall_s"]) for r in rep.runs]
    selected = sum(len(v) for v in rep.collected.values())
    names = p.group_names()
    expected = len(names) * max(1, len(seeds))
    missing = [g for g in names if g not in rep.collected]
    overrides = json.loads(meta.get("overrides") or "{}")
    items = [
        ("protocol", f"<code>{_e(meta.get('protocol', p.name))}</code>"),
        ("data", f"<code>{_e(meta.get('data', '?'))}</code>"),
        ("seeds", _e(", ".join(map(str, seeds)) or "?") + (
            f" (run indices: {len(seeds) // folds} seeds × {folds} folds; run r has seed r on fold r % {folds} + 1)"
            if folds else "")),
        ("runs", f"{len(walls)} finished runs in the store (grid candidates included); {selected} of {expected} "
                 f"group × {'run' if folds else 'seed'} results"),
        ("wall time", f"{_duration(sum(walls))} in total; per run {_duration(float(np.mean(walls)))} on average, "
                      f"{_duration(max(walls))} at most" if walls else "no runs yet"),
    ]
    summary = rep.folder / "reproduce.json"
    if summary.is_file():
        try:
            last = json.loads(summary.read_text())
            items.append(("last reproduce", f"{_duration(float(last['wall_s']))} elapsed with {last['workers']} "
                                            f"worker(s); {last['done']}/{last['runs']} runs done, "
                                            f"{len(last.get('failed') or {})} failed"))
        except (ValueError, KeyError, TypeError):
            pass
    items.append(("reported split", _split_summary(rep)))
    if overrides:
        items.append(("overrides", " ".join(f"<code>{_e(s)}</code>" for s in _set_args(overrides))))
    if missing:
        items.append(("not finished", ", ".join(f"<code>{_e(g)}</code>" for g in missing)))
    meta_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    deps = "".join(f"<li>{_e(d)}</li>" for d in p.departures) or "<li>none stated</li>"
    return (f"<header><h1>{_e(p.title)}</h1><p class='description'>{_e(p.description)}</p>"
            f"<dl class='meta'>{meta_html}</dl>"
            f"<h2 id='departures'>Departures from the paper</h2><ul class='departures'>{deps}</ul></header>")


def _split_summary(rep: Report) -> str:
    """Which split the tables' headline numbers are on, and why."""
    val = rep.protocol.val_name
    heads = {t.split for t in rep.tables}
    if heads == {"test"}:
        return (f"test (the data's labelled held-out split), with {_e(val)} beside it; early stopping and "
                f"grids read {_e(val)} only, test was scored once after every choice")
    if heads == {"val"}:
        return (f"{_e(val)}: the data has no labelled test split, so the tables are on the split that also "
                f"chose the epochs and grids (biased upward)")
    return "per table (see each table's title)"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _set_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"max_epochs": 1, "cmstew": {"alpha": 0.1}}`` -> ``["max_epochs=1", "cmstew.alpha=0.1"]``."""
    out = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            out += _set_args(v, f"{prefix}{k}.")
        else:
            value = v if isinstance(v, str) else json.dumps(v)
            out.append(f"{prefix}{k}={value}")
    return out


def _footer(rep: Report, dest: Path) -> str:
    meta = rep.meta
    name = meta.get("protocol", rep.protocol.name)
    shipped = name in available()
    cmd = ["stew", "reproduce", name if shipped else f"{name}.yaml", "--out", str(rep.folder)]
    data = meta.get("data")
    if data and Path(data) != (rep.folder / "data").resolve():
        cmd += ["--data", data]
    seeds = json.loads(meta.get("seeds", "[]"))
    per_fold = len(seeds) // (rep.protocol.folds or 1)  # --seeds counts seeds per fold
    if seeds and per_fold != rep.protocol.seeds:
        cmd += ["--seeds", str(per_fold)]
    for s in _set_args(json.loads(meta.get("overrides") or "{}")):
        cmd += ["--set", s]
    for pattern in json.loads(meta.get("only") or "[]"):
        cmd += ["--only", pattern]
    if meta.get("tuned"):
        cmd += ["--tuned", meta["tuned"]]
    if meta.get("workers"):
        cmd += ["--workers", meta["workers"]]
    report_cmd = ["stew", "report", str(rep.folder), "--out", str(dest)]
    proto_yaml = yaml.safe_dump(rep.protocol.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                                allow_unicode=True)
    note = "" if shipped else (f"<p>{_e(name)} is not a shipped protocol: save the YAML below as "
                               f"<code>{_e(name)}.yaml</code> first.</p>")
    return (f"<footer><h2 id='regenerate'>Regenerate</h2>{note}"
            f"<pre>{_e(shlex.join(cmd))}\n{_e(shlex.join(report_cmd))}</pre>"
            f"<p>Re-running <code>stew reproduce</code> with the same <code>--out</code> resumes: finished runs are "
            f"skipped.</p><details><summary>protocol (as recorded in the run store)</summary>"
            f"<pre>{_e(proto_yaml)}</pre></details>"
            f"<p>Generated by <code>stew report</code> on {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p></footer>")


def load_report(folder: Path) -> Report:
    """Read a ``stew reproduce`` output folder (DataError if it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a stew reproduce folder (no such folder)", file=folder)
    protocol, store = results.load(folder)
    with store:
        meta, runs = store.meta(), store.runs()
        collected = results.collect(store)
        root = store.root
    return Report(folder, protocol, meta, runs, collected, results.paper_tables(protocol, collected), root,
                  results.missing_tables(protocol, collected))


def build_html(rep: Report, dest: Path, *, tsne: bool = False, lime_samples: int = 300) -> str:
    """The whole report as one HTML document (inline CSS, base64 PNG images, no external references).

    ``lime_samples``: perturbations for the ConflictNET LIME explanation (0: none), when the store has
    conflictnet runs.
    """
    tables = "".join(table_html(t) for t in rep.tables) or "<p class='note'>The protocol has no tables.</p>"
    sections = [
        ("tables", "Tables", tables),
        *([("missing", "Missing modalities", missing_section(rep))] if rep.missing else []),
        ("bars", "Ablations against the baseline", bars_section(rep)),
        ("traces", "Predictions vs gold", traces_section(rep)),
        ("latents", "Latents before and after transfer", latent_section(rep, tsne=tsne)),
        ("curves", "Training curves", curves_section(rep)),
    ]
    if conflict_groups(rep):  # after the traces: like them, per-clip predictions against the gold
        at = next(i for i, (k, _, _) in enumerate(sections) if k == "traces") + 1
        sections.insert(at, ("conflict", "Conflict analysis: true vs predicted, and LIME",
                             conflict_section(rep, lime_samples=lime_samples)))
    toc = "".join(f"<li><a href='#{k}'>{_e(title)}</a></li>" for k, title, _ in sections)
    body = "".join(f"<section id='{k}'><h2>{_e(title)}</h2>{content}</section>" for k, title, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>stew report: {_e(rep.protocol.title)}</title><style>{CSS}</style></head><body>"
            f"{_header(rep)}<nav><ul>{toc}<li><a href='#regenerate'>Regenerate</a></li></ul></nav>{body}"
            f"{_footer(rep, dest)}</body></html>\n")


def write_report(folder: Path, out: Path | None = None, *, tsne: bool = False, lime_samples: int = 300) -> Path:
    """Write the report of ``folder`` to ``out`` (default FOLDER/report.html) atomically; return its path.

    ``lime_samples`` is the LIME budget of the ConflictNET explanation (the thesis: 2,000; 0 skips it); the
    explanation is cached in the run folder (RUN/explain-report/) and reused while clip, budget and model match.
    """
    if lime_samples < 0 or lime_samples == 1:
        raise DataError(f"--lime-samples must be 0 (no explanation) or at least 2, got {lime_samples}")
    rep = load_report(folder)
    dest = Path(out) if out is not None else Path(folder) / "report.html"
    if dest.is_dir():
        raise DataError("--out is a folder; give the HTML file to write", file=dest)
    check_output_file(dest)  # a path under a file or a read-only folder: refused before the plots are drawn
    text = build_html(rep, dest, tsne=tsne, lime_samples=lime_samples)
    write_text_atomic(dest, text)
    return dest
