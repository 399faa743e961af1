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
(see stew.experiments.protocols). A group's ``missing`` evaluations run in the worker right after
training; their ``missing-*.json`` files stay in the run folder and their scores go into the store row's
metrics (``metrics["missing"][entry]``), so a run counts as done only once every entry is there.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from rich.console import Console

from stew import methods
from stew.config import TrainConfig
from stew.data.io import load_dataset
from stew.data.leakage import leakage_verdict, warning_line
from stew.data.synth import write_synthetic
from stew.errors import DataError
from stew.experiments.engines import LocalEngine, RayEngine, open_engine
from stew.experiments.plan import Job, Plan, select_groups
from stew.experiments.protocols import Protocol
from stew.experiments.store import RunStore
from stew.experiments.tune import redact
from stew.experiments.workers import submit, threads_per_worker
from stew.util.atomic import check_writable_parent, write_text_atomic
from stew.util.progress import Runs

# --------------------------------------------------------------------------------------------------
# Planning: which runs exist, and which can start now


# --------------------------------------------------------------------------------------------------
# The driver


def reproduce(
    protocol: Protocol, data: Path | None, out: Path, *, seeds: int | None = None, workers: int | None = None,
    tuned_storage: str | None = None, overrides: dict[str, Any] | None = None, only: list[str] | None = None,
    threads: int | None = None, console: Console | None = None, engine: str = "local", address: str | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``protocol``; return a summary (counts, wall time, failures).

    Without ``data`` the protocol's synthetic dataset is written once into ``out/data``.
    ``overrides`` (TrainConfig fields) apply to every run after the protocol's own settings.
    ``engine`` "local": ``workers`` processes (default 1) of ``threads`` threads (default cores // workers);
    "ray": Ray tasks of ``threads`` CPUs (default 1) on the cluster at ``address`` (default a local Ray
    instance), at most ``workers`` in flight (default no cap); see stew.experiments.engines.
    """
    console = console or Console()
    # Absolute: a Ray worker on another node reads the data and writes the runs where the driver means.
    out = Path(out).absolute()
    # With folds, --seeds counts seeds per fold: the runs are seeds x folds (stew.experiments.protocols).
    seed_list = protocol.run_seeds(seeds)
    if not seed_list:
        raise DataError("--seeds must be at least 1")
    if threads is None and engine == "local":
        threads = threads_per_worker(workers or 1)
    eng = open_engine(engine, address, workers=workers, threads=threads)
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
    # Started (a cluster reached) before anything is written: an unreachable --address leaves no --out.
    with eng:
        return _drive(protocol, data, out, seed_list, eng, tuned, tuned_storage, overrides, only, console)


def _drive(
    protocol: Protocol, data: Path | None, out: Path, seed_list: list[int], eng: LocalEngine | RayEngine,
    tuned: dict[str, dict[str, Any]], tuned_storage: str | None, overrides: dict[str, Any] | None,
    only: list[str] | None, console: Console,
) -> dict[str, Any]:
    """The run loop of :func:`reproduce`, after every check, with the engine started."""
    data = Path(data).absolute() if data is not None else synthesize(protocol, out / "data", console)
    check_data(protocol, data, only)
    t0 = time.time()
    with RunStore(out / "store.sqlite") as store:
        plan = Plan(protocol, data, out, seed_list, store, tuned, overrides, only)
        leakage = _leakage(protocol, data, plan.fingerprint, console)
        store.set_meta(protocol=protocol.name, protocol_yaml=protocol.model_dump_json(), data=str(data.resolve()),
                       data_fingerprint=plan.fingerprint, seeds=json.dumps(seed_list),
                       overrides=json.dumps(overrides or {}), only=json.dumps(only or []),
                       tuned=(redact(tuned_storage) or tuned_storage) if tuned_storage else "",
                       engine=eng.kind, workers=str(eng.capacity or ""))
        skipped = plan.done_count()
        failures: dict[str, str] = {}
        trained = 0
        # A bar on a terminal; one line per finished run (done / total, elapsed, time left) elsewhere.
        with Runs(console, protocol.name, plan.total, transient=False, done=skipped) as bar:
            running: dict[Future, Job] = {}
            while True:
                busy = {j.key for j in running.values()}
                for job in plan.ready():
                    if job.key in busy or _blocked(job, failures):
                        continue
                    if eng.capacity is not None and len(running) >= eng.capacity:
                        break
                    running[submit(eng, job)] = job
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
               "failed": failures, "wall_s": round(time.time() - t0, 1), "engine": eng.kind,
               "workers": eng.capacity, "threads": eng.threads, "ran_on": eng.describe(), "leakage": leakage}
    write_text_atomic(out / "reproduce.json", json.dumps(summary, indent=2))
    return summary


def _leakage(protocol: Protocol, data: Path, fingerprint: str, console: Console) -> dict | None:
    """The leakage probe's verdict on the data's modalities (cached per folder), with its warning line;
    None where the data cannot be read without a group's own settings (an AVEC feature set)."""
    try:
        ds = load_dataset(data, fold=protocol.fold_of(0))
    except DataError:
        return None
    verdict = leakage_verdict(ds, list(ds.modalities), fingerprint)
    warning = warning_line(verdict, list(ds.modalities))
    if warning:
        console.print(warning, markup=False, highlight=False)
    return verdict.to_json()


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


def check_missing(protocol: Protocol, group: str, missing: list[str], cfg: TrainConfig) -> None:
    """Fail before training when a group's missing-modality entries cannot apply to its (overridden) config."""
    if not missing:
        return
    where = f"protocol {protocol.name}, group {group}: missing {missing}"
    if not methods.get(cfg.method).fuses:
        raise DataError(f"{where} needs method fusion, not {cfg.method}")
    if cfg.fusion.kind != "intra" and any(m.startswith("knn") for m in missing):
        raise DataError(f"{where}: KNN imputation needs fusion.kind intra, not {cfg.fusion.kind}")


def synthesize(protocol: Protocol, folder: Path, console: Console) -> Path:
    """The protocol's synthetic dataset, written once (atomically) and reused by later invocations."""
    syn = protocol.synthetic
    if syn is None:
        raise DataError(f"protocol {protocol.name} needs --data ({protocol.data_hint or 'a dataset folder'})")
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    console.print(write_synthetic(**syn.model_dump(), out=folder))
    return folder


def check_data(protocol: Protocol, data: Path, only: list[str] | None = None) -> None:
    """Fail before any training if the data lacks a modality or target the protocol needs.

    With folds, fold 1 stands for all of them (the folds of one release share modalities and targets).
    """
    from stew.data.formats.iemocap import is_iemocap

    if protocol.folds and not is_iemocap(Path(data)):  # the only layout with folds (load_dataset's fold)
        raise DataError(f"protocol {protocol.name} runs {protocol.folds} folds, but the data has no folds; it "
                        f"expects {protocol.data_hint or 'IEMOCAP in the AMH fold layout'}", file=data)
    loaded: dict[str | None, Any] = {}
    for group, (overrides, _) in select_groups(protocol.expand_groups(), only).items():
        fs = overrides.get("feature_set") or overrides.get("target")
        if fs not in loaded:
            loaded[fs] = load_dataset(data, feature_set=fs, fold=protocol.fold_of(0))
        ds = loaded[fs]
        fuses = methods.get(overrides.get("method", "unimodal")).fuses
        fused = ((overrides.get("fusion") or {}).get("modalities") or []) if fuses else []
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
