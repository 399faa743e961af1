"""What a newcomer trips over (issue 18, items 3-5): messages that point at the right option, no silent
overwrite of an earlier run, output that follows the umask, help texts without a stray ``<bool>``."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from stew.config import TrainConfig
from stew.deploy import export
from stew.errors import DataError
from stew.eval.compare import compare, render
from stew.experiments.rank import rank_modalities
from tests.test_cli import invoke, one_line_error, write_cfg
from tests.test_compare import make_run, reg

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Messages


def test_cmstew_without_teacher_names_teacher(utt_dir, tmp_path):
    line = one_line_error(invoke("train", "--data", utt_dir, "--method", "cmstew", "--modality", "audio",
                                 "--out", tmp_path / "r"))
    assert "needs --teacher" in line and "'text'" in line and "--modality" not in line, line
    assert not (tmp_path / "r").exists()
    # Neither given: both are named, not only --modality.
    line = one_line_error(invoke("train", "--data", utt_dir, "--method", "cmstew", "--out", tmp_path / "r"))
    assert "--modality and --teacher" in line, line


def test_compare_names_no_direction_without_significance(tmp_path):
    # CCC 0.40 vs 0.45 over ~650 steps: Fisher p = .27, like the p = .758.
    a, b = make_run(tmp_path / "a", reg(0.40, 700)), make_run(tmp_path / "b", reg(0.45, 600))
    res = compare([a], [b])
    (row,) = res["pairs"]
    assert row["p"] > 0.05 and row["direction"] == "no significant difference" and res["alpha"] == 0.05
    console = Console(record=True, width=200)
    render(res, console)
    text = console.export_text()
    assert "no significant difference" in text and "A < B" not in text
    # The same difference over far more steps is significant, and then the side is named.
    big_a, big_b = make_run(tmp_path / "A", reg(0.40, 20000)), make_run(tmp_path / "B", reg(0.45, 20000))
    assert compare([big_a], [big_b])["pairs"][0]["direction"] == "A < B"
    # A stricter level, asked for, withholds it again.
    assert compare([a], [b], alpha=row["p"])["pairs"][0]["direction"] == "no significant difference"


def test_compare_cli_json_says_no_significant_difference(tmp_path):
    a, b = make_run(tmp_path / "a", reg(0.40, 700)), make_run(tmp_path / "b", reg(0.45, 600))
    out = tmp_path / "c.json"
    res = invoke("compare", a, "--vs", b, "--out", out)
    assert res.exit_code == 0, res.output
    assert "A < B" not in res.output
    assert json.loads(out.read_text())["pairs"][0]["direction"] == "no significant difference"


# --------------------------------------------------------------------------------------------------
# No silent overwrite


def _linear(tmp_path: Path) -> Path:
    # The linear method fits in a fraction of a second and writes a complete run folder.
    return write_cfg(tmp_path / "c.yaml", method="linear", modality="a")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_refuses_a_non_empty_out(frames_dir, tmp_path):
    c, run_dir = _linear(tmp_path), tmp_path / "run"
    assert invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir).exit_code == 0
    before = _snapshot(run_dir)
    line = one_line_error(invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--seed", 1))
    assert "not empty" in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(run_dir) == before  # the earlier run is untouched


def test_train_overwrite_replaces_and_resume_continues(frames_dir, tmp_path):
    c, run_dir = _linear(tmp_path), tmp_path / "run"
    assert invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir).exit_code == 0
    (run_dir / "predictions.csv.stale").write_text("")  # not stew's: --overwrite must not delete it
    line = one_line_error(invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--overwrite"))
    assert "predictions.csv.stale" in line
    (run_dir / "predictions.csv.stale").unlink()

    res = invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--seed", 1, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["seed"] == 1
    res = invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--seed", 1, "--resume")
    assert res.exit_code == 0, res.output
    line = one_line_error(invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir,
                                 "--resume", "--overwrite"))
    assert "not both" in line


def test_bad_input_with_overwrite_keeps_the_earlier_run(frames_dir, tmp_path):
    c, run_dir = _linear(tmp_path), tmp_path / "run"
    assert invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir).exit_code == 0
    before = _snapshot(run_dir)
    one_line_error(invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--overwrite",
                          "--target", "nope"))
    assert _snapshot(run_dir) == before  # replaced only once the configuration has passed its checks


def test_rank_refuses_a_non_empty_out_unless_overwrite(frames_dir, tmp_path):
    c, out = _linear(tmp_path), tmp_path / "rank"
    args = ("rank", "--data", frames_dir, "--config", c, "--seeds", 1, "--method", "linear", "--out", out)
    assert invoke(*args).exit_code == 0
    before = _snapshot(out)
    line = one_line_error(invoke(*args))
    assert "not empty" in line and "--overwrite" in line
    assert _snapshot(out) == before
    res = invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "rank.json").is_file()


@pytest.mark.parametrize("command", ["transfer", "rank"])
def test_folder_writers_refuse_a_non_empty_out_before_any_work(utt_dir, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_line_error(invoke(command, "--data", utt_dir, "--seeds", 1, "--out", out))
    assert "not empty" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # data synth already refused one: the same rule everywhere.
    line = one_line_error(invoke("data", "synth", "--kind", "mosi", "--videos", 12, "--out", out))
    assert "not empty" in line and "--overwrite" not in line  # synth has no such option


def test_library_callers_pass_overwrite(frames_dir, tmp_path):
    """The demo re-runs into its own folders with overwrite=True; without it, run() refuses."""
    base = TrainConfig(data=frames_dir, method="linear", progress=False)
    quiet = Console(file=io.StringIO())
    rank_modalities(base, [0], tmp_path / "rank", quiet)
    with pytest.raises(DataError, match="not empty"):
        rank_modalities(base, [0], tmp_path / "rank", quiet)
    rank_modalities(base.model_copy(update={"overwrite": True}), [0], tmp_path / "rank", quiet)


def test_demo_runs_again_into_its_own_folder(tmp_path, monkeypatch):
    from stew.experiments import demo

    # The demo's own code at a test's size: 6 ranking runs and 1 guarded CM-StEW run of one epoch each.
    monkeypatch.setattr(demo, "DATA", {"n_speakers": 9, "minutes": 0.2})
    monkeypatch.setattr(demo, "LABELLED", 2)  # of the 3 training speakers: the guard runs 2 folds
    monkeypatch.setattr(demo, "SEEDS", [0])
    monkeypatch.setattr(demo, "DEMO", {**demo.DEMO, "gru_units": 8, "d_model": 8, "ffn": 16, "clf_hidden": 16,
                                       "max_epochs": 1, "patience": 1, "threads": 1})
    for _ in range(2):  # the second time, every run folder exists: the demo replaces its own runs
        demo.run_demo(tmp_path / "demo", 0, Console(file=io.StringIO()))
    preds = pd.read_csv(tmp_path / "demo" / "predictions.csv")
    assert set(preds["split"]) == {"test"} and preds.filter(like="pred_").notna().all().all()


# --------------------------------------------------------------------------------------------------
# Permissions follow the umask


@pytest.mark.parametrize(("umask", "dirs", "files"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_run_and_exported_model_follow_the_umask(frames_dir, tmp_path, umask, dirs, files):
    old = os.umask(umask)
    try:
        run_dir = tmp_path / "run"
        assert invoke("train", "--data", frames_dir, "--config", _linear(tmp_path), "--out", run_dir).exit_code == 0
        model = export(run_dir, tmp_path / "model")
    finally:
        os.umask(old)
    for folder in (model, run_dir / "model"):
        assert stat.S_IMODE(folder.stat().st_mode) == dirs, folder
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == files, f
    for f in ("metrics.json", "predictions.csv", "latents.npz"):
        assert stat.S_IMODE((run_dir / f).stat().st_mode) == files, f


# --------------------------------------------------------------------------------------------------
# Help texts and small things


def test_rank_help_has_texts_and_no_bool():
    res = invoke("rank", "--help")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "<bool>" not in text
    assert "unimodal architecture" in text and "regression target to rank on" in text and "epochs per run" in text
    train = invoke("train", "--help").output
    assert "<bool>" not in train and "--overwrite" in train


def test_synth_help_states_size():
    text = " ".join(invoke("data", "synth", "--help").output.split())
    assert "1 GB" in text and "5 GB" in text


def test_gitignore_covers_readme_outputs():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    for entry in ("/data/", "/runs/", "/demo-out/"):
        assert entry in lines
