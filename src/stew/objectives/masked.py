"""Losses over padded sequences (docs/methods/README.md#losses).

Convention used everywhere in stew: predictions and targets are ``[B, T, k]`` tensors and ``mask`` is a
``[B, T]`` bool tensor that is True on valid (non-padded) steps. Padded steps contribute nothing to the
value or the gradient, whatever they hold (even NaN or Inf): every input is passed through
``torch.where(mask, x, safe)`` *before* any arithmetic, so garbage never reaches an operation whose
backward could turn ``0 * garbage`` into NaN. Means are over valid steps (and feature dimensions); with
no valid step at all the loss is 0 rather than NaN. Nothing here synchronises a GPU with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["flatten_valid", "masked_bce", "masked_ce", "masked_mae", "masked_mse"]


def _step_mask(mask: Tensor | None, x: Tensor, feature_dims: int = 1) -> Tensor | None:
    """Check ``mask`` against the leading (step) dimensions of ``x`` and return it unchanged."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = valid step), got {mask.dtype}")
    step_shape = x.shape[: x.dim() - feature_dims]
    if mask.shape != step_shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the step dimensions {tuple(step_shape)}")
    return mask


def _check_same_shape(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values [..., k]`` over valid steps and all k features; 0 when nothing is valid."""
    if mask is None:
        return values.mean()
    m = mask.unsqueeze(-1)
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    # A tensor count (not .item()) keeps this free of host syncs; clamp makes "no valid step" give 0.
    count = mask.sum().clamp(min=1) * values.shape[-1]
    return total / count


def _zero_padded(x: Tensor, mask: Tensor | None) -> Tensor:
    """Replace padded steps by zeros so their content cannot reach the arithmetic (or its backward)."""
    if mask is None:
        return x
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def flatten_valid(x: Tensor, mask: Tensor) -> Tensor:
    """Valid steps of ``x [B, T, d]`` as rows ``[n_valid, d]``, in (batch, time) order.

    Boolean indexing: the gradient reaching padded steps is exactly zero. (Its output size depends on the
    data, so on a GPU it synchronises with the host; the losses in this module avoid it for that reason.)
    """
    if mask.dim() > x.dim():
        raise ValueError(f"mask has {mask.dim()} dimensions but x only {x.dim()}")
    _step_mask(mask, x, feature_dims=x.dim() - mask.dim())
    return x[mask]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over valid steps and feature dimensions (docs/methods/README.md#losses)."""
    _check_same_shape(pred, target)
    mask = _step_mask(mask, pred)
    diff = _zero_padded(pred, mask) - _zero_padded(target, mask)
    return _masked_mean(diff.square(), mask)


def masked_mae(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean absolute error over valid steps and feature dimensions (CM-StEW's translation loss)."""
    _check_same_shape(pred, target)
    mask = _step_mask(mask, pred)
    diff = _zero_padded(pred, mask) - _zero_padded(target, mask)
    return _masked_mean(diff.abs(), mask)


def masked_bce(logits: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Binary cross-entropy on LOGITS, mean over valid steps and outputs.

    Uses ``binary_cross_entropy_with_logits`` (log-sum-exp form), which stays finite and accurate for
    saturated logits where ``log(sigmoid(z))`` would underflow. Targets are probabilities in [0, 1].
    """
    _check_same_shape(logits, target)
    mask = _step_mask(mask, logits)
    per_element = F.binary_cross_entropy_with_logits(
        _zero_padded(logits, mask), _zero_padded(target, mask), reduction="none"
    )
    return _masked_mean(per_element, mask)


def masked_ce(logits: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Categorical cross-entropy: ``logits [B, T, C]``, class indices ``target [B, T]``.

    Mean over valid steps. Padded targets may hold anything (e.g. -100 or -1): they are replaced by class
    0 before ``cross_entropy`` so they can neither raise an index error nor leak into the value.
    """
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} != logits step shape {tuple(logits.shape[:-1])}")
    mask = _step_mask(mask, logits)
    n_classes = logits.shape[-1]
    safe_logits = _zero_padded(logits, mask).reshape(-1, n_classes)
    safe_target = target.long() if mask is None else torch.where(mask, target.long(), 0)
    per_step = F.cross_entropy(safe_logits, safe_target.reshape(-1), reduction="none").reshape(target.shape)
    return _masked_mean(per_step.unsqueeze(-1), mask)
