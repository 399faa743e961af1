"""The report as one self-contained HTML document: CSS, header, sections, footer; written atomically."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stew.errors import DataError
from stew.experiments.protocols import available
from stew.report.conflict import conflict_groups, conflict_section
from stew.report.figures import bars_section, curves_section, latent_section, missing_section, traces_section
from stew.report.runs import Report, load_report
from stew.report.tables import esc, table_html
from stew.util.atomic import check_output_file, write_text_atomic

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
    """Title, description, the run summary and the departures from the paper."""
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
        ("protocol", f"<code>{esc(meta.get('protocol', p.name))}</code>"),
        ("data", f"<code>{esc(meta.get('data', '?'))}</code>"),
        ("seeds", esc(", ".join(map(str, seeds)) or "?") + (
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
            ran_on = last.get("ran_on") or f"{last['workers']} worker(s)"  # ran_on: since the Ray engine
            items.append(("last reproduce", f"{_duration(float(last['wall_s']))} elapsed with {ran_on}; "
                                            f"{last['done']}/{last['runs']} runs done, "
                                            f"{len(last.get('failed') or {})} failed"))
        except (ValueError, KeyError, TypeError):
            pass
    items.append(("reported split", _split_summary(rep)))
    if overrides:
        items.append(("overrides", " ".join(f"<code>{esc(s)}</code>" for s in _set_args(overrides))))
    if missing:
        items.append(("not finished", ", ".join(f"<code>{esc(g)}</code>" for g in missing)))
    meta_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    deps = "".join(f"<li>{esc(d)}</li>" for d in p.departures) or "<li>none stated</li>"
    return (f"<header><h1>{esc(p.title)}</h1><p class='description'>{esc(p.description)}</p>"
            f"<dl class='meta'>{meta_html}</dl>"
            f"<h2 id='departures'>Departures from the paper</h2><ul class='departures'>{deps}</ul></header>")


def _split_summary(rep: Report) -> str:
    """Which split the tables' headline numbers are on, and why."""
    val = rep.protocol.val_name
    heads = {t.split for t in rep.tables}
    if heads == {"test"}:
        return (f"test (the data's labelled held-out split), with {esc(val)} beside it; early stopping and "
                f"grids read {esc(val)} only, test was scored once after every choice")
    if heads == {"val"}:
        return (f"{esc(val)}: the data has no labelled test split, so the tables are on the split that also "
                f"chose the epochs and grids (biased upward)")
    return "per table (see each table's title)"


def _duration(s: float) -> str:
    """Seconds as s, min or h, whichever reads best."""
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
    """The commands that regenerate the runs and this report, and the protocol as recorded."""
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
    if meta.get("engine") == "ray":  # the cluster's --address is left to whoever regenerates it
        cmd += ["--engine", "ray"]
    if meta.get("workers"):
        cmd += ["--workers", meta["workers"]]
    report_cmd = ["stew", "report", str(rep.folder), "--out", str(dest)]
    proto_yaml = yaml.safe_dump(rep.protocol.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                                allow_unicode=True)
    note = "" if shipped else (f"<p>{esc(name)} is not a shipped protocol: save the YAML below as "
                               f"<code>{esc(name)}.yaml</code> first.</p>")
    return (f"<footer><h2 id='regenerate'>Regenerate</h2>{note}"
            f"<pre>{esc(shlex.join(cmd))}\n{esc(shlex.join(report_cmd))}</pre>"
            f"<p>Re-running <code>stew reproduce</code> with the same <code>--out</code> resumes: finished runs are "
            f"skipped.</p><details><summary>protocol (as recorded in the run store)</summary>"
            f"<pre>{esc(proto_yaml)}</pre></details>"
            f"<p>Generated by <code>stew report</code> on {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p></footer>")


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
    toc = "".join(f"<li><a href='#{k}'>{esc(title)}</a></li>" for k, title, _ in sections)
    body = "".join(f"<section id='{k}'><h2>{esc(title)}</h2>{content}</section>" for k, title, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>stew report: {esc(rep.protocol.title)}</title><style>{CSS}</style></head><body>"
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
