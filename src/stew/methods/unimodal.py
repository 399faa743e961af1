"""Unimodal baselines (docs/methods/unimodal.md): one modality, one encoder, one head, the prediction loss.

Architectures: ``classifier`` (per-step Dense(300)+Dropout+Dense), ``bigru`` (Bi-GRU + classifier),
``bigru-te`` (Bi-GRU + transformer encoder + classifier, the CM-StEW encoder) and ``gru4`` (SEW's
4-layer single-step GRU regressor). These models rank the modalities and are the teachers of
CM-StEW. ``gru`` is EmoBed's network alone, the paper's classic monomodal system; like every EmoBed
network it trains with the L2 penalty lambda/2 ||theta||^2 (``emobed.l2``,
docs/methods/emobed.md#losses).
"""

from __future__ import annotations

from pathlib import Path

import torch

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.methods.base import DROPOUT, LR_ADAM, Method, MethodDef, prediction_loss, student_spec
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


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> Unimodal:
    # EmoBed's classic system (--arch gru) gets the paper's L2 penalty like every EmoBed network.
    l2 = cfg.emobed.l2 if cfg.arch == "gru" else 0.0
    return Unimodal(student_spec(cfg, bundle.ds, cfg.modality), cfg.loss, l2=l2)


METHOD = MethodDef(name="unimodal", build=build, tuning={"dropout": DROPOUT, "lr": LR_ADAM})
