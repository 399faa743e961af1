"""Long runs say how far along they are: the epoch out of max_epochs, time elapsed and time left."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stew.config import TrainConfig
from stew.training.run import run
from stew.util.progress import clock
from tests.conftest import FAST, tiny_frames


def test_clock() -> None:
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"


def test_progress_bar_shows_epochs_elapsed_and_time_left(capfd: pytest.CaptureFixture[str]) -> None:
    cfg = TrainConfig(data=Path("unused"), modality="a", arch="classifier", **{**FAST, "progress": True,
                                                                            "max_epochs": 4, "patience": 4})
    run(cfg, tiny_frames())
    err = capfd.readouterr().out  # Lightning's tqdm bars write to stdout
    assert "Epoch 1/4 · 0:00 elapsed" in err
    # From the second epoch on, a range: early stopping's soonest end to the last epoch.
    assert re.search(r"Epoch 4/4 · \d+:\d\d elapsed · \d+:\d\d(-\d+:\d\d)? left", err), err[-500:]
