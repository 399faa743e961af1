"""Sequence-level labels and modalities on their own clocks (the data model of fusion and raw speech)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stew.config import TrainConfig
from stew.data.formats.native import read_native, write_native
from stew.data.preprocess import Standardizer, WindowDataset, prepare
from stew.deploy import predict_dataset
from stew.errors import DataError
from stew.training.run import run
from tests.conftest import FAST, tiny_clips, tiny_frames


def test_native_round_trip_keeps_each_modality_length(tmp_path):
    ds = tiny_clips()
    for fmt in ("parquet", "npz"):
        back = read_native(write_native(ds, tmp_path / fmt, fmt=fmt))
        assert back.label_level == "sequence" and not back.aligned
        assert [s.id for s in back] == [s.id for s in ds]
        for a, b in zip(ds, back, strict=True):
            for m in ds.modalities:
                np.testing.assert_array_equal(a.features[m], b.features[m])
                np.testing.assert_array_equal(a.masks[m], b.masks[m])
            np.testing.assert_array_equal(a.targets, b.targets)


def test_a_sequence_missing_from_a_modality_table_is_one_masked_step(tmp_path):
    root = write_native(tiny_clips(), tmp_path / "d")
    tab = pd.read_parquet(root / "short.parquet")
    tab[tab["sequence"] != "clip000"].to_parquet(root / "short.parquet", index=False)
    s = next(s for s in read_native(root) if s.id == "clip000")
    assert s.features["short"].shape == (1, 3) and not s.masks["short"].any()


@pytest.mark.parametrize("corrupt, match", [
    (lambda t: t[t["sequence"] != "clip001"].pipe(lambda d: pd.concat([d, t[t["sequence"] == "clip001"]])), None),
    (lambda t: t.assign(step=t["step"].where(t.index != 1, 7)), "must run 0, 1, 2"),
    (lambda t: t.assign(sequence=t["sequence"].where(t.index != 0, "nope")), "not in the index"),
])
def test_bad_sequence_level_tables_are_one_line_errors(tmp_path, corrupt, match):
    root = write_native(tiny_clips(), tmp_path / "d")
    tab = pd.read_parquet(root / "long.parquet")
    bad = corrupt(tab)
    if match is None:  # clip001's rows moved to the end, after other clips: still contiguous, so valid
        bad.to_parquet(root / "long.parquet", index=False)
        read_native(root)
        # ...but split in two places it is not
        rows = tab[tab["sequence"] == "clip001"]
        bad = pd.concat([rows.iloc[:2], tab[tab["sequence"] != "clip001"], rows.iloc[2:]])
        match = "not contiguous"
    bad.to_parquet(root / "long.parquet", index=False)
    with pytest.raises(DataError, match=match) as e:
        read_native(root)
    assert "long.parquet" in str(e.value) and "\n" not in str(e.value)


def test_collate_pads_each_modality_on_its_own():
    ds = tiny_clips()
    seqs = ds.split("train")[:4]
    scaler = Standardizer.fit(seqs, ["long", "short"])
    prep = prepare(seqs, ["long", "short"], [0], scaler, 0)
    wds = WindowDataset.for_training(prep, None, None)
    batch = wds.collate([wds[i] for i in range(4)])
    assert batch["y"].shape == (4, 1, 1) and batch["mask"].all()
    for m in ("long", "short"):
        lengths = [s.length(m) for s in seqs]
        assert batch["x"][m].shape[:2] == (4, max(lengths))
        assert batch["present"][m].sum(1).tolist() == [int(s.masks[m].sum()) for s in seqs]
        for j in range(len(seqs)):
            np.testing.assert_allclose(batch["x"][m][j, : lengths[j]].numpy(), prep[j].x[m].numpy())
            assert not batch["x"][m][j, lengths[j]:].any()


def test_unimodal_pools_a_sequence_and_scores_one_row_per_clip(tmp_path):
    root = write_native(tiny_clips(), tmp_path / "d")
    out = tmp_path / "run"
    res = run(TrainConfig(data=root, modality="long", arch="bigru", out=out, **{**FAST, "max_epochs": 8}))
    ds = read_native(root)
    assert res["val"]["n"] == len(ds.split("val")) and res["test"]["n"] == len(ds.split("test"))
    assert res["test"]["acc"] > 60  # 'long' carries the class clearly; chance is ~33 %
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == len(ds.split("val")) + len(ds.split("test")) and set(preds["step"]) == {0}
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["student"]["pool"] == "mean"
    # The exported model predicts one row per clip, the same probabilities as the run.
    again = predict_dataset(out / "model", root)
    test = preds[preds["split"] == "test"].set_index("sequence")
    mine = again[again["split"] == "test"].set_index("sequence")
    np.testing.assert_allclose(mine.loc[test.index, "prob_0"], test["prob_0"], atol=1e-5)


def test_padding_does_not_change_a_pooled_prediction(tmp_path):
    root = write_native(tiny_clips(), tmp_path / "d")
    out = tmp_path / "run"
    run(TrainConfig(data=root, modality="long", arch="bigru-te", out=out, **{**FAST, "max_epochs": 1}))
    ds = read_native(root)
    alone = predict_dataset(out / "model", ds.replace_sequences(ds.sequences[:1]))
    batched = predict_dataset(out / "model", ds)  # padded to the longest clip in its batch
    np.testing.assert_allclose(alone["prob_0"].iloc[0], batched["prob_0"].iloc[0], atol=1e-5)


@pytest.mark.parametrize("method", ["cmstew", "sew", "emobed", "cermtl"])
def test_step_pairing_methods_refuse_unaligned_modalities(tmp_path, method):
    root = write_native(tiny_clips(), tmp_path / "d")
    teacher = {} if method == "cermtl" else {"teacher": "long"}
    cfg = TrainConfig(data=root, method=method, modality="short", out=tmp_path / "run", **teacher, **FAST)
    match = f"--method {method} needs each modality on the labels. steps.*not aligned.*short \\d+"
    with pytest.raises(DataError, match=match) as e:
        run(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_fusing_unaligned_modalities_is_refused():
    with pytest.raises(ValueError, match="not aligned"):
        tiny_clips().fuse(["long", "short"])
    assert tiny_frames().aligned and tiny_frames().fuse(["a", "b"]).aligned


def test_data_check_probes_one_row_per_sequence(tmp_path):
    from stew.data.check import check_dataset
    from tests.test_cli import invoke

    ds = tiny_clips(n=64)
    probes = {p.modality: p for p in check_dataset(ds).probes}
    n_train = len(ds.split("train"))
    assert probes["long"].train_steps == n_train  # one row per clip, not per step
    assert probes["short"].train_steps == sum(bool(s.masks["short"].any()) for s in ds.split("train"))
    assert probes["long"].within_train > 0.6 > probes["short"].within_train  # 'long' carries the class
    res = invoke("data", "check", write_native(ds, tmp_path / "d"))
    assert res.exit_code == 0, res.output
