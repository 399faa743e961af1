"""``stew tune``: hyper-parameter search on validation with Optuna, storage from SQLite to PostgreSQL.

A study maximises the run's validation selection metric (``r["val"][r["selection"]["key"]]``); the
test split is never read for a choice. Every search dimension is a :class:`stew.config.TrainConfig`
field path (``cmstew.alpha``, ``sew.gamma``, ``dropout``, ``lr``), and Optuna stores the trials'
parameters under those paths, so :func:`best_params` + :func:`apply_params` turn a finished study
back into a run configuration. The ranges and where they come from are in docs/choices.md.

Storage is any SQLAlchemy URL: SQLite by default (one machine), PostgreSQL
(``postgresql+psycopg://user@host:5432/db``) for several workers on several machines sharing one
study: every worker creates-or-loads the study by name and runs its own ``--trials``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from stew import methods
from stew.config import TrainConfig, first_error
from stew.data.io import load_dataset
from stew.errors import DataError, first_line
from stew.experiments.store import readonly_uri
from stew.methods import required_modalities
from stew.methods.base import Dim, target_names
from stew.scoring.metrics import selection_metric
from stew.training.resolve import fuse_inputs, resolve
from stew.training.run import run
from stew.training.stages import teacher_config
from stew.util.atomic import check_writable_parent, write_text_atomic

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from stew.data.dataset import Dataset

# --------------------------------------------------------------------------------------------------
# Search spaces


# What each method searches is its own (stew.methods, each file's MethodDef.tuning).
SPACES: dict[str, dict[str, Dim]] = {name: d.tuning for name, d in methods.REGISTRY.items() if d.tuning}


def search_space(method: str, params: Iterable[str] | None = None, *, ablation: str | None = None) -> dict[str, Dim]:
    """The dimensions a study of ``method`` searches: all of them, or the ``params`` named.

    Parameters an ``ablation`` switches off are left out (naming one is an error).
    """
    if method not in SPACES:
        raise DataError(f"unknown method {method!r}; choose from {list(SPACES)}")
    definition = methods.get(method)
    definition.check_ablation(ablation)
    space, off = SPACES[method], set(definition.ablations.get(ablation or "", {}))
    if params is None:
        return {k: d for k, d in space.items() if k not in off}
    names = list(dict.fromkeys(p.strip() for p in params if p.strip()))
    if not names:
        raise DataError(f"--params names no parameter; choose from {list(space)}")
    for name in names:
        if name not in space:
            raise DataError(f"unknown parameter {name!r} for --method {method}; choose from {list(space)}")
        if name in off:
            raise DataError(f"parameter {name!r} is fixed to 0 by --ablation {ablation}")
    return {k: space[k] for k in names}


def apply_params(cfg: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """A validated copy of ``cfg`` with dotted field paths (``cmstew.alpha``, ``lr``) set."""
    raw = cfg.model_dump()
    for path, value in params.items():
        node = raw
        *parents, leaf = path.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise DataError(f"unknown parameter path {path!r} (not a TrainConfig field)")
            node = node[p]
        if leaf not in node:
            raise DataError(f"unknown parameter path {path!r} (not a TrainConfig field)")
        node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid value for '{loc}': {msg}") from None


# --------------------------------------------------------------------------------------------------
# Storage and studies


def _quiet_optuna() -> None:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def redact(url: str) -> str | None:
    """A storage URL as it may be shown or recorded: any password masked; None if it is not an SQLAlchemy URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return None


def _shown(url: str) -> str:
    shown = redact(url)
    if shown is None:
        raise DataError(
            f"--storage {url!r} is not an SQLAlchemy URL (e.g. sqlite:///tune.sqlite or "
            "postgresql+psycopg://user@host:5432/db)"
        )
    return shown


def _first_line(e: BaseException) -> str:
    """The first line of what went wrong underneath SQLAlchemy (its driver's exception, ``orig``)."""
    cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
    return first_line(getattr(cause, "orig", None) or cause)


def _readonly_sqlite(url: str) -> str:
    """The read-only form of an SQLite storage URL (SQLite ``mode=ro``); a missing file is a DataError.

    A lookup (``reproduce --tuned``) must not create the file it looks in, nor write Optuna's tables
    into an empty or foreign one. Other databases are opened as given.
    """
    from sqlalchemy.engine import make_url


    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.query.get("uri"):
        return url
    path = Path(u.database)
    if not path.is_file():
        raise DataError("no such storage file (a lookup never creates one)", file=path)
    return f"sqlite:///{readonly_uri(path)}&uri=true"


def open_storage(url: str, *, readonly: bool = False) -> optuna.storages.RDBStorage:
    """Open an Optuna storage (creating its tables on first use); bad or unreachable URLs are DataErrors.

    ``readonly``: an SQLite file is opened read-only and must exist (lookups of finished studies).

    Two workers meeting an empty PostgreSQL database at once both create the tables; the loser's
    error is retried. Heartbeats let the other workers fail the running trial of a worker that died.
    """
    import optuna
    from sqlalchemy import exc

    _quiet_optuna()
    shown = _shown(url)
    if readonly:
        url = _readonly_sqlite(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180)
        except (exc.IntegrityError, exc.ProgrammingError, optuna.exceptions.StorageInternalError) as e:
            if attempt == 4:
                raise DataError(f"cannot open storage {shown}: {_first_line(e)}") from None
            time.sleep(0.2 + random.random() * (attempt + 1))
        except ImportError as e:
            hint = " (use postgresql+psycopg://...)" if url.startswith("postgresql:") else ""
            raise DataError(f"cannot open storage {shown}: no database driver{hint}: {_first_line(e)}") from None
        except Exception as e:  # any other failure to connect or to parse the URL is the user's input
            raise DataError(f"cannot open storage {shown}: {_first_line(e)}") from None
    raise AssertionError("unreachable")


_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def open_study(storage: optuna.storages.RDBStorage, name: str, seed: int, describe: dict) -> optuna.Study:
    """Create the study, or load it when it exists (also when another worker created it just now).

    ``describe`` (method, modalities, target, ablation, searched paths) is stored with a new study; a
    worker whose run differs from the study's is refused.
    """
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="maximize",
                                    load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise DataError(f"study {name!r} exists and minimises; stew tune maximises the validation metric")
    known = study.user_attrs.get("stew")
    if known is None:
        study.set_user_attr("stew", describe)
    elif known != describe:
        diff = ", ".join(f"{k} {known.get(k)!r} (this worker: {v!r})" for k, v in describe.items() if known.get(k) != v)
        raise DataError(f"study {name!r} was started for a different run: {diff}")
    return study


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Study name, the metric, best value and params, trial counts.

    The best params are dotted TrainConfig paths: the ones searched, plus the CM-StEW weights the trial
    fixed (a weight left None would open ``run``'s validation grid when the params are applied).
    """
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    params = dict(best.user_attrs.get("fixed", {})) if best else {}
    for k, v in (best.params if best else {}).items():
        # Stepped floats come back as 0.30000000000000004: store what the trial actually ran (0.3).
        stepped = isinstance(best.distributions[k], FloatDistribution) and best.distributions[k].step is not None
        params[k] = round(v, 10) if stepped else v
    return {
        "study": study.study_name,
        "metric": best.user_attrs.get("metric") if best else None,
        "direction": "maximize",
        "best_value": best.value if best else None,
        "best_params": params,
        "best_trial": best.number if best else None,
        "n_trials": len(done),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "workers": sorted({str(t.user_attrs["worker"]) for t in done if "worker" in t.user_attrs}),
    }


def load_study(storage: str, study: str) -> optuna.Study:
    """An existing study, read without creating or changing anything; a missing one is a DataError."""
    import optuna

    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage, readonly=True))
    except KeyError:
        raise DataError(f"no study {study!r} in {_shown(storage)}") from None


def best_params(storage: str, study: str) -> dict[str, Any]:
    """The best completed trial's parameters, as dotted TrainConfig paths -> values (for apply_params).

    They include the CM-StEW weights a trial fixed without searching them (see :func:`trial_base`).
    """
    s = study_summary(load_study(storage, study))
    if s["best_value"] is None:
        raise DataError(f"study {study!r} has no completed trial")
    return s["best_params"]


# --------------------------------------------------------------------------------------------------
# The search


def worker_id() -> str:
    """This process, as recorded in each trial's ``worker`` attribute: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check(cfg: TrainConfig, ds: Dataset) -> str:
    """Resolve the configuration against the data before any trial runs; return the selection key."""
    c, d = fuse_inputs(cfg, ds)
    c = resolve(c, d)
    required_modalities(c)
    return selection_metric(d.task, target_names(c, d))


def trial_base(cfg: TrainConfig) -> TrainConfig:
    """Per-trial settings: 1 CPU thread unless ``threads`` is set, no progress bar unless asked for, and
    what the method fixes for a trial (CM-StEW: its weights and the paper recipe's single fit); the
    searched parameters are applied on top."""
    trial_settings = methods.get(cfg.method).trial_settings
    upd: dict[str, Any] = trial_settings(cfg) if trial_settings is not None else {}
    if cfg.threads is None:
        upd["threads"] = 1
    if "progress" not in cfg.model_fields_set:
        upd["progress"] = False
    return apply_params(cfg, upd)


def check_study(
    cfg: TrainConfig, study: str, trials: int, params: Iterable[str] | None, out: Path,
) -> tuple[dict[str, Dim], Dataset, str]:
    """Everything checked before a study writes anything: its name, ``trials``, the search space, the
    configuration against the data, ``out``. Returns the space, the data and the fallback selection key."""
    if not _STUDY_NAME.match(study):
        raise DataError(f"--study {study!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    if trials < 1:
        raise DataError("--trials must be at least 1")
    space = search_space(cfg.method, params, ablation=cfg.ablation)
    ds = load_dataset(cfg.data, feature_set=cfg.feature_set or cfg.target)
    fallback_key = _check(cfg, ds)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("--out exists and is not a folder", file=out)
    check_writable_parent(out)
    return space, ds, fallback_key


def tune(
    cfg: TrainConfig, *, study: str, out: Path, trials: int, storage: str | None = None, seed: int = 0,
    params: Iterable[str] | None = None, timeout: float | None = None, console: Console | None = None,
) -> dict[str, Any]:
    """Run ``trials`` trials of ``study`` in this process; return (and write ``out/best.json``) the summary.

    Trial N trains ``run(cfg + its parameters)`` into ``out/trials/<study>/trial<N>``.
    """
    space, ds, fallback_key = check_study(cfg, study, trials, params, out)
    out = Path(out)
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{out.resolve() / 'tune.sqlite'}"
    store = open_storage(storage)
    describe = {k: getattr(cfg, k) for k in ("method", "modality", "teacher", "target", "targets", "ablation")}
    describe["params"] = [d.path for d in space.values()]
    st = open_study(store, study, seed, describe)
    trials_dir = out / "trials" / study
    trials_dir.mkdir(parents=True, exist_ok=True)
    base = trial_base(cfg)
    definition = methods.get(cfg.method)
    # The weights every trial fixes (the config's, or 1.0), recorded beside the searched ones.
    settings = definition.trial_settings(cfg) if definition.trial_settings is not None else {}
    fixed = {p: v for p, v in settings.items() if "." in p and p not in describe["params"]}

    # CM-StEW's stage 1 does not depend on alpha and beta: when only they are searched, one teacher
    # per worker serves every trial. Searching dropout or lr retrains it per trial, as run() would.
    if (definition.stage1_teachers and cfg.cmstew.teacher_run is None and cfg.cv is None
            and all(d.path.startswith("cmstew.") for d in space.values())):
        stage1 = trials_dir / f"stage1-{re.sub(r'[^A-Za-z0-9._-]', '_', worker_id())}"
        shutil.rmtree(stage1, ignore_errors=True)  # this worker's own, from an earlier call
        run(teacher_config(base, stage1), ds)
        base = apply_params(base, {"cmstew.teacher_run": stage1})

    def objective(trial: optuna.Trial) -> float:
        values = {d.path: d.suggest(trial) for d in space.values()}
        run_dir = trials_dir / f"trial{trial.number}"
        if run_dir.exists():  # left by a deleted study of the same name
            shutil.rmtree(run_dir)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("fixed", fixed)
        r = run(apply_params(base, {**values, "out": run_dir}), ds)
        key = r.get("selection", {}).get("key", fallback_key)  # --cv results carry no selection record
        trial.set_user_attr("metric", key)
        return float(r["val"][key])

    def report(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if console is not None:
            value = "failed" if t.value is None else f"{t.user_attrs.get('metric', 'value')} {t.value:.4f}"
            shown = ", ".join(f"{k}={v:.4g}" for k, v in t.params.items())
            console.print(f"trial {t.number}: {value}  ({shown})")

    st.optimize(objective, n_trials=trials, timeout=timeout, catch=(FloatingPointError,), callbacks=[report])
    summary = {**study_summary(st), "storage": _shown(storage), "space": {k: d.path for k, d in space.items()}}
    if summary["best_value"] is None:
        raise DataError(f"no trial of study {study!r} has completed (all failed or still running)")
    write_text_atomic(out / "best.json", json.dumps(summary, indent=2) + "\n")
    return summary


def tune_on(
    engine: Any, cfg: TrainConfig, *, study: str, out: Path, trials: int, workers: int, storage: str | None = None,
    seed: int = 0, params: Iterable[str] | None = None, timeout: float | None = None,
) -> dict[str, Any]:
    """``workers`` stew tune workers as tasks of ``engine`` (stew.experiments.engines: a Ray cluster), sharing
    one study through ``storage``; ``trials`` in all, split among them, worker i sampling with ``seed + i``.

    Each worker is :func:`tune` itself (heartbeats, its own stage-1 teacher), as when several machines share a
    PostgreSQL study. The default SQLite file in ``out`` serves one machine or shared storage; PostgreSQL
    serves any cluster. Everything is checked here first (one line, nothing written), and the storage's
    tables are made once before the workers meet them.
    """
    if workers < 1 or trials < workers:
        raise DataError(f"--trials ({trials}) must be at least --workers ({workers}): each worker runs one or more")
    out = Path(out).absolute()
    names = list(params) if params is not None else None
    space = check_study(cfg, study, trials, names, out)[0]
    with engine:
        if storage is None:
            out.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{out / 'tune.sqlite'}"
        open_storage(storage)  # its tables, once, before the workers meet them
        share = [trials // workers + (i < trials % workers) for i in range(workers)]
        futures = [engine.submit(partial(tune, cfg, study=study, out=out, trials=n, storage=storage, seed=seed + i,
                                         params=names, timeout=timeout)) for i, n in enumerate(share)]
        for fut in futures:
            fut.result()
    summary = {**study_summary(load_study(storage, study)), "storage": _shown(storage),
               "space": {k: d.path for k, d in space.items()}}
    write_text_atomic(out / "best.json", json.dumps(summary, indent=2) + "\n")
    return summary


def render_summary(summary: dict[str, Any], console: Console) -> None:
    """A short table: trials in the study, best value, best params."""
    from rich.table import Table

    table = Table(title=f"study {summary['study']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("storage", summary["storage"])
    table.add_row("completed trials", f"{summary['n_trials']} ({summary['n_failed']} failed)")
    table.add_row("workers", str(len(summary["workers"])))
    best = f"{summary['best_value']:.4f} (trial {summary['best_trial']})"
    table.add_row(f"best validation {summary['metric']}", best)
    for k, v in summary["best_params"].items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
