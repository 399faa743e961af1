"""stew report: the self-contained HTML report of a reproduce folder (tables, plots, CKA, Chromium rendering)."""

from __future__ import annotations

import base64
import html
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stew import report
from stew.cli import app
from stew.data.formats.native import write_native
from stew.errors import DataError
from stew.experiments import results
from stew.experiments.protocols import load_protocol
from stew.experiments.reproduce import reproduce
from stew.report import document, projections, runs
from tests.conftest import FAST, tiny_frames, tiny_utterances
from tests.test_cli import one_line_error

runner = CliRunner()

BASE = {**FAST, "max_epochs": 1, "patience": 1, "cmstew": {"decoder_units": 8, "alpha_grid": [1.0],
                                                           "beta_grid": [1.0]}}

# Regression (tiny frames: 'a' strong, 'b' weak): a unimodal table with columns and paper values, and a
# transfer table with a baseline, a CM-StEW group with teacher_run, an ablation and a paper-only row.
FRAMES = {
    "name": "tiny-report",
    "title": "tiny report protocol <regression>",
    "description": "Two tables on tiny frames & a CM-StEW transfer.",
    "seeds": 2,
    "base": {**BASE, "target": "y"},
    "departures": ["One epoch instead of convergence.", "Tiny synthetic data."],
    "groups": {
        "unimodal-{modality}": {"matrix": {"modality": ["a", "b"]}, "set": {"method": "unimodal"}},
        "cmstew-b-{ablation}": {
            "matrix": {"ablation": [None, "-LFA"]},
            "set": {"method": "cmstew", "modality": "b", "teacher": "a"},
            "teacher_run": "unimodal-a",
        },
    },
    "tables": [
        {"title": "Unimodal (layout of Table II)", "metrics": ["ccc"],
         "columns": [{"label": "Strong", "key": "a"}, {"label": "Weak", "key": "b"}],
         "rows": [{"label": "Bi-GRU + TE", "group": "unimodal-{col}",
                   "paper": {"Strong": {"ccc": 0.812}, "Weak": {"ccc": 0.345}}}]},
        {"title": "Transfer to b (+a)", "metrics": ["ccc", "ccc_seq"], "baseline": "unimodal-b",
         "rows": [
             {"label": "unimodal", "group": "unimodal-b", "paper": {"ccc": 0.3}},
             {"label": "CM-StEW(+a)", "group": "cmstew-b-full", "paper": {"ccc": 0.4}},
             {"label": "- LFA", "group": "cmstew-b--LFA"},
             {"label": "literature", "paper": {"ccc": 0.375}},
         ]},
    ],
}

# Binary (tiny utterances: text strong, audio weak), one seed: traces must be skipped with a note.
UTTERANCES = {
    "name": "tiny-report-binary",
    "title": "tiny binary report protocol",
    "seeds": 1,
    "base": BASE,
    "groups": {
        "unimodal-{modality}": {"matrix": {"modality": ["text", "audio"]}, "set": {"method": "unimodal"}},
        "cmstew-audio": {"set": {"method": "cmstew", "modality": "audio", "teacher": "text"},
                         "teacher_run": "unimodal-text"},
    },
    "tables": [{"title": "Binary transfer", "metrics": ["f1_weighted", "acc"], "baseline": "unimodal-audio",
                "rows": [{"label": "unimodal", "group": "unimodal-audio", "paper": {"acc": 61.0}},
                         {"label": "CM-StEW", "group": "cmstew-audio"}]}],
}


def _reproduce(root: Path, spec: dict, data: Path) -> Path:
    proto = root / f"{spec['name']}.yaml"
    proto.write_text(yaml.safe_dump(spec))
    out = root / spec["name"]
    summary = reproduce(load_protocol(proto), data, out, workers=1, threads=1)
    assert not summary["failed"], summary["failed"]
    return out


@pytest.fixture(scope="module")
def frames_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return _reproduce(root, FRAMES, write_native(tiny_frames(), root / "frames"))


@pytest.fixture(scope="module")
def frames_report(frames_out) -> tuple[Path, str]:
    dest = frames_out.parent / "html" / "report.html"
    res = runner.invoke(app, ["report", str(frames_out), "--out", str(dest)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(dest)
    return dest, dest.read_text()


@pytest.fixture(scope="module")
def binary_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-binary")
    return _reproduce(root, UTTERANCES, write_native(tiny_utterances(), root / "utt"))


class _Doc(HTMLParser):
    """The paper tables (caption, cells with attributes and text), img sources and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self._cell: dict | None = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table" and "paper-table" in (a.get("class") or ""):
            self.tables.append({"title": a.get("data-title"), "split": a.get("data-split"), "caption": "",
                                "cells": [], "rows": []})
        elif self.tables and tag == "caption":
            self._in_caption = True
        elif self.tables and tag == "tr":
            self.tables[-1]["rows"].append(a.get("class") or "")
        elif self.tables and tag in ("td", "th"):
            self._cell = {"tag": tag, "attrs": a, "text": "", "bold": False, "row": len(self.tables[-1]["rows"])}
            self.tables[-1]["cells"].append(self._cell)
        elif self._cell is not None and tag == "b":
            self._cell["bold"] = True

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._in_caption:
            self.tables[-1]["caption"] += data
        elif self._cell is not None:
            self._cell["text"] += data


def _parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    return doc


def _td(table: dict, group: str, k: int = 0, split: str | None = None) -> dict:
    """The k-th 'ours' cell of ``group`` on ``split`` (default the table's headline; one per metric and column)."""
    split = split or table["split"]
    return [c for c in table["cells"] if c["attrs"].get("data-group") == group
            and c["attrs"].get("data-split") == split][k]


# -- numbers ----------------------------------------------------------------------------------------

def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert projections.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)  # rotation
    assert projections.linear_cka(x, 3.7 * x + 5.0) == pytest.approx(1.0, abs=1e-10)  # isotropic scaling, shift
    y = rng.normal(size=(500, 4))
    assert projections.linear_cka(x, y) == pytest.approx(projections.linear_cka(y, x))  # symmetric, any widths
    assert 0.0 <= projections.linear_cka(x, y) < 0.1  # unrelated
    assert projections.linear_cka(x, np.c_[x[:, :3], y[:, :2]]) > projections.linear_cka(x, y)  # partly shared
    # Not invariant to anisotropic scaling (what separates it from CCA).
    assert projections.linear_cka(x, x * np.array([10.0, 1, 1, 1, 1, 0.1])) < 1 - 1e-3
    with pytest.raises(ValueError):
        projections.linear_cka(x, y[:10])


def test_pair_latents_intersects_steps():
    a = {"latent": np.arange(8.0).reshape(4, 2), "sequence": np.array([0, 0, 1, 1]), "step": np.array([0, 1, 0, 5])}
    b = {"latent": 10 + np.arange(6.0).reshape(3, 2), "sequence": np.array([1, 0, 2]), "step": np.array([5, 1, 0])}
    xa, xb = projections.pair_latents(a, b)
    assert xa.tolist() == [[2, 3], [6, 7]] and xb.tolist() == [[12, 13], [10, 11]]
    same, also = projections.pair_latents(a, a)
    assert same is a["latent"] and also is a["latent"]


def test_projections_are_2d_and_deterministic():
    x = np.random.default_rng(1).normal(size=(60, 5))
    z = projections.pca_2d(x)
    assert z.shape == (60, 2) and np.allclose(z, projections.pca_2d(x))
    assert np.var(z[:, 0]) >= np.var(z[:, 1])
    assert projections.pca_2d(x, x[:7]).shape == (7, 2)
    assert projections.tsne_2d(x).shape == (60, 2)


# -- the report -------------------------------------------------------------------------------------

def test_tables_captions_best_p_and_paper(frames_out, frames_report):
    _, text = frames_report
    doc = _parse(text)
    proto, store = results.load(frames_out)
    with store:
        expected = results.tables(proto, results.collect(store))
    assert [t["title"] for t in doc.tables] == [t.title for t in expected]
    assert [t["caption"] for t in doc.tables] == [t.title for t in expected]
    # tiny_frames has a labelled test split: test is the headline, validation beside it.
    assert [t.title for t in expected] == [f"{t['title']} — on test (validation beside: it chose the epochs and grids)"
                                          for t in FRAMES["tables"]]
    assert [t["split"] for t in doc.tables] == ["test", "test"]

    unimodal, transfer = doc.tables
    # Paper values beside ours, in each column.
    paper = [c["text"] for c in unimodal["cells"] if c["tag"] == "td" and c["attrs"].get("class") == "paper"]
    assert paper == ["0.812", "0.345"]
    # Best per column: bold and class "best", exactly where results.tables says.
    res = expected[1]
    for j, m in enumerate(res.spec.metrics):
        for _, cells in res.rows:
            c = cells[0]
            if c.group is None:
                continue
            td = _td(transfer, c.group, j)
            assert ("best" in td["attrs"]["class"].split()) == c.best[m] == td["bold"], (c.group, m)
            assert results.fmt(c, m, 3) in td["text"]
            assert "n=2" in " ".join(x["text"] for x in transfer["cells"] if x["tag"] == "th")
            if c.group != "unimodal-b":
                assert f"p = {c.p[m]:.3f}" in td["text"] or (c.p[m] < 0.001 and "p < 0.001" in td["text"])
            # Validation beside: its numbers, no best mark and no p.
            val = _td(transfer, c.group, j, "val")
            assert val["text"] == results.fmt(c, m, 3, "val") and "secondary" in val["attrs"]["class"].split()
            assert not val["bold"] and "p " not in val["text"]
    assert any("best" in c["attrs"].get("class", "") for c in transfer["cells"])
    assert "p =" not in _td(transfer, "unimodal-b")["text"]  # the baseline is not tested against itself
    # The paper-only row: the paper's value, no numbers of ours.
    lit = [c for c in transfer["cells"] if c["row"] == transfer["rows"].index("paper-only") + 1]
    assert "literature" in lit[0]["text"]
    assert [c["text"] for c in lit if c["tag"] == "td" and c["attrs"].get("class") == "paper"] == ["0.375", "-"]
    assert all(c["text"] == "" for c in lit if "ours" in c["attrs"].get("class", ""))
    assert "0.400" in [c["text"] for c in transfer["cells"]]


def test_header_plots_and_footer(frames_out, frames_report):
    dest, text = frames_report
    assert "tiny report protocol &lt;regression&gt;" in text  # escaped
    assert "Two tables on tiny frames &amp; a CM-StEW transfer." in text
    for d in FRAMES["departures"]:
        assert f"<li>{d}</li>" in text
    assert "0, 1" in text and str((frames_out.parent / "frames").resolve()) in text
    assert "8 finished runs" in text and "8 of 8 group × seed results" in text
    # Plots: ablation bars, traces (regression), the latent projection with CKA, training curves.
    for section in ("bars", "traces", "latents", "curves"):
        body = text.split(f"<section id='{section}'>")[1].split("</section>")[0]
        assert "<img class=\"plot\"" in body, section
    cka = re.search(r"before (\d\.\d{3}) \(n=(\d+) paired steps\) → after (\d\.\d{3})", text)
    assert cka is not None and int(cka.group(2)) > 10
    # Footer: how to regenerate (a protocol file, not a shipped name).
    assert f"stew reproduce tiny-report.yaml --out {frames_out} --data" in text
    assert f"stew report {frames_out} --out {dest}" in text


def test_footer_restates_only_tuned_and_workers(frames_out, tmp_path):
    """The regenerate command carries --only, --tuned (password masked) and --workers of the last reproduce."""
    copy = tmp_path / "again"
    shutil.copytree(frames_out, copy)
    proto = load_protocol(frames_out.parent / "tiny-report.yaml")
    data = frames_out.parent / "frames"
    # Everything is finished, so this only re-plans; no group names a study, so the URL is never opened.
    summary = reproduce(proto, data, copy, workers=1, threads=1, only=["unimodal-*"],
                        tuned_storage="postgresql://stew:s3cret@db.example:5432/studies")
    assert summary["trained"] == 0
    text = report.write_report(copy, tmp_path / "r.html").read_text()
    cmd = html.unescape(text.split("<h2 id='regenerate'>")[1].split("</pre>")[0])
    assert "--only 'unimodal-*' --tuned 'postgresql://stew:***@db.example:5432/studies' --workers 1" in cmd
    assert "s3cret" not in text


def test_self_contained(frames_report):
    _, text = frames_report
    doc = _parse(text)
    assert doc.imgs and all(src.startswith("data:image/png;base64,") for src in doc.imgs)
    for src in doc.imgs:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(link.startswith("#") or link.startswith("data:") for link in doc.links), doc.links
    assert not {"script", "link", "iframe", "object", "embed"} & set(doc.tags)
    assert "http://" not in text and "https://" not in text and "url(" not in text


def _proto_collected(out: Path):
    proto, store = results.load(out)
    with store:
        return proto, results.collect(store)


def test_binary_task_skips_traces(binary_out, tmp_path):
    dest = report.write_report(binary_out, tmp_path / "r.html")
    text = dest.read_text()
    doc = _parse(text)
    assert [t["caption"] for t in doc.tables] == [results.tables(*_proto_collected(binary_out))[0].title]
    assert doc.tables[0]["caption"].startswith("Binary transfer — on test")
    traces = text.split("<section id='traces'>")[1].split("</section>")[0]
    assert "binary task" in traces and "<img" not in traces
    latents = text.split("<section id='latents'>")[1].split("</section>")[0]
    assert "<img" in latents and "Linear CKA" in latents
    assert "61.0" in [c["text"] for c in doc.tables[0]["cells"]]
    assert "stew reproduce tiny-report-binary.yaml" in text and "--seeds" not in text  # the protocol's own seeds


def test_partial_store(frames_out, tmp_path):
    """Runs of a group missing (and one seed of another): '-' cells, plots of what is there, no crash."""
    part = tmp_path / "partial"
    shutil.copytree(frames_out, part, ignore=shutil.ignore_patterns("*.ckpt", "model", "report.html"))
    with sqlite3.connect(part / "store.sqlite") as db:
        db.execute("DELETE FROM runs WHERE grp = 'cmstew-b--LFA' OR (grp = 'cmstew-b-full' AND seed = 1)")
    res = runner.invoke(app, ["report", str(part)])
    assert res.exit_code == 0, res.output
    dest = part / "report.html"
    assert res.output.strip() == str(dest)
    text = dest.read_text()
    transfer = _parse(text).tables[1]
    assert _td(transfer, "cmstew-b--LFA")["text"] == "-"
    full = _td(transfer, "cmstew-b-full")
    assert "±" not in full["text"] and "p =" not in full["text"]  # one seed: no std, no paired test
    assert "(n=1)" in next(c["text"] for c in transfer["cells"] if c["tag"] == "th" and c["row"] == full["row"])
    assert "<code>cmstew-b--LFA</code>" in text.split("not finished")[1]
    assert "Linear CKA" in text  # seed 0 of the CM-StEW group is still there


def test_not_a_reproduce_folder(tmp_path):
    line = one_line_error(runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")]))
    assert "not a stew reproduce folder" in line
    assert "not a stew reproduce folder" in one_line_error(runner.invoke(app, ["report", str(tmp_path / "nope")]))
    (tmp_path / "store.sqlite").write_text("not sqlite at all, but long enough to be read as a header" * 4)
    one_line_error(runner.invoke(app, ["report", str(tmp_path)]))
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(DataError):
        runs.load_report(tmp_path / "nope")


def test_written_atomically(frames_out, tmp_path, monkeypatch):
    dest = tmp_path / "r.html"
    dest.write_text("old")

    def boom(*a, **k):
        raise RuntimeError("halfway")

    monkeypatch.setattr(document, "build_html", boom)
    with pytest.raises(RuntimeError):
        report.write_report(frames_out, dest)
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


# -- rendered in a real browser ---------------------------------------------------------------------

def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_renders_in_headless_chromium(frames_report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (.ci/run installs Debian's chromium)")
    import matplotlib.image

    dest, text = frames_report
    png = tmp_path / "shot.png"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([browser, *flags, f"--screenshot={png}", "--window-size=1280,4000", dest.as_uri()],
                   check=True, capture_output=True, timeout=60)
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (4000, 1280)
    grey = img[..., :3].mean(-1)
    assert grey.std() > 0.05 and (grey < 0.5).mean() > 0.005  # not blank: text, table borders, plots
    dom = subprocess.run([browser, *flags, "--dump-dom", dest.as_uri()],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert dom.count("<table") == len(FRAMES["tables"])
    for t in FRAMES["tables"]:
        assert f"<caption>{t['title']} — on test" in dom
    assert dom.count("<img") == text.count("<img")
