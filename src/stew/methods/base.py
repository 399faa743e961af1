"""What every method provides to the shared trainer.

A method is an ``nn.Module`` holding a deployable ``student`` (one encoder + one head over the
weaker modality) plus whatever it needs only while training (teachers, decoders, alignment). It
defines one thing: its training loss. Configuration, data, the training loop, checkpoints, early
stopping, evaluation and artefacts are shared (see :mod:`stew.training`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from stew.data.dataset import Task
from stew.data.preprocess import WindowDataset
from stew.models.student import SingleModalityModel
from stew.objectives import ccc_loss, l2_penalty, masked_bce, masked_ce, masked_mse, pcc_loss

if TYPE_CHECKING:
    from stew.train.core import Bundle


class Method(nn.Module):
    student: SingleModalityModel  # or, for fusion, a FusedModel (several modalities)
    # True for methods fitted without gradient descent (linear): the trainer calls their
    # ``fit_closed_form(bundle, evaluate)`` instead of the Lightning loop.
    closed_form = False
    # The validation metric that selects epochs, when the method's paper names one (ConflictNET: PCC);
    # None: the task's (CCC, weighted F1, accuracy).
    selection: str | None = None

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def predict(self, batch: dict) -> torch.Tensor:
        """Activated outputs of the deployable student on its own modality."""
        return self.student.predict(batch)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def l2_regularised(
        self, loss: torch.Tensor, parts: dict[str, torch.Tensor], l2: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss + l2 * R(theta)``, R = 1/2 ||theta||^2 over the trainable parameters (EmoBed's lambda,
        emobed_cermtl spec §1.3-1.4); R is logged as ``parts["l2"]``. ``l2 = 0`` leaves the loss as it is."""
        if l2:
            penalty = l2_penalty(self.trainable_parameters())
            loss = loss + l2 * penalty
            parts["l2"] = penalty.detach()
        return loss, parts

    def lr_factor(self) -> Callable[[int], float] | None:
        """The learning rate's factor after ``n`` updates (None: constant), e.g. Keras's 1 / (1 + decay * n)."""
        return None

    def training_windows(self, windows: WindowDataset) -> WindowDataset:
        """The training set as the loop sees it (ModDrop adds versions with modalities removed)."""
        return windows

    def after_fit(self, bundle: Bundle) -> None:
        """Work done once the best epoch's weights are back (the fusion model's KNN memory bank)."""

    def extra_record(self) -> dict:
        """Method-specific facts written to metrics.json (e.g. the teacher used)."""
        return {}


def prediction_loss(out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, task: Task, loss: str) -> torch.Tensor:
    """L_p on pre-activation outputs ``out`` [B, T, k]; padded and unlabelled (NaN) steps are excluded."""
    labelled = torch.isfinite(y).all(-1)
    if not bool(labelled.all()):
        mask, y = mask & labelled, torch.nan_to_num(y)
    if task == "binary":
        return masked_bce(out, y, mask)
    if task == "multiclass":
        return masked_ce(out, y[..., 0].long(), mask)
    pred = torch.tanh(out)
    if loss == "ccc":
        return ccc_loss(pred, y, mask)
    if loss == "pcc":
        return pcc_loss(pred, y, mask)
    return masked_mse(pred, y, mask)
