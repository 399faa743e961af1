"""Run tracking (docs/tracking.md): ``tracker: mlflow`` or ``tensorboard`` logs each fit's parameters (its
TrainConfig) and per-epoch losses and metrics through Lightning's loggers, beside the CSV log every run keeps;
at the end the final scores and, for MLflow, the run folder as artefacts. mlflow and tensorboard are imported
only when asked for (the optional extra ``stew[tracking]``).

A fit is one tracked run, named after its folder: a CM-StEW run's teachers, guard folds and grid candidates
are runs of their own, in the same experiment (``experiment``: default ``stew``; a protocol's name for the runs
of ``stew reproduce``)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from stew.config import TrainConfig
from stew.errors import DataError, first_line

DEFAULT_EXPERIMENT = "stew"
INSTALL = "pip install 'stew[tracking]'"
# Where a run's own TensorBoard events go without a tracking_uri: under logs/, which `--overwrite` replaces.
TB_IN_RUN = Path("logs") / "tensorboard"
SKIPPED = {"checkpoints"}  # folders of a run not uploaded as artefacts: training state, not results


def experiment_name(cfg: TrainConfig) -> str:
    return cfg.experiment or DEFAULT_EXPERIMENT


def run_name(fit_dir: Path) -> str:
    """A tracked run's name: its folder, relative to the working folder when inside it."""
    path = Path(fit_dir).absolute()
    try:
        return path.relative_to(Path.cwd().absolute()).as_posix()
    except ValueError:
        return path.as_posix()


def check_tracker(cfg: TrainConfig) -> None:
    """A tracker that is not installed or a tracking URI that cannot be used: one DataError, before the run
    reads or writes anything (an MLflow store that is usable is opened, and made if new)."""
    if cfg.tracker == "mlflow":
        _require("mlflow", "mlflow")
        assert cfg.tracking_uri is not None  # TrainConfig fills in the default
        mlflow_experiment(cfg.tracking_uri, experiment_name(cfg))
    elif cfg.tracker == "tensorboard":
        _require("tensorboard", "tensorboard")
        if cfg.tracking_uri is None:
            if cfg.out is None:
                raise DataError("--tracker tensorboard writes its events in the run folder: give --out, or a "
                                "folder with --tracking-uri")
        else:
            _check_folder(cfg.tracking_uri)


def _require(module: str, tracker: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise DataError(f"--tracker {tracker} needs the {module} package, which is not installed: {INSTALL}") from None


def _check_folder(uri: str) -> None:
    """A folder for TensorBoard's event files: an existing one or one that can be made, writable."""
    if "://" in uri:
        raise DataError(f"--tracking-uri {uri}: --tracker tensorboard writes to a local folder; give its path")
    path = Path(uri).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"--tracking-uri {uri}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"--tracking-uri {uri}: {probe} is not writable")


@contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow retries an unreachable server for minutes by default: a check fails after one try."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest).absolute() if rest and rest != ":memory:" else None


def _check_sqlite(uri: str, db: Path) -> None:
    """Refuse, before MLflow touches it, a database whose folder is missing or unwritable, or a file that is
    not SQLite (opening it read-only writes nothing)."""
    if not db.parent.is_dir():
        raise DataError(f"--tracking-uri {uri}: no folder {db.parent}")
    if db.is_dir():
        raise DataError(f"--tracking-uri {uri}: {db} is a folder, not a database file")
    if not os.access(db.parent, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise DataError(f"--tracking-uri {uri}: {db if db.exists() else db.parent} is not writable")
    if db.exists() and db.stat().st_size:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise DataError(f"--tracking-uri {uri}: {db} is not a SQLite database ({e})") from None


@contextmanager
def _folder_lock(folder: Path | None) -> Iterator[None]:
    """An exclusive lock on ``folder`` (none for None), held while a SQLite store is opened: MLflow makes a new
    store's tables in several steps, and two processes making them at once leave it half-made."""
    if folder is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@cache
def mlflow_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the MLflow store at ``uri``, made if new; checked once per process.

    Runs starting at once in several processes on one machine (``stew reproduce``'s workers) open a SQLite
    store one at a time. Artefacts of a SQLite store's experiment go to ``mlruns/`` beside the database file,
    as MLflow's own default does for a database in the working folder."""
    import mlflow

    for name_ in ("mlflow", "alembic"):  # "creating initial MLflow database tables" and migrations: not news
        logging.getLogger(name_).setLevel(logging.WARNING)
    db = _sqlite_file(uri)
    if db is not None:
        _check_sqlite(uri, db)
    artefacts = (db.parent / "mlruns").as_uri() if db is not None else None
    try:
        with _quick_http(), _folder_lock(db.parent if db is not None else None):
            client = mlflow.MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(name)
            if found is not None and found.lifecycle_stage != "deleted":
                return found.experiment_id
            if found is not None:
                raise DataError(f"--experiment {name}: deleted in {uri}; restore it or choose another name")
            return client.create_experiment(name, artifact_location=artefacts)
    except DataError:
        raise
    except Exception as e:  # mlflow, SQLAlchemy and requests raise many types: one line names the failure
        raise DataError(f"--tracking-uri {uri}: cannot use it as an MLflow store: {first_line(e)}") from None


def loggers(cfg: TrainConfig, fit_dir: Path) -> list[Logger]:
    """The tracker's Lightning logger for one fit (none without a tracker), its parameters logged."""
    if cfg.tracker == "none":
        return []
    params = json.loads(cfg.model_dump_json())
    name = run_name(fit_dir)
    if cfg.tracker == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        assert cfg.tracking_uri is not None
        mlflow_experiment(cfg.tracking_uri, experiment_name(cfg))
        logger: Logger = MLFlowLogger(
            experiment_name=experiment_name(cfg), run_name=name, tracking_uri=cfg.tracking_uri,
            tags={"stew.run_dir": str(Path(fit_dir).absolute()), "stew.method": cfg.method, "stew.seed": str(cfg.seed)},
        )
    else:
        from lightning.pytorch.loggers import TensorBoardLogger

        if cfg.tracking_uri is None:
            save_dir, exp, version = Path(fit_dir), TB_IN_RUN.parent.as_posix(), TB_IN_RUN.name
        else:
            save_dir, exp, version = Path(cfg.tracking_uri).expanduser(), experiment_name(cfg), name.lstrip("/")
        logger = TensorBoardLogger(save_dir, name=exp, version=version, default_hp_metric=False)
    logger.log_hyperparams(params)
    return [logger]


def describe(cfg: TrainConfig, trackers: list[Logger]) -> dict[str, Any] | None:
    """Where a fit was tracked, for metrics.json: the MLflow run, or the TensorBoard folder."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    for t in trackers:
        if isinstance(t, MLFlowLogger):
            return {"tracker": "mlflow", "uri": cfg.tracking_uri, "experiment": experiment_name(cfg),
                    "experiment_id": t.experiment_id, "run_id": t.run_id}
        if isinstance(t, TensorBoardLogger):
            return {"tracker": "tensorboard", "dir": str(Path(t.log_dir).absolute())}
    return None


def closed_form(cfg: TrainConfig, fit_dir: Path) -> dict[str, Any] | None:
    """A fit without the training loop (linear): its parameters tracked, the run closed."""
    trackers = loggers(cfg, fit_dir)
    for t in trackers:
        t.finalize("success")
    return describe(cfg, trackers)


def artefacts(out: Path) -> list[Path]:
    """The files of a run folder that go to its tracked run: not its checkpoints, nor the folders of the runs
    inside it (CM-StEW's teachers and guard folds, grid candidates, --cv folds), which are tracked runs of their
    own with their own artefacts."""
    nested = {m.parent for m in out.rglob("metrics.json") if m.parent != out}
    return [f for f in sorted(out.rglob("*")) if f.is_file() and not SKIPPED & set(f.relative_to(out).parts[:-1])
            and not any(d in f.parents for d in nested)]


def finish(metrics: dict[str, Any], out: Path | None) -> None:
    """Once the run folder is written: its final validation and test scores and, for MLflow, the folder
    (less its checkpoints) as the tracked run's artefacts."""
    where = metrics.get("tracking")
    if not where:
        return
    final = {f"final_{split}_{k}": float(v) for split in ("val", "test")
             for k, v in (metrics.get(split) or {}).items() if isinstance(v, int | float)}
    if where["tracker"] == "mlflow":
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=where["uri"])
        for k, v in final.items():
            client.log_metric(where["run_id"], k, v)
        if out is not None:
            for f in artefacts(Path(out)):
                rel = f.relative_to(out)
                client.log_artifact(where["run_id"], str(f), rel.parent.as_posix() if rel.parent.parts else None)
    else:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(where["dir"]) as w:
            for k, v in final.items():
                w.add_scalar(k, v, 0)
