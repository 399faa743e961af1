"""The deployable single-modality model: one encoder and one head over the weaker modality.

Every method trains one of these (plus training-only parts such as teachers and decoders); it is
all that ``stew export`` writes and all that ``stew predict`` needs.
"""

from __future__ import annotations

import torch
from torch import nn

from stew.data.dataset import Task
from stew.models.encoders import build_encoder
from stew.models.heads import build_head
from stew.models.specs import StudentSpec


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
        """Pre-activation outputs: [B, T, n_out], or [B, 1, n_out] when pooling (``mask`` is then the
        modality's own step mask)."""
        z = self.encoder(x, mask)
        if self.spec.pool == "none":
            return self.head(z, mask)
        return self.head(masked_mean(z, mask), torch.ones(len(z), 1, dtype=torch.bool, device=z.device))

    def outputs(self, batch: dict) -> torch.Tensor:
        """Pre-activation outputs on a collated batch: per label step, or per sequence when pooling."""
        m = self.spec.modality
        return self(batch["x"][m], batch["present"][m] if self.spec.pool == "mean" else batch["mask"])

    def predict(self, batch: dict) -> torch.Tensor:
        """Activated outputs on a collated batch (only this model's modality is read)."""
        out = self.outputs(batch)
        return out if self.spec.activation == "identity" else activate(out, self.spec.task)


def masked_mean(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [B, 1, d], the mean over present steps; a sequence with none present gives zeros."""
    w = mask.unsqueeze(-1).to(z.dtype)
    return (z * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1.0)


def activate(out: torch.Tensor, task: Task) -> torch.Tensor:
    """tanh for regression in [-1, 1], sigmoid for binary, softmax for multiclass
    (docs/methods/unimodal.md#output-activations)."""
    if task == "regression":
        return torch.tanh(out)
    if task == "binary":
        return torch.sigmoid(out)
    return torch.softmax(out, dim=-1)


class LatentProbe(nn.Module):
    """A model seen through its latent: ``predict`` returns the latent vectors, so they stitch over
    windows like predictions (the report's validation latents; CM-StEW's frozen teacher latents).

    Fusion and raw-audio models name their own latent (``latents``, the vector their classifier reads);
    a single-modality model's is its encoder output, mean-pooled for one label per sequence."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def predict(self, batch: dict) -> torch.Tensor:
        if hasattr(self.student, "latents"):
            return self.student.latents(batch)
        m = self.student.spec.modality
        if self.student.spec.pool == "mean":
            return masked_mean(self.student.encoder(batch["x"][m], batch["present"][m]), batch["present"][m])
        return self.student.encoder(batch["x"][m], batch["mask"])
