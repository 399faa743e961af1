"""CER-MTL: continuous emotion recognition with multi-task learning and correlation losses
(docs/methods/cermtl.md; Köprü and Erzin).

Each step l becomes a "feature image": the N feature vectors taken every t steps around l, a P x N
image (docs/methods/cermtl.md#feature-image). With early fusion the modalities are concatenated at
the input (``--modality all`` or ``a+b``); any single modality also works. A shared CNN (25 filters,
kernel 3, max-pool 2) extracts meta-features from the image, and every task has its own head: a GRU
of 5 units over the pooled image columns, a fully connected layer of 2 units and a linear output node.

    J = sum_m alpha_m * L_m,   L_m = 1 - CCC (default), 1 - PCC or MSE of task m, over the batch

with uniform alpha_m = 1/M unless ``cermtl.task_weights`` is given (docs/methods/cermtl.md#losses).
Single-task learning (STL) is the same network with one target (``--targets arousal``), one network
per task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.data.preprocess import steps_for
from stew.errors import DataError
from stew.methods.base import Method, MethodDef, lr_dim, prediction_loss
from stew.models.encoders import EncoderSpec
from stew.models.heads import HeadSpec
from stew.models.student import SingleModalityModel, StudentSpec


class CERMTL(Method):
    def __init__(self, student: StudentSpec, loss: str, task_weights: list[float]) -> None:
        super().__init__()
        self.student = SingleModalityModel(student)  # shared CNN + per-task heads
        self.loss_name = loss
        self.register_buffer("task_weights", torch.tensor(task_weights), persistent=False)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask, y = batch["mask"], batch["y"]
        out = self.student(batch["x"][self.student.spec.modality], mask)
        spec = self.student.spec
        if spec.task != "regression":
            loss = prediction_loss(out, y, mask, spec.task, self.loss_name)
            return loss, {"prediction": loss.detach()}
        # One loss per task (a correlation loss is not separable over columns), then the weighted sum.
        losses = [prediction_loss(out[..., m : m + 1], y[..., m : m + 1], mask, spec.task, self.loss_name)
                  for m in range(len(spec.targets))]
        loss = sum(w * lm for w, lm in zip(self.task_weights, losses, strict=True))
        return loss, {f"loss_{t}": lm.detach() for t, lm in zip(spec.targets, losses, strict=True)}

    def extra_record(self) -> dict:
        enc = self.student.spec.encoder
        return {
            "targets": self.student.spec.targets, "task_weights": self.task_weights.tolist(),
            "image_steps": enc.image_steps, "image_stride_steps": enc.image_stride,
            "parameters": sum(p.numel() for p in self.student.parameters()),
        }


def student_spec(cfg: TrainConfig, bundle: Bundle) -> StudentSpec:
    c, ds = cfg.cermtl, bundle.ds
    # On utterance data there is no frame rate: the image takes neighbouring utterances (t = 1).
    stride = steps_for(c.image_stride_s, ds.step_rate_hz) or 1
    if c.image_steps < c.kernel + c.pool - 1:
        raise DataError(f"cermtl.image_steps must be at least {c.kernel + c.pool - 1} for kernel and pooling")
    enc = EncoderSpec(
        kind="feature-image", d_in=ds.modalities[cfg.modality], image_steps=c.image_steps, image_stride=stride,
        filters=c.filters, kernel=c.kernel, pool=c.pool,
    )
    n_out = ds.n_outputs if ds.task != "regression" else len(bundle.targets)
    head = HeadSpec(kind="task-gru", d_in=enc.out_dim, n_out=n_out, seq_steps=enc.pooled_steps,
                    task_units=c.task_units, task_fc=c.task_fc)
    return StudentSpec(modality=cfg.modality, task=ds.task, targets=bundle.targets, encoder=enc, head=head)


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> CERMTL:
    m = len(bundle.targets) if bundle.task == "regression" else 1
    weights = cfg.cermtl.task_weights or [1.0 / m] * m
    if len(weights) != m:
        raise DataError(f"cermtl.task_weights has {len(weights)} values for {m} targets {bundle.targets}")
    return CERMTL(student_spec(cfg, bundle), cfg.loss, weights)


# Adam at 5e-5, no label shift, the CCC loss for regression (the paper's best); its CNN and GRU heads
# have no dropout, so only lr is tuned.
METHOD = MethodDef(
    name="cermtl", build=build, step_pairing=True, lr=5e-5, label_delay_s=0.0, regression_loss="ccc",
    tuning={"lr": lr_dim(5e-6, 5e-4, "the paper's 5e-5")},
)
