"""Fits shared between runs (``TrainConfig.fit_cache``, docs/architecture.md#shared-fits).

The runs of a sweep often need the very same fit: the cross-fitted teachers of CM-StEW's stew recipe depend
on the teacher modality, the seed and the data, not on the student, so an audio and a video student of one
seed would train five identical teachers each. With a fit cache the first run trains them and publishes
them there; the second copies them. A fit's identity is everything that decides its result: the resolved
configuration without the fields that only say where or how fast it runs (config.NOT_IN_IDENTITY), the
digest of a finished run it reads (``cmstew.teacher_run``), and the content of its dataset, splits included
(Dataset.digest). A run is deterministic per seed on one device (tests/test_training.py), so the copy is
what training again would give.

A published fit is whole or absent: it is written to a temporary folder and renamed into place, so two
workers that train the same fit at once both finish, and the first rename wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stew.config import NOT_IN_IDENTITY, TrainConfig
from stew.data.dataset import Dataset
from stew.deploy.meta import META
from stew.training.result import METRICS, RunResult, finished

FITS = "fits"  # the fit cache of a sweep (reproduce, rank, transfer): this folder under its output folder
# What a fit leaves in its run folder besides metrics.json (CM-StEW's cross-fitted teachers in teacher/).
FIT_ENTRIES = ("predictions.csv", "latents.npz", "model", "logs", "teacher")


def identity(cfg: TrainConfig, ds: Dataset) -> str | None:
    """The key of ``cfg``'s fit on ``ds`` in the cache; None where it is not shared (no cache, or a tracked
    run, whose per-epoch losses a copy would not log)."""
    if cfg.fit_cache is None or cfg.tracker != "none":
        return None
    conf = {k: v for k, v in json.loads(cfg.model_dump_json()).items() if k not in NOT_IN_IDENTITY}
    if conf["val_from"] != "auto":
        conf.pop("flagged")  # it only chose val_from (training.resolve.choose_validation), decided by now
    teacher = cfg.cmstew.teacher_run
    if teacher is not None:  # the teacher's model.json holds the digest of its weights
        conf["cmstew"]["teacher_run"] = hashlib.sha256((Path(teacher) / "model" / META).read_bytes()).hexdigest()
    blob = json.dumps({"config": conf, "data": ds.digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def restore(cfg: TrainConfig, key: str | None, out: Path) -> RunResult | None:
    """The published fit ``key`` copied into ``out`` (all but its metrics.json, which the caller writes
    last), or None where the cache does not hold it. Its recorded configuration takes this run's paths."""
    if key is None or cfg.fit_cache is None or not finished(Path(cfg.fit_cache) / key):
        return None
    src = Path(cfg.fit_cache) / key
    out.mkdir(parents=True, exist_ok=True)
    _copy_entries(src, out)
    metrics = json.loads((src / METRICS).read_text())
    here = json.loads(cfg.model_dump_json())
    metrics["config"] = {**metrics["config"], **{k: here[k] for k in (*NOT_IN_IDENTITY, "flagged")}}
    return RunResult(metrics=metrics, folder=out)


def publish(cfg: TrainConfig, key: str | None, out: Path, fit_metrics: dict[str, Any]) -> None:
    """Put the fit just written to ``out`` in the cache as ``key`` (with ``fit_metrics``: the fit's own
    record, without what the run around it added, e.g. a guard's decision), unless it is there already."""
    if key is None or cfg.fit_cache is None:
        return
    cache = Path(cfg.fit_cache)
    if (cache / key).exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=".part-", dir=cache))
    try:
        _copy_entries(out, part)
        (part / METRICS).write_text(json.dumps(fit_metrics, indent=2))
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    try:
        os.rename(part, cache / key)
    except OSError:
        shutil.rmtree(part, ignore_errors=True)  # another worker published the same fit first


def _copy_entries(src: Path, dst: Path) -> None:
    for name in FIT_ENTRIES:
        if (src / name).is_dir():  # a finished fit, not its resumption state (the teachers' checkpoints)
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)
