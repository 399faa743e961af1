"""ReduceLROnPlateau on the validation loss (issue 28; the fusion thesis's schedule, docs/methods/fusion.md#defaults):
the loop computes the validation loss, and the learning rate falls when it stops improving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stew
from stew.data.formats.native import write_native
from stew.errors import DataError
from tests.conftest import tiny_clips, tiny_waves
from tests.test_cli import invoke, one_line_error

FUSION = {"fusion": {"gru_units": 8, "heads": 2, "clf_hidden": 16}, "progress": False, "val_groups": 4}


def test_the_learning_rate_drops_when_the_validation_loss_plateaus(tmp_path):
    # lr 1e-6 barely moves the weights: the validation loss is flat (within PyTorch's relative threshold
    # 1e-4) from the first epoch, so with patience 1 the rate falls after the third epoch and again after
    # the fifth (more than `patience` epochs without improvement).
    res = stew.train(tiny_clips(), "fusion", out=tmp_path / "run", lr=1e-6, max_epochs=6, patience=20,
                     lr_scheduler="plateau", plateau_patience=1, plateau_factor=0.1, **FUSION)
    sel = res["selection"]
    assert sel["lr_reduced_at"] == [3, 5] and sel["epochs_run"] == 6
    logs = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    val_loss = logs["val_loss"].dropna().to_numpy()
    assert len(val_loss) == 6 and np.ptp(val_loss) < 1e-4 * val_loss[0]
    # The validation loss is the cross-entropy of the validation utterances (the model barely moved).
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    val = pred[pred["split"] == "val"]
    ce = -np.log(val[[f"prob_{c}" for c in range(3)]].to_numpy()[np.arange(len(val)), val["y"].to_numpy()]).mean()
    assert val_loss[-1] == pytest.approx(ce, rel=1e-4)


def test_without_the_schedule_the_rate_is_constant_and_no_loss_is_computed(tmp_path):
    res = stew.train(tiny_clips(), "fusion", out=tmp_path / "run", lr=1e-9, max_epochs=4, patience=20, **FUSION)
    assert "lr_reduced_at" not in res["selection"]
    logs = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    assert "val_loss" not in logs


def test_bad_schedule_settings_are_one_line_and_write_nothing(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    out = tmp_path / "run"
    line = one_line_error(invoke("train", "--data", data, "--method", "fusion", "--lr-scheduler", "cosine",
                                 "--out", out))
    assert "lr_scheduler" in line and "plateau" in line and not out.exists()
    with pytest.raises(DataError, match=r"--plateau-patience \(plateau_patience\) applies to --lr-scheduler plateau"):
        stew.train(tiny_clips(), "fusion", out=out, plateau_patience=3, **FUSION)
    with pytest.raises(DataError, match=r"--lr-scheduler \(lr_scheduler\) does not apply to --method conflictnet"):
        stew.train(tiny_waves(n=12), "conflictnet", out=out, lr_scheduler="plateau", max_epochs=1)
    assert not out.exists()
