"""Sequence encoders. All take x [B, T, d_in] and mask [B, T] (True = real step) and return [B, T, out_dim].

- ``identity``: the features themselves (the "Classifier only" baseline).
- ``bigru``: a bidirectional GRU (packed, so padding never leaks into the backward direction).
- ``bigru-te``: the CM-StEW encoder of spec §6.3: Bi-GRU, time-distributed Dense(d_model), sinusoidal
  positions, post-norm transformer encoder layers with key-padding masks.
- ``mlp``: a per-step MLP with tanh between layers (SEW's encoders, spec §5.3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

EncoderKind = Literal["identity", "bigru", "bigru-te", "mlp"]


class EncoderSpec(BaseModel):
    """Everything needed to rebuild an encoder (stored as JSON next to exported weights)."""

    model_config = ConfigDict(extra="forbid")
    kind: EncoderKind
    d_in: int
    gru_units: int = 0  # per direction; 0 = the input dimension (spec §6.3)
    gru_layers: int = 2
    d_model: int = 100
    heads: int = 2
    ffn: int = 400
    te_layers: int = 2
    dropout: float = 0.3
    mlp_sizes: list[int] = []

    @property
    def out_dim(self) -> int:
        if self.kind == "identity":
            return self.d_in
        if self.kind == "bigru":
            return 2 * (self.gru_units or self.d_in)
        if self.kind == "bigru-te":
            return self.d_model
        return self.mlp_sizes[-1]


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


class BiGRUTransformer(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.bigru = BiGRU(spec.d_in, spec.gru_units or spec.d_in, spec.gru_layers, spec.dropout)
        self.proj = nn.Linear(2 * (spec.gru_units or spec.d_in), spec.d_model)
        self.positions = SinusoidalPositions(spec.d_model)
        layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.heads, spec.ffn, spec.dropout, activation="relu", batch_first=True, norm_first=False
        )
        # enable_nested_tensor=False keeps padded outputs defined (zeros are never relied upon, but NaN-free).
        self.transformer = nn.TransformerEncoder(layer, spec.te_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.positions(self.proj(self.bigru(x, mask)))
        return self.transformer(h, src_key_padding_mask=~mask)


class MLP(nn.Module):
    """Linear layers with tanh between them and a linear output (spec §5.3)."""

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
    return MLP(spec.d_in, spec.mlp_sizes)
