"""Standardisation (issue 28): the streaming fit equals the two-pass numpy computation it replaced, and
which modalities a run standardises is a documented option (``standardize``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from stew.data.dataset import Sequence
from stew.data.windows import Standardizer, moments


def numpy_fit(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The fit before issue 28: every row in one float64 array, then nanmean and nanstd."""
    x = np.concatenate(blocks).astype(np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.nanmean(x, 0)), np.nan_to_num(np.nanstd(x, 0))


def random_blocks(seed: int, d: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Offsets far above the spread, as MFCC c0 has: a one-pass sum of squares would lose the variance.
    scale, offset = np.exp(rng.normal(0, 2, d)), rng.normal(0, 1e3, d)
    blocks = [(offset + scale * rng.standard_normal((int(rng.integers(0, 40)), d))).astype(np.float32)
              for _ in range(60)]
    for b in blocks[::3]:
        b[rng.random(b.shape) < 0.2] = np.nan  # missing parts of an early-fused modality
    blocks[5][:, 2] = np.nan
    return blocks


@pytest.mark.parametrize("chunk", [1, 50, 10**9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_moments_equal_numpy_nanmean_nanstd(seed, chunk):
    blocks = random_blocks(seed)
    mu, sd = moments(iter(blocks), 7, chunk_values=chunk)
    ref_mu, ref_sd = numpy_fit(blocks)
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sd, ref_sd, rtol=1e-7)


def test_a_column_without_values_has_mean_0_and_std_0():
    blocks = [np.full((3, 2), np.nan, np.float32), np.array([[1.0, np.nan], [3.0, np.nan]], np.float32)]
    mu, sd = moments(blocks, 2, chunk_values=2)
    np.testing.assert_array_equal(mu, [2.0, 0.0])
    np.testing.assert_array_equal(sd, [1.0, 0.0])
    mu, sd = moments([], 2)
    np.testing.assert_array_equal(mu, [0.0, 0.0]) and np.testing.assert_array_equal(sd, [0.0, 0.0])


def test_standardizer_fit_matches_the_old_computation_on_present_steps():
    rng = np.random.default_rng(3)
    seqs = []
    for i, b in enumerate(random_blocks(4)):
        b = b if len(b) else np.zeros((1, 7), np.float32)
        mask = rng.random(len(b)) < 0.8
        seqs.append(Sequence(id=str(i), group=str(i), split="train", features={"a": b}, masks={"a": mask},
                             targets=np.zeros((1, 1), np.float32), step_ids=[str(i)]))
    sc = Standardizer.fit(seqs, ["a"])
    ref_mu, ref_sd = numpy_fit([s.features["a"][s.masks["a"]] for s in seqs])
    np.testing.assert_allclose(sc.mean["a"], ref_mu.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(sc.std["a"], np.where(ref_sd > 1e-8, ref_sd, 1.0).astype(np.float32), rtol=1e-6)
    nothing = [Sequence(id="0", group="0", split="train", features={"a": np.ones((2, 3), np.float32)},
                        masks={"a": np.zeros(2, bool)}, targets=np.zeros((1, 1), np.float32), step_ids=["0"])]
    empty = Standardizer.fit(nothing, ["a"])  # no present step: centred at 0, unscaled
    np.testing.assert_array_equal(empty.mean["a"], 0.0) and np.testing.assert_array_equal(empty.std["a"], 1.0)
