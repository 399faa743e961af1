"""The run store: one SQLite file per output folder recording every finished run.

A row is written in one transaction when a run has finished and its folder is complete, so a row
is either whole or absent; the store, not the presence of files, decides what is done. The key is a
hash of everything that determines a run's result (its resolved configuration, its teacher's key
and the data's fingerprint), so a changed protocol, seed or dataset never reuses a stale result.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

from stew.config import NOT_IN_IDENTITY
from stew.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,          -- group/seedN (or group/seedN/candidate for a validation grid)
    grp TEXT NOT NULL,
    seed INTEGER NOT NULL,
    candidate TEXT,              -- grid candidate of the first seed, else NULL
    run_dir TEXT NOT NULL,       -- relative to the store's folder
    config TEXT NOT NULL,        -- JSON, the resolved TrainConfig
    metrics TEXT NOT NULL,       -- JSON, the run's metrics.json
    wall_s REAL NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""

def run_key(config: dict[str, Any], data_fingerprint: str, teacher_key: str | None = None) -> str:
    """Deterministic key of one run: its configuration (minus paths and speed settings), data and teacher."""
    cfg = {k: v for k, v in config.items() if k not in NOT_IN_IDENTITY}
    if "cmstew" in cfg:  # the teacher is identified by its own key, not by where its folder lies
        cfg["cmstew"] = {k: v for k, v in cfg["cmstew"].items() if k != "teacher_run"}
    blob = json.dumps({"config": cfg, "data": data_fingerprint, "teacher": teacher_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def readonly_uri(path: Path) -> str:
    """The SQLite URI that opens ``path`` read-only (``mode=ro``): never creates, converts or writes it."""
    return "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?mode=ro"


# Columns a store's ``runs`` table must have for its rows to be read.
_RUN_COLUMNS = {"key", "name", "grp", "seed", "candidate", "run_dir", "config", "metrics", "wall_s", "finished_at"}


class RunStore:
    """SQLite store of finished runs. Only the coordinating process writes to it.

    ``readonly`` (``stew report``, tables of a finished folder) opens the file with SQLite's
    ``mode=ro``: a read never creates, converts or touches the file, and one that is not a stew
    store (zero bytes, another database, not SQLite) is a one-line DataError.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        if readonly and not self.path.is_file():
            raise DataError("no run store (missing file)", file=self.path)
        try:
            if readonly:
                self._db = sqlite3.connect(readonly_uri(self.path), uri=True, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30)
                self._db.executescript(SCHEMA)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        except (sqlite3.DatabaseError, OSError) as e:
            self._close_quietly()
            raise DataError(f"not a stew run store: {e}", file=self.path) from None
        if not {"runs", "meta"} <= tables or not _RUN_COLUMNS <= columns:
            self._close_quietly()
            raise DataError("not a stew run store (no runs and meta tables of stew's schema)", file=self.path)

    @staticmethod
    def check(path: Path) -> None:
        """Before a writer starts: an existing non-empty file at ``path`` must be a stew store.

        A zero-byte file is an empty SQLite database (a first invocation killed before its first
        commit leaves one), so the writer may build its schema there.
        """
        path = Path(path)
        if not path.exists():
            return
        if not path.is_file():
            raise DataError("run store is not a file", file=path)
        if path.stat().st_size > 0:
            RunStore(path, readonly=True).close()

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> tuple[sqlite3.Cursor, list[tuple]]:
        # A damaged file can pass the open and fail on the first page read: still the one-line error.
        try:
            cur = self._db.execute(sql, args)
            return cur, cur.fetchall()
        except sqlite3.DatabaseError as e:
            raise DataError(f"cannot read the run store: {e}", file=self.path) from None

    def get(self, key: str) -> dict[str, Any] | None:
        cur, rows = self._query("SELECT * FROM runs WHERE key = ?", (key,))
        return self._row(cur, rows[0]) if rows else None

    def record(
        self, key: str, *, name: str, group: str, seed: int, candidate: str | None, run_dir: Path,
        config: dict[str, Any], metrics: dict[str, Any], wall_s: float,
    ) -> None:
        rel = Path(run_dir).resolve().relative_to(self.root.resolve())
        with self._db:  # one transaction: the row is whole or absent
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, name, group, seed, candidate, str(rel), json.dumps(config, default=str),
                 json.dumps(metrics, default=str), float(wall_s), time.strftime("%Y-%m-%dT%H:%M:%S")),
            )

    def runs(self) -> list[dict[str, Any]]:
        """Every finished run, in the order they finished."""
        cur, rows = self._query("SELECT * FROM runs ORDER BY finished_at, rowid")
        return [self._row(cur, r) for r in rows]

    def _row(self, cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
        d = dict(zip([c[0] for c in cur.description], row, strict=True))
        try:
            d["config"], d["metrics"] = json.loads(d["config"]), json.loads(d["metrics"])
        except (TypeError, json.JSONDecodeError) as e:
            raise DataError(f"run {d.get('name')!r} has invalid JSON: {e}", file=self.path) from None
        d["group"] = d.pop("grp")
        return d

    def run_dir(self, row: dict[str, Any]) -> Path:
        return self.root / row["run_dir"]

    # -- metadata (protocol text, data path and fingerprint) ---------------------------------------

    def set_meta(self, **kv: str) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(kv.items()))

    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT k, v FROM meta")[1])
