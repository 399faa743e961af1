"""Per-step prediction heads. They return pre-activation outputs; :mod:`stew.models.task` squashes them."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class HeadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["classifier", "gru4", "linear"]
    d_in: int
    n_out: int
    hidden: int = 300
    dropout: float = 0.3
    gru_units: int = 120
    gru_layers: int = 4


class Classifier(nn.Module):
    """Dense(300, ReLU) + Dropout(0.3) + Dense(n_out), applied per time step (spec §6.3)."""

    def __init__(self, d_in: int, n_out: int, hidden: int = 300, dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(h)


class SingleStepGRU(nn.Module):
    """SEW's regressor R: stacked GRU layers run on each step as a length-1 sequence, then a linear layer.

    A GRU over one step is a gated feed-forward layer: there is no context across steps (spec §5.3).
    """

    def __init__(self, d_in: int, n_out: int, units: int = 120, layers: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, units, num_layers=layers, batch_first=True)
        self.out = nn.Linear(units, n_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = h.shape
        z, _ = self.gru(h.reshape(b * t, 1, d))
        return self.out(z[:, 0]).reshape(b, t, -1)


class LinearHead(nn.Linear):
    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(h)


def build_head(spec: HeadSpec) -> nn.Module:
    if spec.kind == "classifier":
        return Classifier(spec.d_in, spec.n_out, spec.hidden, spec.dropout)
    if spec.kind == "gru4":
        return SingleStepGRU(spec.d_in, spec.n_out, spec.gru_units, spec.gru_layers)
    return LinearHead(spec.d_in, spec.n_out)
