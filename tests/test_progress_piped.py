"""Off a terminal (logs, CI, ``| tee``) long commands still say how far along they are, line by line,
and tables come out whole (no cell cut to ``…``), or as markdown / CSV / JSON on request.

CliRunner's stdout is not a terminal, which is the case under test.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from rich.console import Console
from typer.testing import CliRunner

import stew.experiments.demo as demo
from stew.cli import app
from stew.data.formats.native import write_native
from stew.util.progress import Runs
from stew.util.tables import WideConsole
from tests.conftest import FAST, tiny_utterances
from tests.test_reproduce import TINY

runner = CliRunner()
LONG = "audio_" + "x" * 200  # its table (with the other columns) is wider than a piped console's 240
LEFT = r"\d+:\d\d elapsed · ~(\d+:\d\d|\?) left"


def invoke(*args: str):
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output  # lines, not a redrawn bar
    return r


def test_train_cmstew_announces_stage1_grid_and_epochs(utt_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    # A 2-point grid keeps the test quick; the announcement reads the grid's real size.
    cfg.write_text(yaml.safe_dump({**FAST, "max_epochs": 2, "progress": True, "recipe": "paper", "cmstew": {
        "alpha_grid": [0.1, 1.0], "beta_grid": [1.0], "decoder_units": 8}}))
    out = invoke("train", "--data", str(utt_dir), "--method", "cmstew", "--modality", "audio", "--teacher", "text",
                 "--config", str(cfg), "--out", str(tmp_path / "run")).output
    assert "stage 1: 1 teacher run(s) (text, bigru-te) on the whole training split" in out
    assert "stage 1 done in" in out
    assert "alpha/beta grid: 2 candidates on validation" in out
    assert re.search(r"candidate 1/2 \(alpha 0\.1, beta 1\) · \d+:\d\d elapsed · ~\? left", out), out
    assert re.search(r"candidate 2/2 \(alpha 1, beta 1\) · " + LEFT, out), out
    assert "alpha/beta grid done in" in out
    # The epoch status, as lines: the first and last epoch of each training run.
    assert re.search(r"Epoch 2/2 · \d+:\d\d elapsed · \d+:\d\d(-\d+:\d\d)? left", out), out
    assert out.index("stage 1:") < out.index("alpha/beta grid:") < out.index("run written to")


def test_rank_prints_a_line_per_finished_run(utt_dir: Path) -> None:
    out = invoke("rank", "--data", str(utt_dir), "--seeds", "2", "--max-epochs", "1").output
    assert "ranking modalities: 4 runs" in out
    for k in range(1, 5):
        assert re.search(rf"ranking modalities: {k}/4 runs done \(label / \w+ / seed \d, val f1_weighted [\d.]+\) · "
                         + LEFT, out), out


def test_demo_stages_report_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's own code at a test's size: 6 ranking runs and 1 guarded CM-StEW run of one epoch each.
    monkeypatch.setattr(demo, "DATA", {"n_speakers": 9, "minutes": 0.2})
    monkeypatch.setattr(demo, "LABELLED", 2)  # of the 3 training speakers: the guard runs 2 folds
    monkeypatch.setattr(demo, "SEEDS", [0])
    monkeypatch.setattr(demo, "DEMO", {**demo.DEMO, "gru_units": 8, "d_model": 8, "ffn": 16, "clf_hidden": 16,
                                       "max_epochs": 1, "patience": 1, "threads": 1})
    buf = io.StringIO()
    demo.run_demo(tmp_path / "demo", 0, Console(file=buf, width=240))
    out = buf.getvalue()
    ranking, cmstew = out.index("2. Ranking"), out.index("3. CM-StEW")
    assert re.search(r"ranking modalities: 6/6 runs done \(.+\) · " + LEFT, out[ranking:cmstew]), out
    assert re.search(r"CM-StEW runs \(guard, teachers, final fit\): 1/1 runs done \(.+ shipped (transfer|unimodal), "
                     r"test ccc .+\) · " + LEFT, out[cmstew:]), out
    assert re.search(r"seed 0: CM-StEW's ccc on .+ is .+ so the (transfer|unimodal) model ships", out), out


def test_runs_lines_off_a_terminal_and_a_bar_on_one() -> None:
    piped = io.StringIO()
    with Runs(Console(file=piped), "stage", 3, done=1) as bar:
        bar.describe("run b")
        bar.advance("val 0.5")
    assert piped.getvalue().splitlines()[0] == "stage: 3 runs (1 already done)"
    line = piped.getvalue().splitlines()[1]
    assert re.fullmatch(r"stage: 2/3 runs done \(run b, val 0\.5\) · " + LEFT, line), line
    tty = io.StringIO()
    with Runs(Console(file=tty, force_terminal=True), "stage", 3) as bar:
        bar.advance()
    assert "runs done" not in tty.getvalue()  # the terminal keeps rich's bar


def _long_named(root: Path) -> Path:
    ds = tiny_utterances()
    seqs = [replace(s, features={"text": s.features["text"], LONG: s.features["audio"]},
                    masks={"text": s.masks["text"], LONG: s.masks["audio"]}) for s in ds.sequences]
    return write_native(replace(ds, modalities={"text": 3, LONG: 4}, sequences=seqs), root / "long")


def test_data_check_piped_has_no_truncated_cell(tmp_path: Path) -> None:
    out = invoke("data", "check", str(_long_named(tmp_path))).output
    assert LONG in out and "…" not in out


def test_wide_console_never_cuts_a_cell() -> None:
    from rich.table import Table

    t = Table(title="wide")
    for i in range(12):
        t.add_column(f"column {i} " + "h" * 30)
    t.add_row(*[f"cell {i} " + "v" * 30 for i in range(12)])
    buf = io.StringIO()
    WideConsole(file=buf, width=240).print(t)
    assert "…" not in buf.getvalue() and "column 11 " + "h" * 30 in buf.getvalue()


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in ``text`` as (header, rows), parsed by a CommonMark + GFM-tables parser."""
    tables, cur, row = [], None, None
    for tok in MarkdownIt("commonmark").enable("table").parse(text):
        if tok.type == "table_open":
            cur = ([], [])
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append(tok.content)
        elif tok.type == "tr_close" and cur is not None:
            (cur[0].extend(row) if not cur[0] else cur[1].append(row))
            row = None
        elif tok.type == "table_close":
            tables.append(cur)
            cur = None
    return tables


def test_data_check_format_md_json_csv(utt_dir: Path) -> None:
    md = invoke("data", "check", str(utt_dir), "--format", "md").stdout
    tables = md_tables(md)
    assert len(tables) == 4
    header, rows = tables[0]
    assert header == ["split", "sequences", "groups", "utterances"] and rows[0] == ["train", "18", "18", "111"]
    assert all(len(r) == len(h) for h, rs in tables for r in rs)
    lines = invoke("data", "check", str(utt_dir), "--format", "json").stdout.splitlines()
    objs = [json.loads(x) for x in lines]
    assert objs[1]["title"] == "Modalities" and objs[1]["rows"][0]["modality"] == "text"
    csv_out = invoke("data", "check", str(utt_dir), "--format", "csv").stdout
    assert "# Modalities\nmodality,dim," in csv_out


@pytest.fixture(scope="module")
def tiny_protocol(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("piped")
    data = write_native(tiny_utterances(), root / "utt")
    proto = json.loads(json.dumps(TINY))
    # A row label wider than a piped console: rich would cut it to "…" at a fixed width.
    proto["tables"][0]["rows"][0]["label"] = "unimodal " + "u" * 250
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(proto))
    return data, path


def test_reproduce_piped_progress_lines_and_whole_tables(tiny_protocol: tuple[Path, Path], tmp_path: Path) -> None:
    data, proto = tiny_protocol
    out = invoke("reproduce", str(proto), "--data", str(data), "--out", str(tmp_path / "o"), "--workers", "1",
                 "--threads", "1").output
    assert re.search(r"tiny: 9/9 runs done \(\S+\) · " + LEFT, out), out
    assert "u" * 250 in out and "…" not in out
    # Re-run (nothing left to train): the tables as markdown on stdout, the rest on stderr.
    md = invoke("reproduce", str(proto), "--data", str(data), "--out", str(tmp_path / "o"), "--format", "md").stdout
    (header, rows), = md_tables(md)
    assert header[0] == "" and "f1_weighted" in header[1]
    assert rows[0][0].startswith("unimodal " + "u" * 250) and len(rows) == 4
    assert "runs done" not in md
