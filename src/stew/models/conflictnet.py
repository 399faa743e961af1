"""ConflictNET and its ParaNET ablations: end-to-end conflict-intensity regression from raw 8 kHz speech
(docs/methods/conflictnet.md).

One clip in, one prediction out: x [B, T, 1] (raw mono waveform), mask [B, T] (True = real sample) ->
pre-activation [B, 1, n_out]. The paper's output is linear, so :meth:`ConflictNet.activate` is the
identity by default.

Layers (docs/methods/conflictnet.md#architecture; the Keras code settles sizes and order):
3 x [Conv1D valid + ReLU -> BatchNorm -> MaxPool] -> AveragePool(4) -> LSTM(128, sequences) ->
additive self-attention (thesis eq. 3.2) -> LSTM(64, last step) -> Dense(n_out). The ablations drop the
average pooling ("AP") and/or the attention, or add a masked temporal mean ("GAP") over LSTM-2's outputs.

Parameters are Keras's: one bias per LSTM gate (PyTorch's ``nn.LSTM`` has two), BatchNorm running
statistics counted as non-trainable (:func:`count_parameters`), Keras initialisers and BatchNorm
momentum/epsilon. ConflictNET has 420,418 trainable and 896 non-trainable parameters.

Padding (mask False) is assumed to trail the clip, as stew's collation pads. Padded samples are zeroed,
every layer's step mask is derived from the sample mask (a step is real when its whole receptive
field is), BatchNorm statistics, attention keys and the GAP mean use real steps only, and LSTM-2 is
read at the last real step. A padded clip thus gives the same output as the clip alone, in eval mode
and (batch statistics included) in training mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from stew.models.specs import Ablation, ConflictNetSpec, RawAudioSpec  # noqa: F401 - re-exported (old import path

# Attention scores materialise a [B, T, T, units] tensor; above this many elements they are computed in
# blocks of query rows, recomputed in backward (ParaNET+Attn at 832 steps and batch 32 would hold ~2.8 GB).
ATTENTION_MAX_ELEMENTS = 2**26


def steps_mask(mask: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Step mask after a 'valid' window op: a step is real when every sample in its window is."""
    n = (mask.shape[1] - window) // stride + 1
    if bool(mask.all()):
        return mask.new_ones(mask.shape[0], n)
    return F.max_pool1d((~mask).float().unsqueeze(1), window, stride).squeeze(1) == 0


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over [B, C, T] whose training statistics use real steps only.

    Without padding (the usual case: clips are cut to length upstream) it is ``nn.BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or mask is None or bool(mask.all()):
            return super().forward(x)
        w = mask.unsqueeze(1).to(x.dtype)
        n = w.sum()
        mean = (x * w).sum((0, 2)) / n
        var = ((x - mean[:, None]).square() * w).sum((0, 2)) / n
        with torch.no_grad():  # running variance is the unbiased estimate, as nn.BatchNorm1d (and Keras) keep it
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp(min=1), self.momentum)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (x - mean[:, None]) * scale[:, None] + self.bias[:, None]


class ConvBlock(nn.Module):
    """Conv1D ('valid', stride 1) + ReLU, BatchNorm and max-pooling (stride = pool), in either order."""

    def __init__(self, c_in: int, c_out: int, kernel: int, pool: int, spec: ConflictNetSpec) -> None:
        super().__init__()
        self.order = spec.block_order
        self.conv = nn.Conv1d(c_in, c_out, kernel)
        self.bn = MaskedBatchNorm1d(c_out, eps=spec.bn_eps, momentum=spec.bn_momentum)
        self.pool = nn.MaxPool1d(pool, pool)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In place: conv's backward needs its input, not its output.
        z = F.relu(self.conv(z), inplace=True)
        mask = steps_mask(mask, self.conv.kernel_size[0], 1)
        pool = self.pool.kernel_size
        if self.order == "conv-bn-pool":
            z = self.pool(self.bn(z, mask))
            return z, steps_mask(mask, pool, pool)
        z, mask = self.pool(z), steps_mask(mask, pool, pool)
        return self.bn(z, mask), mask

    def steps(self, mask: torch.Tensor) -> torch.Tensor:
        """The output step mask of an input step mask, as :meth:`forward` derives it."""
        pool = self.pool.kernel_size
        return steps_mask(steps_mask(mask, self.conv.kernel_size[0], 1), pool, pool)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras's hard sigmoid, clip(0.2 x + 0.5, 0, 1) (not PyTorch's x/6 + 1/2)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


def lstm_scan(
    gx: torch.Tensor, w_hh: torch.Tensor, gate: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """LSTM recurrence over precomputed input projections gx [B, T, 4H] (gates i, f, g, o); returns [B, T, H]."""
    h = c = gx.new_zeros(gx.shape[0], w_hh.shape[1])
    outs = []
    for t in range(gx.shape[1]):
        i, f, g, o = (gx[:, t] + h @ w_hh.T).chunk(4, -1)
        c = gate(f) * c + gate(i) * torch.tanh(g)
        h = gate(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1)


class KerasLSTM(nn.Module):
    """Unidirectional LSTM with Keras's parameters: one bias per gate unit, 4H (D + H + 1) in all.

    The bias is the last input column of ``lstm.weight_ih_l0`` (the input gets a constant-1 feature),
    so the fused ``nn.LSTM`` kernels (cuDNN included) run it. Returns the whole output sequence.
    """

    def __init__(self, d_in: int, units: int, gate_activation: str = "sigmoid") -> None:
        super().__init__()
        self.gate_activation = gate_activation
        self.lstm = nn.LSTM(d_in + 1, units, bias=False, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
        if self.gate_activation == "sigmoid":
            return self.lstm(x)[0]
        return lstm_scan(x @ self.lstm.weight_ih_l0.T, self.lstm.weight_hh_l0, hard_sigmoid)

    def keras_init(self) -> None:
        """glorot_uniform kernel, orthogonal recurrent kernel, zero bias with forget-gate bias 1."""
        w_ih, w_hh, h = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.hidden_size
        with torch.no_grad():
            nn.init.xavier_uniform_(w_ih[:, :-1])  # fan_in D, fan_out 4H, as Keras's (D, 4H) kernel
            nn.init.orthogonal_(w_hh)  # transpose of Keras's (H, 4H): orthonormal columns instead of rows
            w_ih[:, -1] = 0.0
            w_ih[h : 2 * h, -1] = 1.0  # unit_forget_bias


class AdditiveSelfAttention(nn.Module):
    """Global additive self-attention (docs/methods/conflictnet.md#attention; keras-self-attention
    ``SeqSelfAttention``, additive, tanh).

    g(t, t') = tanh(W_t h_t + W_x h_t' + b_h); e(t, t') = tanh(w_a . g(t, t') + b_a);
    a(t, .) = softmax over real t' of e(t, .); l_t = sum_t' a(t, t') h_t'. Padded query steps give 0,
    as in the Keras layer. Parameters: 2 d U + U + U + 1 (8,257 for d = 128, U = 32).
    """

    def __init__(self, d: int, units: int = 32, max_elements: int = ATTENTION_MAX_ELEMENTS) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.w_t = nn.Parameter(torch.empty(d, units))  # query side
        self.w_x = nn.Parameter(torch.empty(d, units))  # key side
        self.b_h = nn.Parameter(torch.zeros(units))
        self.w_a = nn.Parameter(torch.empty(units, 1))
        self.b_a = nn.Parameter(torch.zeros(1))
        self.keras_init()

    def keras_init(self) -> None:
        """Keras 2.2.4 glorot_normal kernels (normal cut at 2 sd, sd corrected for the cut), zero biases."""
        for w in (self.w_t, self.w_x, self.w_a):
            std = math.sqrt(2.0 / sum(w.shape)) / 0.87962566103423978
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.b_h)
        nn.init.zeros_(self.b_a)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # q [B, n, U] (b_h included), k [B, T, U] -> e [B, n, T]
        g = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))
        return torch.tanh(g @ self.w_a + self.b_a).squeeze(-1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unmasked emissions e(t, t') [B, T, T]."""
        b, t, _ = h.shape
        q, k = h @ self.w_t + self.b_h, h @ self.w_x
        rows = max(1, self.max_elements // max(1, b * t * self.w_t.shape[1]))
        if rows >= t:
            return self._scores(q, k)
        blocks = []
        for s in range(0, t, rows):
            if torch.is_grad_enabled():
                blocks.append(checkpoint(self._scores, q[:, s : s + rows], k, use_reentrant=False))
            else:
                blocks.append(self._scores(q[:, s : s + rows], k))
        return torch.cat(blocks, 1)

    def weights(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention a(t, t') [B, T, T]: rows sum to 1 over real keys; padded rows and columns are 0."""
        e = self.scores(h)
        if mask is None:
            return torch.softmax(e, -1)
        # A finite fill keeps a clip with no real step NaN-free; its rows are zeroed below anyway.
        a = torch.softmax(e.masked_fill(~mask.unsqueeze(1), torch.finfo(e.dtype).min), -1)
        return a.masked_fill(~(mask.unsqueeze(2) & mask.unsqueeze(1)), 0.0)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights(h, mask) @ h


class ConflictNet(nn.Module):
    """ConflictNET / ParaNET (docs/methods/conflictnet.md#architecture): x [B, T, 1] raw waveform, mask [B, T]
    -> pre-activation [B, 1, n_out]."""

    def __init__(self, spec: ConflictNetSpec) -> None:
        super().__init__()
        self.spec = spec
        channels = [1, *spec.filters]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, k, p, spec)
            for c_in, c_out, k, p in zip(channels[:-1], channels[1:], spec.kernels, spec.pools, strict=True)
        )
        self.avg_pool = nn.AvgPool1d(spec.avg_pool, spec.avg_pool) if spec.use_ap else None
        u1, u2 = spec.lstm_units
        self.lstm1 = KerasLSTM(spec.filters[-1], u1, spec.gate_activation)
        self.attention = AdditiveSelfAttention(u1, spec.attention_units) if spec.use_attention else None
        self.lstm2 = KerasLSTM(u1, u2, spec.gate_activation)
        self.dropout = nn.Dropout(spec.dropout)
        self.dense = nn.Linear(u2, spec.n_out)
        if spec.init == "keras":
            self.keras_init()

    def keras_init(self) -> None:
        """Keras 2.2.4 initialisers: glorot_uniform kernels, zero biases, LSTM and attention as in their classes."""
        for layer in [*(b.conv for b in self.blocks), self.dense]:
            nn.init.xavier_uniform_(layer.weight)  # Conv1d fans include the kernel size, as Keras's
            nn.init.zeros_(layer.bias)
        self.lstm1.keras_init()
        self.lstm2.keras_init()
        if self.attention is not None:
            self.attention.keras_init()

    @property
    def activation(self) -> str:
        """The output activation: "identity" (linear, as in the paper) unless configured."""
        return self.spec.activation

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """Predictions from :meth:`forward`'s pre-activation outputs."""
        return out if self.spec.activation == "identity" else torch.tanh(out)

    def sequence(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM-1 input [B, S, C] and its step mask [B, S]: the convolutional front end (and AP)."""
        if x.dim() != 3 or x.shape[-1] != 1:
            raise ValueError(f"ConflictNet takes a mono waveform [B, T, 1]; got {tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        z = x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)  # [B, 1, T]
        for block in self.blocks:
            z, mask = block(z, mask)
        if self.avg_pool is not None:
            z, mask = self.avg_pool(z), steps_mask(mask, self.spec.avg_pool, self.spec.avg_pool)
        return z.transpose(1, 2), mask

    def steps(self, mask: torch.Tensor) -> torch.Tensor:
        """The step mask [B, S] of LSTM-1's input for a sample mask [B, T], without the convolutions: a step is
        True when every sample of its receptive field is (what :meth:`sequence` returns)."""
        for block in self.blocks:
            mask = block.steps(mask)
        return steps_mask(mask, self.spec.avg_pool, self.spec.avg_pool) if self.avg_pool is not None else mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tail(*self.sequence(x, mask))

    def tail(self, h: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Pre-activation outputs [B, 1, n_out] from the front end's output ``(h, steps)`` (:meth:`sequence`)."""
        return self.dense(self.dropout(self.summarise(h, steps))).unsqueeze(1)

    def summary(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The clip's summary vector [B, u2] that the dense layer reads (LSTM-2's last real step, or GAP)."""
        return self.summarise(*self.sequence(x, mask))

    def summarise(self, h: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """:meth:`summary` from the front end's output ``(h, steps)``."""
        h = self.lstm1(h)
        if self.attention is not None:
            h = self.attention(h, steps)
        h = self.lstm2(h)  # [B, S, u2]; padding trails, so real steps never see it
        w = steps.unsqueeze(-1).to(h.dtype)
        if self.spec.use_gap:
            h = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        else:  # Keras return_sequences=False: the last real step
            last = (steps.long() * torch.arange(1, steps.shape[1] + 1, device=steps.device)).argmax(1)
            h = h[torch.arange(h.shape[0], device=h.device), last]
        return h


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) as Keras counts them.

    Non-trainable: frozen parameters and persistent floating-point buffers (BatchNorm's running mean
    and variance). Integer buffers (``num_batches_tracked``) are bookkeeping, not weights.
    """
    seen: set[int] = set()
    trainable = frozen = 0
    for value in model.state_dict(keep_vars=True).values():
        if id(value) in seen:  # shared tensors are counted once, as Keras counts shared layers
            continue
        seen.add(id(value))
        if isinstance(value, nn.Parameter) and value.requires_grad:
            trainable += value.numel()
        elif value.is_floating_point():
            frozen += value.numel()
    return trainable, frozen


class RawAudioModel(nn.Module):
    """:class:`ConflictNet` in stew's batch layout: one prediction per clip from ``x[modality]``."""

    def __init__(self, spec: RawAudioSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = ConflictNet(spec.net)
        # An affine map of the activated outputs fitted after training (see methods/conflictnet.py): a PCC
        # loss leaves the outputs' offset and scale free, and UAR/WAR binarise them at 0.
        self.register_buffer("out_scale", torch.ones(spec.net.n_out))
        self.register_buffer("out_shift", torch.zeros(spec.net.n_out))

    @property
    def context(self) -> tuple[int, int]:
        return 0, 0

    def outputs(self, batch: dict) -> torch.Tensor:
        """The network's activated outputs [B, 1, n_out] (linear unless ``activation: tanh``), before the
        fitted rescaling: what the PCC loss reads."""
        m = self.spec.modality
        return self.net.activate(self.net(batch["x"][m], batch["present"][m]))

    def predict(self, batch: dict) -> torch.Tensor:
        """Predictions: the activated outputs, then the affine map fitted on them (after the tanh, not
        before it, so the map's [min, max] is the one it was fitted to)."""
        return self.outputs(batch) * self.out_scale + self.out_shift

    def predict_from_front_end(self, h: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` from the front end's output (``self.net.sequence``): LIME reuses the convolutions
        of the parts of a clip its perturbations leave unchanged (stew.eval.perturb)."""
        return self.net.activate(self.net.tail(h, steps)) * self.out_scale + self.out_shift

    def latents(self, batch: dict) -> torch.Tensor:
        """The clip's summary vector [B, 1, u2] (what `stew report` projects)."""
        m = self.spec.modality
        return self.net.summary(batch["x"][m], batch["present"][m]).unsqueeze(1)
