import numpy as np
import pytest
import torch

from stew.data.preprocess import (
    Standardizer,
    WindowDataset,
    eval_windows,
    prepare,
    shift_labels,
    stitch,
    unshift_predictions,
    window_starts,
)
from stew.data.splits import carve_validation, grouped_folds
from stew.errors import DataError
from tests.conftest import tiny_frames, tiny_utterances


def test_recola_training_windows_cover_the_recording():
    starts = window_starts(7500, 75, 25)
    assert len(starts) == 298  # spec §1.3: 298 by arithmetic (the thesis says 299)
    assert starts[0] == 0 and starts[-1] + 75 == 7500
    assert window_starts(100, 75, 25) == [0, 25]
    assert window_starts(110, 75, 25) == [0, 25, 35]  # end-aligned last window
    assert window_starts(50, 75, 25) == [0]


def test_eval_windows_partition_the_sequence():
    w = eval_windows(160, 75)
    assert w == [(0, 75), (75, 150), (150, 160)]


@pytest.mark.parametrize("k", [0, 1, 5, 70])
def test_label_shift_roundtrip(k):
    y = np.arange(60, dtype=np.float32)[:, None]
    s = shift_labels(y, k)
    assert s.shape == y.shape
    kk = min(k, 60)
    # Feature step t is paired with the label of step t + k.
    np.testing.assert_array_equal(s[: 60 - kk], y[kk:])
    back = unshift_predictions(s, k)
    assert back.shape == y.shape
    np.testing.assert_array_equal(back[kk:], y[kk:])


def test_standardizer_fits_present_train_steps_and_keeps_missing_at_zero():
    ds = tiny_frames()
    sc = Standardizer.fit(ds.split("train"), ["a", "b"])
    s = ds.split("train")[0]
    z = sc.transform("b", s.features["b"], s.masks["b"])
    assert np.all(z[~s.masks["b"]] == 0)
    allz = np.concatenate([sc.transform("b", q.features["b"], q.masks["b"])[q.masks["b"]] for q in ds.split("train")])
    np.testing.assert_allclose(allz.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(allz.std(0), 1, atol=1e-4)
    # Round trip through JSON (what exported models store).
    sc2 = Standardizer.from_json(sc.to_json())
    np.testing.assert_array_equal(sc2.transform("b", s.features["b"], s.masks["b"]), z)


def test_collate_masks_padding_and_stitch_restores_sequences():
    ds = tiny_utterances()
    sc = Standardizer.fit(ds.split("train"), ["text"])
    prep = prepare(ds.split("train"), ["text"], [0], sc, 0)
    wds = WindowDataset.for_evaluation(prep, None)
    batch = wds.collate([wds[i] for i in range(len(wds))])
    lengths = [len(p.y) for p in prep]
    assert batch["mask"].sum(1).tolist() == lengths
    assert torch.all(batch["x"]["text"][~batch["mask"]] == 0)
    full = stitch(lengths, batch["spans"], batch["y"])
    for f, p in zip(full, prep, strict=True):
        np.testing.assert_array_equal(f, p.y.numpy())


def test_carve_validation_takes_whole_groups_deterministically():
    ds = tiny_utterances()
    a, b = carve_validation(ds, 4, seed=3), carve_validation(ds, 4, seed=3)
    assert a.groups("val") == b.groups("val") and len(a.groups("val")) == 4
    assert not set(a.groups("val")) & set(a.groups("train"))
    assert a.groups("test") == ds.groups("test")  # test untouched
    assert carve_validation(ds, 4, seed=4).groups("val") != a.groups("val")
    with pytest.raises(DataError):
        carve_validation(ds, 100, seed=0)


def test_grouped_folds_validate_each_training_group_once():
    ds = tiny_utterances()
    folds = grouped_folds(ds, 3, seed=0)
    seen = [g for f in folds for g in f.groups("val")]
    assert sorted(seen) == ds.groups("train")
    for f in folds:
        assert f.groups("test") == ds.groups("test")
