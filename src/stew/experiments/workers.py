"""What one run of ``stew reproduce`` (or rank, transfer) executes, and the local engine's processes: worker
processes with a fixed number of torch threads each (or this process, with one worker), one run each,
resumed from its checkpoint after a kill. A Ray task runs the same functions (stew.experiments.engines)."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from stew.config import TrainConfig
from stew.data.io import data_files
from stew.experiments.plan import Job
from stew.util.atomic import write_text_atomic


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cores() // max(1, workers))


# What one local worker holds, for the default --workers [U] (docs/cluster.md "How many workers"): a process
# with torch, Lightning and a small model (a MOSI run peaks at 0.94 GB), plus the data it loads, counted as
# three copies of its data files (the arrays, their standardised copy and the training windows).
WORKER_BASE_BYTES = 1 << 30
DATA_COPIES = 3


def available_memory() -> int | None:
    """Bytes this machine can still give (MemAvailable); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def data_bytes(data: Path | None) -> int:
    """The size of the data files at ``data`` (0 for None or a path that does not exist: nothing to load)."""
    if data is None:
        return 0
    return sum(f.stat().st_size for f in data_files(Path(data)))


def default_workers(data: Path | None = None) -> tuple[int, str]:
    """The local engine's default ``--workers``: one per core (one torch thread each: small recurrent models
    run faster as parallel runs than as threads of one run), fewer where their memory would not fit.
    Returns the number and, when memory capped it, why (one line for the user)."""
    n, free = cores(), available_memory()
    if free is None:
        return n, ""
    need = WORKER_BASE_BYTES + DATA_COPIES * data_bytes(data)
    fit = max(1, free // need)
    if fit >= n:
        return n, ""
    return fit, (f"--workers {fit} of {n} cores: each run may take {need / 2**30:.1f} GB and "
                 f"{free / 2**30:.1f} GB is free (--workers N to choose)")


def init_worker(threads: int | None) -> None:
    """``threads`` torch and BLAS threads in this process (None: their settings are left alone).

    BLAS too: the linear method's solves would otherwise use every core in this process but one thread in a
    Ray worker (Ray starts it with OMP_NUM_THREADS=1), and differ in the last digits between engines.
    """
    if threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


@lru_cache(maxsize=4)
def dataset(path: str, feature_set: str | None, fold: int | None = None):
    """The dataset a run reads, loaded once per worker process (a worker serves many runs)."""
    from stew.data.io import load_dataset

    return load_dataset(path, feature_set=feature_set, fold=fold)


def run_metrics(cfg: TrainConfig) -> dict[str, Any]:
    """Train one configuration as ``rank`` and ``transfer`` do (no resume); its metrics.json record."""
    from stew.training.run import run

    metrics = dict(run(cfg, dataset(str(cfg.data), cfg.feature_set or cfg.target, cfg.fold)).metrics)
    if cfg.out is not None:
        drop_checkpoints(Path(cfg.out))
    return metrics


def drop_checkpoints(out: Path) -> None:
    """Delete a finished sweep run's resumption checkpoints, those of its inner fits (teachers, guard arms)
    included, but not of another run of the sweep in a folder below (one with its own job file). A sweep
    never resumes a finished run, and the checkpoints are most of its disk: 1.3 of 1.9 GB in the 5-seed
    MOSI table, 12 MB of pickled optimiser state per run (docs/choices.md, "Mid-run checkpoints")."""
    for folder, subfolders, _ in os.walk(out):
        if "checkpoints" in subfolders:
            shutil.rmtree(Path(folder) / "checkpoints", ignore_errors=True)
        subfolders[:] = [d for d in subfolders if d != "checkpoints" and not (Path(folder) / d / JOB_FILE).exists()]


def execute(cfg_json: str, key: str, missing: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one run (resuming from its last checkpoint) and return its metrics.json and wall time.

    A folder left by a different run (another key) is cleared first, so a stale checkpoint is never
    resumed. A run killed after writing metrics.json but before it was recorded is not trained again.
    Once it has finished, its checkpoints go (:func:`drop_checkpoints`). Then each ``missing`` evaluation
    (zero, knnK) whose ``missing-*.json`` is not already in the folder is run; the returned metrics carry
    them all under ``"missing"``.
    """
    cfg = TrainConfig.model_validate_json(cfg_json)
    res = _train(cfg, key)
    drop_checkpoints(Path(cfg.out))
    if missing:
        t0 = time.time()
        res["metrics"]["missing"] = missing_scores(cfg, missing)
        res["wall_s"] += time.time() - t0
    return res


def _train(cfg: TrainConfig, key: str) -> dict[str, Any]:
    from stew.training.run import run

    out = Path(cfg.out)
    job_file = out / JOB_FILE
    stale = not job_file.is_file() or json.loads(job_file.read_text()).get("key") != key
    started = (out / "checkpoints" / "last.ckpt").is_file() or (out / "metrics.json").is_file()
    if out.exists() and (stale or not started):
        shutil.rmtree(out)  # another run's folder, or one killed before its first checkpoint: start clean
    out.mkdir(parents=True, exist_ok=True)
    done = out / "metrics.json"
    if done.is_file():
        try:
            return {"metrics": json.loads(done.read_text()), "wall_s": 0.0}
        except json.JSONDecodeError:
            pass  # killed while writing it: train again from the checkpoint
    write_text_atomic(job_file, json.dumps({"key": key}))
    t0 = time.time()
    ds = dataset(str(cfg.data), cfg.feature_set or cfg.target, cfg.fold)
    run(cfg.model_copy(update={"resume": True}), ds)
    return {"metrics": json.loads(done.read_text()), "wall_s": time.time() - t0}


def missing_scores(cfg: TrainConfig, missing: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """entry -> the run's scores per modality subset (stew.eval.missing), computed only where the run
    folder lacks that entry's ``missing-*.json`` (a resumed reproduce reads them back)."""
    from stew.eval.missing import evaluate_imputations, missing_file, read_missing
    from stew.experiments.protocols import parse_imputation

    out = Path(cfg.out)
    found: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    for entry in missing:
        result = read_missing(out / missing_file(*parse_imputation(entry)))
        if result is None:
            todo.append(entry)
        else:
            found[entry] = result
    if todo:
        ds = dataset(str(cfg.data), cfg.feature_set or cfg.target, cfg.fold)
        computed = evaluate_imputations(out, [parse_imputation(e) for e in todo], ds)
        found.update(zip(todo, computed, strict=True))
    return {e: found[e] for e in missing}


class _Inline:
    """A one-worker 'pool' that runs in this process: no start-up cost, plain tracebacks."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - handed to the driver, which reports it
            fut.set_exception(e)
        return fut

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Workers(ProcessPoolExecutor):
    """Worker processes that die with the driver: on Ctrl-C or SIGTERM the runs in flight stop at once
    (they resume from their checkpoints next time) instead of running on unsupervised."""

    def __exit__(self, exc_type: Any, *rest: Any) -> Any:
        if exc_type is not None:
            for proc in list((self._processes or {}).values()):
                proc.terminate()
            self.shutdown(wait=False, cancel_futures=True)
            return False
        return super().__exit__(exc_type, *rest)


def pool_of(workers: int, threads: int | None) -> Any:
    if workers == 1:
        init_worker(threads)
        return _Inline()
    # spawn: a forked child would inherit torch's thread pools and can deadlock.
    return _Workers(workers, mp_context=get_context("spawn"), initializer=init_worker, initargs=(threads,))


def sigterm_as_interrupt() -> None:
    """SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so worker processes are stopped."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)


def submit(pool: Any, job: Job) -> Future:
    # Only the fields the protocol set travel: a recipe's defaults apply to what was left open (the stew
    # recipe's per-step student), which a full dump would mark as set.
    # A run that may use a GPU (gpu, or auto) tells the engine: a Ray task then reserves one where a node has one.
    accelerator = job.cfg.accelerator
    hint = {} if accelerator == "cpu" else {"accelerator": accelerator}
    return pool.submit(execute, job.cfg.model_dump_json(exclude_unset=True), job.key, job.missing, **hint)


JOB_FILE = "stew-job.json"
