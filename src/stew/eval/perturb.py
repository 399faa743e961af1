"""A raw-audio model's predictions of LIME's perturbed clips, for ``stew explain``
(docs/methods/conflictnet.md#explanations).

A perturbation zero-fills some of a clip's super-samples. ConflictNET's convolutional front end is local:
each step of its output (LSTM-1's input) is a function of the samples in its receptive field only (1,325
samples, 0.17 s at 8 kHz, with the default layers), far shorter than a 3 s super-sample, so a step meets one
super-sample, or two where it straddles a border. Under any perturbation a step therefore has the value it
has in one of four clips: the clip, silence, and the clip with only its even or only its odd super-samples
kept. :func:`segment_predict` runs the front end on those four once and, per perturbation, takes each step
from the clip that agrees with the perturbation on the super-samples that step meets, then runs the rest of
the network (LSTMs, attention, dense; about 3 % of a 30 s clip's operations). The outputs are the network's
on the perturbed clips up to float rounding (tests/test_explain_perturb.py; BENCHMARKS.md). Where the
receptive field is too wide for that (a step meeting three super-samples), :func:`waveform_predict` runs
each perturbed clip through the whole network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from stew.models.conflictnet import RawAudioModel

Predict = Callable[[np.ndarray], np.ndarray]


def _mask(clip: np.ndarray, real: int, device: torch.device) -> torch.Tensor:
    """stew.deploy.audio's sample mask: the real samples, not the padding."""
    return torch.from_numpy(np.arange(len(clip)) < real).to(device)


def waveform_predict(model: RawAudioModel, clip: np.ndarray, real: int, device: torch.device) -> Predict:
    """Scores of perturbed waveforms (batch, real) as ``stew predict`` gives them: zero-padded to the clip
    length and the padding masked."""
    present, m = _mask(clip, real, device), model.spec.modality

    @torch.inference_mode()
    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.zeros(len(batch), len(clip), 1)
        x[:, :real, 0] = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        mask = present.expand(len(batch), -1)
        return model.predict({"x": {m: x.to(device)}, "present": {m: mask}})[:, 0, 0].float().cpu().numpy()

    return predict


@torch.inference_mode()
def segment_predict(model: RawAudioModel, clip: np.ndarray, real: int, bounds: list[tuple[int, int]],
                    device: torch.device) -> Predict | None:
    """Scores of perturbations given as 0/1 masks (batch, len(bounds)) over the super-samples ``bounds`` of
    ``clip[:real]``, the front end computed once (module docstring); None when a step of the front end meets
    more than two super-samples."""
    net, n, k = model.net, len(clip), len(bounds)
    if k == 0:
        return None
    if model.training:
        raise ValueError("segment_predict needs the model in eval mode (BatchNorm's statistics are per batch)")
    seg = torch.zeros(k, n, dtype=torch.bool)
    for j, (a, b) in enumerate(bounds):
        seg[j, a:b] = True
    # meets[j, s]: step s's receptive field is not wholly outside super-sample j
    meets = ~net.steps(~seg.to(device))
    if int(meets.sum(0).max()) > 2:
        return None
    parity = np.arange(k) % 2
    states = np.unique(np.stack([np.ones(k), np.zeros(k), parity == 0, parity == 1]).astype(np.float32), axis=0)
    keep = np.zeros((len(states), n), dtype=np.float32)
    keep[:, :real] = np.repeat(states, [b - a for a, b in bounds], axis=1)
    x = torch.from_numpy(keep * clip[None, :].astype(np.float32))[..., None].to(device)
    h, steps = net.sequence(x, _mask(clip, real, device).expand(len(states), -1))
    states_t, meets_f = torch.from_numpy(states).to(device), meets.to(h.dtype)
    cols = torch.arange(h.shape[1], device=device)

    @torch.inference_mode()
    def predict(masks: np.ndarray) -> np.ndarray:
        m = torch.from_numpy(np.asarray(masks, dtype=np.float32)).to(device)
        # disagree[i, c, s]: how many super-samples that step s meets are kept in perturbation i but not in
        # base clip c, or the other way round; a step is taken from the first clip with none
        disagree = (m[:, None, :] != states_t[None]).to(h.dtype) @ meets_f
        agree = disagree == 0
        if not bool(agree.any(1).all()):  # cannot happen when each step meets at most two adjacent super-samples
            raise RuntimeError("a front-end step agrees with none of the base clips")
        seq = h[agree.to(torch.uint8).argmax(1), cols]
        out = model.predict_from_front_end(seq, steps[:1].expand(len(m), -1))
        return out[:, 0, 0].float().cpu().numpy()

    return predict
