"""Sequence encoders. All take x [B, T, d_in] and mask [B, T] (True = real step) and return [B, T, out_dim].

- ``identity``: the features themselves (the "Classifier only" baseline).
- ``bigru``: a bidirectional GRU (packed, so padding never leaks into the backward direction).
- ``bigru-te``: the CM-StEW encoder (docs/methods/unimodal.md#encoder): Bi-GRU, time-distributed
  Dense(d_model), sinusoidal positions, post-norm transformer encoder layers with key-padding masks.
- ``mlp``: a per-step MLP with tanh between layers (SEW's encoders, docs/methods/sew.md#layer-sizes).
- ``gru``: a stacked unidirectional GRU (EmoBed's modality-specific embedding nets,
  docs/methods/emobed.md#architecture).
- ``feature-image``: CER-MTL's framing and shared CNN (docs/methods/cermtl.md#feature-image), see
  :class:`FeatureImageCNN`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from stew.models.specs import EncoderKind, EncoderSpec  # noqa: F401 - re-exported (old import path


class BiGRU(nn.Module):
    def __init__(self, d_in: int, units: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(
            d_in, units, num_layers=layers, batch_first=True, bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if bool(mask.all()):  # training windows are full: packing would only cost time
            return self.gru(x)[0]
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos positional encoding (Vaswani et al.), added to the input."""

    def __init__(self, d: int, max_len: int = 10_000) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10_000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


def scatter_rows(rows: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Put ``rows`` [N, d] at the flat step ``index`` [N] of a zero [B, T, d] tensor (padding stays 0)."""
    b, t = shape
    return rows.new_zeros(b * t, rows.shape[-1]).index_copy(0, index, rows).view(b, t, -1)


def on_valid_rows(fn: nn.Module, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Apply a per-step module to the valid steps of [B, T, d] only; padded steps are 0.

    Batches of whole MOSI videos are about 40 % padding; per-step layers (and their dropout masks,
    whose random draws dominate on CPU) need not run there.
    """
    if mask is None or bool(mask.all()):
        return fn(h)
    index = mask.reshape(-1).nonzero().squeeze(1)
    return scatter_rows(fn(h.reshape(-1, h.shape[-1])[index]), index, mask.shape)


class BiGRUTransformer(nn.Module):
    """Bi-GRU, Dense(d_model), sinusoidal positions, post-norm transformer encoder layers
    (docs/methods/unimodal.md#encoder).

    The layers are ``nn.TransformerEncoderLayer`` modules (their parameters and state-dict names), but
    the forward pass is written out so that everything except the attention itself runs on the valid
    steps only, as flat [N, d] rows; attention gathers them back into [B, T] with a key-padding mask.
    Same function as ``nn.TransformerEncoder(..., src_key_padding_mask=~mask)`` on valid steps
    (tests/test_models.py), without spending the projections, FFN and dropout on padding.
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.bigru = BiGRU(spec.d_in, spec.gru_units or spec.d_in, spec.gru_layers, spec.dropout)
        self.proj = nn.Linear(2 * (spec.gru_units or spec.d_in), spec.d_model)
        self.positions = SinusoidalPositions(spec.d_model)
        layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.heads, spec.ffn, spec.dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.transformer = nn.TransformerEncoder(layer, spec.te_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = mask.shape
        index = mask.reshape(-1).nonzero().squeeze(1)  # flat positions of the valid steps
        h = self.bigru(x, mask).reshape(b * t, -1)[index]
        z = self.proj(h) + self.positions.pe[index % t]
        for layer in self.transformer.layers:
            z = _post_norm_layer(layer, z, index, mask)
        return scatter_rows(z, index, (b, t))


def _post_norm_layer(
    layer: nn.TransformerEncoderLayer, z: torch.Tensor, index: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``nn.TransformerEncoderLayer`` (post-norm, batch_first) on valid rows z [N, d] at flat ``index``."""
    attn = layer.self_attn
    b, t = mask.shape
    d, heads = attn.embed_dim, attn.num_heads
    qkv = scatter_rows(F.linear(z, attn.in_proj_weight, attn.in_proj_bias), index, (b, t))
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x [B, heads, T, d/heads]
    a = F.scaled_dot_product_attention(  # padded keys are masked out; padded queries are dropped below
        q, k, v, attn_mask=mask[:, None, None, :], dropout_p=attn.dropout if layer.training else 0.0
    )
    a = a.transpose(1, 2).reshape(b * t, d)[index]
    z = layer.norm1(z + layer.dropout1(attn.out_proj(a)))
    return layer.norm2(z + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(z))))))


class MLP(nn.Module):
    """Linear layers with tanh between them and a linear output (docs/methods/sew.md#layer-sizes)."""

    def __init__(self, d_in: int, sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip([d_in, *sizes[:-1]], sizes, strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 1:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class GRU(nn.Module):
    """Stacked unidirectional GRU. Padding sits after the valid steps, so it cannot reach them."""

    def __init__(self, d_in: int, units: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, units, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.gru(x)[0]


class FeatureImageCNN(nn.Module):
    """CER-MTL's feature image and shared CNN meta-feature extractor (docs/methods/cermtl.md#architecture).

    For step l the image stacks the N feature vectors at l + t*j, j = -(N-1)//2 .. N//2 (t = stride),
    a P x N image; a Conv1d over its N columns (P input channels, ``filters`` outputs, valid padding),
    ReLU and max-pooling give ``pooled_steps`` x ``filters`` meta-features per step.

    A kernel-k convolution over image columns spaced t apart is a convolution with dilation t over the
    sequence itself, and every step's image shares those values with its neighbours' images. So the
    convolution runs once over the sequence and each image's columns are gathered from its output:
    the same numbers as convolving every image (tests/test_emobed_cermtl.py::
    test_feature_image_cnn_equals_convolving_every_image), about N times fewer FLOPs.

    Input: x [B, L + T + R, P] with L, R = ``EncoderSpec.context`` steps of surrounding context (the window
    loader supplies them, clamped at the recording's edges), or x [B, T, P] (edges replicated here).
    Output: [B, T, pooled_steps * filters].
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv1d(spec.d_in, spec.filters, spec.kernel, dilation=spec.image_stride)
        # Conv output column c of step l's image starts at its image column c, i.e. at g[l + c*t]
        # (g indexed from the first context step, which is step l's first image column).
        self.register_buffer(
            "offsets", torch.arange(spec.image_steps - spec.kernel + 1) * spec.image_stride, persistent=False
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, steps = mask.shape
        left, right = self.spec.context
        if x.shape[1] == steps:
            x = torch.cat([x[:, :1].expand(-1, left, -1), x, x[:, -1:].expand(-1, right, -1)], 1)
        elif x.shape[1] != steps + left + right:
            raise ValueError(f"feature-image input has {x.shape[1]} steps; expected {steps} or {steps + left + right}")
        g = self.conv(x.transpose(1, 2))  # [B, F, L + T + R - (k-1)t]: column c of step l is g[l + offsets[c]]
        idx = torch.arange(steps, device=x.device)[:, None] + self.offsets  # [T, C]
        cols = torch.relu(g[:, :, idx])  # [B, F, T, C]
        p = self.spec.pool
        cols = cols[..., : self.spec.pooled_steps * p].reshape(b, self.spec.filters, steps, -1, p).amax(-1)
        return cols.permute(0, 2, 3, 1).reshape(b, steps, -1)  # [B, T, C/p * F], column-major per step


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


def build_encoder(spec: EncoderSpec) -> nn.Module:
    if spec.kind == "identity":
        return Identity()
    if spec.kind == "bigru":
        return BiGRU(spec.d_in, spec.gru_units or spec.d_in, spec.gru_layers, spec.dropout)
    if spec.kind == "bigru-te":
        return BiGRUTransformer(spec)
    if spec.kind == "gru":
        return GRU(spec.d_in, spec.gru_units or spec.d_in, spec.gru_layers, spec.dropout)
    if spec.kind == "feature-image":
        return FeatureImageCNN(spec)
    return MLP(spec.d_in, spec.mlp_sizes)
