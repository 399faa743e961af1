"""A dataset split and preprocessed for one run: what a method is built from and trained on."""

from __future__ import annotations

from dataclasses import dataclass

from stew.data.dataset import Dataset
from stew.data.preprocess import PreparedSequence, Standardizer


@dataclass
class Bundle:
    """The splits of one run after standardisation, label delay and windowing choices."""

    ds: Dataset
    modalities: list[str]
    targets: list[str]
    scaler: Standardizer
    k_delay: int
    win: int | None
    hop: int | None
    eval_win: int | None
    train: list[PreparedSequence]
    val: list[PreparedSequence]
    test: list[PreparedSequence]

    @property
    def task(self) -> str:
        return self.ds.task

    @property
    def target_cols(self) -> list[int]:
        """Columns of ``ds.targets`` this run predicts, in ``targets`` order."""
        return [self.ds.targets.index(t) for t in self.targets]
