"""End-to-end behaviour of the shared trainer on tiny data (seconds per run)."""

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from stew.config import TrainConfig
from stew.data.formats.native import read_native, write_native
from stew.training.run import run
from tests.conftest import FAST, kill_training_after, tiny_frames


def cfg(data, out=None, **kw):
    return TrainConfig(data=data, out=out, **{**FAST, **kw})


def test_regression_run_writes_the_contract(frames_dir, tmp_path):
    out = tmp_path / "run"
    r = run(cfg(frames_dir, out, modality="b", arch="bigru-te"))
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) >= {"val", "test", "config"}
    assert set(m["val"]) >= {"ccc", "pcc"} and set(m["test"]) >= {"ccc", "pcc"}
    assert m["config"]["modality"] == "b" and m["config"]["label_delay_s"] == 2.8
    assert m["val"]["ccc"] == pytest.approx(r["val"]["ccc"])
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["split"]) == {"val", "test"}
    assert len(preds) == 6 * 120  # every val and test step, stitched back to whole recordings
    assert {"y_y", "pred_y"} <= set(preds.columns) and preds["pred_y"].between(-1, 1).all()
    assert (out / "logs" / "metrics.csv").is_file()
    # The deployable model is safetensors + JSON: nothing to unpickle.
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all(k.startswith(("encoder.", "head.")) for k in weights)
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["modality"] == "b" and meta["dim"] == 5 and meta["label_delay_steps"] == 70


@pytest.mark.parametrize("arch", ["classifier", "bigru", "bigru-te", "gru4", "gru"])
def test_every_arch_trains(frames_dir, tmp_path, arch):
    """Each architecture learns on easy data: 'a' carries the label almost noise-free, and without a label
    delay the label is a function of the same step. Training lowers the training loss and lifts the
    validation CCC well above the same network's at initialisation (seeded like the run)."""
    import lightning as L

    from stew.data.splits import carve_validation
    from stew.methods import build_method, required_modalities
    from stew.training.evaluate import predict_sequences, score
    from stew.training.resolve import make_bundle, resolve

    easy = {"modality": "a", "arch": arch, "max_epochs": 8, "patience": 8, "label_delay_s": 0.0,
            "emobed": {"units": 8}}
    r = run(cfg(frames_dir, tmp_path / "run", **easy))
    losses = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")["train_loss"].dropna().to_numpy()
    assert len(losses) == 8 and losses[-1] < 0.85 * losses[0]
    # The untrained network: the run's configuration, carve and seed, evaluated before any step.
    c = resolve(cfg(frames_dir, **easy), read_native(frames_dir))
    ds = carve_validation(read_native(frames_dir), c.val_groups, c.seed)
    L.seed_everything(c.seed, verbose=False)
    bundle = make_bundle(c, ds, required_modalities(c))
    untrained = build_method(c, bundle, tmp_path).eval()
    before = score(predict_sequences(untrained, bundle.val, bundle), bundle.val, bundle)["ccc"]
    assert r["val"]["ccc"] > before + 0.1, (before, r["val"]["ccc"])


def test_binary_run_keys_and_validation_carve(utt_dir, tmp_path):
    r = run(cfg(utt_dir, tmp_path / "r", modality="text"))
    assert set(r["val"]) >= {"acc", "f1_weighted"} and 0 <= r["val"]["acc"] <= 100
    assert len(r["data"]["val_groups"]) == 4
    preds = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert {"y", "prob", "pred"} <= set(preds.columns)


def test_deterministic_for_a_seed(utt_dir):
    a = run(cfg(utt_dir, modality="audio", seed=1))
    b = run(cfg(utt_dir, modality="audio", seed=1))
    assert a["val"] == b["val"] and a["test"] == b["test"]
    for k, v in a.model.state_dict().items():
        assert np.array_equal(v.numpy(), b.model.state_dict()[k].numpy())


def test_test_labels_never_influence_training_or_selection(tmp_path):
    ds = tiny_frames()
    flipped = ds.replace_sequences(
        s if s.split != "test" else type(s)(**{**s.__dict__, "targets": -s.targets}) for s in ds.sequences
    )
    a = run(cfg(write_native(ds, tmp_path / "a"), modality="a"))
    b = run(cfg(write_native(flipped, tmp_path / "b"), modality="a"))
    assert a["val"] == b["val"] and a["selection"] == b["selection"]
    assert a["test"]["pcc"] == pytest.approx(-b["test"]["pcc"], abs=1e-6)


def test_resume_continues_from_last_checkpoint(frames_dir, tmp_path):
    out = tmp_path / "run"
    first = run(cfg(frames_dir, out, modality="a", max_epochs=2, patience=10))
    assert first["selection"]["epochs_run"] == 2
    resumed = run(cfg(frames_dir, out, modality="a", max_epochs=4, patience=10, resume=True))
    assert resumed["selection"]["epochs_run"] == 4
    assert pd.read_csv(out / "logs" / "metrics.csv")["epoch"].max() == 1
    resumed_log = pd.read_csv(out / "logs" / "resumed-0" / "metrics.csv")
    assert sorted(resumed_log["epoch"].dropna().unique()) == [2, 3]  # started where the first run stopped


def test_a_fresh_fit_replaces_the_logs_of_an_earlier_fit_in_its_folder(frames_dir, tmp_path, recwarn):
    out = tmp_path / "run"
    stale = out / "logs" / "resumed-0"
    stale.mkdir(parents=True)
    (stale / "metrics.csv").write_text("epoch,train_loss\n7,1.0\n")
    (out / "logs" / "metrics.csv").write_text("epoch,train_loss\n9,1.0\n")
    run(cfg(frames_dir, out, modality="a", max_epochs=2, patience=10, resume=True))  # no checkpoint: a fresh fit
    assert not stale.exists()
    assert sorted(pd.read_csv(out / "logs" / "metrics.csv")["epoch"].dropna().unique()) == [0, 1]
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_a_run_killed_mid_training_resumes_from_its_periodic_checkpoint(frames_dir, tmp_path, monkeypatch):
    revive = kill_training_after(monkeypatch, epoch=2)
    out = tmp_path / "run"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(cfg(frames_dir, out, modality="a", max_epochs=5, patience=10))
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "metrics.json").exists()
    assert not list((out / "checkpoints").glob("*.tmp"))
    revive()
    resumed = run(cfg(frames_dir, out, modality="a", max_epochs=5, patience=10, resume=True))
    assert resumed["selection"]["epochs_run"] == 5
    resumed_log = pd.read_csv(out / "logs" / "resumed-0" / "metrics.csv")
    assert sorted(resumed_log["epoch"].dropna().unique()) == [2, 3, 4]  # epochs 0-1 were checkpointed


def test_grouped_cv(utt_dir, tmp_path):
    """K folds over whole training groups, each validating once; the summary is their mean and std."""
    r = run(cfg(utt_dir, tmp_path / "cv", modality="text", cv=3, max_epochs=1))
    assert len(r["folds"]) == 3
    for key in ("acc", "f1_weighted"):
        per_fold = [f["val"][key] for f in r["folds"]]
        assert r["val"][key] == pytest.approx(np.mean(per_fold))
        assert r["val_std"][key] == pytest.approx(np.std(per_fold, ddof=1))
    folds = [json.loads((tmp_path / "cv" / f"fold{i}" / "metrics.json").read_text()) for i in range(3)]
    assert [f["val"] for f in folds] == [f["val"] for f in r["folds"]]
    val_groups = [g for f in folds for g in f["data"]["val_groups"]]
    train_groups = {s.group for s in read_native(utt_dir).sequences if s.split == "train"}
    assert len(val_groups) == len(set(val_groups)) and set(val_groups) == train_groups
