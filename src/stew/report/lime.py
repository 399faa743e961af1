"""The report's LIME explanation of one ConflictNET clip, cached in the run folder (RUN/explain-report/).

The cache holds explanation.json, explanation.png and clip.json; clip.json keys the cache on the clip,
the LIME budget, the seed, what is explained (``stew explain --target-kind``) and the model's weights, so
regenerating a report reuses the explanation until one of them changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stew.errors import DataError
from stew.eval.explain import audio_file_for, explain_model
from stew.report.figures import figure_html, png_img
from stew.report.runs import Report
from stew.report.tables import esc
from stew.util.atomic import write_text_atomic

LIME_CACHE = "explain-report"  # inside the run folder: explanation.json, explanation.png, clip.json
LIME_SEED = 0
LIME_TARGET = "probability"  # stew explain's default: P(positive) = (1 + y) / 2, the thesis's eq. 3.7
# What each explanation's ``target`` field means, for the caption
TARGET_WORDS = {"p_pos": "P(positive) = (1 + ŷ) / 2 (the thesis's eq. 3.7)", "score": "the prediction ŷ itself"}


def lime_html(rep: Report, labels: dict[str, str], group: str, seed: int, run_dir: Path, split: str,
              rows: pd.DataFrame, target: str, *, lime_samples: int) -> str:
    """LIME over the clip with the highest predicted ``target`` on ``split``, cached in RUN/explain-report/."""
    i = int(rows[f"pred_{target}"].to_numpy(np.float64).argmax())
    seq = str(rows["sequence"].iloc[i])
    y, pred = float(rows[f"y_{target}"].iloc[i]), float(rows[f"pred_{target}"].iloc[i])
    what = (f"{esc(labels.get(group, group))} (<code>{esc(group)}</code>, seed {seed}), {esc(split)} clip "
            f"<code>{esc(seq)}</code> (the highest predicted {esc(target)}: ŷ = {pred:.3f}, y = {y:.3f})")
    if lime_samples == 0:
        return f"<p class='note'>LIME explanation skipped (a budget of 0 perturbations) for {what}.</p>"
    cache = run_dir / LIME_CACHE
    key = {"sequence": seq, "n_samples": int(lime_samples), "seed": LIME_SEED, "target_kind": LIME_TARGET,
           "model": _model_stamp(run_dir)}
    cached = _cached_explanation(cache, key)
    where = f"reused from the cache in <code>{esc(cache)}</code>"
    if cached is None:
        data = rep.row(group, seed)["config"].get("data")
        audio = None
        for root in ([Path(data), rep.folder / Path(data)] if data else []) + [rep.folder / "data"]:
            audio = audio_file_for(root, seq)
            if audio is not None:
                break
        if audio is None:
            return (f"<p class='note'>No LIME explanation for {what}: its audio is not reachable (data folder "
                    f"<code>{esc(data or '?')}</code>, as the run recorded it); move the data back or regenerate "
                    f"the report where it is.</p>")
        try:
            cached, where = _run_lime(run_dir, audio, cache, key, lime_samples)
        except (DataError, OSError, ValueError) as e:
            return f"<p class='note'>No LIME explanation for {what}: {esc(e)}.</p>"
    expl, png = cached
    segs = expl["segments"]
    seg_rows = "".join(f"<tr><td>{s['index']}</td><td>{s['start_s']:.2f}–{s['end_s']:.2f}</td>"
                       f"<td>{s['weight']:+.4f}</td></tr>" for s in segs)
    seg_table = (f"<table class='paper-table lime-segments'><caption>Super-samples, most relevant first</caption>"
                 f"<thead><tr><th>segment</th><th>time (s)</th><th>weight</th></tr></thead>"
                 f"<tbody>{seg_rows}</tbody></table>")
    explained = TARGET_WORDS.get(expl.get("target"), f"target {expl.get('target')}")
    caption = (f"<b>LIME explanation</b> of {what}, explaining {esc(explained)}: log-magnitude spectrogram with the "
               f"top super-samples shaded (red: towards more conflict, blue: towards less); "
               f"{expl['n_samples']} perturbations (the thesis "
               f"used 2,000), surrogate R² {expl['score']:.3f}, kernel width {expl['kernel_width']:g}; {where}.")
    return figure_html(png_img(png, f"LIME explanation: {group} {seq}"), caption) + seg_table


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


def _run_lime(run_dir: Path, audio: Path, cache: Path, key: dict[str, Any],
              lime_samples: int) -> tuple[tuple[dict[str, Any], bytes], str]:
    """Run explain_model into ``cache`` (or a temporary folder when the run folder is read-only)."""

    def read(folder: Path) -> tuple[dict[str, Any], bytes]:
        return json.loads((folder / "explanation.json").read_text()), (folder / "explanation.png").read_bytes()

    if not os.access(run_dir, os.W_OK | os.X_OK) or (cache.exists() and not os.access(cache, os.W_OK | os.X_OK)):
        with tempfile.TemporaryDirectory(prefix="stew-lime-") as tmp:
            explain_model(run_dir / "model", audio, Path(tmp) / "out", n_samples=lime_samples, seed=LIME_SEED,
                          target_kind=LIME_TARGET)
            return read(Path(tmp) / "out"), "not cached (the run folder is read-only)"
    # clip.json goes first, so an interrupted run leaves no stale key, and explain_model's output check only
    # sees its own files; it is written back last, once both outputs are complete.
    (cache / "clip.json").unlink(missing_ok=True)
    explain_model(run_dir / "model", audio, cache, n_samples=lime_samples, seed=LIME_SEED, target_kind=LIME_TARGET)
    write_text_atomic(cache / "clip.json", json.dumps({"key": key, "audio": str(audio)}, indent=2) + "\n")
    return read(cache), f"computed now and cached in <code>{esc(cache)}</code>"
