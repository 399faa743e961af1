"""Stages a method runs around its own training, each receiving the trainer functions it calls (so that
nothing here imports :mod:`stew.training.run`): CM-StEW's stage 1 (its teachers, trained on the stronger
modality's labels, cross-fitted over grouped folds) and the negative-transfer guard (docs/transfer.md)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from stew.config import TRAIN_VAL_GROUPS, TrainConfig
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.splits import held_out_folds
from stew.errors import DataError
from stew.methods.base import target_names
from stew.methods.cmstew import fold_of_groups, teacher_dirs
from stew.scoring import metrics
from stew.training.result import RunResult, finished
from stew.util import progress

Run = Callable[[TrainConfig, Dataset], RunResult]


def teacher_config(cfg: TrainConfig, out: Path, strong: str | None = None) -> TrainConfig:
    """The stronger modality's unimodal encoder-classifier, on the same data, carve and seed."""
    return cfg.model_copy(update={
        "method": "unimodal", "modality": strong or cfg.teacher, "teacher": None, "ablation": None,
        "arch": cfg.cmstew.teacher_arch or "bigru-te", "out": out, "cv": None, "unlabelled": None,
    })


def train_teachers(cfg: TrainConfig, ds: Dataset, work: Path, reuse_or_run: Run) -> TrainConfig:
    """Stage 1: train the teacher(s) unless a finished unimodal run is given; cross-fitted with K folds.
    A teacher that finished before an interruption is reused, one cut short is trained again."""
    c = cfg.cmstew
    if c.teacher_run is not None:
        if len(cfg.teachers) > 1 or (c.teacher_folds or 1) > 1:
            raise DataError("cmstew.teacher_run is one teacher on the whole training split: "
                            "it cannot serve several teachers or cross-fitting (set cmstew.teacher_folds: 1)")
        _check_teacher(c.teacher_run, cfg, ds)
        return cfg
    say = progress.sayer(cfg.progress)
    # No more folds than labelled training groups: a fold without groups would train a teacher for nothing.
    k = min(c.teacher_folds or 1, len(ds.groups("train")))
    cfg = cfg.model_copy(update={"cmstew": c.model_copy(update={"teacher_folds": k})})
    c = cfg.cmstew
    dirs = teacher_dirs(cfg, work)
    fold_of = fold_of_groups(ds, k, cfg.seed) if k > 1 else {}
    n, t0 = sum(len(v) for v in dirs.values()), time.monotonic()
    arch = c.teacher_arch or "bigru-te"
    how = f"cross-fitted over {k} grouped folds" if k > 1 else "on the whole training split"
    say(f"stage 1: {n} teacher run(s) ({', '.join(cfg.teachers)}, {arch}) {how}")
    i = 0
    for strong, runs in dirs.items():
        for fold, run_dir in enumerate(runs):
            i += 1
            if finished(run_dir):
                continue  # finished before an interruption: --resume reuses it
            say(f"teacher {i}/{n} ({strong}{f', fold {fold + 1}/{k}' if k > 1 else ''}) · "
                f"{progress.so_far(t0, i - 1, n)}")
            # Fold k's teacher never sees fold k's groups (nor any unlabelled ones: it learns from labels).
            teacher_ds = ds.replace_sequences(
                s for s in ds.sequences
                if s.split != UNLABELLED and not (s.split == "train" and fold_of.get(s.group) == fold)
            ) if k > 1 else ds
            reuse_or_run(teacher_config(cfg, run_dir, strong), teacher_ds)
    say(f"stage 1 done in {progress.clock(time.monotonic() - t0)}; stage 2: CM-StEW on {cfg.modality}")
    if len(dirs) == 1 and k == 1:
        c = c.model_copy(update={"teacher_run": dirs[cfg.teacher][0]})
        return cfg.model_copy(update={"cmstew": c})
    return cfg


def _check_teacher(run_dir: Path, cfg: TrainConfig, ds: Dataset) -> None:
    meta_path, metrics_path = Path(run_dir) / "model" / "model.json", Path(run_dir) / "metrics.json"
    for p in (meta_path, metrics_path):
        if not p.is_file():
            raise DataError("teacher run is not a finished stew run", file=p)
    meta, rec = json.loads(meta_path.read_text()), json.loads(metrics_path.read_text())
    if meta["modality"] != cfg.teacher:
        raise DataError(f"teacher run is for {meta['modality']!r}, not --teacher {cfg.teacher!r}", file=meta_path)
    # The teacher must share the training split: otherwise it has seen this run's validation data,
    # and its standardisation differs from the one applied to this run's inputs.
    if sorted(rec.get("data", {}).get("val_groups", [])) != ds.groups("val"):
        raise DataError("teacher run used a different validation carve (seed or data differ)", file=metrics_path)


def unimodal_of(cfg: TrainConfig) -> TrainConfig:
    """The guard's other arm: the student's architecture trained on its own modality's labels."""
    return cfg.model_copy(update={"method": "unimodal", "teacher": None, "ablation": None, "unlabelled": None})


def guard_folds(ds: Dataset, k: int, seed: int, val_groups: int) -> list[Dataset] | str:
    """:func:`held_out_folds` over the labelled training groups, or why not when the groups are too few
    for K folds plus each fold run's validation carve."""
    own_val = bool(ds.split("val"))
    n = len(ds.groups("train"))
    k = min(k, n)
    left = n - math.ceil(n / k) - (0 if own_val else val_groups) if k >= 2 else 0
    if left < 1:
        return (f"{n} labelled training groups are too few for {k} guard folds"
                + ("" if own_val else f" plus a {val_groups}-group validation carve"))
    return held_out_folds(ds, k, seed)


BLOCK_S = 10.0  # frame-level rows are resampled in 10 s stretches of a recording: neighbouring frames move together


def guarded_run(
    cfg: TrainConfig, ds: Dataset, out: Path | None, t0: float, record: dict | None = None, *,
    reuse_or_run: Run, fit_and_write: Callable[..., RunResult],
) -> RunResult:
    """Compare CM-StEW with the unimodal model of the same architecture on data neither chose anything
    on, then fit the winner on all the training data and ship it (docs/transfer.md, "The guard").

    Where validation comes from a labelled test split (label-fitted training features: ``val_from: test``),
    both arms train on all the training groups and are compared on those validation groups, the only
    honest data there. Otherwise they are cross-validated over grouped folds of the training groups (each
    fold's CM-StEW cross-fits its own teachers, so no teacher has seen the fold a student is scored on),
    and compared on the pooled held-out predictions. Transfer ships when it is ahead and a paired block
    bootstrap of the difference gives p below ``cmstew.guard_p``; scores, p and the decision are recorded.
    """
    record = dict(record or {})
    say = progress.sayer(cfg.progress)
    arms = {"transfer": cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={"guard_folds": 0})}),
            "unimodal": unimodal_of(cfg)}
    t_guard = time.monotonic()
    if cfg.val_from == "test":
        say(f"guard: CM-StEW vs unimodal ({cfg.arch}) on the validation groups taken from the test split, "
            "2 runs; the winner is the final model")
        runs = {}
        for i, (arm, arm_cfg) in enumerate(arms.items()):
            d = out / "guard" / arm if out is not None else None
            r = runs[arm] = reuse_or_run(arm_cfg.model_copy(update={"out": d}), ds)
            key = r["selection"]["key"]
            say(f"guard {arm}: validation {key} {r['val'][key]:.4g} · {progress.so_far(t_guard, i + 1, 2)}")
        frames = {arm: r.predictions.query("split == 'val'") for arm, r in runs.items()}
        where, folds = "validation (test groups)", 0
    else:
        folds_ds = guard_folds(ds, cfg.cmstew.guard_folds, cfg.seed, cfg.val_groups or TRAIN_VAL_GROUPS)
        if isinstance(folds_ds, str):
            # No held-out comparison is possible, so the measured evidence decides (BENCHMARKS.md, "Making
            # transfer pay"): transfer ships only with unlabelled pairs and the distillation term.
            ship = "transfer" if ds.split(UNLABELLED) and cfg.cmstew.gamma else "unimodal"
            why = ("with unlabelled pairs and distillation, where transfer has gained and never significantly "
                   "lost in stew's benchmarks, CM-StEW ships" if ship == "transfer" else
                   "without unlabelled pairs transfer has not beaten the unimodal student in stew's benchmarks, "
                   "so the unimodal model ships")
            reason = f"guard cannot run: {folds_ds}; {why} (cmstew.guard_folds: 0 ships CM-StEW unguarded)"
            say(reason)
            record["recipe"] = {"name": cfg.recipe, "guard": {"folds": 0, "shipped": ship, "reason": reason}}
            return fit_and_write(arms[ship], ds, out, t0, record)
        folds = len(folds_ds)
        say(f"guard: CM-StEW vs unimodal ({cfg.arch}) on {folds} grouped folds of the training groups, "
            f"{2 * folds} runs before the final fit")
        parts: dict[str, list] = {arm: [] for arm in arms}
        for i, fold_ds in enumerate(folds_ds):
            for arm, arm_cfg in arms.items():
                d = out / "guard" / f"fold{i}" / arm if out is not None else None
                # Finished before an interruption: read back; cut short: run again.
                r = reuse_or_run(arm_cfg.model_copy(update={"out": d}), fold_ds)
                key = r["selection"]["key"]
                parts[arm].append(r.predictions.query("split == 'test'").assign(fold=i))
                done = 2 * i + (1 if arm == "transfer" else 2)
                say(f"guard fold {i + 1}/{folds} {arm}: held-out {key} {r['test'][key]:.4g} · "
                    f"{progress.so_far(t_guard, done, 2 * folds)}")
        frames = {arm: pd.concat(f, ignore_index=True) for arm, f in parts.items()}
        where = f"the held-out groups of {folds} grouped folds"
    key, scores, gain, p = compare_arms(frames["transfer"], frames["unimodal"], ds, target_names(cfg, ds), cfg.seed)
    limit = cfg.cmstew.guard_p
    ship = "transfer" if gain > 0 and p < limit else "unimodal"
    verdict = "transfer helps here" if ship == "transfer" else f"no evidence that transfer helps (p < {limit:g} needed)"
    reason = (f"CM-StEW's {key} on {where} is {gain:+.4g} over unimodal (block bootstrap p = {p:.3g}): {verdict}, "
              f"so the {ship} model ships")
    say(f"guard: {reason}")
    record["recipe"] = {
        "name": cfg.recipe, "guard": {
            "folds": folds, "on": "validation (from test)" if not folds else "held-out folds", "metric": key,
            "transfer": scores["transfer"], "unimodal": scores["unimodal"], "mean_gain": gain, "p_value": p,
            "shipped": ship, "reason": reason, "wall_s": round(time.monotonic() - t_guard, 1)}}
    if not folds and runs[ship].model is not None:
        # Validation from test: the winning arm already trained on all the training groups.
        say(f"final model: the guard's {ship} run ({cfg.modality}, {cfg.arch}), already trained on all the "
            "training groups")
        return fit_and_write(arms[ship], ds, out, t0, record, trained=runs[ship])
    say(f"final fit: {ship} ({cfg.modality}, {cfg.arch}) on all the training groups")
    return fit_and_write(arms[ship], ds, out, t0, record)


def compare_arms(
    a: pd.DataFrame, b: pd.DataFrame, ds: Dataset, targets: list[str], seed: int
) -> tuple[str, dict[str, float], float, float]:
    """Two models' predictions on the same rows (``predictions.csv`` frames): the selection metric of
    each, A's gain over B and its paired block-bootstrap p-value (one-sided)."""
    if len(a) != len(b) or not (a["sequence"].to_numpy() == b["sequence"].to_numpy()).all():
        raise ValueError("the guard's arms were scored on different rows")
    key = metrics.selection_metric(ds.task, targets)
    y = _arrays(a, ds.task, targets)
    pa, pb = _arrays(a, ds.task, targets, pred=True), _arrays(b, ds.task, targets, pred=True)

    def score(rows: np.ndarray, pred: np.ndarray) -> float:
        return metrics.task_metrics(ds.task, targets, y[rows], pred[rows])[key]

    everything = np.arange(len(a))
    scores = {"transfer": float(score(everything, pa)), "unimodal": float(score(everything, pb))}
    gain, p = metrics.paired_bootstrap(lambda rows: score(rows, pa) - score(rows, pb), _blocks(a, ds), seed=seed)
    return key, scores, gain, p


def _arrays(frame: pd.DataFrame, task: str, targets: list[str], pred: bool = False) -> np.ndarray:
    if task == "regression":
        return frame[[f"{'pred' if pred else 'y'}_{t}" for t in targets]].to_numpy(np.float64)
    if not pred:
        return frame[["y"]].to_numpy()
    if task == "binary":
        return frame["prob"].to_numpy(np.float64)
    return frame[sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))].to_numpy()


def _blocks(frame: pd.DataFrame, ds: Dataset) -> np.ndarray:
    """Resampling units: 10 s stretches of a recording at a frame rate; otherwise whole sequences (a
    video's utterances together, or a clip). Utterances of one video share a speaker and a topic, and on
    MOSI a bootstrap over single utterances of 5 validation videos shipped transfer at p < 0.1 twice in
    ten runs where it then lost on the test videos (BENCHMARKS.md, "CMU-MOSI on unseen videos")."""
    fold = frame["fold"].astype(str) if "fold" in frame else ""
    unit = fold + "/" + frame["sequence"].astype(str)
    if ds.step_rate_hz and ds.label_level == "step":
        size = max(1, round(BLOCK_S * ds.step_rate_hz))
        unit = unit + "/" + (frame["step"].to_numpy() // size).astype(str)
    return unit.to_numpy()
