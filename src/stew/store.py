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
from pathlib import Path
from typing import Any

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

# Fields that change where or how fast a run executes, not what it computes.
_NOT_IN_KEY = ("out", "progress", "threads", "resume", "data")


def run_key(config: dict[str, Any], data_fingerprint: str, teacher_key: str | None = None) -> str:
    """Deterministic key of one run: its configuration (minus paths and speed settings), data and teacher."""
    cfg = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
    if "cmstew" in cfg:  # the teacher is identified by its own key, not by where its folder lies
        cfg["cmstew"] = {k: v for k, v in cfg["cmstew"].items() if k != "teacher_run"}
    blob = json.dumps({"config": cfg, "data": data_fingerprint, "teacher": teacher_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def data_fingerprint(path: Path) -> str:
    """SHA-256 over every file's relative path and contents (hidden files excluded)."""
    path = Path(path)
    if not path.exists():
        raise DataError("data folder does not exist", file=path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


class RunStore:
    """SQLite store of finished runs. Only the coordinating process writes to it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DataError(f"not a stew run store: {e}", file=self.path) from e

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        cur = self._db.execute("SELECT * FROM runs WHERE key = ?", (key,))
        row = cur.fetchone()
        return self._row(cur, row) if row else None

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
        cur = self._db.execute("SELECT * FROM runs ORDER BY finished_at, rowid")
        return [self._row(cur, r) for r in cur.fetchall()]

    @staticmethod
    def _row(cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
        d = dict(zip([c[0] for c in cur.description], row, strict=True))
        d["config"], d["metrics"] = json.loads(d["config"]), json.loads(d["metrics"])
        d["group"] = d.pop("grp")
        return d

    def run_dir(self, row: dict[str, Any]) -> Path:
        return self.root / row["run_dir"]

    # -- metadata (protocol text, data path and fingerprint) ---------------------------------------

    def set_meta(self, **kv: str) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(kv.items()))

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT k, v FROM meta").fetchall())
