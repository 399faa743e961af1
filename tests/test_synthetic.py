"""Synthetic RECOLA-like and MOSI-like data: determinism, layout, missing frames, label delay, and
the modality ranking that cross-modal transfer relies on (checked with cheap linear probes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from stew.data.dataset import Dataset, Sequence
from stew.data.formats.native import read_native, write_native
from stew.data.synth.affect import MOSI_DIMS, RECOLA_DIMS, synth_mosi, synth_recola


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """The probes' products are small; threaded BLAS on a busy 2-core machine only spins."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _ccc(t: np.ndarray, p: np.ndarray) -> float:
    mt, mp = t.mean(), p.mean()
    return float(2 * np.mean((t - mt) * (p - mp)) / (t.var() + p.var() + (mt - mp) ** 2))


def _ridge(x: np.ndarray, y: np.ndarray, rel_alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on standardised inputs; returns (mean, std, weights with intercept last)."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + rel_alpha * len(z) * np.eye(z.shape[1]), z.T @ (y - y.mean(0)))
    return mu, sd, np.vstack([w, y.mean(0, keepdims=True)])


def _apply(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mu, sd, w = model
    return (x - mu) / sd @ w[:-1] + w[-1]


def _smooth(x: np.ndarray, width: int = 25) -> np.ndarray:
    """Centred moving average (1 s at 25 Hz), shrinking at the edges."""
    c = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    i = np.arange(len(x))
    lo, hi = np.clip(i - width // 2, 0, len(x)), np.clip(i + width // 2 + 1, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def _frames(seqs: list[Sequence], m: str, lag: int, every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Features at t paired with labels at t + lag (lag < 0: earlier labels), every 5th frame.

    The features are 8 s window statistics, so thinning loses nothing and makes the probes fast.
    """
    xs, ys = [], []
    for s in seqs:
        x, y = _smooth(s.features[m].astype(np.float64)), s.targets.astype(np.float64)
        xs.append((x[: len(x) - lag] if lag >= 0 else x[-lag:])[::every])
        ys.append((y[lag:] if lag >= 0 else y[: len(y) + lag])[::every])
    return np.concatenate(xs), np.concatenate(ys)


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert [s.id for s in a] == [s.id for s in b]
    for s, t in zip(a, b, strict=True):
        assert (s.group, s.split, s.step_ids) == (t.group, t.split, t.step_ids)
        assert np.array_equal(s.targets, t.targets)
        for m in a.modalities:
            assert s.features[m].dtype == np.float32
            assert np.array_equal(s.features[m], t.features[m]) and np.array_equal(s.masks[m], t.masks[m])


# --------------------------------------------------------------------------------------------------
# RECOLA-like


@pytest.fixture(scope="module")
def recola_small() -> Dataset:
    return synth_recola(0, n_speakers=6, minutes=1.0)


def test_recola_is_deterministic_per_seed(recola_small: Dataset) -> None:
    _assert_same(recola_small, synth_recola(0, n_speakers=6, minutes=1.0))
    other = synth_recola(1, n_speakers=6, minutes=1.0)
    assert not np.array_equal(recola_small.sequences[0].features["audio"], other.sequences[0].features["audio"])
    assert not np.array_equal(recola_small.sequences[0].targets, other.sequences[0].targets)


def test_recola_layout_at_full_length() -> None:
    ds = synth_recola(3, n_speakers=3, minutes=5.0)
    assert ds.task == "regression" and ds.targets == ["arousal", "valence"] and ds.label_range == (-1.0, 1.0)
    assert ds.step_rate_hz == 25.0 and ds.modalities == {"audio": 88, "video_app": 168, "video_geo": 632}
    assert ds.splits() == {"train": 1, "val": 1, "test": 1}
    for s in ds:
        assert len(s) == 7500 and s.targets.shape == (7500, 2) and s.group == s.id
        assert s.step_ids[0] == f"{s.id}_000000" and s.step_ids[-1] == f"{s.id}_007499"
        for m, d in RECOLA_DIMS.items():
            assert s.features[m].shape == (7500, d) and s.masks[m].shape == (7500,)
            assert np.isfinite(s.features[m]).all()


def test_recola_speaker_partitions() -> None:
    ds = synth_recola(0, n_speakers=27, minutes=0.2)
    assert ds.splits() == {"train": 9, "val": 9, "test": 9}
    assert sorted(s.group for s in ds) == [f"spk{k:02d}" for k in range(1, 28)]
    with pytest.raises(ValueError, match="multiple of 3"):
        synth_recola(0, n_speakers=8)
    with pytest.raises(ValueError, match="multiple of 3"):
        synth_recola(0, n_speakers=0)


def test_recola_labels_in_range_and_smooth(recola_small: Dataset) -> None:
    y = np.concatenate([s.targets for s in recola_small])
    assert np.isfinite(y).all() and y.min() >= -1.0 and y.max() <= 1.0
    assert (y.std(0) > 0.1).all()  # not degenerate
    # Smooth trajectories: frame-to-frame changes are tiny compared to the spread.
    # (white noise would give about 1.1 std; the slowest-moving parts here give about 0.15)
    assert (np.abs(np.diff(recola_small.sequences[0].targets, axis=0)).mean(0) < 0.3 * y.std(0)).all()


def test_recola_missing_video_is_masked_zero_runs(recola_small: Dataset) -> None:
    missing = []
    for s in recola_small:
        assert s.masks["audio"].all()
        assert np.array_equal(s.masks["video_app"], s.masks["video_geo"])  # one face detector
        for m in ("video_app", "video_geo"):
            assert np.array_equal(s.masks[m], np.any(s.features[m] != 0, axis=1))
        assert np.any(s.features["audio"] != 0, axis=1).all()
        gone = ~s.masks["video_app"]
        missing.append(gone.mean())
        edges = np.flatnonzero(np.diff(np.r_[0, gone.astype(int), 0]))
        runs = edges[1::2] - edges[::2]
        assert runs.size and runs.min() >= 12  # at least 0.5 s
    assert 0.03 <= np.mean(missing) <= 0.2


def test_recola_native_round_trip(tmp_path: Path) -> None:
    ds = synth_recola(0, n_speakers=3, minutes=0.1)
    back = read_native(write_native(ds, tmp_path / "recola", fmt="npz"))
    _assert_same(ds, back)
    assert back.meta == ds.meta and back.step_rate_hz == 25.0


def _lag_peak_s(ds: Dataset, lags: np.ndarray) -> float:
    """Lag (s) at which a ridge projection of the audio features correlates best with arousal."""
    scores = []
    for lag in lags:
        x, y = _frames(ds.sequences, "audio", int(lag))
        scores.append(np.corrcoef(_apply(_ridge(x, y[:, :1]), x)[:, 0], y[:, 0])[0, 1])
    return float(lags[int(np.argmax(scores))] / ds.step_rate_hz)


@pytest.mark.parametrize("delay_s", [2.4, 0.0])
def test_recola_labels_lag_the_features(delay_s: float) -> None:
    ds = synth_recola(0, n_speakers=6, minutes=3.0, label_delay_s=delay_s)
    assert ds.meta["label_delay_s"] == pytest.approx(delay_s, abs=0.04)
    peak = _lag_peak_s(ds, np.arange(-50, 151, 5))  # -2 s .. 6 s in 0.2 s steps
    assert abs(peak - delay_s) <= 0.8, peak


def _recola_probe(ds: Dataset) -> dict[tuple[str, str], float]:
    """Val CCC of a delay-compensated ridge per modality, trained on the train speakers."""
    lag = ds.meta["label_delay_frames"]
    out = {}
    for m in ds.modalities:
        model = _ridge(*_frames(ds.split("train"), m, lag))
        x, y = _frames(ds.split("val"), m, lag)
        p = _apply(model, x)
        for j, t in enumerate(ds.targets):
            out[m, t] = _ccc(y[:, j], p[:, j])
    return out


def test_recola_modality_ranking() -> None:
    """Audio beats video on arousal and both video sets beat audio on valence (mean of 3 seeds).

    At this small size (3 train speakers of 2 min) the weak modalities lose most; the full-size
    numbers are in docs/synthetic.md.
    """
    scores = [_recola_probe(synth_recola(seed, n_speakers=9, minutes=2.0)) for seed in range(3)]
    mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    assert mean["audio", "arousal"] > 0.5
    assert mean["audio", "arousal"] > max(mean["video_app", "arousal"], mean["video_geo", "arousal"]) + 0.2
    assert mean["video_geo", "valence"] > mean["audio", "valence"] + 0.2
    assert mean["video_app", "valence"] > mean["audio", "valence"] + 0.1
    # Weak is not useless: the shared information is there.
    assert min(mean["video_app", "arousal"], mean["video_geo", "arousal"], mean["audio", "valence"]) > 0.05


# --------------------------------------------------------------------------------------------------
# MOSI-like


@pytest.fixture(scope="module")
def mosi() -> Dataset:
    return synth_mosi(0)


def test_mosi_is_deterministic_per_seed(mosi: Dataset) -> None:
    _assert_same(mosi, synth_mosi(0))
    other = synth_mosi(1)
    assert [len(s) for s in other] != [len(s) for s in mosi]


def test_mosi_layout(mosi: Dataset) -> None:
    assert mosi.task == "binary" and mosi.targets == ["sentiment"] and mosi.n_classes == 2
    assert mosi.step_rate_hz is None and mosi.modalities == {"text": 100, "audio": 73, "video": 100}
    assert len(mosi.sequences) == 93 and mosi.splits() == {"train": 62, "test": 31}
    lengths = [len(s) for s in mosi]
    assert min(lengths) >= 5 and max(lengths) <= 30 and len(set(lengths)) > 10
    for s in mosi:
        assert s.group == s.id and s.step_ids == [f"{s.id}_{i}" for i in range(1, len(s) + 1)]
        for m, d in MOSI_DIMS.items():
            assert s.features[m].shape == (len(s), d) and np.isfinite(s.features[m]).all()
    y = np.concatenate([s.targets[:, 0] for s in mosi])
    assert set(np.unique(y)) == {0.0, 1.0} and 0.35 < y.mean() < 0.65
    with pytest.raises(ValueError):
        synth_mosi(0, n_videos=2)


def test_mosi_masks(mosi: Dataset) -> None:
    v = np.concatenate([s.features["video"] for s in mosi])
    present = np.concatenate([s.masks["video"] for s in mosi])
    assert np.array_equal(present, np.any(v != 0, axis=1))
    assert 0.01 < 1 - present.mean() < 0.15  # some no-face utterances
    assert 0.6 < (v[present] == 0).mean() < 0.95  # sparse, like the 3D-CNN release
    for s in mosi:
        assert s.masks["text"].all() and s.masks["audio"].all()


def _mosi_probe(ds: Dataset, n_val: int = 20, context: bool = True) -> dict[str, float]:
    """Val accuracy of a logistic model on [utterance, video mean] features (a cheap context model;
    ``context=False``: utterance features only), with validation carved from train by whole videos."""
    from sklearn.linear_model import LogisticRegression

    train = ds.split("train")
    order = np.random.default_rng(0).permutation(len(train))
    fit, val = [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]

    def xy(seqs: list[Sequence], m: str) -> tuple[np.ndarray, np.ndarray]:
        xs = []
        for s in seqs:
            x = s.features[m].astype(np.float64)
            ctx = x[s.masks[m]].mean(0) if s.masks[m].any() else np.zeros(x.shape[1])
            xs.append(np.c_[x, np.repeat(ctx[None], len(x), axis=0)] if context else x)
        return np.concatenate(xs), np.concatenate([s.targets[:, 0] for s in seqs])

    out = {}
    for m in ds.modalities:
        (x, y), (xv, yv) = xy(fit, m), xy(val, m)
        mu, sd = x.mean(0), x.std(0) + 1e-8
        clf = LogisticRegression(C=0.01, max_iter=2000).fit((x - mu) / sd, y)
        out[m] = float(np.mean(clf.predict((xv - mu) / sd) == yv))
    return out


def test_mosi_modality_ranking() -> None:
    acc = [_mosi_probe(synth_mosi(seed)) for seed in range(2)]
    mean = {m: float(np.mean([a[m] for a in acc])) for m in acc[0]}
    assert mean["text"] > 0.7
    assert mean["text"] > mean["audio"] + 0.05 and mean["text"] > mean["video"] + 0.05
    assert min(mean["audio"], mean["video"]) > 0.5  # weak, but above chance
