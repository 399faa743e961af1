"""The deployable fusion model: attention fusion over several modalities that keeps working when some
are missing (docs/methods/fusion.md#missing-modalities).

It wraps :class:`stew.models.fusion.FusionModel` with what deployment needs: the task's activation,
the batch layout of stew's trainer, and what to do with an absent modality:

- ``zero``: the absent modality is masked out, so every vector that reads it is zero at the input of
  statistical pooling (see fusion.py). The thesis zero-fills the *raw input* instead, which still
  flows through the conv bias and the GRU; stew's inputs are standardised, so a zero input would be
  the training mean, not "absent". docs/choices.md has the reasoning. ``absent_as = "zero-input"``
  (``stew evaluate --missing --absent zero-input``, ``fusion.absent`` for ModDrop) feeds the thesis's
  definition instead: an all-zero input of the modality's fixed length, every step marked real
  (:meth:`FusedModel.remove`).
- ``knn``: the absent modality's vector is the mean of its K nearest training neighbours' vectors
  (Euclidean, on the present modalities' vectors concatenated), from a memory bank of the training
  samples' per-modality vectors saved with the weights (docs/methods/fusion.md#knn-imputation). Intra
  models only: their vectors are per modality.

A modality is absent for a sample when its mask is all False (sequence-level data) or, on step-level
data, at the steps where its mask is False.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from stew.models.fusion import FusionModel
from stew.models.specs import FusedSpec, Impute  # noqa: F401 - re-exported (old import path
from stew.models.student import activate

Absent = Literal["mask", "zero-input"]


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
        # How a removed modality (self.absent, ModDrop) is fed: masked out, or the thesis's all-zero input of
        # zero_steps[m] steps (the data's fixed length; see remove). Not part of the deployed spec.
        self.absent_as: Absent = "mask"
        self.zero_steps: dict[str, int] = {}

    @property
    def context(self) -> tuple[int, int]:
        return 0, 0

    def masks(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each modality's step mask: its own clock (pooled over time) or the label steps' grid."""
        pool_time = self.spec.fusion.pool_time
        return {m: batch["present"][m] if pool_time else batch["present"][m] & batch["mask"]
                for m in self.spec.modalities}

    def remove(self, batch: dict, drop: dict[str, torch.Tensor]) -> dict:
        """``batch`` with modality m removed from the samples where ``drop[m]`` ([B] bool) is True, as
        ``absent_as`` says: ``mask``: values zeroed and every step masked; ``zero-input`` (the thesis's
        Table 4.4 and ModDrop): an all-zero input with its steps marked real, ``zero_steps[m]`` long on
        sequence-level data (the data's fixed padded length, so the absent modality's own length says
        nothing; a time-step conv's T_in, else the batch's width, when not set), the label steps on
        step-level data. The batch given is not changed."""
        x, present = dict(batch["x"]), dict(batch["present"])
        for m, rows in drop.items():
            if not bool(rows.any()):
                continue
            xm, pm = x[m].clone(), present[m].clone()
            xm[rows] = 0.0
            pm[rows] = False
            if self.absent_as == "zero-input":
                if self.spec.fusion.pool_time:
                    conv = self.spec.fusion.step_conv.get(m)
                    t = self.zero_steps.get(m) or (conv[0] if conv else xm.shape[1])
                    if t > xm.shape[1]:  # wider than the batch: pad every sample (masked) to t steps
                        pm = torch.cat([pm, pm.new_zeros(pm.shape[0], t - pm.shape[1])], 1)
                        xm = F.pad(xm, (0, 0, 0, t - xm.shape[1]))
                    pm[rows, :t] = True
                else:
                    pm[rows] = batch["mask"][rows]
            x[m], present[m] = xm, pm
        return {**batch, "x": x, "present": present}

    def _with_absent(self, batch: dict) -> dict:
        """``batch`` with the modalities of ``self.absent`` removed from every sample."""
        if not self.absent:
            return batch
        n = batch["mask"].shape[0]
        every = torch.ones(n, dtype=torch.bool, device=batch["mask"].device)
        return self.remove(batch, {m: every for m in self.spec.modalities if m in self.absent})

    def vectors(self, batch: dict, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The vectors at the input of SP, absent modalities imputed when the model says so (never while
        training: the memory bank is filled after training)."""
        if masks is None:
            batch = self._with_absent(batch)
            masks = self.masks(batch)
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
