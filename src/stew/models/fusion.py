"""Intra- (self-) and cross-attention fusion (IEMOCAP, 7 classes; docs/methods/fusion.md#architecture), as one
configurable model.

Pipeline per modality m: optional time-step Conv1d -> 1-layer bi-GRU (``e_m``), then
- ``intra``: one ``nn.MultiheadAttention`` per modality, MHA_m(e_m, e_m, e_m);
- ``cross``: one per source->target pair, MHA(query = e_target, key = value = e_source), target length;
- ``cross+intra``: both sets over the same (shared) encoders; each set is pooled on its own and the two
  pooled vectors are concatenated (480-d with the thesis's sizes).
No residual, FFN or LayerNorm (as in the thesis). Each MHA output is averaged over time (``pool_time``),
giving one vector per module; statistical pooling (SP) stacks the M vectors and concatenates their
element-wise mean and std across M; a two-layer classifier (no activation between, as in the thesis and
the authors' code) gives pre-softmax outputs.

Choices where the sources are silent or where stew's data differ from the authors' fixed-size tensors:

- **Masks** (the authors mask nothing). Features at masked steps are zeroed first, so their values
  never matter. The bi-GRU is packed to each sample's extent (last real step + 1): trailing padding is
  never read; interior gaps (modality missing at some steps) are read as zeros, which keeps the step
  grid intact. Attention keys come from the source mask, the temporal mean runs over the target's
  real steps only.
- **Absent modality** (a sample whose mask is all False): every MHA output that reads it, as query or
  as key/value, is defined as zeros, and so is its temporal-mean vector. Internally the keys of such a
  sample are left unmasked (a softmax over no keys is NaN) and the result is multiplied by 0, so the
  forward and backward passes stay finite. To reproduce the thesis's missing-modality protocol (zero
  *input* that still flows through conv bias and GRU) pass zeros with a True mask instead.
- **Time-step conv**: the input is zeroed at masked steps and zero-padded / truncated to T_in; all
  T_out output steps are real, unless the whole modality is absent (then none are).
- **M == 1** (unimodal intra; the thesis is silent): SP keeps its 4u-d layout with the *biased* std,
  i.e. sigma = 0, so the unimodal model is the tri-modal one with components removed (same classifier
  shapes). For M >= 2 the std is unbiased (``torch.std`` default, as in the code).
- **Pair names** are ``f"{source}2{target}"`` with full modality names, e.g. ``video2text`` (the thesis's
  V2T).
  Default pairs (``pairs=None``) are grouped by target in modality order, sources in modality order:
  for (text, video, audio) that is V2T, A2T, T2V, A2V, T2A, V2A, the thesis's order.
- **Unused modalities**: with a ``pairs`` subset, modalities in no pair get no encoder and need no input.
- **pool_time False** (step-level labels, e.g. MOSI utterances of a video): all modalities share the
  step grid; there is no temporal mean, the vector of a module at step t is its MHA output at step t
  (zeros where the target/self modality is masked at t), and SP and the classifier run per step.
- SP concatenates [mean, std] (the code's variable names swap them; only the order differs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stew.models.encoders import BiGRU
from stew.models.specs import FusionKind, FusionSpec  # noqa: F401 - re-exported (old import path


def statistical_pooling(v: torch.Tensor) -> torch.Tensor:
    """[..., M, d] -> [..., 2d]: element-wise [mean, std] across the M vectors.

    Unbiased std for M >= 2 (as ``torch.std_mean`` in the authors' code); for M == 1 the biased std,
    i.e. zeros, since the unbiased one is undefined (the thesis is silent; docs/methods/fusion.md#choices).
    """
    if v.shape[-2] == 1:
        mean = v[..., 0, :]
        return torch.cat([mean, torch.zeros_like(mean)], -1)
    std, mean = torch.std_mean(v, dim=-2)
    return torch.cat([mean, std], -1)


class FusionModel(nn.Module):
    """Intra/cross-attention fusion (docs/methods/fusion.md#architecture) built from a :class:`FusionSpec`; see
    the module docstring."""

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__()
        self.spec = spec
        used = spec.used_modalities
        self.convs = nn.ModuleDict({m: nn.Conv1d(t_in, t_out, 1) for m, (t_in, t_out) in spec.step_conv.items()
                                    if m in used})
        self.encoders = nn.ModuleDict({m: BiGRU(spec.modalities[m], spec.gru_units, 1, 0.0) for m in used})
        self.intra = nn.ModuleDict({m: self._mha() for m in spec.intra_names})
        self.cross = nn.ModuleDict({name: self._mha() for name in spec.pair_names})
        act: list[nn.Module] = [nn.ReLU()] if spec.clf_activation == "relu" else []
        self.classifier = nn.Sequential(nn.Linear(spec.sp_dim, spec.clf_hidden), *act,
                                        nn.Linear(spec.clf_hidden, spec.n_out))

    def _mha(self) -> nn.MultiheadAttention:
        return nn.MultiheadAttention(self.spec.width, self.spec.heads, dropout=self.spec.attn_dropout,
                                     batch_first=True)

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- encoders -------------------------------------------------------------------------------------------

    def encode(self, x: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per used modality: e_m [B, T'_m, 2u] and its mask [B, T'_m] (T'_m = T_out with a step conv)."""
        self._check_inputs(x, masks)
        enc, enc_masks = {}, {}
        for m in self.spec.used_modalities:
            xm, mask = x[m], masks[m].bool()
            p = self.spec.input_dropout.get(m, 0.0)
            if p:
                xm = F.dropout(xm, p, self.training)
            xm = xm * mask.unsqueeze(-1).to(xm.dtype)  # masked steps' values must not matter (conv mixes all steps)
            if m in self.convs:
                t_in, t_out = self.spec.step_conv[m]
                t = xm.shape[1]
                xm = F.pad(xm, (0, 0, 0, t_in - t)) if t < t_in else xm[:, :t_in]
                xm = self.convs[m](xm)  # channels = time steps: T_in -> T_out
                mask = mask.any(1, keepdim=True).expand(-1, t_out)
            steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            extent = (mask * steps).amax(1)  # last real step + 1; interior gaps stay on the grid
            enc[m] = self.encoders[m](xm, steps.unsqueeze(0) <= extent.unsqueeze(1))
            enc_masks[m] = mask
        return enc, enc_masks

    def _check_inputs(self, x: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        used = self.spec.used_modalities
        missing = [m for m in used if m not in x or m not in masks]
        if missing:
            raise ValueError(f"FusionModel needs inputs and masks for {missing}")
        for m in used:
            d = self.spec.modalities[m]
            if x[m].dim() != 3 or x[m].shape[-1] != d:
                raise ValueError(f"x[{m!r}] has shape {tuple(x[m].shape)}; expected (B, T, {d})")
            if masks[m].shape != x[m].shape[:2]:
                raise ValueError(f"masks[{m!r}] has shape {tuple(masks[m].shape)}; expected {tuple(x[m].shape[:2])}")
        if not self.spec.pool_time and len({x[m].shape[1] for m in used}) > 1:
            lengths = {m: x[m].shape[1] for m in used}
            raise ValueError(f"pool_time=False needs one step grid for all modalities; step counts: {lengths}")

    # --- attention, pooling, classifier -----------------------------------------------------------------------

    def _attend(self, mha: nn.MultiheadAttention, q: torch.Tensor, q_mask: torch.Tensor,
                kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """MHA(q, kv, kv) with padded keys masked; zeros at masked queries and where kv is absent."""
        kv_present = kv_mask.any(1, keepdim=True)
        # A row with no real key would softmax over nothing (NaN): let it attend to its (zeroed) padding, drop it below
        key_padding = ~kv_mask & kv_present
        out = mha(q, kv, kv, key_padding_mask=key_padding, need_weights=False)[0]
        return out * (q_mask & kv_present).unsqueeze(-1).to(out.dtype)

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Temporal mean over real steps ([B, 1, 2u]); per step ([B, T, 2u]) when pool_time is False."""
        if not self.spec.pool_time:
            return h  # already zero at masked steps
        count = mask.sum(1, keepdim=True).clamp(min=1).unsqueeze(-1).to(h.dtype)
        return h.sum(1, keepdim=True) / count

    def vectors(self, x: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-module vectors at the input of SP, keyed by ``FusionSpec.vector_names``."""
        enc, enc_masks = self.encode(x, masks)
        out = {}
        for m in self.spec.intra_names:
            out[m] = self._pool(self._attend(self.intra[m], enc[m], enc_masks[m], enc[m], enc_masks[m]), enc_masks[m])
        for (s, t), name in zip(self.spec.pair_list, self.spec.pair_names, strict=True):
            h = self._attend(self.cross[name], enc[t], enc_masks[t], enc[s], enc_masks[s])
            out[name] = self._pool(h, enc_masks[t])
        return out

    def pooled(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The classifier input [B, T, sp_dim]: SP per group (intra, cross) concatenated, or all vectors (noSP)."""
        spec = self.spec
        if not spec.sp:
            return torch.cat([vectors[n] for n in spec.vector_names], -1)
        groups = [g for g in (spec.intra_names, spec.pair_names) if g]
        return torch.cat([statistical_pooling(torch.stack([vectors[n] for n in g], -2)) for g in groups], -1)

    def classify(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        """SP (or concatenation) and the classifier: pre-softmax outputs [B, 1 or T, n_out]."""
        return self.classifier(self.pooled(vectors))

    def forward(self, x: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """x[m] [B, T_m, d_m], masks[m] [B, T_m] (True = real step) -> [B, 1, n_out] (pool_time) or [B, T, n_out]."""
        return self.classify(self.vectors(x, masks))
