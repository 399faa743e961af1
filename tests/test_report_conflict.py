"""`stew report` on a conflict reproduce: the §3.6 analysis plot per group with its category counts, a LIME
explanation cached in the run folder, and `analysis_run` on one run folder (issue 16)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from stew.errors import DataError
from stew.eval.explain import CATEGORIES, analysis_run, explain_model
from stew.report import write_report
from stew.report.lime import LIME_CACHE
from tests.test_cli import invoke

GROUPS = ("conflictnet-+ap", "conflictnet-conflictnet")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-conflict")
    res = invoke("data", "synth", "--kind", "conflict", "--clips", "24", "--clip-s", "3", "--out", root / "data")
    assert res.exit_code == 0, res.output
    args = [a for g in GROUPS for a in ("--only", g)]
    res = invoke("reproduce", "conflict", "--data", root / "data", "--seeds", "1", "--workers", "1", *args,
                 "--set", "max_epochs=1", "--out", root / "rep")
    assert res.exit_code == 0, res.output
    return root / "rep"


def _section(html: str) -> str:
    start = html.index("<section id='conflict'>")
    return html[start: html.index("</section>", start)]


def test_report_has_analysis_plots_counts_and_a_cached_lime_explanation(rep, monkeypatch):
    out = write_report(rep, rep / "a.html", lime_samples=16)
    sec = _section(out.read_text())
    # one analysis plot per group, each with its counts in the caption and a row of the counts table
    for g in GROUPS:
        assert f'alt="analysis plot: {g}"' in sec and f"<tr data-group='{g}'>" in sec
    assert sec.count("<img") == len(GROUPS) + 1  # + the LIME figure
    row = re.search(r"<tr data-group='conflictnet-conflictnet'>(.*?)</tr>", sec).group(1)
    counts = [int(n) for n in re.findall(r"data-category='\d'>(\d+)", row)]
    total = int(re.findall(r"<td>(\d+)</td>", row)[-1])
    preds = pd.read_csv(rep / "runs" / "conflictnet-conflictnet" / "seed0" / "predictions.csv")
    test = preds[preds["split"] == "test"]
    assert len(counts) == 4 and sum(counts) == total == len(test)

    # LIME on the full ConflictNET group's test clip with the highest prediction, cached in its run folder
    cache = rep / "runs" / "conflictnet-conflictnet" / "seed0" / LIME_CACHE
    assert 'alt="LIME explanation: conflictnet-conflictnet' in sec and "computed now" in sec
    clip = json.loads((cache / "clip.json").read_text())
    assert clip["key"]["sequence"] == test.loc[test["pred_conflict"].idxmax(), "sequence"]
    assert clip["key"]["n_samples"] == 16 and Path(clip["audio"]).is_file()
    assert (cache / "explanation.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((cache / "explanation.json").read_text())["n_samples"] == 16
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

    # regenerating reuses the cache: LIME is never run again
    def boom(*a, **k):
        raise AssertionError("LIME recomputed despite the cache")

    monkeypatch.setattr("stew.eval.explain.explain_clip", boom)
    sec2 = _section(write_report(rep, rep / "b.html", lime_samples=16).read_text())
    assert "reused from the cache" in sec2 and 'alt="LIME explanation' in sec2
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    monkeypatch.undo()

    # issue 28: the key names what was explained, and the caption says it; an explanation of the score y cached
    # under the old key (no target kind) is not taken for one of P(positive)
    assert clip["key"]["target_kind"] == "probability"
    assert "explaining P(positive) = (1 + ŷ) / 2" in sec and "explaining P(positive)" in sec2
    for f in cache.iterdir():
        f.unlink()
    explain_model(cache.parent / "model", Path(clip["audio"]), cache, n_samples=16, target_kind="score")
    old_key = {k: v for k, v in clip["key"].items() if k != "target_kind"}
    (cache / "clip.json").write_text(json.dumps({"key": old_key, "audio": clip["audio"]}))
    assert _section(write_report(rep, rep / "old.html", lime_samples=16).read_text()).count("computed now") == 1
    assert json.loads((cache / "explanation.json").read_text())["target"] == "p_pos"

    # a budget of 0 skips LIME; 1 is refused before anything is drawn
    assert "LIME explanation skipped" in _section(write_report(rep, rep / "c.html", lime_samples=0).read_text())
    with pytest.raises(DataError, match="lime-samples"):
        write_report(rep, rep / "d.html", lime_samples=1)

    # another budget misses the cache; with the audio gone the section says so instead of failing
    data = Path(clip["audio"]).parent
    moved = data.with_name("data-moved")
    data.rename(moved)
    try:
        sec3 = _section(write_report(rep, rep / "e.html", lime_samples=8).read_text())
    finally:
        moved.rename(data)
    assert "its audio is not reachable" in sec3 and sec3.count("<img") == len(GROUPS)


def test_analysis_run_writes_png_and_counts(rep, tmp_path):
    run = rep / "runs" / "conflictnet-+ap" / "seed0"
    png = analysis_run(run, tmp_path / "an")
    assert png == tmp_path / "an" / "analysis.png" and png.read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / "an" / "analysis.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    n = int((preds["split"] == "test").sum())
    counts = record["counts"]
    assert (record["split"], record["target"], record["epsilon"]) == ("test", "conflict", 0.5)
    assert sum(counts[c] for c in CATEGORIES) == counts["total"] == n
    assert sorted(s for c in CATEGORIES for s in record["clips"][c]) == sorted(preds.loc[preds["split"] == "test",
                                                                                         "sequence"])
    # val works too; a split without labelled rows is a one-line DataError naming the splits there are
    assert json.loads((analysis_run(run, tmp_path / "v", split="val").with_suffix(".json")).read_text())[
        "counts"]["total"] == int((preds["split"] == "val").sum())
    with pytest.raises(DataError, match="splits with some: val, test"):
        analysis_run(run, tmp_path / "t", split="train")
