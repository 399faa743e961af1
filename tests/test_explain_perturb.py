"""`stew explain`'s predictions of perturbed clips (stew.eval.perturb, issue 26): the front end computed once gives
the whole network's scores, on a small ConflictNET (the default layers' receptive field, few channels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stew.eval.explain import explain_clip, segment_bounds
from stew.eval.perturb import segment_predict, waveform_predict
from stew.models.conflictnet import RawAudioModel
from stew.models.specs import ConflictNetSpec, RawAudioSpec

SR = 800  # 3 s super-samples of 2,400 samples; the receptive field is 1,325 samples
CPU = torch.device("cpu")


def _model(ablation: str = "conflictnet", **kw) -> RawAudioModel:
    torch.manual_seed(0)
    spec = ConflictNetSpec(ablation=ablation, samples=15 * SR, filters=[4, 8, 8], lstm_units=[8, 4],
                           attention_units=4, **kw)
    model = RawAudioModel(RawAudioSpec(modality="audio", targets=["conflict"], net=spec))
    with torch.no_grad():  # trained-looking BatchNorm statistics and output map, so that nothing is an identity
        for block in model.net.blocks:
            block.bn.running_mean.uniform_(-0.5, 0.5)
            block.bn.running_var.uniform_(0.5, 2.0)
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.uniform_(-0.2, 0.2)
        model.out_scale.fill_(1.7)
        model.out_shift.fill_(-0.3)
    return model.eval()


def _clip(n: int = 15 * SR, real: int = 13 * SR + 500) -> tuple[np.ndarray, int]:
    clip = np.zeros(n, dtype=np.float32)
    clip[:real] = np.random.default_rng(1).normal(size=real)
    return clip, real


@pytest.mark.parametrize("ablation,kw", [("conflictnet", {}), ("paranet", {}),
                                         ("+gap", {"block_order": "conv-pool-bn"})])
def test_front_end_once_gives_the_whole_networks_scores(ablation, kw):
    """A padded clip (13.6 s of a 15 s model, 5 super-samples), 64 random perturbations plus all-on and all-off:
    the scores from the reused front end equal the network's on each perturbed waveform to float rounding."""
    model, (clip, real) = _model(ablation, **kw), _clip()
    bounds = segment_bounds(real, SR)
    assert len(bounds) == 5
    masks = np.random.default_rng(2).integers(0, 2, size=(66, len(bounds)), dtype=np.int8)
    masks[0], masks[1] = 1, 0
    seg_of_sample = np.repeat(np.arange(len(bounds)), [b - a for a, b in bounds])
    want = waveform_predict(model, clip, real, CPU)(clip[None, :real] * masks[:, seg_of_sample])
    fast = segment_predict(model, clip, real, bounds, CPU)
    assert fast is not None
    got = fast(masks)
    assert want.std() > 1e-3  # the perturbations move the score: the comparison is not between constants
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # in batches of any size, and the same perturbation in any batch gives the same score
    np.testing.assert_allclose(np.concatenate([fast(masks[:5]), fast(masks[5:])]), got, rtol=0, atol=2e-6)


def test_explanation_is_the_same_either_way():
    model, (clip, real) = _model(), _clip(real=15 * SR)
    slow = waveform_predict(model, clip, real, CPU)
    a = explain_clip(slow, clip[:real], SR, n_samples=100, seed=3)
    b = explain_clip(slow, clip[:real], SR, n_samples=100, seed=3,
                     by_segments=lambda bounds: segment_predict(model, clip, real, bounds, CPU))
    assert [s["index"] for s in a.segments] == [s["index"] for s in b.segments]
    np.testing.assert_allclose([s["weight"] for s in b.segments], [s["weight"] for s in a.segments], atol=1e-6)
    assert b.prediction == pytest.approx(a.prediction, abs=1e-6) and b.score == pytest.approx(a.score, abs=1e-5)


def test_super_samples_narrower_than_the_receptive_field_fall_back_to_whole_clips():
    """With 20 super-samples of 600 samples a front-end step meets up to three: no reuse, and explain_clip scores
    the waveforms."""
    model, (clip, real) = _model(), _clip(real=15 * SR)
    bounds = segment_bounds(real, SR, n_segments=20)
    assert segment_predict(model, clip, real, bounds, CPU) is None
    calls: list[int] = []
    slow = waveform_predict(model, clip, real, CPU)

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return slow(batch)

    explain_clip(counted, clip[:real], SR, n_segments=20, n_samples=40, batch_size=16,
                 by_segments=lambda b: segment_predict(model, clip, real, b, CPU))
    assert calls == [16, 16, 8]


def test_steps_is_the_front_ends_step_mask():
    """net.steps: a step is True when its receptive field (1,325 samples, every 1,152) misses the masked samples."""
    net = _model().net
    mask = torch.ones(3, 15 * SR, dtype=torch.bool)
    mask[1, 10_000:] = False
    mask[2, 5_000:9_000] = False  # a hole, as segment_predict's "outside this super-sample" masks have
    _, steps = net.sequence(torch.zeros(3, 15 * SR, 1), mask)
    torch.testing.assert_close(net.steps(mask), steps)
    start = np.arange(steps.shape[1]) * 1152
    np.testing.assert_array_equal(net.steps(mask)[2].numpy(), ~((start < 9_000) & (start + 1325 > 5_000)))
