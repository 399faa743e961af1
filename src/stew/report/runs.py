"""What a report is built from: the run store's results and the files in each run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stew.errors import DataError
from stew.experiments import results
from stew.experiments.protocols import Column, Protocol
from stew.experiments.results import MissingTableResult, TableResult

Collected = dict[str, dict[int, dict[str, Any]]]  # group -> seed -> store row (results.collect)


@dataclass
class Report:
    """What the HTML is built from: the protocol, its results and where the runs lie."""

    folder: Path
    protocol: Protocol
    meta: dict[str, str]
    runs: list[dict[str, Any]]
    collected: Collected
    tables: list[TableResult]
    root: Path
    missing: list[MissingTableResult] = field(default_factory=list)  # the missing-modality tables

    def run_dir(self, group: str, seed: int) -> Path | None:
        """The folder of ``group``'s run for ``seed``, None when not finished."""
        row = self.row(group, seed)
        return self.root / row["run_dir"] if row is not None else None

    def row(self, group: str, seed: int) -> dict[str, Any] | None:
        """The store row of ``group``'s run for ``seed``, None when not finished."""
        return self.collected.get(group, {}).get(seed)


def load_report(folder: Path) -> Report:
    """Read a ``stew reproduce`` output folder (DataError if it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a stew reproduce folder (no such folder)", file=folder)
    protocol, store = results.load(folder)
    with store:
        meta, runs = store.meta(), store.runs()
        collected = results.collect(store)
        root = store.root
    return Report(folder, protocol, meta, runs, collected, results.paper_tables(protocol, collected), root,
                  results.missing_tables(protocol, collected))


def cell_label(row_label: str, col: Column | None) -> str:
    """A table cell's name: its row label, with the column's label when the table has columns."""
    return f"{row_label} ({col.label})" if col is not None else row_label


def run_task(run_dir: Path) -> str | None:
    """regression, binary or multiclass, from the header of the run's predictions.csv."""
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return None
    cols = pd.read_csv(path, nrows=0).columns
    if any(c.startswith("y_") for c in cols):
        return "regression"
    return "binary" if "prob" in cols else "multiclass"


def read_predictions(run_dir: Path | None) -> pd.DataFrame | None:
    """The run's predictions.csv, None when there is no run or no file."""
    path = run_dir / "predictions.csv" if run_dir is not None else None
    return pd.read_csv(path) if path is not None and path.is_file() else None


def read_curves(run_dir: Path) -> pd.DataFrame | None:
    """Per-epoch train_loss and val_score from logs/metrics.csv and logs/resumed-N/metrics.csv."""
    logs = run_dir / "logs"
    files = [logs / "metrics.csv"] + sorted(logs.glob("resumed-*/metrics.csv"),
                                            key=lambda p: int(p.parent.name.split("-")[-1]))
    frames = []
    for order, f in enumerate(p for p in files if p.is_file()):
        try:
            df = pd.read_csv(f)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if "epoch" in df:
            frames.append(df.assign(_order=order))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).dropna(subset=["epoch"])
    cols = [c for c in ("train_loss", "val_score") if c in df]
    if not cols:
        return None
    # Lightning writes train and validation values on separate rows; a resumed run may repeat an epoch.
    out = df.sort_values(["_order"]).groupby("epoch")[cols].last()
    return out.reset_index().astype({"epoch": int})


def read_latents(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The run's latents.npz as arrays (latent, y, sequence, step), None when absent, incomplete or empty."""
    path = run_dir / "latents.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    return d if {"latent", "y", "sequence", "step"} <= set(d) and len(d["latent"]) else None
