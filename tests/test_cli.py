"""The command-line contract: exit codes, one-line errors, export and predict."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stew.cli import app
from tests.conftest import FAST

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_cfg(path, **kw):
    path.write_text(yaml.safe_dump({**FAST, **kw}))
    return path


def one_line_error(res):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_missing_data_folder(tmp_path):
    line = one_line_error(invoke("train", "--data", tmp_path / "nope", "--modality", "a", "--out", tmp_path / "r"))
    assert "nope" in line
    assert not (tmp_path / "r").exists()


def test_unknown_config_key_is_an_error(frames_dir, tmp_path):
    c = write_cfg(tmp_path / "c.yaml", modality="a", learning_rate=0.1)
    line = one_line_error(invoke("train", "--data", frames_dir, "--config", c, "--out", tmp_path / "r"))
    assert "learning_rate" in line and "c.yaml" in line
    assert not (tmp_path / "r").exists()


def test_unknown_modality(frames_dir, tmp_path):
    line = one_line_error(invoke("train", "--data", frames_dir, "--modality", "zz", "--out", tmp_path / "r"))
    assert "zz" in line


def test_train_export_predict_roundtrip(frames_dir, tmp_path):
    c = write_cfg(tmp_path / "c.yaml", modality="b")
    run_dir = tmp_path / "run"
    res = invoke("train", "--data", frames_dir, "--config", c, "--out", run_dir, "--seed", 2)
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["seed"] == 2
    res = invoke("export", run_dir, "--out", tmp_path / "model")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "model.onnx", "model.safetensors"]
    res = invoke("predict", tmp_path / "model", "--data", frames_dir, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "p.csv")
    train_preds = pd.read_csv(run_dir / "predictions.csv")
    merged = train_preds.merge(pred, on=["sequence", "step"], suffixes=("_train", "_deploy"))
    assert len(merged) == len(train_preds)
    np.testing.assert_allclose(merged["pred_y_train"], merged["pred_y_deploy"], atol=1e-6)
    assert len(pred) == 9 * 120  # every step of every sequence, train included


def test_predict_dimension_mismatch(frames_dir, utt_dir, tmp_path):
    c = write_cfg(tmp_path / "c.yaml", modality="a", max_epochs=1)
    assert invoke("train", "--data", frames_dir, "--config", c, "--out", tmp_path / "run").exit_code == 0
    # utt_dir has no modality 'a': the error names the modality.
    line = one_line_error(invoke("predict", tmp_path / "run" / "model", "--data", utt_dir, "--out", tmp_path / "p.csv"))
    assert "'a'" in line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("args", [["--kind", "nope"], []])
def test_synth_bad_arguments(tmp_path, args):
    res = invoke("data", "synth", *args, "--out", tmp_path / "s")
    assert res.exit_code == 2


def test_predict_wrong_feature_dimension(frames_dir, tmp_path):
    from stew.data.formats.native import write_native
    from tests.conftest import tiny_frames

    c = write_cfg(tmp_path / "c.yaml", modality="a", max_epochs=1)
    assert invoke("train", "--data", frames_dir, "--config", c, "--out", tmp_path / "run").exit_code == 0
    narrow = tiny_frames()
    narrow.modalities["a"] = 3
    for s in narrow.sequences:
        s.features["a"] = s.features["a"][:, :3]
    data = write_native(narrow, tmp_path / "narrow")
    line = one_line_error(invoke("predict", tmp_path / "run" / "model", "--data", data, "--out", tmp_path / "p.csv"))
    assert "dimension mismatch" in line and "3" in line and "4" in line
    assert not (tmp_path / "p.csv").exists()


def test_predict_needs_only_the_model_modality(tmp_path):
    """A MOSI-layout folder holding only audio_test0.csv and test_ids.csv is enough to predict."""
    from stew.data.formats.native import write_native
    from tests.conftest import tiny_utterances

    ds = tiny_utterances()
    data = write_native(ds, tmp_path / "utt")
    c = write_cfg(tmp_path / "c.yaml", modality="audio", max_epochs=1)
    assert invoke("train", "--data", data, "--config", c, "--out", tmp_path / "run").exit_code == 0
    mosi = tmp_path / "mosi"
    mosi.mkdir()
    test = [s for s in ds.sequences if s.split == "test"]
    ids = [i for s in test for i in s.step_ids]
    rows = [
        ",".join(f'"{v}"' for v in [*feat, lab])
        for s in test
        for feat, lab in zip(s.features["audio"], s.targets[:, 0], strict=True)
    ]
    (mosi / "test_ids.csv").write_bytes(("utterance_id\r\n" + "\r\n".join(ids) + "\r\n").encode())
    (mosi / "audio_test0.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    res = invoke("predict", tmp_path / "run" / "model", "--data", mosi, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == len(ids) and pred["prob"].between(0, 1).all()
    # Same predictions as the training run on those test videos.
    train_preds = pd.read_csv(tmp_path / "run" / "predictions.csv").query("split == 'test'")
    merged = train_preds.merge(pred, on=["sequence", "step"], suffixes=("_train", "_deploy"))
    assert len(merged) == len(ids)
    np.testing.assert_allclose(merged["prob_train"], merged["prob_deploy"], atol=1e-6)


def test_transfer_ranks_runs_clear_pairs_and_prints_table(utt_dir, tmp_path):
    c = write_cfg(tmp_path / "c.yaml", recipe="paper", cmstew={"alpha_grid": [0.1], "beta_grid": [0.1, 1.0]})
    res = invoke("transfer", "--data", utt_dir, "--config", c, "--seeds", 2, "--gap", 1.0, "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    assert "stronger beats weaker by >= 1 validation f1_weighted" in res.output
    assert not list((tmp_path / "t").rglob("checkpoints"))  # finished runs of a sweep keep no resumption state
    rank = json.loads((tmp_path / "t" / "rank" / "rank.json").read_text())["targets"]["label"]
    strong, weak = rank["ranking"]
    (pair,) = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert (pair["strong"], pair["weak"]) == (strong, weak)
    assert pair["unimodal"] == rank["val"][weak]  # the ranking's runs are the unimodal arm
    assert len(pair["transfer"]) == 2
    # NaN when the paired differences are constant (e.g. both arms predict one class on this tiny data).
    assert 0 <= pair["p_value"] <= 1 or (math.isnan(pair["p_value"]) and np.ptp(
        np.subtract(pair["transfer"], pair["unimodal"])) == 0)
    assert pair["alpha"] == 0.1 and pair["beta"] in (0.1, 1.0)
    seed1 = tmp_path / "t" / "cmstew" / "label" / f"{weak}+{strong}" / "seed1"
    seed1 = json.loads((seed1 / "metrics.json").read_text())
    assert (seed1["method"]["alpha"], seed1["method"]["beta"]) == (pair["alpha"], pair["beta"])  # fixed after seed 0
    assert "CM-StEW" in res.output and "paired" in res.output  # the comparison table
    # The linear floor: the weaker modality's linear runs, same seeds, are in the record and the table.
    floor = [json.loads((tmp_path / "t" / "linear" / "label" / weak / f"seed{s}" / "metrics.json").read_text())
             for s in (0, 1)]
    assert [f["method"]["name"] for f in floor] == ["linear", "linear"]
    assert pair["linear"] == [f["val"]["f1_weighted"] for f in floor]
    assert pair["linear_test"] == [f["test"]["f1_weighted"] for f in floor]
    assert "linear floor" in res.output


def test_transfer_runs_no_pair_when_no_gap_is_clear(utt_dir, tmp_path):
    c = write_cfg(tmp_path / "c.yaml")
    res = invoke("transfer", "--data", utt_dir, "--config", c, "--seeds", 1, "--gap", 1000, "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "t" / "transfer.json").read_text()) == []
    assert not (tmp_path / "t" / "cmstew").exists()


def test_predict_path_does_not_import_lightning():
    """Deployment needs torch only: importing Lightning would add seconds to every `stew predict`."""
    import subprocess
    import sys

    code = "import sys, stew.cli, stew.deploy; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
