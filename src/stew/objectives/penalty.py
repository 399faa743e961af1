"""The L2 penalty of EmoBed's objective (docs/methods/emobed.md#losses)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def l2_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """R(theta) = 1/2 ||theta||^2 over ``params``: lambda * R adds lambda * theta to each gradient, the
    paper's L2 weight decay, while the term itself shows in the logged loss."""
    total = None
    for p in params:
        total = p.square().sum() if total is None else total + p.square().sum()
    return 0.5 * total if total is not None else torch.zeros(())
