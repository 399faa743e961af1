"""Fits shared between runs (stew.training.fitcache): CM-StEW's cross-fitted teachers of one seed train once
for every student, a copy gives the results a fresh fit gives, and only whole fits are ever read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

import stew.training.run as training
from stew.config import CMStEWConfig, TrainConfig
from stew.data.dataset import Dataset
from stew.experiments.store import run_key
from stew.training import fitcache
from stew.training.run import run
from tests.conftest import tiny_utterances
from tests.test_transfer_recipe import QUICK


def three_modalities() -> Dataset:
    """tiny_utterances with a second weak modality (video), so that two students share one teacher."""
    ds = tiny_utterances()
    rng = np.random.default_rng(5)
    seqs = [replace(s, features={**s.features, "video": s.features["audio"][:, ::-1] + rng.normal(0, 1, (len(s), 4))
                                 .astype(np.float32)}, masks={**s.masks, "video": s.masks["audio"]})
            for s in ds.sequences]
    return replace(ds, modalities={**ds.modalities, "video": 4}, sequences=seqs)


def stew_cfg(tmp_path: Path, modality: str, out: str, cache: bool = True, **kw) -> TrainConfig:
    return TrainConfig(
        data=tmp_path, method="cmstew", modality=modality, teacher="text", out=tmp_path / out, seed=3,
        fit_cache=tmp_path / "fits" if cache else None,
        cmstew=CMStEWConfig(teacher_folds=2, guard_folds=kw.pop("guard_folds", 0)), **{**QUICK, **kw},
    )


def count_fits(monkeypatch) -> list[str]:
    """The modality of every fit trained from here on (fresh, not copied)."""
    trained: list[str] = []
    fresh = training._fit_fresh

    def counting(cfg, ds, out):
        trained.append(cfg.modality)
        return fresh(cfg, ds, out)

    monkeypatch.setattr(training, "_fit_fresh", counting)
    return trained


def teacher_weights(run_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((run_dir / "teacher" / "text").glob("fold*/model/model.safetensors"))]


def test_cross_fitted_teachers_train_once_per_seed_and_copies_change_nothing(tmp_path, monkeypatch):
    ds = three_modalities()
    run(stew_cfg(tmp_path, "audio", "audio"), ds)
    trained = count_fits(monkeypatch)
    video = run(stew_cfg(tmp_path, "video", "video"), ds)
    assert trained == ["video"]  # the student only: both teachers came from the cache
    # The same run without a cache trains its own teachers and gets the same teachers and student.
    trained.clear()
    alone = run(stew_cfg(tmp_path, "video", "alone", cache=False), ds)
    assert trained == ["video", "text", "text"]
    assert teacher_weights(tmp_path / "video") == teacher_weights(tmp_path / "alone") != []
    assert teacher_weights(tmp_path / "video") == teacher_weights(tmp_path / "audio")
    assert video["val"] == alone["val"] and video["test"] == alone["test"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "video" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "alone" / "predictions.csv"))
    # A copied teacher records where it now lies, not where it was trained.
    copied = json.loads((tmp_path / "video" / "teacher" / "text" / "fold1" / "metrics.json").read_text())
    assert copied["config"]["out"] == str(tmp_path / "video" / "teacher" / "text" / "fold1")
    assert copied["config"]["flagged"] == json.loads((tmp_path / "alone" / "teacher" / "text" / "fold1" /
                                                      "metrics.json").read_text())["config"]["flagged"]


def test_the_cache_holds_each_fits_own_record_not_the_run_around_it(tmp_path, monkeypatch):
    ds = tiny_utterances()
    guarded = run(stew_cfg(tmp_path, "audio", "guarded", guard_folds=2), ds)
    assert "recipe" in guarded.metrics
    published = sorted((tmp_path / "fits").glob("*/metrics.json"))
    assert published and not list((tmp_path / "fits").glob(".part-*"))
    for p in published:  # the guard's decision and the leakage verdict belong to the run, not to its fits
        assert not {"recipe", "leakage", "wall_s"} & set(json.loads(p.read_text())), p
    # A fit, not its resumption state: the teachers' checkpoints (in the run folder) are not published.
    assert list((tmp_path / "guarded").rglob("checkpoints")) and not list((tmp_path / "fits").rglob("checkpoints"))
    # The guard's final fit is a fit of the winning arm's configuration: run again, it is copied whole.
    trained = count_fits(monkeypatch)
    again = run(stew_cfg(tmp_path, "audio", "again", guard_folds=2), ds)
    assert trained == [] and again["recipe"]["guard"] == {**guarded["recipe"]["guard"],
                                                         "wall_s": again["recipe"]["guard"]["wall_s"]}
    assert again["val"] == guarded["val"] and (tmp_path / "again" / "model" / "model.safetensors").is_file()


def test_identity_is_what_decides_the_result(tmp_path):
    ds = tiny_utterances()
    cfg = TrainConfig(data=tmp_path, modality="audio", fit_cache=tmp_path / "fits", val_from="test", **QUICK)
    key = fitcache.identity(cfg, ds)
    same = [cfg.model_copy(update=u) for u in ({"out": tmp_path / "x"}, {"progress": False}, {"threads": 1},
                                               {"flagged": ["audio"]}, {"data": tmp_path / "elsewhere"})]
    assert all(fitcache.identity(c, ds) == key for c in same)
    other = [cfg.model_copy(update=u) for u in ({"seed": 1}, {"dropout": 0.5}, {"arch": "bigru"})]
    assert all(fitcache.identity(c, ds) != key for c in other)
    # flagged decides val_from while that is auto: then it is part of the identity.
    auto = cfg.model_copy(update={"val_from": "auto"})
    assert fitcache.identity(auto, ds) != fitcache.identity(auto.model_copy(update={"flagged": ["audio"]}), ds)
    nudged = [replace(s, targets=1 - s.targets) if i == 0 else s for i, s in enumerate(ds.sequences)]
    moved = [s.with_split("test") if i == 0 else s for i, s in enumerate(ds.sequences)]
    assert fitcache.identity(cfg, ds.replace_sequences(nudged)) != key
    assert fitcache.identity(cfg, ds.replace_sequences(moved)) != key
    assert fitcache.identity(cfg.model_copy(update={"fit_cache": None}), ds) is None
    assert fitcache.identity(cfg.model_copy(update={"tracker": "tensorboard"}), ds) is None  # a copy logs no epochs
    # The run store's key ignores the cache's place, so a sweep's finished runs stay finished.
    dumped = json.loads(cfg.model_dump_json())
    assert run_key(dumped, "fp") == run_key({**dumped, "fit_cache": None}, "fp")


def test_only_whole_fits_are_read_and_the_first_publisher_wins(tmp_path, monkeypatch):
    ds = tiny_utterances()
    cfg = TrainConfig(data=tmp_path, modality="audio", fit_cache=tmp_path / "fits", out=tmp_path / "a", **QUICK)
    first = run(cfg, ds)
    [published] = (tmp_path / "fits").iterdir()
    metrics = published / "metrics.json"
    before = metrics.read_text()
    # Published again (a second worker that trained the same fit at once): the first copy stays.
    fitcache.publish(first.cfg, published.name, tmp_path / "a", {**first.metrics, "val": {}})
    assert metrics.read_text() == before and not list((tmp_path / "fits").glob(".part-*"))
    trained = count_fits(monkeypatch)
    run(cfg.model_copy(update={"out": tmp_path / "b"}), ds)
    assert trained == []
    metrics.unlink()  # a fit without its metrics.json is not whole: trained again, not read
    run(cfg.model_copy(update={"out": tmp_path / "c"}), ds)
    assert trained == ["audio"]
