"""A whole run: ``run(cfg)`` loads and checks the data, resolves the configuration, carves validation by
whole groups, runs the method's stages (CM-StEW's teachers and guard, stew.training.stages), trains every
candidate of its search space with the shared loop, keeps the best on validation, scores it on validation
and test, and writes ``metrics.json``, ``predictions.csv``, ``latents.npz`` and the deployable ``model/``
folder. The test split is never used for any choice (docs/architecture.md)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from stew import methods
from stew.config import TrainConfig
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.io import data_fingerprint, load_dataset
from stew.data.leakage import warning_line
from stew.data.splits import add_unlabelled, grouped_folds
from stew.deploy import save_model
from stew.errors import DataError
from stew.scoring.postprocess import apply_chains, fit_chains
from stew.training import fitcache, stages, tracking
from stew.training.devices import CPU, resolve_device
from stew.training.evaluate import predict_sequences, predictions_frame, score, selection_key, validation_latents
from stew.training.loop import fit
from stew.training.resolve import carve, choose_validation, fuse_inputs, make_bundle, resolve
from stew.training.result import METRICS, PREDICTIONS, RunResult, finished
from stew.util import progress
from stew.util.atomic import check_output_folder, write_text_atomic

# What stew writes in a run folder (reproduce's job file and grid candidates, a CV's folds, the
# temporary model folder a killed run leaves): the entries ``overwrite`` may delete.
RUN_FOLDER_ENTRIES = re.compile(
    r"metrics\.json|predictions\.csv|latents\.npz|model|checkpoints|logs|grid|teacher|guard|fold\d+|missing[^/]*\.json|"
    r"alpha[^/]*_beta[^/]*|stew-job\.json|\.model\..+"
)


def check_run_folder(cfg: TrainConfig) -> None:
    """Refuse a non-empty ``cfg.out`` unless the run resumes it or (if it holds only stew's files)
    replaces it: an earlier run must not be lost to a typo or a re-used command line. Checked before the
    data are loaded (seconds to minutes on real data), not when the run is written."""
    if cfg.out is None:
        return
    if cfg.resume:
        check_output_folder(Path(cfg.out), overwrite=True)  # continued in place
    elif cfg.overwrite:
        check_output_folder(Path(cfg.out), replaceable=RUN_FOLDER_ENTRIES)
    else:
        check_output_folder(Path(cfg.out), overwrite=False, resumable=True)


def run(cfg: TrainConfig, ds: Dataset | None = None) -> RunResult:
    """Train, select and evaluate one configuration; write its artefacts under ``cfg.out``.

    Methods with a validation grid (CM-StEW's alpha and beta) train one candidate per grid point
    and keep the best on validation; the others are recorded in ``metrics.json``.
    """
    t0 = time.time()
    methods.get(cfg.method).check_knobs(cfg)  # a knob the method ignores is refused before anything is read
    resolve_device(cfg)  # a device this machine lacks, too
    check_run_folder(cfg)
    tracking.check_tracker(cfg)  # last: a usable MLflow store is opened (made if new)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from_folder = ds is None
    if from_folder:
        ds = load_dataset(cfg.data, feature_set=cfg.feature_set or cfg.target, fold=cfg.fold)
    if not ds.labelled:
        raise DataError("these recordings have no labels (labelled: false): train on labelled data and give "
                        "these to CM-StEW as --unlabelled, or predict on them", file=cfg.data)
    cfg, ds = fuse_inputs(cfg, ds)
    cfg = resolve(cfg, ds)
    method = methods.get(cfg.method)
    modalities = method.required_modalities(cfg)  # a missing or equal --teacher fails before any stage trains
    # The leakage verdict is cached per data folder: hashed only when it is to be probed.
    fingerprint = data_fingerprint(cfg.data) if from_folder and cfg.flagged is None else None
    cfg, verdict = choose_validation(cfg, ds, modalities, fingerprint)
    record = {"leakage": {**verdict.to_json(), "used_flagged": verdict.used(modalities)}}
    out = Path(cfg.out) if cfg.out else None
    if cfg.overwrite and out is not None and out.is_dir() and any(out.iterdir()):
        # Replaced only now that the configuration and data have passed their checks.
        shutil.rmtree(out)
    if method.trains_on_unlabelled and cfg.unlabelled is not None and not ds.split(UNLABELLED):
        # Added once: the guard's and --cv's fold runs get a dataset that already holds them.
        ds = add_unlabelled(ds, load_dataset(cfg.unlabelled), modalities, cfg.unlabelled)
    warning = warning_line(verdict, modalities)  # once the inputs have passed their checks
    if warning:
        progress.sayer(cfg.progress)(warning)
    if cfg.cv:
        return _run_cv(cfg, ds, out, record)
    if method.stage1_teachers and cfg.cmstew.guard_folds:
        return stages.guarded_run(cfg, ds, out, t0, record, reuse_or_run=reuse_or_run, fit_and_write=fit_and_write)
    return fit_and_write(cfg, ds, out, t0, record)


def reuse_or_run(cfg: TrainConfig, ds: Dataset) -> RunResult:
    """A stage's run in ``cfg.out``, quietly: read back if it finished before an interruption, else
    trained from scratch (a run cut short is not resumed: its stage restarts it)."""
    if cfg.out is not None and finished(Path(cfg.out)):
        return RunResult.read(Path(cfg.out))
    if cfg.out is not None:
        shutil.rmtree(cfg.out, ignore_errors=True)
    return run(cfg.model_copy(update={"progress": False, "resume": False, "overwrite": False}), ds)


def fit_and_write(
    cfg: TrainConfig, ds: Dataset, out: Path | None, t0: float, record: dict | None = None,
    trained: RunResult | None = None,
) -> RunResult:
    """One resolved configuration on one dataset: carve validation, stage 1, the grid, the fit, the run
    folder. ``record`` joins metrics.json (CM-StEW's guard writes its decision there). ``trained``: a run of
    this very configuration on these very groups, still in memory (the guard's arm when validation comes
    from test), written as this run instead of being trained a second time."""
    reuse = trained if trained is not None and trained.model is not None else None
    # A fit another run of the sweep already made (the same configuration on the same data) is copied.
    key = fitcache.identity(cfg, ds) if out is not None and reuse is None else None
    fit_metrics = None  # a fresh fit's own record, published to the fit cache
    if reuse is not None:
        # Same configuration, carve and seed: training again would give the same weights (CPU runs are
        # bit-identical per seed, tests/test_training.py) at the cost of the whole run, teachers included.
        result = reuse
        result.metrics["config"] = {**result.metrics["config"], "out": None if out is None else str(out),
                                    "progress": cfg.progress}
        # Its per-epoch logs, and its cross-fitted teachers (<run>/teacher, stages.train_teachers), go with it.
        for part in ("logs", "teacher"):
            if out is not None and reuse.folder is not None and (reuse.folder / part).is_dir():
                shutil.copytree(reuse.folder / part, out / part, dirs_exist_ok=True)
    elif out is not None and (copied := fitcache.restore(cfg, key, out)) is not None:
        progress.sayer(cfg.progress)(f"the same fit is in the fit cache ({cfg.fit_cache}): copied, not trained")
        result = copied
    else:
        result = _fit_fresh(cfg, ds, out)
        fit_metrics = dict(result.metrics)
    result.metrics.update(record or {})
    result.metrics["wall_s"] = round(time.time() - t0, 2)
    if out is not None:
        if result.model is None:  # copied from the fit cache: all in place but metrics.json, written last
            write_text_atomic(out / METRICS, json.dumps(result.metrics, indent=2))
        else:
            _write_run(result, out)
        if fit_metrics is not None:
            fitcache.publish(cfg, key, out, fit_metrics)
        result.folder = out
    tracking.finish(result.metrics, out)
    return result


def _fit_fresh(cfg: TrainConfig, ds: Dataset, out: Path | None) -> RunResult:
    """Carve validation, stage 1, the grid or the one fit."""
    method = methods.get(cfg.method)
    ds = carve(cfg, ds)
    work = out or Path(tempfile.mkdtemp(prefix="stew-run-"))
    fresh = out is not None and not out.exists()
    try:
        if method.stage1_teachers:
            cfg = stages.train_teachers(cfg, ds, work, reuse_or_run)
        candidates = method.candidates(cfg)
        result = _fit_one(candidates[0], ds, work) if len(candidates) == 1 else _fit_grid(candidates, ds, work)
    except DataError:
        # Bad input found while building the method: leave no half-made run folder behind.
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if out is None:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _fit_grid(candidates: list[TrainConfig], ds: Dataset, work: Path) -> RunResult:
    """One run per grid point (CM-StEW's alpha x beta), announced: the grid multiplies the run's time.

    Returns the best on validation, every candidate's score recorded in its ``selection["grid"]``."""
    say = progress.sayer(candidates[0].progress)
    n, t0 = len(candidates), time.monotonic()
    say(f"alpha/beta grid: {n} candidates on validation, each trained like one run")
    grid: list[dict] = []
    best: RunResult | None = None
    for i, c in enumerate(candidates):
        say(f"candidate {i + 1}/{n} (alpha {c.cmstew.alpha:g}, beta {c.cmstew.beta:g}) · {progress.so_far(t0, i, n)}")
        r = _fit_one(c, ds, work / "grid" / methods.get(c.method).candidate_name(c))
        key = r["selection"]["key"]
        grid.append({**r["method"], f"val_{key}": r["val"][key]})
        # Only the best so far is kept: each result holds its model and prepared data (GBs on long
        # frame-level sets), and the grid would otherwise hold 16 of them at once.
        if best is None or r["val"][key] > best["val"][key]:
            best = r
    assert best is not None
    say(f"alpha/beta grid done in {progress.clock(time.monotonic() - t0)}: alpha {best['method']['alpha']:g}, "
        f"beta {best['method']['beta']:g} chosen (val {key} {best['val'][key]:.4g})")
    best["selection"]["grid"] = grid
    return best


def _fit_one(cfg: TrainConfig, ds: Dataset, fit_dir: Path) -> RunResult:
    """One candidate: build the method, fit it, evaluate its best epoch on validation and test."""
    definition = methods.get(cfg.method)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    bundle = make_bundle(cfg, ds, definition.required_modalities(cfg))
    fit_dir.mkdir(parents=True, exist_ok=True)
    method = definition.build(cfg, bundle, fit_dir)
    key = selection_key(method, bundle)
    if method.closed_form:
        offset = method.fit_closed_form(bundle, lambda preds: score(preds, bundle.val, bundle)[key])
        # The label offset found on validation plays the label delay's part from here on (predict, export).
        bundle = replace(bundle, k_delay=offset)
        selection = {"key": key, "best_epoch": None, "epochs_run": 0}
        device, tracked = CPU.to_json(), tracking.closed_form(cfg, fit_dir)
    else:
        module = fit(method, cfg, bundle, fit_dir)
        device, tracked = module.device_used, module.tracked
        method.after_fit(bundle)
        selection = {"key": key, "best_epoch": module.best_epoch, "epochs_run": len(module.history)}
        if cfg.lr_scheduler == "plateau":  # the epochs whose learning rate the plateau schedule lowered
            h = module.history
            selection["lr_reduced_at"] = [b["epoch"] for a, b in zip(h, h[1:], strict=False)
                                          if b.get("lr", 0.0) < a.get("lr", 0.0)]
    record: dict[str, Any] = {"val": {}, "test": {}}
    result = RunResult(metrics=record, model=method, bundle=bundle, cfg=cfg)
    raw = {sp: predict_sequences(method, getattr(bundle, sp), bundle) for sp in ("val", "test") if getattr(bundle, sp)}
    method.cpu()  # the result keeps its model in host memory: a sweep may hold many, and GPU memory is scarcer
    if cfg.postprocess:
        # The AVEC chain is searched on validation only, then applied unchanged to test.
        cols = bundle.target_cols
        chains, report = fit_chains(
            raw["val"], [s.source.targets[:, cols] for s in bundle.val],
            np.concatenate([s.source.targets[:, cols] for s in bundle.train]), bundle.targets, bundle.ds.step_rate_hz,
        )
        record["postprocess"] = {t: {**chains[t].to_json(), **report[t]} for t in bundle.targets}
        result.chains = chains
    for split, preds in raw.items():
        seqs = getattr(bundle, split)
        final = preds
        if result.chains is not None:
            final = apply_chains(result.chains, preds, bundle.targets)
            record[f"{split}_raw"] = score(preds, seqs, bundle)
        record[split] = score(final, seqs, bundle)
        result.frames.append(predictions_frame(split, final, seqs, bundle, raw=preds if result.chains else None))
    record["config"] = json.loads(cfg.model_dump_json())
    record["selection"] = selection
    record["device"] = device  # where it trained (config.accelerator says what was asked)
    if tracked is not None:
        record["tracking"] = tracked
    record["method"] = {"name": cfg.method, **method.extra_record()}
    if definition.stage1_teachers:
        # One stage-1 run, or None: cross-fitted teachers live in <run>/teacher/<modality>/fold<k>.
        teacher_run = cfg.cmstew.teacher_run
        record["method"]["stage1_run"] = str(teacher_run) if teacher_run is not None else None
        record["method"]["teacher_folds"] = cfg.cmstew.teacher_folds
    record["data"] = {
        "name": ds.name, "val_from": cfg.val_from, "val_groups": ds.groups("val"), "test_groups": ds.groups("test"),
        "label_delay_steps": bundle.k_delay,
        "window_steps": bundle.win, "hop_steps": bundle.hop, "eval_window_steps": bundle.eval_win,
    }
    return result


def _write_run(result: RunResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_model(result.model.student, result.bundle, result.cfg, out / "model", result.chains)
    # npz of plain arrays (np.load with allow_pickle=False reads it); written before metrics.json,
    # whose presence marks a complete run folder.
    np.savez(out / "latents.npz", **validation_latents(result.model, result.bundle))
    result.predictions.to_csv(out / PREDICTIONS, index=False)
    write_text_atomic(out / METRICS, json.dumps(result.metrics, indent=2))


def _run_cv(cfg: TrainConfig, ds: Dataset, out: Path | None, record: dict) -> RunResult:
    """Grouped K-fold over the training groups: one run per fold, then mean and std of each metric."""
    folds = grouped_folds(ds, cfg.cv, cfg.seed)
    results = []
    for i, fold_ds in enumerate(folds):
        fold_cfg = cfg.model_copy(update={"cv": None, "out": (out / f"fold{i}") if out else None})
        results.append(run(fold_cfg, fold_ds))
    summary: dict = {"config": json.loads(cfg.model_dump_json()), "folds": []}
    for split in ("val", "test"):
        keys = results[0][split].keys()
        summary[split] = {k: float(np.mean([r[split][k] for r in results])) for k in keys}
        summary[f"{split}_std"] = {k: float(np.std([r[split][k] for r in results], ddof=1)) for k in keys}
    summary["folds"] = [{"val": r["val"], "test": r["test"]} for r in results]
    summary["device"] = results[0].metrics.get("device")
    summary.update(record)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / METRICS, json.dumps(summary, indent=2))
    return RunResult(metrics=summary, folder=out)
