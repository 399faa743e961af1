"""The L2 penalty of EmoBed's objective (docs/methods/emobed.md#losses)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def l2_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """R(theta) = 1/2 ||theta||^2 over ``params``: lambda * R adds lambda * theta to each gradient, the
    paper's L2 weight decay, while the term itself shows in the logged loss."""
    total = torch.zeros(())
    for p in params:
        total = total + p.square().sum()
    return 0.5 * total
