"""Standardisation, label delay and window arithmetic, in numpy only.

:mod:`stew.data.preprocess` builds torch batches from these; the torch-free deployment path
(:mod:`stew.deploy.runtime`) builds numpy batches from the same functions, so both engines see the
same windows, the same standardised values and the same delay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stew.data.dataset import Sequence


@dataclass
class Standardizer:
    """Per-modality z-scoring with statistics from present (mask True) training steps.

    Missing steps stay exactly zero after transformation, i.e. at the training mean, so that a
    run of face-not-found frames reads as "no information" rather than an extreme value.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, seqs: list[Sequence], modalities: list[str], unscaled: Iterable[str] = ()) -> Standardizer:
        """Statistics of the present training steps; modalities in ``unscaled`` keep mean 0 and std 1.

        One streaming pass per modality (:func:`moments`): memory stays a few chunks of frames, not the
        split twice over in float64 (an IEMOCAP fold's video and MFCCs: BENCHMARKS.md, "Standardizer
        memory at IEMOCAP size").
        """
        mean, std = {}, {}
        for m in modalities:
            d = seqs[0].features[m].shape[1]
            if m in unscaled:
                mean[m], std[m] = np.zeros(d, np.float32), np.ones(d, np.float32)
                continue
            # NaN marks a missing part of an early-fused modality (Dataset.fuse): skipped here.
            mu, sd = moments((s.features[m][s.masks[m]] for s in seqs), d)
            mean[m] = mu.astype(np.float32)
            # A constant feature would divide by zero; leave it centred instead of scaled.
            std[m] = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        return cls(mean, std)

    def transform(self, m: str, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        z = (x - self.mean[m]) / self.std[m]
        return np.where(present[:, None] & ~np.isnan(z), z, 0.0).astype(np.float32)

    def to_json(self) -> dict:
        return {m: {"mean": self.mean[m].tolist(), "std": self.std[m].tolist()} for m in self.mean}

    @classmethod
    def from_json(cls, d: dict) -> Standardizer:
        return cls(
            {m: np.asarray(v["mean"], np.float32) for m, v in d.items()},
            {m: np.asarray(v["std"], np.float32) for m, v in d.items()},
        )


CHUNK_VALUES = 1 << 22  # values per pass of :func:`moments` (32 MB in float64)


def moments(blocks: Iterable[np.ndarray], d: int, chunk_values: int = CHUNK_VALUES) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of the rows of ``blocks`` ([n_i, d] each), NaN skipped as
    ``np.nanmean`` / ``np.nanstd`` skip it; 0 and 0 for a column with no value.

    Rows are gathered into chunks of about ``chunk_values`` values; each chunk's count, mean and sum of
    squared deviations (float64) are merged into the running ones with Chan, Golub and LeVeque's
    parallel update, so the result matches the two-pass numpy computation on all rows at once (to
    float64 rounding) while holding one chunk at a time.
    """
    n, mean, m2 = np.zeros(d), np.zeros(d), np.zeros(d)

    def merge(parts: list[np.ndarray]) -> None:
        x = np.concatenate(parts).astype(np.float64)
        missing = np.isnan(x)
        x[missing] = 0.0
        nb = x.shape[0] - missing.sum(0)
        mb = x.sum(0) / np.maximum(nb, 1)
        x -= mb
        x[missing] = 0.0
        m2b = np.einsum("ij,ij->j", x, x)
        total = n + nb
        delta = mb - mean
        w = np.divide(nb, total, out=np.zeros(d), where=total > 0)
        mean[:] += delta * w
        m2[:] += m2b + delta * delta * n * w
        n[:] = total

    parts: list[np.ndarray] = []
    held = 0
    for block in blocks:
        if len(block):
            parts.append(block)
            held += block.size
        if held >= chunk_values:
            merge(parts)
            parts, held = [], 0
    if parts:
        merge(parts)
    std = np.sqrt(np.divide(m2, n, out=np.zeros(d), where=n > 0))
    return np.where(n > 0, mean, 0.0), std


def delay_steps(delay_s: float, step_rate_hz: float | None) -> int:
    return 0 if not step_rate_hz or not delay_s else int(round(delay_s * step_rate_hz))


def shift_labels(y: np.ndarray, k: int) -> np.ndarray:
    """Pair the features at step t with the label at t + k (annotators react k steps late).

    The last k steps have no future label; they repeat the final one.
    """
    if k <= 0:
        return y
    return np.concatenate([y[k:], np.repeat(y[-1:], min(k, len(y)), axis=0)])[: len(y)]


def unshift_predictions(p: np.ndarray, k: int) -> np.ndarray:
    """Move predictions back onto the original label time axis (inverse of :func:`shift_labels`)."""
    if k <= 0:
        return p
    return np.concatenate([np.repeat(p[:1], min(k, len(p)), axis=0), p[:-k] if k < len(p) else p[:0]])[: len(p)]


def window_starts(length: int, win: int, hop: int) -> list[int]:
    """Window starts that cover the whole sequence; the last window is end-aligned if needed."""
    if length <= win:
        return [0]
    starts = list(range(0, length - win + 1, hop))
    if starts[-1] + win < length:
        starts.append(length - win)
    return starts


def eval_windows(length: int, win: int) -> list[tuple[int, int]]:
    """Non-overlapping windows; the last one may be shorter (it is padded and masked)."""
    return [(a, min(a + win, length)) for a in range(0, length, win)]


def steps_for(seconds: float, step_rate_hz: float | None) -> int | None:
    return None if not step_rate_hz else max(1, math.ceil(seconds * step_rate_hz - 1e-9))
