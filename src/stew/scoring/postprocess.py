"""AVEC post-processing chain for continuous predictions (docs/methods/emobed.md#post-processing).

The chain is applied per recording, in this order, every step optional:

1. **median filter** over ``median_frames`` frames (odd; 1 = off), ``scipy.ndimage.median_filter``
   with ``mode="nearest"``, one recording at a time so that no value crosses a recording boundary;
2. **centring**: ``p' = p - pred_mean + label_mean``;
3. **scaling**: ``p' = mu + (p - mu) * label_std / pred_std`` with ``mu = label_mean`` when centring
   is on, else ``mu = pred_mean`` (scaling about the mean the predictions have at that point);
4. **time shift** by ``shift_frames`` = ``round(D * rate)`` frames: predictions move LATER in time,
   ``out[t] = p[t - d]``, the first ``d`` frames repeat ``p[0]`` (again per recording).

Grid (the EmoBed paper's): filter window W in 0.12..0.44 s step 0.08 s, delay D in 0.04..0.60 s step 0.04 s,
each converted to frames at the label rate (windows to the nearest odd count), plus "off" (1 frame,
0 frames); centring and scaling each on or off. :func:`fit_chain` searches the full grid on the
validation partition and keeps the chain with the highest CCC over the concatenation of all
validation recordings (AVEC convention, :func:`stew.scoring.metrics.ccc`).

**Deviation from AVEC, on purpose.** The AVEC baseline computes the prediction mean and standard
deviation used by centring and scaling on the partition being scored (dev, then test), i.e. it
re-normalises every partition with its own statistics. We instead FIX them once from validation:
``pred_mean`` / ``pred_std`` are the mean and (population) std of the median-filtered validation
predictions, ``label_mean`` / ``label_std`` those of the training labels. A deployed model then maps
every recording the same way, whatever recording it sees and however short it is, and test scores
use no statistic of the test predictions. If ``pred_std < 1e-8`` scaling is skipped (a constant
prediction cannot be scaled) instead of dividing by zero.

Ties in the search go to the simpler chain: candidates are visited from simplest (fewest steps on,
then smallest window, then smallest shift) to most complex, and a later one replaces the current
best only if it beats it by more than ``1e-9`` (so rounding noise never adds a step). The identity
chain is a candidate, so the validation gain is never negative.

numpy + scipy only: this module is imported on the inference path and must not pull in torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.ndimage import median_filter

from stew.scoring.metrics import ccc

__all__ = ["Chain", "apply_chains", "fit_chain", "fit_chains", "grid"]

#: Below this validation-prediction std, scaling is skipped.
MIN_PRED_STD = 1e-8
#: A candidate must beat the current best by more than this to replace it (ties -> simpler chain).
TIE_TOL = 1e-9

# The paper's grid in hundredths of a second (integers, so no float accumulation).
_WINDOWS_CS = range(12, 45, 8)  # 0.12, 0.20, 0.28, 0.36, 0.44 s
_DELAYS_CS = range(4, 61, 4)  # 0.04 .. 0.60 s


def _check_rate(rate_hz: float | None) -> float:
    if rate_hz is None:
        raise ValueError("rate_hz is required (label frame rate in Hz); got None")
    try:
        r = float(rate_hz)
    except (TypeError, ValueError) as e:
        raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}") from e
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"rate_hz must be a positive finite number, got {rate_hz!r}")
    return r


def _affine(centre: bool, scale: bool, pred_mean: float, pred_std: float, label_mean: float, label_std: float):
    """Centring + scaling as one map ``p -> a * p + b`` (shared by :meth:`Chain.apply` and the search)."""
    if scale and pred_std >= MIN_PRED_STD:
        r = label_std / pred_std
    else:
        r = 1.0
        scale = False
    if centre and scale:  # lm + (p - pm) * r
        return r, label_mean - r * pred_mean
    if centre:  # p - pm + lm
        return 1.0, label_mean - pred_mean
    if scale:  # pm + (p - pm) * r
        return r, pred_mean - r * pred_mean
    return 1.0, 0.0


def _median(p: np.ndarray, frames: int) -> np.ndarray:
    if frames <= 1 or p.size == 0:
        return p
    return median_filter(p, size=frames, mode="nearest")


def _shift(p: np.ndarray, d: int) -> np.ndarray:
    if d <= 0 or p.size == 0:
        return p
    out = np.empty_like(p)
    k = min(d, p.size)
    out[:k] = p[0]
    out[k:] = p[: p.size - k]
    return out


@dataclass(frozen=True)
class Chain:
    """One target's post-processing chain; the statistics are fixed at fit time (see module doc)."""

    median_frames: int = 1  # 1 = off; odd
    centre: bool = False
    scale: bool = False
    shift_frames: int = 0
    pred_mean: float = 0.0  # validation prediction mean (after the median filter)
    pred_std: float = 1.0
    label_mean: float = 0.0  # training-label mean
    label_std: float = 1.0

    def __post_init__(self) -> None:
        mf, sf = self.median_frames, self.shift_frames
        if isinstance(mf, bool) or int(mf) != mf or mf < 1 or mf % 2 == 0:
            raise ValueError(f"median_frames must be an odd integer >= 1 (1 = off), got {mf!r}")
        if isinstance(sf, bool) or int(sf) != sf or sf < 0:
            raise ValueError(f"shift_frames must be an integer >= 0, got {sf!r}")
        for name in ("pred_mean", "pred_std", "label_mean", "label_std"):
            v = getattr(self, name)
            if not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if self.pred_std < 0 or self.label_std < 0:
            raise ValueError(
                f"standard deviations must be >= 0, got pred_std={self.pred_std}, label_std={self.label_std}"
            )
        # normalise types so that equality and JSON are stable
        object.__setattr__(self, "median_frames", int(mf))
        object.__setattr__(self, "shift_frames", int(sf))
        object.__setattr__(self, "centre", bool(self.centre))
        object.__setattr__(self, "scale", bool(self.scale))
        for name in ("pred_mean", "pred_std", "label_mean", "label_std"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def scale_active(self) -> bool:
        """Whether scaling really happens (it is skipped when ``pred_std < 1e-8``)."""
        return self.scale and self.pred_std >= MIN_PRED_STD

    def apply(self, preds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Post-process per-recording 1-D prediction arrays; returns new arrays of the same shapes.

        Floating inputs keep their dtype (computed in float64); other inputs come back as float64.
        """
        a, b = _affine(self.centre, self.scale, self.pred_mean, self.pred_std, self.label_mean, self.label_std)
        out = []
        for i, p in enumerate(preds):
            arr = np.asarray(p)
            if arr.ndim != 1:
                raise ValueError(f"sequence {i}: expected a 1-D prediction array, got shape {arr.shape}")
            dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            q = _median(arr.astype(np.float64, copy=False), self.median_frames)
            if (a, b) != (1.0, 0.0):
                q = a * q + b
            q = _shift(q, self.shift_frames)
            out.append(np.array(q, dtype=dtype, copy=True))
        return out

    def to_json(self) -> dict:
        """A JSON-serialisable dict of plain python values (``json.dumps`` works on it)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Chain:
        """Inverse of :meth:`to_json`; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"Chain.from_json expects a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Chain field(s): {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)


def grid(rate_hz: float) -> tuple[list[int], list[int]]:
    """Median windows and shifts in frames at ``rate_hz``: ``([1, ...odd...], [0, ...])``, ascending, deduplicated.

    Windows: 1 (off) plus W = 0.12..0.44 s step 0.08 s, each rounded to the nearest odd frame count.
    Shifts: 0 (off) plus D = 0.04..0.60 s step 0.04 s, each ``round(D * rate_hz)`` frames.
    """
    rate = _check_rate(rate_hz)
    windows = {1}
    for cs in _WINDOWS_CS:
        x = cs * rate / 100.0
        windows.add(max(1, 2 * math.floor((x - 1.0) / 2.0 + 0.5) + 1))
    shifts = {0}
    for cs in _DELAYS_CS:
        shifts.add(int(math.floor(cs * rate / 100.0 + 0.5)))
    return sorted(windows), sorted(shifts)


def _as_1d_list(seqs: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if seqs is None or len(seqs) == 0:
        raise ValueError(f"{what}: no sequences")
    out = []
    for i, s in enumerate(seqs):
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(f"{what}[{i}]: expected a 1-D array, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{what}[{i}]: empty sequence")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}[{i}]: contains NaN or inf")
        out.append(a)
    return out


def _flat_labels(train_labels, what: str = "train_labels") -> np.ndarray:
    if isinstance(train_labels, list | tuple):
        if len(train_labels) == 0:
            raise ValueError(f"{what}: empty")
        parts = [np.asarray(a, dtype=np.float64) for a in train_labels]
        arr = np.concatenate([p.reshape(p.shape[0], -1) if p.ndim > 1 else p for p in parts])
    else:
        arr = np.asarray(train_labels, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{what}: empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: contains NaN or inf")
    return arr


def fit_chain(
    val_preds: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    train_labels: np.ndarray,
    rate_hz: float,
    score: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[Chain, dict]:
    """Grid-search one target's chain on validation (see module doc).

    ``val_preds`` / ``val_labels``: per-recording 1-D arrays of equal lengths; ``train_labels``: the
    training labels of this target (flattened). ``score(y_true, y_pred)`` defaults to
    :func:`stew.scoring.metrics.ccc`, computed over the concatenation of all validation recordings.

    Returns ``(chain, report)`` with report keys ``val_ccc_raw`` (identity chain), ``val_ccc`` (chosen
    chain), ``gain`` (>= 0), ``median_s``, ``shift_s``, ``median_frames``, ``shift_frames``, ``centre``,
    ``scale`` and ``candidates`` (number of chains scored). With a custom ``score`` the ``val_ccc*``
    entries hold that score.
    """
    rate = _check_rate(rate_hz)
    preds = _as_1d_list(val_preds, "val_preds")
    labels = _as_1d_list(val_labels, "val_labels")
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} prediction sequences but {len(labels)} label sequences")
    for i, (p, y) in enumerate(zip(preds, labels, strict=True)):
        if p.size != y.size:
            raise ValueError(f"sequence {i}: {p.size} predictions but {y.size} labels")
    tl = _flat_labels(train_labels).ravel()
    score_fn = ccc if score is None else score
    label_mean, label_std = float(tl.mean()), float(tl.std())

    windows, shifts = grid(rate)
    y_all = np.concatenate(labels)

    # score every candidate, keyed by (median_frames, centre, scale, shift_frames)
    scores: dict[tuple[int, bool, bool, int], float] = {}
    stats: dict[int, tuple[float, float]] = {}
    for w in windows:
        filt = [_median(p, w) for p in preds]
        cat = np.concatenate(filt)
        pm, ps = float(cat.mean()), float(cat.std())
        stats[w] = (pm, ps)
        for d in shifts:
            shifted = np.concatenate([_shift(p, d) for p in filt]) if d else cat
            for centre in (False, True):
                for scale in (False, True):
                    a, b = _affine(centre, scale, pm, ps, label_mean, label_std)
                    q = shifted if (a, b) == (1.0, 0.0) else a * shifted + b
                    s = float(score_fn(y_all, q))
                    scores[(w, centre, scale, d)] = s if math.isfinite(s) else -math.inf

    def simplicity(key: tuple[int, bool, bool, int]) -> tuple:
        w, centre, scale, d = key
        return (int(w > 1) + int(centre) + int(scale) + int(d > 0), w, d, int(scale), int(centre))

    order = sorted(scores, key=simplicity)
    identity = (1, False, False, 0)
    assert order[0] == identity
    best = identity
    for key in order[1:]:
        if scores[key] > scores[best] + TIE_TOL:
            best = key
    w, centre, scale, d = best
    pm, ps = stats[w]
    chain = Chain(
        median_frames=w,
        centre=centre,
        scale=scale and ps >= MIN_PRED_STD,
        shift_frames=d,
        pred_mean=pm,
        pred_std=ps,
        label_mean=label_mean,
        label_std=label_std,
    )
    raw = scores[identity]
    report = {
        "val_ccc_raw": raw,
        "val_ccc": scores[best],
        "gain": scores[best] - raw,
        "median_s": w / rate,
        "shift_s": d / rate,
        "median_frames": w,
        "shift_frames": d,
        "centre": chain.centre,
        "scale": chain.scale,
        "candidates": len(scores),
    }
    return chain, report


def _columns(seqs: Sequence[np.ndarray], k: int, what: str) -> list[np.ndarray]:
    if seqs is None or len(seqs) == 0:
        raise ValueError(f"{what}: no sequences")
    out = []
    for i, s in enumerate(seqs):
        a = np.asarray(s)
        if a.ndim == 1 and k == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != k:
            raise ValueError(f"{what}[{i}]: expected shape [T, {k}] (one column per target), got {a.shape}")
        out.append(a)
    return out


def _check_targets(targets: Sequence[str]) -> list[str]:
    t = list(targets)
    if not t:
        raise ValueError("targets: empty")
    if len(set(t)) != len(t):
        raise ValueError(f"targets must be unique, got {t}")
    return t


def fit_chains(
    val_preds: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    train_labels: np.ndarray,
    targets: Sequence[str],
    rate_hz: float,
) -> tuple[dict[str, Chain], dict[str, dict]]:
    """:func:`fit_chain` for every target; arrays are per-recording ``[T, k]``, columns in ``targets`` order.

    ``train_labels`` is ``[N, k]`` (or a list of per-recording ``[T, k]`` arrays). Returns chains and
    reports keyed by target name.
    """
    tg = _check_targets(targets)
    k = len(tg)
    preds = _columns(val_preds, k, "val_preds")
    labels = _columns(val_labels, k, "val_labels")
    tl = _flat_labels(train_labels)
    if tl.ndim == 1 and k == 1:
        tl = tl[:, None]
    if tl.ndim != 2 or tl.shape[1] != k:
        raise ValueError(f"train_labels: expected shape [N, {k}] (one column per target), got {tl.shape}")
    chains: dict[str, Chain] = {}
    reports: dict[str, dict] = {}
    for j, name in enumerate(tg):
        chains[name], reports[name] = fit_chain([p[:, j] for p in preds], [y[:, j] for y in labels], tl[:, j], rate_hz)
    return chains, reports


def apply_chains(chains: dict[str, Chain], preds: Sequence[np.ndarray], targets: Sequence[str]) -> list[np.ndarray]:
    """Apply each target's chain to its column of per-recording ``[T, k]`` predictions; shapes are kept."""
    tg = _check_targets(targets)
    missing = [t for t in tg if t not in chains]
    if missing:
        raise ValueError(f"no post-processing chain for target(s) {missing}; have {sorted(chains)}")
    cols = _columns(preds, len(tg), "preds")
    outs = []
    for orig, a in zip(preds, cols, strict=True):
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
        o = np.empty(a.shape, dtype=dtype)
        for j, name in enumerate(tg):
            o[:, j] = chains[name].apply([a[:, j]])[0]
        outs.append(o.reshape(np.shape(orig)))
    return outs
