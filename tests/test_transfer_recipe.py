"""CM-StEW's stew recipe (issue 13): cross-fitted teachers, unlabelled pairs, several teachers, the guard."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import stew.training.run as training
from stew.config import CMStEWConfig, TrainConfig
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.formats.native import write_native
from stew.data.io import load_dataset
from stew.data.preprocess import Standardizer
from stew.data.splits import add_unlabelled, carve_validation
from stew.deploy import export, load_model, predict_dataset
from stew.errors import DataError
from stew.methods.base import prediction_loss
from stew.methods.cmstew import apply_recipe, attach_teacher_latents, fold_of_groups
from stew.methods.cmstew import build as build_cmstew
from stew.scoring import metrics
from stew.training.resolve import make_bundle, resolve
from stew.training.result import RunResult
from stew.training.run import reuse_or_run, run
from stew.training.stages import guard_folds, train_teachers
from tests.conftest import FAST, tiny_utterances
from tests.test_cli import invoke, one_line_error

QUICK = {**FAST, "max_epochs": 2, "patience": 2}


def _cfg(**kw) -> TrainConfig:
    cm = kw.pop("cmstew", {})
    base = {"data": "x", "method": "cmstew", "modality": "audio", "teacher": "text", **QUICK}
    return TrainConfig(cmstew=CMStEWConfig(**{"teacher_folds": 2, "guard_folds": 0, **cm}), **{**base, **kw})


def test_recipes_fill_only_what_the_user_left_open():
    ds = tiny_utterances()
    stew = resolve(TrainConfig(data="x", method="cmstew", modality="audio", teacher="text"), ds)
    # Utterance-level data: a Bi-GRU over each recording's utterances; at a frame rate: per-frame MLP.
    assert (stew.arch, stew.cmstew.teacher_folds, stew.cmstew.guard_folds, stew.cmstew.teacher_arch) == (
        "bigru", 5, 5, "bigru")
    at_frame_rate = apply_recipe(TrainConfig(data="x", method="cmstew", modality="audio", teacher="text"),
                                 types.SimpleNamespace(step_rate_hz=25.0))
    assert (at_frame_rate.arch, at_frame_rate.cmstew.teacher_arch) == ("mlp", "mlp")
    assert (stew.cmstew.alpha, stew.cmstew.beta) == (0.1, 0.1)
    paper = resolve(TrainConfig(data="x", method="cmstew", modality="audio", teacher="text", recipe="paper"), ds)
    assert (paper.arch, paper.cmstew.teacher_folds, paper.cmstew.guard_folds) == ("bigru-te", 1, 0)
    assert paper.cmstew.alpha is None  # the paper's grid stays open
    mine = resolve(TrainConfig(data="x", method="cmstew", modality="audio", teacher="text", arch="bigru",
                               cmstew=CMStEWConfig(alpha=0.5, guard_folds=0)), ds)
    assert (mine.arch, mine.cmstew.alpha, mine.cmstew.guard_folds) == ("bigru", 0.5, 0)
    with pytest.raises(DataError, match="--arch mlp, bigru or bigru-te"):
        apply_recipe(TrainConfig(data="x", method="cmstew", modality="audio", teacher="text", arch="classifier"), ds)


def test_cross_fitted_teacher_never_sees_its_fold(tmp_path, monkeypatch):
    ds = carve_validation(tiny_utterances(), 4, 0)
    cfg = resolve(_cfg(), ds)
    seen: list[set[str]] = []
    real_run = training.run

    def spy(c, d=None):
        seen.append(set(d.groups("train")))
        return real_run(c, d)

    monkeypatch.setattr(training, "run", spy)
    cfg = train_teachers(cfg, ds, tmp_path, reuse_or_run)
    fold_of = fold_of_groups(ds, 2, cfg.seed)
    assert len(seen) == 2
    for k, groups in enumerate(seen):
        held = {g for g, f in fold_of.items() if f == k}
        assert held and not groups & held and groups | held == set(ds.groups("train"))
    # Each training sequence carries the latents of the teacher that did not see it.
    bundle = make_bundle(cfg, ds, ["audio", "text"])
    attach_teacher_latents(cfg, bundle, tmp_path)
    teachers = [load_model(tmp_path / "teacher" / "text" / f"fold{k}" / "model") for k in range(2)]

    def latent(j, s):  # teacher j on its own standardisation of the raw features
        model, meta = teachers[j]
        x = Standardizer.from_json(meta["standardizer"]).transform("text", s.source.features["text"],
                                                                   s.source.masks["text"])
        with torch.no_grad():
            return model.encoder(torch.from_numpy(x)[None], torch.ones(1, len(s.y), dtype=torch.bool))[0]

    for s in bundle.train:
        k = fold_of[s.source.group]
        own, other = latent(k, s), latent(1 - k, s)
        torch.testing.assert_close(s.x["teacher:text"], own, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(s.x["teacher:text"], other, atol=1e-3)


def test_unlabelled_steps_feed_alignment_but_not_the_prediction_loss(tmp_path):
    y = torch.tensor([[[1.0], [float("nan")]]])
    out = torch.tensor([[[5.0], [-50.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert torch.isfinite(prediction_loss(out, y, mask, "binary", "bce"))
    torch.testing.assert_close(prediction_loss(out, y, mask, "binary", "bce"),
                               prediction_loss(out[:, :1], y[:, :1], mask[:, :1], "binary", "bce"))

    labelled = tiny_utterances()
    extra = tiny_utterances(seed=1, n_videos=8)
    ds = carve_validation(add_unlabelled(labelled, extra, ["audio", "text"], tmp_path), 4, 0)
    unl = ds.split(UNLABELLED)
    assert len(unl) == 8 and all(np.isnan(s.targets).all() for s in unl)
    assert not {s.group for s in unl} & set(ds.groups("val"))  # never carved into validation
    cfg = resolve(_cfg(), ds)
    cfg = train_teachers(cfg, ds, tmp_path, reuse_or_run)
    for k in range(2):  # teachers learn from labels: no unlabelled group in their runs
        rec = json.loads((tmp_path / "teacher" / "text" / f"fold{k}" / "metrics.json").read_text())
        assert rec["method"]["name"] == "unimodal"
    bundle = make_bundle(cfg, ds, ["audio", "text"])
    method = build_cmstew(cfg, bundle, tmp_path)
    from stew.data.preprocess import WindowDataset

    unl_seqs = [s for s in bundle.train if s.source.split == UNLABELLED]
    assert len(unl_seqs) == 8 and all("teacher:text" in s.x for s in unl_seqs)
    wds = WindowDataset.for_training(unl_seqs, None, None)
    batch = wds.collate([wds[i] for i in range(len(wds))])
    loss, parts = method.training_loss(batch)
    assert torch.isfinite(loss) and float(parts["prediction"]) == 0.0 and float(parts["alignment"]) != 0.0
    # The unimodal arm has no use for them: they are not in its training set.
    uni = make_bundle(cfg.model_copy(update={"method": "unimodal"}), ds, ["audio"])
    assert len(uni.train) == len(ds.split("train"))


def test_distillation_fits_the_teachers_prediction_on_unlabelled_steps_only(tmp_path):
    from stew.data.preprocess import WindowDataset
    from stew.methods.cmstew import TEACHER_PRED
    from stew.objectives.masked import masked_bce

    ds = carve_validation(add_unlabelled(tiny_utterances(), tiny_utterances(seed=1, n_videos=8),
                                         ["audio", "text"], tmp_path), 4, 0)
    cfg = train_teachers(resolve(_cfg(cmstew={"gamma": 1.0}), ds), ds, tmp_path, reuse_or_run)
    assert resolve(_cfg(), ds).cmstew.gamma == 1.0  # the stew recipe's default; the paper's is 0
    assert resolve(_cfg(recipe="paper"), ds).cmstew.gamma == 0.0
    bundle = make_bundle(cfg, ds, ["audio", "text"])
    method = build_cmstew(cfg, bundle, tmp_path)
    assert all(TEACHER_PRED + "text" in s.x for s in bundle.train)
    probs = torch.cat([s.x[TEACHER_PRED + "text"] for s in bundle.train])
    assert ((probs > 0) & (probs < 1)).all()  # the teacher's activated (sigmoid) output

    def batch_of(split: str) -> dict:
        wds = WindowDataset.for_training([s for s in bundle.train if s.source.split == split], None, None)
        return wds.collate([wds[i] for i in range(len(wds))])

    unl, lab = batch_of(UNLABELLED), batch_of("train")
    method.eval()  # no dropout: the two computations below see the same outputs
    _, parts = method.training_loss(unl)
    out = method.weak_classifier(method.weak_encoder(unl["x"]["audio"], unl["mask"]))
    want = masked_bce(out, unl["x"][TEACHER_PRED + "text"], unl["mask"])
    torch.testing.assert_close(parts["distillation"], want.detach())
    assert float(parts["prediction"]) == 0.0
    loss, parts = method.training_loss(lab)  # every step labelled: nothing to distil
    assert float(parts["distillation"]) == 0.0 and torch.isfinite(loss)
    loss.backward()


def test_every_cross_fitted_teacher_keeps_labelled_groups(tmp_path):
    # 2 labelled training videos beside 6 unlabelled ones: each fold gets one labelled video, so neither
    # teacher is left with nothing to learn from (before, both could land in one fold).
    ds = add_unlabelled(tiny_utterances(n_videos=12), _label_free(tiny_utterances(seed=3, n_videos=6)),
                        ["audio", "text"], tmp_path)
    ds = carve_validation(ds, 4, 0)
    labelled = ds.groups("train")
    for seed in range(20):
        fold_of = fold_of_groups(ds, 2, seed)
        assert sorted(fold_of[g] for g in labelled) == [0, 1]
        assert len(fold_of) == len(labelled) + len(ds.groups(UNLABELLED))
    r = run(_cfg(out=tmp_path / "run"), ds)  # two cross-fitted teachers, each on one labelled video
    assert r["method"]["teacher_folds"] == 2


def test_sequences_moved_to_the_unlabelled_split_lose_their_labels():
    # A learning curve moves labelled recordings to the unlabelled split; their labels must not reach L_p.
    ds = carve_validation(tiny_utterances(), 4, 0)
    moved = set(ds.groups("train")[:10])
    ds = ds.replace_sequences(s.with_split(UNLABELLED) if s.split == "train" and s.group in moved else s
                              for s in ds.sequences)
    assert any(not np.isnan(s.targets).all() for s in ds.split(UNLABELLED))  # still carried by the data
    bundle = make_bundle(_cfg(), ds, ["audio", "text"])
    unl = [s for s in bundle.train if s.source.split == UNLABELLED]
    assert len(unl) == len(ds.split(UNLABELLED)) and all(torch.isnan(s.y).all() for s in unl)
    assert all(not torch.isnan(s.y).any() for s in bundle.train if s.source.split == "train")


def test_unlabelled_bad_inputs_are_one_line(tmp_path):
    data = write_native(tiny_utterances(), tmp_path / "d")
    narrow = tiny_utterances(seed=2)
    narrow.modalities["audio"] = 2
    for s in narrow.sequences:
        s.features["audio"] = s.features["audio"][:, :2]
    bad = write_native(narrow, tmp_path / "narrow")
    args = ["train", "--data", data, "--method", "cmstew", "--modality", "audio", "--teacher", "text"]
    line = one_line_error(invoke(*args, "--unlabelled", bad, "--out", tmp_path / "r1"))
    assert "--unlabelled audio features are 2-d, the training data's 4-d" in line
    line = one_line_error(invoke(*args, "--unlabelled", tmp_path / "nowhere", "--out", tmp_path / "r2"))
    assert "nowhere" in line
    line = one_line_error(invoke("train", "--data", data, "--modality", "audio", "--unlabelled", data,
                                 "--out", tmp_path / "r3"))
    assert "--unlabelled feeds CM-StEW" in line
    line = one_line_error(invoke(*args, "--recipe", "best", "--out", tmp_path / "r4"))
    assert "recipe" in line
    for i, teachers in enumerate(("text,text", "text,"), start=5):
        line = one_line_error(invoke(*args[:-2], "--teacher", teachers, "--out", tmp_path / f"r{i}"))
        assert "name each stronger modality once" in line
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 7))


def test_several_teachers_one_term_each(tmp_path):
    ds = tiny_utterances()
    for s in ds.sequences:
        s.features["video"], s.masks["video"] = s.features["text"][:, ::-1].copy(), s.masks["text"]
    ds.modalities["video"] = 3
    r = run(_cfg(teacher="text,video", out=tmp_path / "run"), ds)
    assert r["method"]["teacher"] == "text,video"
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history["method"]["teacher"] == "text,video"
    for t in ("text", "video"):
        assert all((tmp_path / "run" / "teacher" / t / f"fold{k}" / "metrics.json").is_file() for k in range(2))
    batch_parts = r.model.training_loss(_one_batch(r.bundle))[1]
    assert {"alignment_text", "alignment_video", "translation_text", "translation_video"} <= set(batch_parts)
    with pytest.raises(DataError, match="several teachers"):
        run(TrainConfig(data="x", method="emobed", modality="audio", teacher="text,video", **QUICK), ds)


def _one_batch(bundle):
    from stew.data.preprocess import WindowDataset

    wds = WindowDataset.for_training(bundle.train, None, None)
    return wds.collate([wds[i] for i in range(len(wds))])


@pytest.mark.parametrize("winner,transfer,unimodal", [
    ("unimodal", 0.40, 0.60),  # transfer worse: never shipped
    ("unimodal", 0.62, 0.60),  # a little better, but within what resampling the rows gives: p > guard_p
    ("transfer", 0.85, 0.60),  # clearly better on the pooled held-out rows
])
def test_guard_ships_the_cross_validated_winner(tmp_path, monkeypatch, winner, transfer, unimodal):
    """The decision follows the pooled held-out comparison (a paired block bootstrap); the final fit is the
    winner's."""
    ds = tiny_utterances()
    fits: list[str] = []
    real_run, real_fit = training.run, training.fit_and_write
    accuracy = {"cmstew": transfer, "unimodal": unimodal}

    def record_fit(cfg, d, out, t0, record=None):
        if record is not None and "recipe" in record:  # the guard's final fit
            fits.append(cfg.method)
        return real_fit(cfg, d, out, t0, record)

    def held_out(method: str, fold: int) -> RunResult:
        """60 held-out utterances of 12 videos, right with probability ``accuracy[method]``."""
        rng = np.random.default_rng([fold, 0 if method == "cmstew" else 1])
        y = np.tile([0, 1], 30)
        right = rng.random(60) < accuracy[method]
        frame = pd.DataFrame({"split": "test", "sequence": [f"f{fold}v{j // 5}" for j in range(60)],
                              "group": [f"f{fold}v{j // 5}" for j in range(60)], "step": np.arange(60) % 5,
                              "y": y, "prob": np.where(right, y, 1 - y) * 0.8 + 0.1})
        frame["pred"] = (frame["prob"] >= 0.5).astype(int)
        score = metrics.f1_weighted(y, frame["pred"].to_numpy())
        return RunResult(metrics={"selection": {"key": "f1_weighted"}, "test": {"f1_weighted": score}},
                         frames=[frame])

    def fake_run(c, d=None):
        if c.out is not None and "guard" in Path(c.out).parts:
            return held_out(c.method, int(Path(c.out).parent.name.removeprefix("fold")))
        return real_run(c, d)

    monkeypatch.setattr(training, "run", fake_run)
    monkeypatch.setattr(training, "fit_and_write", record_fit)
    r = real_run(_cfg(out=tmp_path / "run", cmstew={"guard_folds": 3}), ds)
    guard = json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"]["guard"]
    assert guard["folds"] == 3 and guard["on"] == "held-out folds" and guard["metric"] == "f1_weighted"
    assert guard["shipped"] == winner and winner in guard["reason"]
    assert guard["mean_gain"] == pytest.approx(guard["transfer"] - guard["unimodal"])
    assert (guard["p_value"] < 0.1) == (winner == "transfer") and 0 < guard["p_value"] <= 1
    assert fits == (["cmstew"] if winner == "transfer" else ["unimodal"])
    assert r["method"]["name"] == ("cmstew" if winner == "transfer" else "unimodal")


def test_guard_that_cannot_run_ships_unimodal(tmp_path):
    ds = tiny_utterances(n_videos=12)  # 6 training videos: too few for 3 folds plus a 4-video carve
    r = run(_cfg(out=tmp_path / "run", cmstew={"guard_folds": 3}), ds)
    guard = json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"]["guard"]
    assert guard["folds"] == 0 and guard["shipped"] == "unimodal"
    assert guard["reason"].startswith("guard cannot run: 6 labelled training groups are too few")
    assert r["method"]["name"] == "unimodal" and not (tmp_path / "run" / "teacher").exists()
    # Unguarded by the user's choice: CM-StEW ships.
    r = run(_cfg(out=tmp_path / "unguarded", cmstew={"guard_folds": 0}), ds)
    assert r["method"]["name"] == "cmstew"
    # One labelled training video, the others unlabelled pairs, and distillation (the default's gamma):
    # the measured evidence ships CM-StEW.
    one = carve_validation(tiny_utterances(), 4, 0)
    keep = one.groups("train")[0]
    one = one.replace_sequences(s if s.split != "train" or s.group == keep else s.with_split(UNLABELLED)
                                for s in one.sequences)
    r = run(_cfg(out=tmp_path / "with-pairs", cmstew={"guard_folds": 3, "gamma": None}), one)
    assert r["method"]["name"] == "cmstew" and r["method"]["gamma"] == 1.0
    assert r["recipe"]["guard"]["shipped"] == "transfer" and "unlabelled pairs" in r["recipe"]["guard"]["reason"]


def test_guard_folds_hold_out_training_groups_only():
    ds = tiny_utterances()
    folds = guard_folds(ds, 3, 0, val_groups=4)
    assert len(folds) == 3
    held = [set(f.groups("test")) for f in folds]
    assert set().union(*held) == set(ds.groups("train")) and sum(map(len, held)) == len(ds.groups("train"))
    assert all(not h & set(ds.groups("test")) for h in held)  # the real test split is never in a fold
    assert "too few" in guard_folds(ds, 3, 0, val_groups=12)


def test_default_recipe_end_to_end_with_progress(tmp_path):
    import yaml

    data = write_native(tiny_utterances(), tmp_path / "d")
    cfg = tmp_path / "c.yaml"

    cfg.write_text(yaml.safe_dump({**QUICK, "progress": True, "cmstew": {"teacher_folds": 2, "guard_folds": 2}}))
    res = invoke("train", "--data", data, "--method", "cmstew", "--modality", "audio", "--teacher", "text",
                 "--config", cfg, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "guard: CM-StEW vs unimodal (bigru) on 2 grouped folds" in out
    assert re.search(r"guard fold 2/2 unimodal: held-out f1_weighted [\d.]+ · ", out), out
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())
    shipped = rec["recipe"]["guard"]["shipped"]
    assert f"final fit: {shipped} (audio, bigru)" in out and rec["test"]
    assert rec["method"]["name"] == {"transfer": "cmstew", "unimodal": "unimodal"}[shipped]
    # Interrupted after the guard: --resume reads its finished runs back instead of training them again.
    guard_runs = sorted((tmp_path / "run" / "guard").rglob("fold*/*/metrics.json"))
    before = [p.stat().st_mtime_ns for p in guard_runs]
    (tmp_path / "run" / "metrics.json").unlink()
    res = invoke("train", "--data", data, "--method", "cmstew", "--modality", "audio", "--teacher", "text",
                 "--config", cfg, "--out", tmp_path / "run", "--resume")
    assert res.exit_code == 0, res.output
    assert len(guard_runs) == 4 and [p.stat().st_mtime_ns for p in guard_runs] == before
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"]["guard"]
    assert {**again, "wall_s": 0} == {**rec["recipe"]["guard"], "wall_s": 0}


def test_cross_fitted_stage_one_announces_each_teacher(tmp_path):
    data = write_native(tiny_utterances(), tmp_path / "d")
    res = invoke("train", "--data", data, "--method", "cmstew", "--modality", "audio", "--teacher", "text",
                 "--max-epochs", 1, "--out", tmp_path / "run")  # the default recipe, guard included
    assert res.exit_code == 0, res.output
    assert "guard fold 5/5 unimodal" in res.output
    cfg = TrainConfig(data=data, method="cmstew", modality="audio", teacher="text", out=tmp_path / "nog",
                      cmstew=CMStEWConfig(guard_folds=0, teacher_folds=3), **{**QUICK, "progress": True})
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        run(cfg)
    text = buf.getvalue()
    assert "stage 1: 3 teacher run(s) (text, bigru) cross-fitted over 3 grouped folds" in text, text
    assert re.search(r"teacher 3/3 \(text, fold 3/3\) · \d+:\d\d elapsed", text), text


def test_transfer_command_under_the_stew_recipe(tmp_path):
    import yaml

    data = write_native(tiny_utterances(), tmp_path / "d")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**QUICK, "cmstew": {"teacher_folds": 2, "guard_folds": 2}}))
    res = invoke("transfer", "--data", data, "--config", cfg, "--seeds", 1, "--gap", 0, "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    (pair,) = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert len(pair["shipped"]) == 1 and pair["shipped"][0] in ("transfer", "unimodal")
    assert "guard shipped" in res.output
    rank_run = json.loads((tmp_path / "t" / "rank" / "label" / pair["weak"] / "seed0" / "metrics.json").read_text())
    assert rank_run["config"]["arch"] == "bigru"  # the comparison arm: the recipe's student on utterances
    cm = tmp_path / "t" / "cmstew" / "label" / f"{pair['weak']}+{pair['strong']}" / "seed0"
    rec = json.loads((cm / "metrics.json").read_text())
    assert rec["recipe"]["guard"]["folds"] == 2 and rec["config"]["cmstew"]["teacher_run"] is None


def _label_free(ds: Dataset) -> Dataset:
    return ds.replace_sequences(s.without_labels() for s in ds.sequences)


def test_a_folder_without_labels_feeds_unlabelled_and_predict_but_not_train(tmp_path):
    data = write_native(tiny_utterances(), tmp_path / "d")
    extra = write_native(_label_free(tiny_utterances(seed=3, n_videos=6)), tmp_path / "extra")
    assert yaml.safe_load((extra / "manifest.yaml").read_text())["labelled"] is False
    assert "sentiment" not in pd.read_parquet(extra / "index.parquet").columns  # no column of NaNs
    back = load_dataset(extra)
    assert not back.labelled and all(np.isnan(s.targets).all() for s in back.sequences)
    assert load_dataset(data).labelled
    line = one_line_error(invoke("train", "--data", extra, "--modality", "audio", "--out", tmp_path / "r0"))
    assert "no labels" in line and "--unlabelled" in line
    assert not (tmp_path / "r0").exists()
    # What they are for: CM-StEW's unlabelled pairs, and a deployed model's input.
    cfg = TrainConfig(data=data, method="cmstew", modality="audio", teacher="text", unlabelled=extra,
                      out=tmp_path / "run", cmstew=CMStEWConfig(guard_folds=0, teacher_folds=2), **QUICK)
    run(cfg)
    preds = predict_dataset(export(tmp_path / "run", tmp_path / "model"), extra)
    assert len(preds) == back.n_steps() and preds["prob"].notna().all()


def test_unlabelled_pairs_join_once_through_the_guard(tmp_path, monkeypatch):
    data = write_native(tiny_utterances(), tmp_path / "d")
    extra = write_native(_label_free(tiny_utterances(seed=3, n_videos=6)), tmp_path / "extra")
    counts: list[tuple[str, int]] = []
    real_run = training.run

    def spy(c, d=None):
        if d is not None:
            counts.append((c.method, len(d.split(UNLABELLED))))
        return real_run(c, d)

    monkeypatch.setattr(training, "run", spy)
    cfg = TrainConfig(data=data, method="cmstew", modality="audio", teacher="text", unlabelled=extra,
                      out=tmp_path / "run", cmstew=CMStEWConfig(guard_folds=2, teacher_folds=2), **QUICK)
    r = real_run(cfg)
    assert r["recipe"]["guard"]["folds"] == 2
    # Every CM-StEW fold run got the 6 unlabelled recordings once, never twice; cross-fitted teachers none.
    assert [n for m, n in counts if m == "cmstew"] == [6, 6]
    assert all(n in (0, 6) for _, n in counts) and any(n == 0 for m, n in counts if m == "unimodal")
