"""ConflictNET: verbal-conflict intensity regressed end to end from the raw waveform
(docs/methods/conflictnet.md).

Three convolution blocks (conv, batch norm, max-pool) turn 30 s of 8 kHz speech into 832 steps of 256
features; temporal average pooling (AP) shortens them to 208, which LSTMs handle better; an LSTM reads
them, global additive self-attention re-weights every step by the whole clip, a second LSTM sums the
clip up, and a linear unit gives the conflict level. ParaNET, the baseline, lacks AP and attention;
``--ablation`` picks ``paranet``, ``+ap``, ``+attn``, ``conflictnet`` (the default) or ``+gap``.

Trained as the paper: 1 - PCC per mini-batch, Adam at 0.01 with Keras's decay 0.6 per update
(lr / (1 + 0.6 t)), batch 32, the epoch with the best validation PCC kept. Scored with PCC, and UAR
and WAR at 0. A PCC loss leaves the outputs' offset and scale free, so before binarising, the paper
maps predictions linearly from their [min, max] onto the training labels' [min, max]
(docs/methods/conflictnet.md#evaluation); the authors' code takes that min and max from the *test*
predictions, which reads test statistics. stew takes them from the validation predictions once
training ends and stores the map in the model, so test and deployment use one fixed affine map (PCC
is unchanged by it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.data.dataset import Dataset
from stew.data.preprocess import predict_windows
from stew.errors import DataError
from stew.methods.base import PLATEAU_KNOBS, STUDENT_KNOBS, Method, MethodDef
from stew.models.conflictnet import ConflictNetSpec, RawAudioModel, RawAudioSpec
from stew.objectives import pcc_loss
from stew.scoring.metrics import range_map

ABLATIONS = ("paranet", "+ap", "+attn", "conflictnet", "+gap")
DECAY = 0.6  # Keras's legacy per-update decay (docs/methods/conflictnet.md#defaults)


class ConflictNetMethod(Method):
    selection = "pcc"

    def __init__(self, spec: RawAudioSpec, decay: float = DECAY) -> None:
        super().__init__()
        self.student = RawAudioModel(spec)
        self.decay = decay

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # PCC on the activated outputs before the rescaling: linear, as the paper's (docs/methods/conflictnet.md
        # #architecture), unless conflictnet.activation is tanh.
        out = self.student.outputs(batch)
        loss = pcc_loss(out, batch["y"], batch["mask"])
        return loss, {"pcc_loss": loss.detach()}

    def lr_factor(self) -> Callable[[int], float]:
        decay = self.decay
        return lambda n: 1.0 / (1.0 + decay * n)

    @torch.no_grad()
    def after_fit(self, bundle: Bundle) -> None:
        """The paper's min-max rescaling (docs/methods/conflictnet.md#evaluation), fitted on the activated
        validation outputs instead of test predictions; the student applies it after its activation."""
        self.student.out_scale.fill_(1.0)
        self.student.out_shift.fill_(0.0)
        pred = np.concatenate(predict_windows(self, bundle.val, bundle.eval_win, bundle.k_delay))
        y = np.concatenate([s.source.targets[:, bundle.target_cols] for s in bundle.train])
        scale, shift = range_map(pred, y.min(0), y.max(0))
        self.student.out_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.student.out_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))

    def extra_record(self) -> dict:
        spec = self.student.spec.net
        trainable = sum(p.numel() for p in self.student.parameters() if p.requires_grad)
        return {"ablation": spec.ablation, "samples": spec.samples, "decay": self.decay, "parameters": trainable,
                "rescale": {"scale": self.student.out_scale.tolist(), "shift": self.student.out_shift.tolist()}}


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> ConflictNetMethod:
    ds = bundle.ds
    m = cfg.modality
    if ds.task != "regression" or ds.label_level != "sequence" or ds.modalities[m] != 1:
        raise DataError(f"--method conflictnet regresses one value per clip from a mono waveform; modality {m!r} "
                        f"has {ds.modalities[m]} features per step, task {ds.task}, labels per {ds.label_level}")
    ablation = cfg.ablation or "conflictnet"
    if ablation not in ABLATIONS:
        raise DataError(f"--ablation {ablation!r}: ConflictNET's are {', '.join(ABLATIONS)}")
    samples = max(s.length(m) for s in ds.split("train"))
    try:
        # The conflictnet section's knobs (docs/methods/conflictnet.md#options), validated by TrainConfig.
        net = ConflictNetSpec(ablation=ablation, samples=samples, n_out=len(bundle.targets),
                              **cfg.conflictnet.model_dump())
    except ValueError as e:
        raise DataError(f"clips of {samples} samples: {str(e).splitlines()[0]}") from None
    return ConflictNetMethod(RawAudioSpec(modality=m, targets=bundle.targets, net=net))


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    # The loss is the paper's 1 - PCC on the linear outputs: refuse any other (classification data is
    # refused by build, which says why).
    if ds.task == "regression" and cfg.loss != "pcc":
        raise DataError(f"--loss {cfg.loss}: --method conflictnet trains on 1 - PCC (--loss pcc) only")
    return cfg


# Early stopping after 10 epochs without a better validation PCC; lr 1e-2 with Keras's decay per update;
# the loss 1 - PCC, recorded as metrics.json's config.loss "pcc".
METHOD = MethodDef(name="conflictnet", build=build, ablations={a: {} for a in ABLATIONS}, lr=1e-2, patience=10,
                   regression_loss="pcc", resolve=resolve, ignores=STUDENT_KNOBS | PLATEAU_KNOBS,
                   own_knobs="its network is set under conflictnet: and by --ablation, its learning rate decays "
                             "per update as Keras's")
