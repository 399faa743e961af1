"""The linear baselines: searched strength and label offset, same run folder, exact export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.data.dataset import Dataset, Sequence
from stew.data.formats.native import write_native
from stew.deploy import export, predict_dataset
from stew.training.run import run
from tests.conftest import tiny_frames, tiny_utterances

RATE = 25.0


def delayed_frames(delay_steps: int, seed: int = 0, n_per_split: int = 3, length: int = 300) -> Dataset:
    """Features at t carry the label at t + ``delay_steps`` (annotators react late), plus noise dims."""
    rng = np.random.default_rng(seed)
    seqs = []
    for split in ("train", "val", "test"):
        for i in range(n_per_split):
            walk = np.cumsum(rng.normal(0, 0.3, length + delay_steps))
            latent = np.tanh(walk / (np.abs(walk).max() + 1e-6) * 2)
            y = latent[:length, None].astype(np.float32)  # label at t = latent at t ...
            seen = latent[delay_steps:, None]  # ... which the features show delay_steps earlier
            x = np.concatenate([seen + rng.normal(0, 0.1, (length, 1)), rng.normal(0, 1, (length, 3))], 1)
            sid = f"{split}{i}"
            seqs.append(Sequence(
                id=sid, group=sid, split=split, features={"a": x.astype(np.float32)},
                masks={"a": np.ones(length, bool)}, targets=y, step_ids=[f"{sid}_{k}" for k in range(length)],
            ))
    return Dataset(name="delayed", task="regression", targets=["y"], modalities={"a": 4}, sequences=seqs,
                   label_range=(-1.0, 1.0), step_rate_hz=RATE)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(data=Path("unused"), method="linear", progress=False, **kw)


def test_offset_found_on_validation_is_the_true_delay() -> None:
    ds = delayed_frames(delay_steps=30)  # 1.2 s
    r = run(cfg(modality="a"), ds)
    assert r["method"]["offset_s"] == pytest.approx(1.2)
    assert r["method"]["offset_steps"] == 30 and r["data"]["label_delay_steps"] == 30
    # The "+ offset" is what makes the linear model work here: without it, CCC drops well below.
    fixed = run(cfg(modality="a", linear={"offsets_s": [0.0]}), ds)
    assert fixed["method"]["offset_s"] == 0.0
    assert r["test"]["ccc"] > 0.9 and r["test"]["ccc"] > fixed["test"]["ccc"] + 0.1


def test_search_covers_the_grid_and_keeps_its_best() -> None:
    grid, offsets = [0.1, 10.0, 1e4], [0.0, 0.4, 0.8]
    r = run(cfg(modality="b", linear={"grid": grid, "offsets_s": offsets}), tiny_frames())
    search = r["method"]["search"]
    assert sorted((c["strength"], c["offset_s"]) for c in search) == sorted((g, o) for g in grid for o in offsets)
    best = max(search, key=lambda c: c["val_score"])
    assert (r["method"]["strength"], r["method"]["offset_s"]) == (best["strength"], best["offset_s"])
    # The search scored numpy outputs; the run scores the deployable torch student: they agree.
    assert r["val"]["ccc"] == pytest.approx(best["val_score"], abs=1e-5)
    assert r["selection"] == {"key": "ccc", "best_epoch": None, "epochs_run": 0}


def test_weights_are_sklearns_ridge_on_present_steps() -> None:
    ds = tiny_frames()
    r = run(cfg(modality="b", linear={"grid": [3.0], "offsets_s": [0.0]}), ds)
    bundle, student = r.bundle, r.model.student
    x = np.concatenate([s.x["b"].numpy()[s.present["b"].numpy()] for s in bundle.train])
    y = np.concatenate([s.source.targets[s.present["b"].numpy()] for s in bundle.train])
    ref = Ridge(alpha=3.0).fit(x, y)
    # Steps where 'b' is missing (10 per recording) are not fitted.
    assert r["method"]["n_train_rows"] == len(x) == sum(len(s.y) - 10 for s in bundle.train)
    np.testing.assert_allclose(student.head.weight.detach().numpy(), ref.coef_.reshape(1, -1), atol=1e-4)
    np.testing.assert_allclose(student.head.bias.detach().numpy(), np.ravel(ref.intercept_), atol=1e-4)


def test_logistic_regression_with_balanced_classes_matches_sklearn() -> None:
    r = run(cfg(modality="audio", val_groups=4, linear={"grid": [0.5]}), tiny_utterances())
    assert r["method"]["estimator"] == "logistic" and r["method"]["class_weight"] == "balanced"
    bundle = r.bundle
    x = np.concatenate([s.x["audio"].numpy() for s in bundle.train])
    y = np.concatenate([s.source.targets[:, 0] for s in bundle.train]).astype(int)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000).fit(x, y)
    xt = np.concatenate([s.x["audio"].numpy() for s in bundle.test])
    frames = r.frames[1]  # test
    np.testing.assert_allclose(frames["prob"].to_numpy(), ref.predict_proba(xt)[:, 1], atol=1e-5)
    unweighted = run(cfg(modality="audio", val_groups=4, linear={"grid": [0.5], "class_weight": "none"}),
                     tiny_utterances())
    assert unweighted["method"]["class_weight"] == "none"


def test_multiclass_softmax_equals_predict_proba() -> None:
    rng = np.random.default_rng(0)
    seqs = []
    for v in range(20):
        n = 12
        y = rng.integers(0, 3, n)
        x = np.eye(3)[y] * 2 + rng.normal(0, 1, (n, 3))
        sid = f"v{v}"
        seqs.append(Sequence(id=sid, group=sid, split="test" if v >= 16 else "train",
                             features={"m": x.astype(np.float32)}, masks={"m": np.ones(n, bool)},
                             targets=y[:, None].astype(np.float32), step_ids=[f"{sid}_{k}" for k in range(n)]))
    ds = Dataset(name="mc", task="multiclass", targets=["emotion"], modalities={"m": 3}, sequences=seqs, n_classes=3)
    r = run(cfg(modality="m", val_groups=4, linear={"grid": [1.0]}), ds)
    bundle = r.bundle
    x = np.concatenate([s.x["m"].numpy() for s in bundle.train])
    y = np.concatenate([s.source.targets[:, 0] for s in bundle.train]).astype(int)
    ref = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(x, y)
    xt = np.concatenate([s.x["m"].numpy() for s in bundle.test])
    probs = r.frames[1][[f"prob_{c}" for c in range(3)]].to_numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(xt), atol=1e-5)
    assert r["test"]["acc"] > 70


def test_svr_is_the_avec_baseline_option() -> None:
    r = run(cfg(modality="a", linear={"model": "svr", "grid": [1e-3, 1e-1], "offsets_s": [0.0, 1.2]}),
            delayed_frames(delay_steps=30, length=200))
    assert r["method"]["estimator"] == "svr" and r["method"]["strength_name"] == "C"
    assert r["method"]["offset_s"] == pytest.approx(1.2)
    # The offset comes from ridge's closed-form search; the SVR then searches C at that offset only.
    assert r["method"]["offset_found_by"] == "ridge"
    svr_tried = [c for c in r["method"]["search"] if c["estimator"] == "svr"]
    assert sorted(c["strength"] for c in svr_tried) == [1e-3, 1e-1]
    assert [c["offset_s"] for c in svr_tried] == pytest.approx([1.2, 1.2])
    assert r["test"]["ccc"] > 0.8


def test_export_and_predict_reproduce_the_run(tmp_path: Path) -> None:
    data = write_native(delayed_frames(delay_steps=20, length=200), tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(data), "--method", "linear", "--modality", "a",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"]["name"] == "linear" and metrics["method"]["offset_steps"] == 20
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["label_delay_steps"] == 20 and meta["student"]["activation"] == "identity"
    assert not list((tmp_path / "run").rglob("*.pkl")) and not list((tmp_path / "run").rglob("*.joblib"))
    export(tmp_path / "run", tmp_path / "model")
    pred = predict_dataset(tmp_path / "model", data)
    ran = pd.read_csv(tmp_path / "run" / "predictions.csv")
    merged = ran.merge(pred, on=["split", "sequence", "step"], suffixes=("_run", "_export"))
    assert len(merged) == len(ran) > 0
    np.testing.assert_allclose(merged["pred_y_run"], merged["pred_y_export"], atol=1e-5)


def test_selection_never_reads_test() -> None:
    ds = delayed_frames(delay_steps=10)
    rng = np.random.default_rng(1)
    permuted = ds.replace_sequences(
        s if s.split != "test" else Sequence(**{**s.__dict__, "targets": rng.permutation(s.targets)})
        for s in ds.sequences
    )
    a, b = run(cfg(modality="a"), ds), run(cfg(modality="a"), permuted)
    assert a["method"] == b["method"] and a["val"] == b["val"]
    assert a["test"]["ccc"] != b["test"]["ccc"]


def test_cv_and_postprocess() -> None:
    ds = delayed_frames(delay_steps=10, n_per_split=4)
    r = run(cfg(modality="a", cv=3, linear={"offsets_s": [0.0, 0.4]}), ds)
    assert len(r["folds"]) == 3 and np.isfinite(r["val"]["ccc"]) and "ccc" in r["val_std"]
    pp = run(cfg(modality="a", postprocess=True, linear={"offsets_s": [0.4]}), ds)
    assert "val_raw" in pp and set(pp["postprocess"]) == {"y"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modality", "zz"], "unknown modality 'zz'"),
        (["--modality", "a", "--target", "nope"], "unknown target 'nope'"),
        (["--modality", "a", "--loss", "ccc"], "does not apply to --method linear"),
        (["--modality", "a", "--config", "{offsets}"], "reaches past the shortest training recording"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    data = write_native(delayed_frames(delay_steps=0, length=100), tmp_path / "data")
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text("linear: {offsets_s: [0.0, 4.0]}\n")  # 4 s = 100 steps: the whole recording
    args = [str(yaml_cfg) if a == "{offsets}" else a for a in args]
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--method", "linear", *args,
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_single_class_in_train_is_an_error(tmp_path: Path) -> None:
    ds = tiny_utterances()
    one = ds.replace_sequences(
        Sequence(**{**s.__dict__, "targets": np.ones_like(s.targets)}) if s.split == "train" else s
        for s in ds.sequences
    )
    data = write_native(one, tmp_path / "data")
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--method", "linear", "--modality", "audio",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "single class" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_rank_with_linear(tmp_path: Path) -> None:
    data = write_native(tiny_frames(), tmp_path / "data")
    res = CliRunner().invoke(app, ["rank", "--data", str(data), "--method", "linear", "--seeds", "2",
                                   "--out", str(tmp_path / "rank")])
    assert res.exit_code == 0, res.output
    ranked = json.loads((tmp_path / "rank" / "rank.json").read_text())
    assert ranked["targets"]["y"]["ranking"] == ["a", "b"]  # 'a' carries the target clearly
    run_metrics = json.loads((tmp_path / "rank" / "y" / "a" / "seed0" / "metrics.json").read_text())
    assert run_metrics["method"]["name"] == "linear"


def test_compare_reads_linear_runs(tmp_path: Path) -> None:
    data = write_native(delayed_frames(delay_steps=10, length=200), tmp_path / "data")
    runner = CliRunner()
    for name, offsets in (("searched", "[0.0, 0.4]"), ("none", "[0.0]")):
        yaml_cfg = tmp_path / f"{name}.yaml"
        yaml_cfg.write_text(f"linear: {{offsets_s: {offsets}}}\n")
        res = runner.invoke(app, ["train", "--data", str(data), "--method", "linear", "--modality", "a",
                                  "--config", str(yaml_cfg), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "searched"), "--vs", str(tmp_path / "none"),
                              "--out", str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    pair = cmp["pairs"][0]
    assert cmp["split"] == "test" and pair["key"] == "ccc"
    # The searched offset (0.4 s = the true delay) beats no offset, significantly.
    assert pair["value_a"] > pair["value_b"] and pair["p"] < 0.05
