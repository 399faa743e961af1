"""Unimodal baselines (spec §6.5, §5.3): one modality, one encoder, one head, the prediction loss.

Architectures: ``classifier`` (per-step Dense(300)+Dropout+Dense), ``bigru`` (Bi-GRU + classifier),
``bigru-te`` (Bi-GRU + transformer encoder + classifier, the CM-StEW encoder) and ``gru4`` (SEW's
4-layer single-step GRU regressor). These models rank the modalities and are the teachers of
CM-StEW. ``gru`` is EmoBed's network alone, the paper's classic monomodal system; like every EmoBed
network it trains with the L2 penalty lambda/2 ||theta||^2 (``emobed.l2``, emobed_cermtl spec §1.4).
"""

from __future__ import annotations

import torch

from stew.methods.base import Method, prediction_loss
from stew.models.student import SingleModalityModel, StudentSpec


class Unimodal(Method):
    def __init__(self, spec: StudentSpec, loss: str, l2: float = 0.0) -> None:
        super().__init__()
        self.student = SingleModalityModel(spec)
        self.loss_name = loss
        self.l2 = l2  # lambda of lambda/2 ||theta||^2; set for EmoBed's classic system (--arch gru)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.student.outputs(batch)
        loss = prediction_loss(out, batch["y"], batch["mask"], self.student.spec.task, self.loss_name)
        return self.l2_regularised(loss, {"prediction": loss.detach()}, self.l2)

    def extra_record(self) -> dict:
        return {"l2": self.l2} if self.l2 else {}
