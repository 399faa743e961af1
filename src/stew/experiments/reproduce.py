"""``stew reproduce``: run a whole paper protocol into a resumable run store.

Every run of a protocol (group x seed, plus the first seed's validation-grid candidates) gets a
deterministic key. Finished runs are recorded in ``OUT/store.sqlite``; a later invocation skips them
and resumes unfinished ones from their last checkpoint. Runs execute in ``--workers`` processes with
``cores // workers`` threads each, so a 2-core machine is never oversubscribed.

Dependencies are resolved as results arrive:
- a CM-StEW run waits for its stage-1 teacher (the ``teacher_run`` group's run of the same seed);
- with an open validation grid (CM-StEW's alpha and beta), the first seed trains one run per grid
  point; the best on validation fixes the values for the other seeds (the test split plays no part).

With the protocol's ``folds``, a "seed" here is a run index r: TrainConfig seed r on fold r % folds + 1
(see stew.protocols). A group's ``missing`` evaluations run in the worker right after training; their
``missing-*.json`` files stay in the run folder and their scores go into the store row's metrics
(``metrics["missing"][entry]``), so a run counts as done only once every entry is there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from stew import methods
from stew.config import TrainConfig
from stew.errors import DataError
from stew.experiments.protocols import Protocol
from stew.experiments.store import RunStore, data_fingerprint, run_key
from stew.experiments.tune import redact
from stew.util.atomic import check_writable_parent
from stew.util.progress import Runs

JOB_FILE = "stew-job.json"


@dataclass
class Job:
    name: str
    group: str
    seed: int
    candidate: str | None
    cfg: TrainConfig
    key: str
    missing: tuple[str, ...] = ()  # missing-modality evaluations (stew.protocols.GroupSpec.missing)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cores() // max(1, workers))


# --------------------------------------------------------------------------------------------------
# Planning: which runs exist, and which can start now


class Plan:
    """The protocol's runs, resolved against what the store already holds."""

    def __init__(
        self, protocol: Protocol, data: Path, out: Path, seeds: list[int], store: RunStore,
        tuned: dict[str, dict[str, Any]] | None = None, overrides: dict[str, Any] | None = None,
        only: list[str] | None = None,
    ) -> None:
        self.protocol, self.data, self.out, self.seeds, self.store = protocol, Path(data), Path(out), seeds, store
        self.fingerprint = data_fingerprint(self.data)
        self.groups = select_groups(protocol.expand_groups(), only)
        self.tuned, self.overrides = tuned or {}, overrides or {}
        self._resolved: dict[tuple[str, int], list[Job]] = {}
        # Grid candidates are fixed by the configuration alone (not by results), so the total is known now.
        self.grid = {g: self._candidates(g, seeds[0]) for g in self.groups}
        self.total = sum(len(seeds) - 1 + len(self.grid[g]) for g in self.groups)

    def _config(self, group: str, seed: int) -> TrainConfig:
        cfg = self.protocol.config(group, self.data, seed, self.out / "runs" / group / f"seed{seed}", self.overrides)
        params = self.tuned.get(group)
        if params:
            from stew.experiments.tune import apply_params

            cfg = apply_params(cfg, params)
        return cfg

    def _candidates(self, group: str, seed: int) -> list[TrainConfig]:
        cfg = self._config(group, seed)
        return methods.get(cfg.method).candidates(cfg)

    def finished(self, group: str, seed: int) -> dict[str, Any] | None:
        """The store row that stands for (group, seed): the selected candidate on the first seed."""
        jobs = self._jobs_for(group, seed)
        if jobs is None:
            return None
        rows = [self.store.get(j.key) for j in jobs]
        if any(r is None for r in rows):
            return None
        return select(rows)

    def _jobs_for(self, group: str, seed: int) -> list[Job] | None:
        """The jobs of (group, seed), or None while a dependency is unfinished.

        Once resolved they never change (store rows are final), so they are worked out only once.
        """
        if (group, seed) not in self._resolved:
            jobs = self._resolve(group, seed)
            if jobs is None:
                return None
            self._resolved[group, seed] = jobs
        return self._resolved[group, seed]

    def _resolve(self, group: str, seed: int) -> list[Job] | None:
        cfg = self._config(group, seed)
        spec = self.groups[group][1]
        teacher_key = None
        if spec.teacher_run is not None:
            teacher = self.finished(spec.teacher_run, seed)
            if teacher is None:
                return None
            teacher_key = teacher["key"]
            cfg = cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(
                update={"teacher_run": self.store.run_dir(teacher)})})
        grid = self.grid[group]
        if len(grid) == 1:
            return [self._job(group, seed, None, _adopt(cfg, grid[0]), teacher_key)]
        if seed == self.seeds[0]:
            jobs = []
            for cand in grid:
                name = _candidate_name(cand)
                c = _adopt(cfg, cand).model_copy(update={"out": Path(cfg.out) / name})
                jobs.append(self._job(group, seed, name, c, teacher_key))
            return jobs
        first = self.finished(group, self.seeds[0])
        if first is None:
            return None
        chosen = TrainConfig.model_validate(first["config"])
        return [self._job(group, seed, None, _adopt(cfg, chosen), teacher_key)]

    def _job(self, group: str, seed: int, candidate: str | None, cfg: TrainConfig, teacher_key: str | None) -> Job:
        name = f"{group}/seed{seed}" + (f"/{candidate}" if candidate else "")
        key = run_key(json.loads(cfg.model_dump_json()), self.fingerprint, teacher_key)
        return Job(name, group, seed, candidate, cfg, key, tuple(self.groups[group][1].missing))

    def _known(self) -> Iterator[tuple[Job, bool]]:
        """(job, whether the store holds it) for every job whose dependencies are done, in protocol order."""
        for g in self.groups:
            for s in self.seeds:
                for j in self._jobs_for(g, s) or []:
                    yield j, is_done(self.store.get(j.key), j)

    def ready(self) -> list[Job]:
        """Unfinished jobs whose dependencies are done, in protocol order (teachers first).

        With folds, fold by fold (stable, so teachers still come first within a fold): the workers'
        dataset cache then holds one fold at a time instead of reloading as folds alternate.
        """
        jobs = [j for j, done in self._known() if not done]
        return sorted(jobs, key=lambda j: j.cfg.fold or 0) if self.protocol.folds else jobs

    def selected(self) -> dict[str, dict[int, str]]:
        """group -> seed -> key of the finished row that stands for it (what tables and reports read)."""
        out: dict[str, dict[int, str]] = {}
        for g in self.groups:
            for s in self.seeds:
                row = self.finished(g, s)
                if row is not None:
                    out.setdefault(g, {})[s] = row["key"]
        return out

    def done_count(self) -> int:
        return sum(done for _, done in self._known())


def is_done(row: dict[str, Any] | None, job: Job) -> bool:
    """Whether a store row finishes ``job``: recorded, with every missing-modality evaluation it asks for."""
    return row is not None and all(m in (row["metrics"].get("missing") or {}) for m in job.missing)


def select_groups(groups: dict[str, Any], only: list[str] | None) -> dict[str, Any]:
    """The groups matching any ``only`` glob, plus the teachers they need (all groups without ``only``)."""
    if not only:
        return groups
    keep = {g for g in groups if any(fnmatch.fnmatchcase(g, pat) for pat in only)}
    if not keep:
        raise DataError(f"--only {' '.join(only)} matches no group; the groups are {list(groups)}")
    todo = list(keep)
    while todo:
        teacher = groups[todo.pop()][1].teacher_run
        if teacher is not None and teacher not in keep:
            keep.add(teacher)
            todo.append(teacher)
    return {g: v for g, v in groups.items() if g in keep}


def _adopt(cfg: TrainConfig, chosen: TrainConfig) -> TrainConfig:
    """``cfg`` with the method sub-config values that ``chosen`` selected (alpha, beta), keeping its paths."""
    sub = chosen.cmstew.model_copy(update={"teacher_run": cfg.cmstew.teacher_run})
    return cfg.model_copy(update={"cmstew": sub})


def _candidate_name(cand: TrainConfig) -> str:
    return f"alpha{cand.cmstew.alpha:g}_beta{cand.cmstew.beta:g}"


def select(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best validation row of a grid (first on ties, i.e. grid order); the only row otherwise."""
    if len(rows) == 1:
        return rows[0]
    key = rows[0]["metrics"]["selection"]["key"]
    return max(rows, key=lambda r: r["metrics"]["val"][key])


# --------------------------------------------------------------------------------------------------
# Executing one run (in a worker process)


def _init_worker(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@lru_cache(maxsize=4)
def _dataset(path: str, feature_set: str | None, fold: int | None = None):
    from stew.data.io import load_dataset

    return load_dataset(path, feature_set=feature_set, fold=fold)


def execute(cfg_json: str, key: str, missing: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one run (resuming from its last checkpoint) and return its metrics.json and wall time.

    A folder left by a different run (another key) is cleared first, so a stale checkpoint is never
    resumed. A run killed after writing metrics.json but before it was recorded is not trained again.
    Then each ``missing`` evaluation (zero, knnK) whose ``missing-*.json`` is not already in the folder
    is run; the returned metrics carry them all under ``"missing"``.
    """
    cfg = TrainConfig.model_validate_json(cfg_json)
    res = _train(cfg, key)
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
    job_file.write_text(json.dumps({"key": key}))
    t0 = time.time()
    ds = _dataset(str(cfg.data), cfg.feature_set or cfg.target, cfg.fold)
    run(cfg.model_copy(update={"resume": True}), ds)
    return {"metrics": json.loads(done.read_text()), "wall_s": time.time() - t0}


def missing_scores(cfg: TrainConfig, missing: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """entry -> the run's scores per modality subset (stew.missing), computed only where the run
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
        ds = _dataset(str(cfg.data), cfg.feature_set or cfg.target, cfg.fold)
        computed = evaluate_imputations(out, [parse_imputation(e) for e in todo], ds)
        found.update(zip(todo, computed, strict=True))
    return {e: found[e] for e in missing}


# --------------------------------------------------------------------------------------------------
# The driver


def reproduce(
    protocol: Protocol, data: Path | None, out: Path, *, seeds: int | None = None, workers: int = 1,
    tuned_storage: str | None = None, overrides: dict[str, Any] | None = None, only: list[str] | None = None,
    threads: int | None = None, console: Console | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``protocol``; return a summary (counts, wall time, failures).

    Without ``data`` the protocol's synthetic dataset is written once into ``out/data``.
    ``overrides`` (TrainConfig fields) apply to every run after the protocol's own settings.
    ``threads`` per run defaults to cores // workers.
    """
    console = console or Console()
    out = Path(out)
    # With folds, --seeds counts seeds per fold: the runs are seeds x folds (stew.protocols).
    seed_list = protocol.run_seeds(seeds)
    if not seed_list:
        raise DataError("--seeds must be at least 1")
    if workers < 1:
        raise DataError("--workers must be at least 1")
    # Everything that can be checked without the data is checked before anything is written (no
    # synthetic data, no store.sqlite): the output path, the store already there, --set and --only
    # (every run's configuration is built once), and the --tuned studies (read-only lookups).
    if out.exists() and not out.is_dir():
        raise DataError("--out exists and is not a folder", file=out)
    check_writable_parent(out / "store.sqlite")
    RunStore.check(out / "store.sqlite")
    groups = select_groups(protocol.expand_groups(), only)
    for group, (_, spec) in groups.items():
        cfg = protocol.config(group, Path(data) if data is not None else out / "data", seed_list[0],
                              out / "runs" / group / f"seed{seed_list[0]}", overrides)
        check_missing(protocol, group, spec.missing, cfg)
    tuned = tuned_params(protocol, tuned_storage)
    data = Path(data) if data is not None else synthesize(protocol, out / "data", console)
    check_data(protocol, data, only)
    threads = threads or threads_per_worker(workers)
    t0 = time.time()
    with RunStore(out / "store.sqlite") as store:
        plan = Plan(protocol, data, out, seed_list, store, tuned, overrides, only)
        store.set_meta(protocol=protocol.name, protocol_yaml=protocol.model_dump_json(), data=str(data.resolve()),
                       data_fingerprint=plan.fingerprint, seeds=json.dumps(seed_list),
                       overrides=json.dumps(overrides or {}), only=json.dumps(only or []),
                       tuned=(redact(tuned_storage) or tuned_storage) if tuned_storage else "", workers=str(workers))
        skipped = plan.done_count()
        failures: dict[str, str] = {}
        trained = 0
        # A bar on a terminal; one line per finished run (done / total, elapsed, time left) elsewhere.
        with Runs(console, protocol.name, plan.total, transient=False, done=skipped) as bar, \
                _pool(workers, threads) as pool:
            running: dict[Future, Job] = {}
            while True:
                busy = {j.key for j in running.values()}
                for job in plan.ready():
                    if job.key in busy or _blocked(job, failures):
                        continue
                    if len(running) >= workers:
                        break
                    running[_submit(pool, job)] = job
                    busy.add(job.key)
                if bar.console.is_terminal:
                    bar.describe(f"{len(running)} running")
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = running.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as e:  # one failed run must not stop the others; it is reported
                        failures[job.name] = f"{type(e).__name__}: {e}"
                        console.print(f"[red]failed[/red] {job.name}: {failures[job.name]}")
                        continue
                    # A recorded run re-done only for a missing-modality entry keeps its training time.
                    before = store.get(job.key)
                    wall = res["wall_s"] + (before["wall_s"] if before is not None else 0.0)
                    store.record(job.key, name=job.name, group=job.group, seed=job.seed, candidate=job.candidate,
                                 run_dir=Path(job.cfg.out), config=json.loads(job.cfg.model_dump_json()),
                                 metrics=res["metrics"], wall_s=wall)
                    store.set_meta(selected=json.dumps(plan.selected()))
                    trained += 1
                    bar.label = job.name  # off a terminal, the finished run's line names it
                    bar.advance()
        done = plan.done_count()
    summary = {"protocol": protocol.name, "runs": plan.total, "done": done, "skipped": skipped, "trained": trained,
               "failed": failures, "wall_s": round(time.time() - t0, 1), "workers": workers, "threads": threads}
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2))
    return summary


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["max_epochs=5", "cmstew.alpha=0.1"]`` -> ``{"max_epochs": 5, "cmstew": {"alpha": 0.1}}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--set {item!r}: write KEY=VALUE, e.g. --set max_epochs=5")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _blocked(job: Job, failures: dict[str, str]) -> bool:
    return any(f.startswith(job.group + "/") for f in failures)


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


def _pool(workers: int, threads: int) -> Any:
    if workers == 1:
        _init_worker(threads)
        return _Inline()
    # spawn: a forked child would inherit torch's thread pools and can deadlock.
    return _Workers(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,))


def sigterm_as_interrupt() -> None:
    """SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so worker processes are stopped."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)


def _submit(pool: Any, job: Job) -> Future:
    return pool.submit(execute, job.cfg.model_dump_json(), job.key, job.missing)


def check_missing(protocol: Protocol, group: str, missing: list[str], cfg: TrainConfig) -> None:
    """Fail before training when a group's missing-modality entries cannot apply to its (overridden) config."""
    if not missing:
        return
    where = f"protocol {protocol.name}, group {group}: missing {missing}"
    if cfg.method != "fusion":
        raise DataError(f"{where} needs method fusion, not {cfg.method}")
    if cfg.fusion.kind != "intra" and any(m.startswith("knn") for m in missing):
        raise DataError(f"{where}: KNN imputation needs fusion.kind intra, not {cfg.fusion.kind}")


def synthesize(protocol: Protocol, folder: Path, console: Console) -> Path:
    """The protocol's synthetic dataset, written once (atomically) and reused by later invocations."""
    from stew.data.formats.native import write_native
    from stew.data.formats.recola import write_recola_layout
    from stew.data.synth.affect import synth_mosi, synth_recola

    syn = protocol.synthetic
    if syn is None:
        raise DataError(f"protocol {protocol.name} needs --data ({protocol.data_hint or 'a dataset folder'})")
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    if syn.kind == "conflict":
        from stew.data.synth.conflict import write_synthetic_conflict

        write_synthetic_conflict(folder, clips=syn.clips, clip_s=syn.clip_s, seed=syn.seed)
        console.print(f"synthesised a conflict corpus ({syn.clips} clips of {syn.clip_s:g} s, seed {syn.seed}) "
                      f"-> {folder}")
        return folder
    if syn.kind == "iemocap":
        from stew.data.synth.iemocap import write_synthetic_iemocap

        write_synthetic_iemocap(folder, utterances=syn.utterances, seed=syn.seed)
        console.print(f"synthesised IEMOCAP in the AMH fold layout ({syn.utterances} utterances, seed {syn.seed}) "
                      f"-> {folder}")
        return folder
    if syn.kind == "recola":
        ds = synth_recola(syn.seed, n_speakers=syn.speakers, minutes=syn.minutes)
    else:
        ds = synth_mosi(syn.seed, n_videos=syn.videos)
    if syn.layout == "avec":
        write_recola_layout(ds, folder)
    else:
        write_native(ds, folder)
    console.print(f"synthesised {ds.name} ({syn.kind}, seed {syn.seed}) -> {folder}")
    return folder


def check_data(protocol: Protocol, data: Path, only: list[str] | None = None) -> None:
    """Fail before any training if the data lacks a modality or target the protocol needs.

    With folds, fold 1 stands for all of them (the folds of one release share modalities and targets).
    """
    from stew.data.formats.iemocap import is_iemocap
    from stew.data.io import load_dataset

    if protocol.folds and not is_iemocap(Path(data)):  # the only layout with folds (load_dataset's fold)
        raise DataError(f"protocol {protocol.name} runs {protocol.folds} folds, but the data has no folds; it "
                        f"expects {protocol.data_hint or 'IEMOCAP in the AMH fold layout'}", file=data)
    loaded: dict[str | None, Any] = {}
    for group, (overrides, _) in select_groups(protocol.expand_groups(), only).items():
        fs = overrides.get("feature_set") or overrides.get("target")
        if fs not in loaded:
            loaded[fs] = load_dataset(data, feature_set=fs, fold=protocol.fold_of(0))
        ds = loaded[fs]
        fused = ((overrides.get("fusion") or {}).get("modalities") or []) if overrides.get("method") == "fusion" else []
        for role in ("modality", "teacher", "fusion.modalities"):
            names = fused if role == "fusion.modalities" else str(overrides.get(role) or "").replace("+", " ").split()
            for m in names:
                if m != "all" and m not in ds.modalities:
                    raise DataError(f"protocol {protocol.name} (group {group}) needs modality {m!r}, but the data "
                                    f"has {sorted(ds.modalities)}; it expects {protocol.data_hint or 'other data'}",
                                    file=data)
        target = overrides.get("target")
        if target and target not in ds.targets:
            raise DataError(f"protocol {protocol.name} needs target {target!r}; the data has {ds.targets}", file=data)


def tuned_params(protocol: Protocol, storage: str | None) -> dict[str, dict[str, Any]]:
    """Group -> best parameters of the study the group names (only with a storage URL)."""
    if storage is None:
        return {}
    from stew.experiments.tune import best_params

    out = {}
    for group, (overrides, spec) in protocol.expand_groups().items():
        if spec.tuned is not None:
            point = {k: "full" if overrides.get(k) is None else overrides[k] for k in spec.matrix}
            out[group] = best_params(storage, spec.tuned.study.format(**point))
    return out
