"""The deployable single-modality model: one encoder and one head over the weaker modality.

Every method trains one of these (plus training-only parts such as teachers and decoders); it is
all that ``stew export`` writes and all that ``stew predict`` needs.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from stew.data.dataset import Task
from stew.models.encoders import EncoderSpec, build_encoder
from stew.models.heads import HeadSpec, build_head


class StudentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    task: Task
    targets: list[str]
    encoder: EncoderSpec
    head: HeadSpec
    # "identity": raw outputs, for linear regression, whose least-squares fit is not squashed by tanh.
    activation: Literal["task", "identity"] = "task"


class SingleModalityModel(nn.Module):
    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = build_encoder(spec.encoder)
        self.head = build_head(spec.head)

    @property
    def context(self) -> tuple[int, int]:
        """Steps of context the encoder reads before and after each predicted step."""
        return self.spec.encoder.context

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pre-activation outputs [B, T, n_out]."""
        return self.head(self.encoder(x, mask), mask)

    def predict(self, batch: dict) -> torch.Tensor:
        """Activated outputs on a collated batch (only this model's modality is read)."""
        out = self(batch["x"][self.spec.modality], batch["mask"])
        return out if self.spec.activation == "identity" else activate(out, self.spec.task)


def activate(out: torch.Tensor, task: Task) -> torch.Tensor:
    """tanh for regression in [-1, 1], sigmoid for binary, softmax for multiclass (spec §6.3)."""
    if task == "regression":
        return torch.tanh(out)
    if task == "binary":
        return torch.sigmoid(out)
    return torch.softmax(out, dim=-1)
