"""stew.postprocess: the AVEC post-processing chain (spec emobed_cermtl.md §1.4)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d

from stew.scoring.metrics import ccc
from stew.scoring.postprocess import Chain, apply_chains, fit_chain, fit_chains, grid

RATE = 25.0


def smooth_labels(rng: np.random.Generator, n_seq: int = 4, length: int = 600, pad: int = 0) -> list[np.ndarray]:
    """Slowly varying label traces (moving average of white noise), ~unit scale."""
    out = []
    for _ in range(n_seq):
        x = uniform_filter1d(rng.normal(size=length + pad), size=25, mode="nearest")
        out.append(x / x.std() * 0.3 + 0.1)
    return out


def test_grid_at_25hz():
    windows, shifts = grid(RATE)
    assert windows == [1, 3, 5, 7, 9, 11]
    assert shifts == list(range(16))
    w50, s50 = grid(50.0)
    assert all(w % 2 == 1 for w in w50) and w50[0] == 1 and s50[-1] == 30


@pytest.mark.parametrize("bad", [None, 0, -25.0, float("nan")])
def test_bad_rate_and_empty_input(bad):
    with pytest.raises(ValueError, match="rate_hz"):
        grid(bad)
    with pytest.raises(ValueError, match="rate_hz"):
        fit_chain([np.zeros(5)], [np.zeros(5)], np.zeros(5), bad)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="no sequences"):
        fit_chain([], [], np.zeros(3), RATE)
    with pytest.raises(ValueError, match="empty"):
        fit_chain([np.zeros(4)], [np.zeros(4)], np.zeros(0), RATE)
    with pytest.raises(ValueError, match="empty sequence"):
        fit_chain([np.zeros(0)], [np.zeros(0)], np.zeros(3), RATE)


def test_recovers_known_delay():
    rng = np.random.default_rng(0)
    d = 6
    long = smooth_labels(rng, pad=d)
    labels = [y[:-d] for y in long]
    # predictions run EARLY: pred[t] = label[t + d] + noise, so the chain must delay them by d frames
    preds = [y[d:] + rng.normal(0, 0.03, y.size - d) for y in long]
    chain, rep = fit_chain(preds, labels, np.concatenate(labels), RATE)
    assert chain.shift_frames == d
    assert rep["shift_s"] == pytest.approx(d / RATE)
    assert rep["gain"] > 0.01
    assert rep["val_ccc"] == pytest.approx(ccc(np.concatenate(labels), np.concatenate(chain.apply(preds))))


def test_median_filter_helps_on_impulse_noise():
    rng = np.random.default_rng(1)
    labels = smooth_labels(rng)
    preds = []
    for y in labels:
        p = y.copy()
        hit = rng.random(y.size) < 0.05
        p[hit] += rng.choice([-3.0, 3.0], hit.sum())
        preds.append(p)
    chain, rep = fit_chain(preds, labels, np.concatenate(labels), RATE)
    assert chain.median_frames > 1
    assert rep["gain"] > 0.1
    assert rep["val_ccc"] > 0.95


def test_centre_and_scale_undo_affine_distortion():
    rng = np.random.default_rng(2)
    labels = smooth_labels(rng)
    preds = [0.3 * y + 0.5 for y in labels]
    chain, rep = fit_chain(preds, labels, np.concatenate(labels), RATE)
    assert chain.centre and chain.scale
    assert chain.median_frames == 1 and chain.shift_frames == 0
    assert rep["val_ccc_raw"] < 0.5
    assert rep["val_ccc"] > 0.999
    out = chain.apply(preds)
    np.testing.assert_allclose(np.concatenate(out), np.concatenate(labels), atol=1e-9)


def test_identity_chosen_for_perfect_predictions_and_gain_non_negative():
    rng = np.random.default_rng(3)
    labels = smooth_labels(rng)
    # training labels from a different distribution: centring/scaling would hurt
    train = rng.normal(1.0, 2.0, 1000)
    chain, rep = fit_chain(labels, labels, train, RATE)
    assert (chain.median_frames, chain.centre, chain.scale, chain.shift_frames) == (1, False, False, 0)
    assert rep["gain"] == 0.0 and rep["val_ccc"] == pytest.approx(1.0)
    # training labels == validation labels: centring+scaling tie with identity up to rounding -> identity
    chain2, rep2 = fit_chain(labels, labels, np.concatenate(labels), RATE)
    assert (chain2.median_frames, chain2.centre, chain2.scale, chain2.shift_frames) == (1, False, False, 0)
    assert rep2["candidates"] == 6 * 2 * 2 * 16
    # random predictions: still never negative
    for seed in range(5):
        r = np.random.default_rng(seed)
        preds = [r.normal(size=y.size) for y in labels]
        _, rep = fit_chain(preds, labels, r.normal(size=100), RATE)
        assert rep["gain"] >= 0.0


def test_apply_is_per_sequence_and_keeps_shapes():
    chain = Chain(shift_frames=2)
    a, b = np.arange(5.0) + 100, np.arange(5.0)
    out = chain.apply([a, b])
    np.testing.assert_array_equal(out[1], [0, 0, 0, 1, 2])  # nothing from `a` leaks into `b`
    np.testing.assert_array_equal(out[0], [100, 100, 100, 101, 102])
    assert chain.apply([np.array([7.0])])[0].tolist() == [7.0]  # shift longer than the sequence
    # median over 3 frames of the concatenation would turn the lone 0 into 100
    med = Chain(median_frames=3).apply([np.full(2, 100.0), np.zeros(1), np.full(2, 100.0)])
    assert [m.tolist() for m in med] == [[100, 100], [0], [100, 100]]
    # shapes and float dtype kept; input not modified
    x = np.linspace(0, 1, 13, dtype=np.float32)
    x0 = x.copy()
    y = Chain(median_frames=5, centre=True, scale=True, shift_frames=3, pred_std=2.0).apply([x])[0]
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(x, x0)
    with pytest.raises(ValueError, match="1-D"):
        chain.apply([np.zeros((3, 2))])


def test_fit_and_apply_chains_multi_target():
    rng = np.random.default_rng(4)
    d = 4
    ya = smooth_labels(rng, n_seq=3, pad=d)
    yv = smooth_labels(rng, n_seq=3)
    labels = [np.stack([a[:-d], v], 1) for a, v in zip(ya, yv, strict=True)]
    preds = [np.stack([a[d:], 0.5 * v + 1.0], 1) for a, v in zip(ya, yv, strict=True)]
    train = np.concatenate(labels)
    chains, reports = fit_chains(preds, labels, train, ["arousal", "valence"], RATE)
    assert set(chains) == set(reports) == {"arousal", "valence"}
    assert chains["arousal"].shift_frames == d and not chains["arousal"].centre
    assert chains["valence"].centre and chains["valence"].scale and chains["valence"].shift_frames == 0
    out = apply_chains(chains, preds, ["arousal", "valence"])
    assert [o.shape for o in out] == [p.shape for p in preds]
    cat_y, cat_o = np.concatenate(labels), np.concatenate(out)
    assert ccc(cat_y[:, 0], cat_o[:, 0]) == pytest.approx(reports["arousal"]["val_ccc"])
    assert ccc(cat_y[:, 1], cat_o[:, 1]) > 0.999
    with pytest.raises(ValueError, match="no post-processing chain"):
        apply_chains({"arousal": chains["arousal"]}, preds, ["arousal", "valence"])
    with pytest.raises(ValueError, match=r"\[T, 2\]"):
        fit_chains([p[:, :1] for p in preds], labels, train, ["arousal", "valence"], RATE)


def test_json_roundtrip():
    chain = Chain(
        median_frames=7,
        centre=True,
        scale=True,
        shift_frames=11,
        pred_mean=np.float64(0.25),
        pred_std=np.float32(0.5),
        label_mean=-0.1,
        label_std=0.3,
    )
    s = json.dumps(chain.to_json())
    back = Chain.from_json(json.loads(s))
    assert back == chain
    x = [np.random.default_rng(0).normal(size=50)]
    np.testing.assert_array_equal(back.apply(x)[0], chain.apply(x)[0])
    rng = np.random.default_rng(5)
    labels = smooth_labels(rng, n_seq=2)
    fitted, rep = fit_chain([0.5 * y for y in labels], labels, np.concatenate(labels), RATE)
    json.dumps(rep)
    assert Chain.from_json(json.loads(json.dumps(fitted.to_json()))) == fitted
    with pytest.raises(ValueError, match="unknown"):
        Chain.from_json({"median_frames": 3, "bogus": 1})
    with pytest.raises(ValueError, match="odd"):
        Chain(median_frames=4)


def test_constant_predictions_no_nan_scaling_skipped():
    c = Chain(centre=True, scale=True, pred_mean=2.0, pred_std=0.0, label_mean=0.5, label_std=0.3)
    assert not c.scale_active
    out = c.apply([np.full(10, 2.0)])[0]
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 0.5)  # centred, not scaled
    rng = np.random.default_rng(6)
    labels = smooth_labels(rng, n_seq=2)
    chain, rep = fit_chain([np.full(y.size, 3.0) for y in labels], labels, np.concatenate(labels), RATE)
    assert not chain.scale
    assert all(np.isfinite(v) for v in rep.values() if isinstance(v, float))
    assert rep["gain"] == 0.0
    assert np.all(np.isfinite(chain.apply([np.full(5, 3.0)])[0]))


def test_full_grid_is_fast():
    rng = np.random.default_rng(7)
    labels = [rng.normal(size=7500) for _ in range(9)]
    preds = [y + rng.normal(size=y.size) for y in labels]
    t0 = time.perf_counter()
    fit_chain(preds, labels, np.concatenate(labels), RATE)
    assert time.perf_counter() - t0 < 2.0


def test_module_does_not_import_torch():
    code = "import stew.scoring.postprocess, sys; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
