"""What a run returns, and what marks a finished run folder."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.methods.base import Method

# Written last and atomically: its presence marks a complete run folder.
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"


def finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished run (an interrupted one has no metrics.json)."""
    return (Path(run_dir) / METRICS).is_file()


@dataclass
class RunResult(Mapping[str, Any]):
    """One finished run. ``metrics`` is what ``metrics.json`` holds, and the result reads like it
    (``result["val"]["ccc_arousal"]``); ``predictions`` is ``predictions.csv`` as a DataFrame. The
    trained method, its data and the post-processing fitted on validation live in memory only (None for
    a run read back from its folder, and for a cross-validation summary)."""

    metrics: dict[str, Any]
    folder: Path | None = None
    model: Method | None = None
    bundle: Bundle | None = None
    cfg: TrainConfig | None = None
    frames: list[pd.DataFrame] = field(default_factory=list)
    chains: dict | None = None

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    @property
    def predictions(self) -> pd.DataFrame:
        """One row per scored step of validation and test (``predictions.csv``)."""
        if self.frames:
            return pd.concat(self.frames, ignore_index=True)
        if self.folder is not None and (self.folder / PREDICTIONS).is_file():
            return pd.read_csv(self.folder / PREDICTIONS)
        raise ValueError("this result has no predictions (a cross-validation summary has them per fold)")

    @classmethod
    def read(cls, run_dir: Path) -> RunResult:
        """A finished run folder: its ``metrics.json``, and ``predictions.csv`` when asked for."""
        run_dir = Path(run_dir)
        return cls(metrics=json.loads((run_dir / METRICS).read_text()), folder=run_dir)
