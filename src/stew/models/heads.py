"""Per-step prediction heads. They return pre-activation outputs; :mod:`stew.models.task` squashes them."""

from __future__ import annotations

import torch
from torch import nn

from stew.models.encoders import on_valid_rows
from stew.models.specs import HeadSpec


class Classifier(nn.Module):
    """Dense(300, ReLU) + Dropout(0.3) + Dense(n_out), applied per time step (docs/methods/unimodal.md#classifier)."""

    def __init__(self, d_in: int, n_out: int, hidden: int = 300, dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return on_valid_rows(self.net, h, mask)


class SingleStepGRU(nn.Module):
    """SEW's regressor R: stacked GRU layers run on each step as a length-1 sequence, then a linear layer.

    A GRU over one step is a gated feed-forward layer: there is no context across steps
    (docs/methods/sew.md#regressor-r).
    """

    def __init__(self, d_in: int, n_out: int, units: int = 120, layers: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, units, num_layers=layers, batch_first=True)
        self.out = nn.Linear(units, n_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = h.shape
        z, _ = self.gru(h.reshape(b * t, 1, d))
        return self.out(z[:, 0]).reshape(b, t, -1)


class GRUHead(nn.Module):
    """EmoBed's shared back-end f: stacked GRU layers over the embeddings, then a linear output
    (docs/methods/emobed.md#architecture)."""

    def __init__(self, d_in: int, n_out: int, units: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, units, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(units, n_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.gru(h)[0])


class TaskGRUHeads(nn.Module):
    """CER-MTL's per-task heads (docs/methods/cermtl.md#architecture): for each task a GRU(5) over the image's
    pooled columns, its last state, a fully connected layer of 2 units (ReLU, stew's choice: the paper names
    none) and a linear output node."""

    def __init__(self, d_in: int, n_out: int, seq_steps: int, units: int = 5, fc: int = 2) -> None:
        super().__init__()
        self.seq_steps, self.width = seq_steps, d_in // seq_steps
        self.grus = nn.ModuleList(nn.GRU(self.width, units, batch_first=True) for _ in range(n_out))
        self.fcs = nn.ModuleList(nn.Sequential(nn.Linear(units, fc), nn.ReLU(), nn.Linear(fc, 1)) for _ in range(n_out))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = h.shape
        cols = h.reshape(b * t, self.seq_steps, self.width)
        outs = [fc(gru(cols)[1][-1]) for gru, fc in zip(self.grus, self.fcs, strict=True)]
        return torch.cat(outs, -1).reshape(b, t, -1)


class LinearHead(nn.Linear):
    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(h)


def build_head(spec: HeadSpec) -> nn.Module:
    if spec.kind == "classifier":
        return Classifier(spec.d_in, spec.n_out, spec.hidden, spec.dropout)
    if spec.kind == "gru4":
        return SingleStepGRU(spec.d_in, spec.n_out, spec.gru_units, spec.gru_layers)
    if spec.kind == "gru":
        return GRUHead(spec.d_in, spec.n_out, spec.gru_units, spec.gru_layers, spec.dropout)
    if spec.kind == "task-gru":
        return TaskGRUHeads(spec.d_in, spec.n_out, spec.seq_steps, spec.task_units, spec.task_fc)
    return LinearHead(spec.d_in, spec.n_out)
