"""LIME over time segments (spec §3.7) and the §3.6 analysis plot, with synthetic predict functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stew.eval.explain import (
    CATEGORIES,
    analysis_categories,
    analysis_plot,
    explain_clip,
    segment_bounds,
    write_explanation,
)

SR = 800  # 30 s at 800 Hz: 10 super-samples of 2,400 samples, small enough to stay fast
SEG = 3 * SR
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _clip(seconds: float = 30.0, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=int(seconds * SR)).astype(np.float32)


class Recorder:
    """predict = energy in segments 2 and 7, minus half that of segment 4; records every batch."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        e = np.abs(batch).reshape(len(batch), -1, SEG).mean(axis=2)
        return (e[:, 2] + e[:, 7] - 0.5 * e[:, 4])[:, None]  # (batch, 1) is accepted too


def test_known_segments_rank_first_with_signs() -> None:
    expl = explain_clip(Recorder(), _clip(), SR, n_samples=300)
    order = [s["index"] for s in expl.segments]
    assert set(order[:2]) == {2, 7}
    assert all(s["weight"] > 0 for s in expl.segments[:2])
    assert order[2] == 4 and expl.segments[2]["weight"] < 0
    # ranked by |weight|, sign kept
    mags = [abs(s["weight"]) for s in expl.segments]
    assert mags == sorted(mags, reverse=True)
    assert expl.score > 0.99  # the predict function is exactly linear in the masks
    assert len(expl.segments) == 10


def test_distances_kernel_and_surrogate_are_the_thesis_eqs_3_5_and_3_6() -> None:
    """Each perturbation z' is weighted by exp(-D(1, z')^2 / sigma^2), D the cosine distance (eq. 3.5), and the
    surrogate is the weighted ridge of the scores on z' (eq. 3.6): recomputed with scikit-learn from the
    perturbations predict() saw. A narrow kernel, so that the weights matter (at sigma = 25 they are flat)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics.pairwise import cosine_distances

    seen: list[np.ndarray] = []

    def nonlinear(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        e = np.abs(batch).reshape(len(batch), -1, SEG).mean(axis=2)
        return (e[:, 2] + e[:, 7]) ** 2 - e[:, 4] * e[:, 1]

    width = 0.4
    expl = explain_clip(nonlinear, _clip(), SR, n_samples=300, kernel_width=width)
    rows = np.concatenate(seen)
    masks = (np.abs(rows.reshape(len(rows), 10, SEG)).sum(axis=2) > 0).astype(np.float64)
    y = nonlinear(rows)
    d = cosine_distances(masks, np.ones((1, 10)))[:, 0]  # the all-off mask: 1, as sklearn gives it
    w = np.exp(-(d**2) / width**2)
    assert w.min() < 0.1  # the kernel is far from flat here
    ridge = Ridge(alpha=1.0).fit(masks, y, sample_weight=w)
    got = {s["index"]: s["weight"] for s in expl.segments}
    np.testing.assert_allclose([got[i] for i in range(10)], ridge.coef_, rtol=1e-4, atol=1e-7)
    assert expl.intercept == pytest.approx(ridge.intercept_, rel=1e-4)
    assert expl.local_prediction == pytest.approx(float(ridge.predict(np.ones((1, 10)))[0]), rel=1e-4)
    assert expl.score == pytest.approx(ridge.score(masks, y, sample_weight=w), rel=1e-4)
    # ... and the weighting changes the answer: an unweighted fit gives other coefficients
    assert not np.allclose(Ridge(alpha=1.0).fit(masks, y).coef_, ridge.coef_, rtol=1e-3)


def test_first_perturbation_is_the_clip_and_call_count() -> None:
    wave, rec = _clip(), Recorder()
    expl = explain_clip(rec, wave, SR, n_samples=100, batch_size=32)
    rows = np.concatenate(rec.batches)
    assert [len(b) for b in rec.batches] == [32, 32, 32, 4]
    assert rows.shape == (100, len(wave))
    np.testing.assert_array_equal(rows[0], wave)
    assert expl.prediction == pytest.approx(float(rec(wave[None])[0, 0]))
    # absent segments are exactly zero, present ones untouched
    seg_rows = rows.reshape(100, 10, SEG)
    present = np.abs(seg_rows).sum(axis=2) > 0
    np.testing.assert_array_equal(seg_rows[present], wave.reshape(10, SEG)[np.nonzero(present)[1]])
    assert not present.all()


def test_deterministic_for_a_seed() -> None:
    a = explain_clip(Recorder(), _clip(), SR, n_samples=50, seed=3)
    b = explain_clip(Recorder(), _clip(), SR, n_samples=50, seed=3)
    c = explain_clip(Recorder(), _clip(), SR, n_samples=50, seed=4)
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()


def test_p_pos_halves_the_weights() -> None:
    raw = explain_clip(Recorder(), _clip(), SR, n_samples=60)
    pp = explain_clip(Recorder(), _clip(), SR, n_samples=60, positive_probability=True)
    assert [s["index"] for s in pp.segments] == [s["index"] for s in raw.segments]
    for r, p in zip(raw.segments, pp.segments, strict=True):
        assert p["weight"] == pytest.approx(r["weight"] / 2, abs=1e-9)
    assert pp.target == "p_pos" and pp.prediction == raw.prediction


def test_json_and_png(tmp_path: Path) -> None:
    wave = _clip()
    expl = explain_clip(Recorder(), wave, SR, n_samples=60)
    jp, pp = write_explanation(expl, wave, SR, tmp_path / "out", top=3)
    assert (jp, pp) == (tmp_path / "out" / "explanation.json", tmp_path / "out" / "explanation.png")
    d = json.loads(jp.read_text())
    assert {"segments", "intercept", "score", "prediction", "target", "n_samples", "kernel_width", "seed"} <= set(d)
    segs = d["segments"]
    assert sorted(s["index"] for s in segs) == list(range(10))
    for s in segs:
        assert set(s) == {"index", "start_s", "end_s", "weight"}
        assert (s["start_s"], s["end_s"]) == (3.0 * s["index"], 3.0 * s["index"] + 3.0)
    assert [abs(s["weight"]) for s in segs] == sorted((abs(s["weight"]) for s in segs), reverse=True)
    data = pp.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["explanation.json", "explanation.png"]


def test_partial_last_segment() -> None:
    # 1 s left over (< half a segment) joins segment 9; 2 s (>= half) is its own segment 10
    assert segment_bounds(31 * SR, SR)[-1] == (27 * SR, 31 * SR) and len(segment_bounds(31 * SR, SR)) == 10
    assert segment_bounds(32 * SR, SR)[-1] == (30 * SR, 32 * SR) and len(segment_bounds(32 * SR, SR)) == 11
    assert segment_bounds(100, SR, n_segments=3) == [(0, 33), (33, 67), (67, 100)]


def test_analysis_plot_counts(tmp_path: Path) -> None:
    y = np.array([0.4, -0.3, 0.9, 0.5, -0.5, -0.9, 0.0, 0.2])
    p = np.array([0.6, -0.7, 0.1, -0.1, 0.2, -0.2, -0.1, 0.9])
    # cat 1: (.4,.6) (-.3,-.7); 4: (.9,.1) (-.9,-.2) (.2,.9); 2: (.5,-.1) (0,-.1); 3: (-.5,.2)
    np.testing.assert_array_equal(analysis_categories(y, p), [1, 1, 4, 2, 3, 4, 2, 4])
    out = tmp_path / "analysis.png"
    counts = analysis_plot(y, p, out)
    assert counts == {CATEGORIES[0]: 2, CATEGORIES[1]: 2, CATEGORIES[2]: 1, CATEGORIES[3]: 3, "total": 8}
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    with pytest.raises(ValueError, match="y_pred"):
        analysis_plot(y, p[:3], out)


def test_silent_clip_has_no_nan(tmp_path: Path) -> None:
    wave = np.zeros(30 * SR, np.float32)
    expl = explain_clip(Recorder(), wave, SR, n_samples=40)
    values = [expl.intercept, expl.score, expl.prediction] + [s["weight"] for s in expl.segments]
    assert np.isfinite(values).all()
    assert all(s["weight"] == 0 for s in expl.segments)
    json.loads(expl.to_json())  # allow_nan=False: would raise on NaN
    _, png = write_explanation(expl, wave, SR, tmp_path)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shorter than one 3 s super-sample"):
        explain_clip(Recorder(), _clip(2.0), SR, n_samples=10)
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        explain_clip(Recorder(), _clip(), SR, n_samples=1)
    with pytest.raises(ValueError, match="non-finite"):
        explain_clip(lambda b: np.full(len(b), np.nan), _clip(), SR, n_samples=10)
    with pytest.raises(ValueError, match="expected"):
        explain_clip(lambda b: np.zeros((len(b), 2)), _clip(), SR, n_samples=10)
    with pytest.raises(ValueError, match="NaN or infinite"):
        explain_clip(Recorder(), np.full(30 * SR, np.nan), SR, n_samples=10)
