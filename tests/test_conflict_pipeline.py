"""Audio files in, prediction and explanation out: the synthetic conflict corpus through `stew train
--method conflictnet`, `export`, `predict` and `explain` (issue 16)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.test_cli import invoke, one_line_error


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("conflict")
    res = invoke("data", "synth", "--kind", "conflict", "--clips", "24", "--clip-s", "3", "--out", root / "data")
    assert res.exit_code == 0, res.output
    res = invoke("train", "--data", root / "data", "--method", "conflictnet", "--max-epochs", "1",
                 "--out", root / "run")
    assert res.exit_code == 0, res.output
    assert invoke("export", root / "run", "--out", root / "model").exit_code == 0
    return root


def test_the_corpus_reads_as_declared(corpus):
    from stew.data.io import load_dataset

    ds = load_dataset(corpus / "data")
    assert ds.label_level == "sequence" and ds.modalities == {"audio": 1}
    assert {s.length("audio") for s in ds} == {3 * 8000}  # audio.yaml's clip_s and sample_rate, not 30 s
    assert ds.meta["extractor"] == {"set": "waveform", "sample_rate": 8000, "clip_samples": 24000,
                                    "rms_normalise": True}
    record = json.loads((corpus / "run" / "metrics.json").read_text())
    assert {"pcc", "uar", "war"} <= set(record["test"]) and record["selection"]["key"] == "pcc"


def test_two_label_columns_train_selected_on_mean_pcc(corpus, tmp_path):
    """Issue 28: an audio folder with two label columns and no --target trains both, selected on pcc_mean
    (the run died with KeyError 'pcc' after its first epoch)."""
    import shutil

    data = shutil.copytree(corpus / "data", tmp_path / "data")
    labels = pd.read_csv(data / "labels.csv")
    labels.insert(2, "dominance", -labels["conflict"] / 2)
    labels.to_csv(data / "labels.csv", index=False)
    res = invoke("train", "--data", data, "--method", "conflictnet", "--max-epochs", "2", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["selection"]["key"] == "pcc_mean" and record["selection"]["epochs_run"] == 2
    val = record["val"]
    assert val["pcc_mean"] == pytest.approx((val["pcc_conflict"] + val["pcc_dominance"]) / 2)
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert {"pred_conflict", "pred_dominance"} <= set(preds.columns)


def test_explain_writes_sorted_segments_and_a_spectrogram(corpus):
    labels = pd.read_csv(corpus / "data" / "labels.csv")
    clip = corpus / "data" / labels["file"].iloc[0]
    res = invoke("explain", corpus / "model", clip, "--out", corpus / "explain", "--samples", "40")
    assert res.exit_code == 0, res.output
    expl = json.loads((corpus / "explain" / "explanation.json").read_text())
    segs = expl["segments"]
    assert len(segs) == 1 and segs[0]["start_s"] == 0  # a 3 s clip is one 3 s super-sample
    assert (corpus / "explain" / "explanation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_refuses_a_model_that_does_not_read_waveforms(corpus, tmp_path):
    from stew.data.formats.native import write_native
    from tests.conftest import tiny_clips

    data = write_native(tiny_clips(), tmp_path / "d")
    assert invoke("train", "--data", data, "--modality", "long", "--arch", "classifier", "--max-epochs", "1",
                  "--out", tmp_path / "run").exit_code == 0
    clip = next((corpus / "data").rglob("*.wav"))
    line = one_line_error(invoke("explain", tmp_path / "run" / "model", clip, "--out", tmp_path / "e"))
    assert "raw-audio model" in line and not (tmp_path / "e").exists()


def test_reproduce_conflict_table(corpus, tmp_path):
    res = invoke("reproduce", "conflict", "--data", corpus / "data", "--seeds", "1", "--workers", "1",
                 "--only", "conflictnet-paranet", "--only", "conflictnet-conflictnet", "--set", "max_epochs=1",
                 "--out", tmp_path / "rep", "--format", "json")
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout.splitlines()[0])
    labels = [r[table["columns"][0]] for r in table["rows"]]
    assert table["title"].startswith("Thesis Table 3.1") and "on test" in table["title"]
    assert labels[0] == "ParaNET (n=1)" and any(x.startswith("End-to-end CNN [132]") for x in labels)
    assert {"pcc (test)", "uar (test)", "war (test)"} <= set(table["columns"])
    # Each metric has its paper column: every one survives as its own key, none collapses into another.
    assert len(set(table["columns"])) == len(table["columns"])
    paper = [c for c in table["columns"] if c.startswith("paper (test)")]
    assert paper == ["paper (test)", "paper (test) [2]", "paper (test) [3]"]
    first = table["rows"][0]
    assert [first[c] for c in paper] == ["0.675", "72.4", "75.3"]  # ParaNET: PCC, UAR, WAR of Table 3.1


def test_predict_audio_with_the_raw_model_matches_the_run(corpus, tmp_path):
    preds = pd.read_csv(corpus / "run" / "predictions.csv")
    row = preds[preds["split"] == "test"].iloc[0]
    labels = pd.read_csv(corpus / "data" / "labels.csv")
    file = labels[labels["file"].str.replace(r"\.\w+$", "", regex=True) == row["sequence"]]["file"].iloc[0]
    res = invoke("predict", corpus / "model", "--audio", corpus / "data" / file, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "p.csv")
    assert len(got) == 1 and got["pred_conflict"].iloc[0] == pytest.approx(row["pred_conflict"], abs=1e-4)
    # ... and in the corpus's own units (audio.yaml: [-10, 10]), recorded in model.json
    assert got["pred_conflict_original"].iloc[0] == pytest.approx(10 * row["pred_conflict"], abs=1e-3)


def test_features_extract_train_and_predict_audio(corpus, tmp_path):
    res = invoke("features", "extract", corpus / "data", "--set", "egemaps-lld", "--out", tmp_path / "feat",
                 "--cache", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    from stew.data.io import load_dataset

    feats, clips = load_dataset(tmp_path / "feat"), load_dataset(corpus / "data")
    # conflict in [-10, 10] (audio.yaml) lands on [-1, 1] as for the waveform reader: tanh outputs can reach it
    assert feats.meta["label_scale"] == {"original": [-10.0, 10.0], "scaled": [-1.0, 1.0]}
    want = {s.id: float(s.targets[0, 0]) for s in clips}
    assert all(abs(float(s.targets[0, 0]) - want[s.id.rsplit(".", 1)[0]]) < 1e-6 for s in feats)
    res = invoke("train", "--data", tmp_path / "feat", "--modality", "audio", "--arch", "bigru", "--max-epochs", "1",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    clips = corpus / "data"
    res = invoke("predict", tmp_path / "run" / "model", "--audio", clips, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_csv(clips / "labels.csv"))
    assert "--data DIR" in one_line_error(invoke("predict", tmp_path / "run" / "model", "--out", tmp_path / "q.csv"))
    line = one_line_error(invoke("features", "extract", clips, "--set", "nope", "--out", tmp_path / "f2"))
    assert "nope" in line and not (tmp_path / "f2").exists()


def test_explain_analysis_of_a_run(corpus, tmp_path):
    res = invoke("explain", corpus / "run", "--analysis", "--out", tmp_path / "an")
    assert res.exit_code == 0, res.output
    counts = json.loads((tmp_path / "an" / "analysis.json").read_text())["counts"]
    test_rows = pd.read_csv(corpus / "run" / "predictions.csv").query("split == 'test'")
    assert counts["total"] == len(test_rows) and (tmp_path / "an" / "analysis.png").is_file()
    assert "no audio file" in one_line_error(invoke("explain", corpus / "run", "x.wav", "--analysis", "--out",
                                                    tmp_path / "a2"))
    assert "--out is required" in one_line_error(invoke("explain", corpus / "model", "x.wav"))
