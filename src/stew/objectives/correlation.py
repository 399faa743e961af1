"""Correlation losses: 1 - CCC and 1 - PCC (docs/methods/README.md#losses; docs/methods/cermtl.md#losses).

Both are computed over ALL valid steps of the batch (CER-MTL: "over the batch of ground truth and
predictions"), separately for each output column, then averaged over columns. Moments are population
moments (1/N), as in the AVEC CCC script and the ConflictNET Keras code (``K.mean``/``K.std``).

Numerical safety: denominators are clamped from below by ``eps`` (not shifted by it), so the value is
exact whenever the variances are not tiny, and constant predictions, constant targets or a single valid
step give a finite value and a finite gradient (a correlation of 0, hence a loss of 1) instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ccc_loss", "pcc_loss"]


def _moments(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-column means, variances and covariance over valid steps: (mu_p, mu_t, var_p, var_t, cov)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.dim() == 1:  # a single output given as [N]
        pred, target = pred.unsqueeze(-1), target.unsqueeze(-1)
    k = pred.shape[-1]
    if mask is None:
        mask = torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = valid step), got {mask.dtype}")
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the step dimensions {tuple(pred.shape[:-1])}")
    m = mask.reshape(-1, 1)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    # Padded steps are replaced by 0 before any arithmetic, so garbage there cannot reach value or gradient.
    p = torch.where(m, pred.reshape(-1, k), zero)
    t = torch.where(m, target.reshape(-1, k), zero)
    n = m.sum().clamp(min=1).to(pred.dtype)
    mu_p = p.sum(0) / n
    mu_t = t.sum(0) / n
    # Two-pass (centred) moments: no catastrophic cancellation as with E[x^2] - E[x]^2.
    dp = torch.where(m, p - mu_p, zero)
    dt = torch.where(m, t - mu_t, zero)
    var_p = dp.square().sum(0) / n
    var_t = dt.square().sum(0) / n
    cov = (dp * dt).sum(0) / n
    return mu_p, mu_t, var_p, var_t, cov


def ccc_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, *, eps: float = 1e-8) -> Tensor:
    """``1 - CCC``, CCC = 2 s_pt / (s_p^2 + s_t^2 + (mu_p - mu_t)^2), averaged over output columns.

    ``pred``/``target``: ``[B, T, k]`` (or ``[N, k]``, ``[N]``); ``mask``: ``[B, T]`` bool, True = valid.
    Range [0, 2]; 0 for a perfect prediction.
    """
    mu_p, mu_t, var_p, var_t, cov = _moments(pred, target, mask)
    denominator = (var_p + var_t + (mu_p - mu_t).square()).clamp(min=eps)
    return (1.0 - 2.0 * cov / denominator).mean()


def pcc_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, *, eps: float = 1e-8) -> Tensor:
    """``1 - PCC``, PCC = s_pt / (s_p s_t), averaged over output columns.

    Variances are clamped at ``eps`` before the square root: sqrt has an infinite derivative at 0, and a
    constant column would otherwise give 0/0. Range [0, 2]; 0 for a perfect, 2 for an anti-correlated
    prediction.
    """
    _, _, var_p, var_t, cov = _moments(pred, target, mask)
    return (1.0 - cov / (var_p.clamp(min=eps).sqrt() * var_t.clamp(min=eps).sqrt())).mean()
