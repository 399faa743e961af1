"""Audio files in, prediction and explanation out: the synthetic conflict corpus through `stew train
--method conflictnet`, `export`, `predict` and `explain` (issue 16)."""

from __future__ import annotations

import json

import numpy as np
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


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A model of 12 s clips, and a 9 s clip of its corpus: padded and masked by predict, three super-samples."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("conflict12")
    assert invoke("data", "synth", "--kind", "conflict", "--clips", "8", "--clip-s", "12",
                  "--out", root / "data").exit_code == 0
    res = invoke("train", "--data", root / "data", "--method", "conflictnet", "--max-epochs", "1",
                 "--out", root / "run")
    assert res.exit_code == 0, res.output
    assert invoke("export", root / "run", "--out", root / "model").exit_code == 0
    x, sr = sf.read(next((root / "data").glob("*.wav")), dtype="float32")
    sf.write(root / "short.wav", x[: 9 * sr], sr)
    return root


def _explain(long_model, out, *args):
    res = invoke("explain", long_model / "model", long_model / "short.wav", "--out", out, "--samples", "40", *args)
    assert res.exit_code == 0, res.output
    return json.loads((out / "explanation.json").read_text())


def test_explain_predicts_a_short_clip_as_stew_predict(long_model, tmp_path):
    """Issue 28: a clip shorter than clip_s is padded and masked as `stew predict` does it, so LIME's unperturbed
    prediction is predict's (it was predicted unmasked); the super-samples cover its 9 real seconds."""
    res = invoke("predict", long_model / "model", "--audio", long_model / "short.wav", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    want = pd.read_csv(tmp_path / "p.csv")["pred_conflict"].iloc[0]
    expl = _explain(long_model, tmp_path / "e", "--target-kind", "score")
    assert expl["target"] == "score" and expl["prediction"] == pytest.approx(want, abs=1e-5)
    assert sorted((s["start_s"], s["end_s"]) for s in expl["segments"]) == [(0, 3), (3, 6), (6, 9)]
    assert (tmp_path / "e" / "explanation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_weights_are_the_ridge_fit_of_the_models_probability(long_model, tmp_path):
    """The default explains P(positive) = (1 + y) / 2 (thesis eq. 3.7); its weights are the weighted ridge fit
    of the model's own predictions of the perturbed clips, recomputed here with scikit-learn."""
    import torch
    from sklearn.linear_model import Ridge

    from stew.data.formats.waveform import prepare_clip, read_audio
    from stew.deploy import load_model

    expl = _explain(long_model, tmp_path / "e")
    assert expl["target"] == "p_pos" and expl["n_samples"] == 40
    model, meta = load_model(long_model / "model")
    n = meta["extractor"]["clip_samples"]
    clip, real = prepare_clip(read_audio(long_model / "short.wav", 8000)[0], n)
    masks = np.random.default_rng(expl["seed"]).integers(0, 2, size=(40, 3), dtype=np.int8)  # LIME's draw
    masks[0] = 1
    x = torch.from_numpy(clip).repeat(40, 1)
    x[:, :real] *= torch.from_numpy(np.repeat(masks, 3 * 8000, axis=1).astype(np.float32))
    present = torch.from_numpy(np.arange(n) < real).expand(40, -1)
    with torch.no_grad():
        y = model.predict({"x": {"audio": x[..., None]}, "present": {"audio": present}})[:, 0, 0].numpy()
    d = 1 - np.sqrt(masks.sum(1) / 3)
    ridge = Ridge(alpha=1.0).fit(masks, (1 + y) / 2, sample_weight=np.exp(-(d**2) / 25.0**2))
    got = {s["index"]: s["weight"] for s in expl["segments"]}
    np.testing.assert_allclose([got[i] for i in range(3)], ridge.coef_, rtol=1e-4, atol=1e-7)
    assert [s["index"] for s in expl["segments"]] == list(np.argsort(-np.abs(ridge.coef_), kind="stable"))
    # the score's explanation: the same fit on y, every weight twice as large
    score = _explain(long_model, tmp_path / "s", "--target-kind", "score")
    score = {s["index"]: s["weight"] for s in score["segments"]}
    np.testing.assert_allclose([score[i] for i in range(3)], [2 * got[i] for i in range(3)], rtol=1e-6)


def test_explain_refuses_a_bad_target_kind(long_model, tmp_path):
    line = one_line_error(invoke("explain", long_model / "model", long_model / "short.wav", "--out", tmp_path / "e",
                                 "--target-kind", "logit"))
    assert "--target-kind 'logit'" in line and not (tmp_path / "e").exists()
    line = one_line_error(invoke("explain", long_model / "run", "--analysis", "--target-kind", "score", "--out",
                                 tmp_path / "a"))
    assert "--target-kind" in line and not (tmp_path / "a").exists()


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
