"""Decoders that translate a latent sequence into another modality's features."""

from __future__ import annotations

import torch
from torch import nn

from stew.models.encoders import BiGRU


class BiGRUDecoder(nn.Module):
    """CM-StEW's S_D (docs/methods/cmstew.md#decoder): a Bi-GRU over the weak latent, then a time-distributed
    Dense(d_out)."""

    def __init__(self, d_in: int, units: int, layers: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bigru = BiGRU(d_in, units, layers, dropout)
        self.out = nn.Linear(2 * units, d_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.bigru(h, mask))
