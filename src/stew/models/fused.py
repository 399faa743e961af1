"""The deployable fusion model: attention fusion over several modalities that keeps working when some
are missing (docs/methods/fusion.md#missing-modalities).

It wraps :class:`stew.models.fusion.FusionModel` with what deployment needs: the task's activation,
the batch layout of stew's trainer, and what to do with an absent modality:

- ``zero``: the absent modality is masked out, so every vector that reads it is zero at the input of
  statistical pooling (see fusion.py). The thesis zero-fills the *raw input* instead, which still
  flows through the conv bias and the GRU; stew's inputs are standardised, so a zero input would be
  the training mean, not "absent". docs/choices.md has the reasoning.
- ``knn``: the absent modality's vector is the mean of its K nearest training neighbours' vectors
  (Euclidean, on the present modalities' vectors concatenated), from a memory bank of the training
  samples' per-modality vectors saved with the weights (docs/methods/fusion.md#knn-imputation). Intra
  models only: their vectors are per modality.

A modality is absent for a sample when its mask is all False (sequence-level data) or, on step-level
data, at the steps where its mask is False.
"""

from __future__ import annotations

import torch
from torch import nn

from stew.models.fusion import FusionModel
from stew.models.specs import FusedSpec, Impute  # noqa: F401 - re-exported (old import path
from stew.models.student import activate


class FusedModel(nn.Module):
    def __init__(self, spec: FusedSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = FusionModel(spec.fusion)
        width = spec.fusion.width
        for m in spec.modalities if spec.bank_size else []:
            self.register_buffer(f"bank_{m}", torch.zeros(spec.bank_size, width))
        # Modalities treated as absent whatever the data say: `stew evaluate --missing` sets this.
        self.absent: frozenset[str] = frozenset()

    @property
    def context(self) -> tuple[int, int]:
        return 0, 0

    def masks(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each modality's step mask: its own clock (pooled over time) or the label steps' grid."""
        out = {}
        for m in self.spec.modalities:
            mask = batch["present"][m] if self.spec.fusion.pool_time else batch["present"][m] & batch["mask"]
            out[m] = torch.zeros_like(mask) if m in self.absent else mask
        return out

    def vectors(self, batch: dict, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The vectors at the input of SP, absent modalities imputed when the model says so (never while
        training: the memory bank is filled after training)."""
        masks = self.masks(batch) if masks is None else masks
        vectors = self.net.vectors(batch["x"], masks)
        if self.spec.impute == "knn" and not self.training:
            vectors = self.impute(vectors, masks)
        return vectors

    def outputs(self, batch: dict, masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Pre-activation outputs: [B, 1, n_out] (one label per sequence) or [B, T, n_out]."""
        return self.net.classify(self.vectors(batch, masks))

    def predict(self, batch: dict) -> torch.Tensor:
        out = self.outputs(batch)
        return out if self.spec.activation == "identity" else activate(out, self.spec.task)

    def latents(self, batch: dict) -> torch.Tensor:
        """The pooled vector the classifier reads (what `stew report` projects)."""
        return self.net.pooled(self.vectors(batch))

    # ----------------------------------------------------------------------------------------------
    # KNN imputation

    def fill_bank(self, vectors: dict[str, torch.Tensor]) -> None:
        """Store training vectors ([N, width] per modality, every modality present)."""
        for m in self.spec.modalities:
            getattr(self, f"bank_{m}").copy_(vectors[m])

    def impute(self, vectors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Replace each absent modality's vector by the mean of its K nearest training neighbours'."""
        mods = self.spec.modalities
        present = {m: self._present(masks[m]) for m in mods}  # [B, T'] per modality
        out = dict(vectors)
        k = min(self.spec.k, self.spec.bank_size)
        patterns = torch.stack([present[m] for m in mods], -1)  # [B, T', M]
        for pattern in torch.unique(patterns.reshape(-1, len(mods)), dim=0):
            have = [m for m, p in zip(mods, pattern.tolist(), strict=True) if p]
            lack = [m for m in mods if m not in have]
            if not lack or not have:  # nothing to impute, or nothing to find neighbours with
                continue
            where = (patterns == pattern).all(-1)  # [B, T']
            query = torch.cat([vectors[m][where] for m in have], -1)
            bank = torch.cat([getattr(self, f"bank_{m}") for m in have], -1)
            nearest = torch.cdist(query, bank).topk(k, largest=False).indices  # [n, k]
            for m in lack:
                filled = out[m].clone()
                filled[where] = getattr(self, f"bank_{m}")[nearest].mean(1)
                out[m] = filled
        return out

    def _present(self, mask: torch.Tensor) -> torch.Tensor:
        # One vector per sequence when pooling over time (present if any step is), else one per step.
        return mask.any(1, keepdim=True) if self.spec.fusion.pool_time else mask
