"""Standardisation (issue 28): the streaming fit equals the two-pass numpy computation it replaced, and
which modalities a run standardises is a documented option (``standardize``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import stew
from stew.config import TrainConfig
from stew.data.dataset import Sequence
from stew.data.formats.native import write_native
from stew.data.windows import Standardizer, moments
from stew.errors import DataError
from stew.training.resolve import make_bundle, resolve
from tests.conftest import tiny_clips
from tests.test_cli import invoke, one_line_error


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


# --------------------------------------------------------------------------------------------------
# Which modalities a run standardises (docs/choices.md, "Standardisation")


@pytest.mark.parametrize("standardize, scaled", [("all", {"long", "short"}), (["long"], {"long"}), ([], set())])
def test_standardize_chooses_the_modalities_that_are_z_scored(tmp_path, standardize, scaled):
    ds = tiny_clips()
    cfg = resolve(TrainConfig(data=tmp_path, method="fusion", standardize=standardize), ds)
    bundle = make_bundle(cfg, ds, ["long", "short"])
    for m in ("long", "short"):
        raw = np.concatenate([s.source.features[m][s.source.masks[m]] for s in bundle.train])
        got = np.concatenate([s.x[m].numpy()[s.present[m].numpy()] for s in bundle.train])
        if m in scaled:
            np.testing.assert_allclose(got.mean(0), 0, atol=1e-5)
            np.testing.assert_allclose(got.std(0), 1, atol=1e-4)
        else:  # fed as it is, and deployed that way (the model folder's standardiser is the identity)
            np.testing.assert_array_equal(got, raw)
            assert not bundle.scaler.mean[m].any() and (bundle.scaler.std[m] == 1).all()


def test_standardize_bad_input_is_one_line_and_writes_nothing(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    out = tmp_path / "run"
    line = one_line_error(invoke("train", "--data", data, "--method", "fusion", "--standardize", "long,nope",
                                 "--out", out))
    assert "--standardize names nope, which the data does not have" in line and not out.exists()
    with pytest.raises(DataError, match="standardize"):
        stew.train(tiny_clips(), "fusion", out=out, standardize="some")
    assert not out.exists()


def test_cli_standardize_none_reaches_the_run_and_the_model_folder(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    res = invoke("train", "--data", data, "--method", "fusion", "--standardize", "none", "--max-epochs", "1",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["standardize"] == []
    scaler = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["standardizer"]
    assert all(set(v["mean"]) == {0.0} and set(v["std"]) == {1.0} for v in scaler.values())
