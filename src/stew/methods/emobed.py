"""EmoBed: crossmodal emotion embedding (docs/methods/emobed.md; Han, Zhang, Ren, Schuller).

A monomodal system trained with an auxiliary modality. Two modality-specific embedding nets map each
modality into one common space, f_T for the target (deployed) modality and f_X for the auxiliary one,
and a **shared** back-end f predicts from either embedding (docs/methods/emobed.md#joint-training):

    y_T = f(e_T),  e_T = f_T(x_T);      y_X = f(e_X),  e_X = f_X(x_X)

    J = L_T + alpha * L_X + beta * L_triplet + lambda * R(theta)

- L_T, L_X: the prediction losses of both paths through the shared back-end (joint training);
- L_triplet: the crossmodal batch-hard triplet loss over the double batch {e_T; e_X}
  (docs/methods/emobed.md#triplet-loss), which pulls same-class embeddings of either modality
  together and pushes other classes apart;
- R(theta) = 1/2 ||theta||^2, the L2 penalty (docs/methods/emobed.md#losses); the paper applies L2
  1e-4 to all its networks, so every mode has it, and so does the classic system (``--method unimodal
  --arch gru``).

``--method joint`` keeps alpha only, ``--method triplet`` beta only, ``--method emobed`` both.
By default (``pairing: unpaired``, the paper's batching, docs/methods/emobed.md#pairing) the
auxiliary batch is drawn independently of the target batch, so corpora holding only one of the two
modalities can be mixed; each modality's terms then count only the steps where that modality is
present. ``pairing: paired`` uses the same windows for both. The triplet loss always skips steps whose input is missing.
After training f_X is discarded: f_T + f are the ``student``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stew.config import EmoBedConfig, TrainConfig
from stew.data.bundle import Bundle
from stew.data.preprocess import WindowDataset, to_device
from stew.errors import DataError
from stew.methods.base import DROPOUT, LR_1E3, Dim, Method, MethodDef, prediction_loss, student_spec
from stew.models.encoders import EncoderSpec, build_encoder
from stew.models.student import SingleModalityModel, StudentSpec
from stew.objectives import crossmodal_triplet_loss, labels_to_classes, quantile_edges

# Which terms each mode switches on: (auxiliary prediction loss, triplet loss). The L2 penalty is in
# every mode: the paper regularises all its networks with it, not only full EmoBed's
# (docs/methods/emobed.md#losses).
MODES = {"joint": (True, False), "triplet": (False, True), "emobed": (True, True)}


class EmoBed(Method):
    def __init__(
        self, student: StudentSpec, aux_encoder: EncoderSpec, aux_modality: str, loss: str,
        alpha: float, beta: float, l2: float, opts: EmoBedConfig, class_edges: torch.Tensor | None,
        aux_pool: WindowDataset | None, seed: int,
    ) -> None:
        super().__init__()
        self.student = SingleModalityModel(student)  # f_T + shared f
        self.aux_encoder = build_encoder(aux_encoder)  # f_X, training only
        self.target, self.aux = student.modality, aux_modality
        self.loss_name, self.alpha, self.beta, self.l2 = loss, alpha, beta, l2
        self.opts, self.class_edges = opts, class_edges
        self.aux_pool = aux_pool  # unpaired batching: auxiliary windows drawn on their own
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def target_encoder(self) -> torch.nn.Module:
        return self.student.encoder

    @property
    def shared_backend(self) -> torch.nn.Module:
        return self.student.head

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task = self.student.spec.task
        valid_t = batch["mask"] & batch["present"][self.target]
        e_t = self.target_encoder(batch["x"][self.target], batch["mask"])
        # Paired, the target loss covers every step like the classic monomodal system's (alpha = beta = 0
        # gives exactly that system); unpaired, a corpus without the target modality adds nothing to it.
        target_mask = valid_t if self.aux_pool is not None else batch["mask"]
        target_loss = prediction_loss(self.shared_backend(e_t, batch["mask"]), batch["y"], target_mask, task,
                                      self.loss_name)
        loss, parts = target_loss, {"prediction": target_loss.detach()}
        if not (self.alpha or self.beta):
            return self.l2_regularised(loss, parts, self.l2)

        aux = self._aux_batch(batch)
        valid_x = aux["mask"] & aux["present"][self.aux]
        e_x = self.aux_encoder(aux["x"][self.aux], aux["mask"])
        if self.alpha:
            aux_loss = prediction_loss(self.shared_backend(e_x, aux["mask"]), aux["y"], valid_x, task, self.loss_name)
            loss = loss + self.alpha * aux_loss
            parts["auxiliary"] = aux_loss.detach()
        if self.beta:
            triplet_loss = crossmodal_triplet_loss(
                e_t, e_x, self._classes(batch["y"]), self._classes(aux["y"]), valid_t, valid_x,
                form=self.opts.triplet_form, margin=self.opts.margin, max_rows=self.opts.max_rows,
                generator=self.generator,
            )
            loss = loss + self.beta * triplet_loss
            parts["triplet"] = triplet_loss.detach()
        return self.l2_regularised(loss, parts, self.l2)

    def _aux_batch(self, batch: dict) -> dict:
        """The same windows (paired) or as many windows drawn independently from the training set."""
        if self.aux_pool is None:
            return batch
        n = batch["mask"].shape[0]
        picks = torch.randint(len(self.aux_pool), (n,), generator=self.generator).tolist()
        # Drawn and collated on the CPU (one stream of draws per seed on every device), then moved to the batch's.
        return to_device(self.aux_pool.collate([self.aux_pool[i] for i in picks]), batch["mask"].device)

    def _classes(self, y: torch.Tensor) -> torch.Tensor:
        if self.student.spec.task != "regression":
            return y[..., 0].long()  # class labels already
        return labels_to_classes(y, self.opts.classes, self.class_edges)

    def extra_record(self) -> dict:
        return {
            "teacher": self.aux, "alpha": self.alpha, "beta": self.beta, "l2": self.l2,
            "triplet_form": self.opts.triplet_form, "margin": self.opts.margin, "classes": self.opts.classes,
            "pairing": self.opts.pairing,
        }


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> EmoBed:
    e = cfg.emobed
    use_aux, use_triplet = MODES[cfg.method]
    alpha, beta = (e.alpha if use_aux else 0.0), (e.beta if use_triplet else 0.0)
    student = student_spec(cfg, bundle.ds, cfg.modality, arch="gru")
    aux_encoder = student_spec(cfg, bundle.ds, cfg.teacher, arch="gru").encoder
    edges = None
    if e.classes == "quantile" and bundle.task == "regression":
        edges = quantile_edges(np.concatenate([s.y.numpy() for s in bundle.train]), e.n_bins)
    pool = None
    # With no auxiliary term there is no auxiliary batch to draw: the target term then covers every
    # step, as the classic system's does, whatever the pairing.
    if e.pairing == "unpaired" and (alpha or beta):
        # Only windows where the auxiliary modality is present at all are worth drawing.
        full = WindowDataset.for_training(bundle.train, bundle.win, bundle.hop)
        spans = [sp for sp in full.spans if bool(full.seqs[sp[0]].present[cfg.teacher][sp[1]:sp[2]].any())]
        if not spans:
            raise DataError(f"no training step has the auxiliary modality {cfg.teacher!r}")
        pool = WindowDataset(full.seqs, spans)
    return EmoBed(
        student, aux_encoder, cfg.teacher, cfg.loss, alpha=alpha, beta=beta, l2=e.l2, opts=e, class_edges=edges,
        aux_pool=pool, seed=cfg.seed,
    )


_SOURCE = "[U] EmoBed paper: swept on dev, best values 0.3-1.2; 0 = off. Grid 0, 0.1, ..., 2"
_ALPHA = Dim("emobed.alpha", "linear", 0.0, 2.0, 0.1, source=_SOURCE)
_BETA = Dim("emobed.beta", "linear", 0.0, 2.0, 0.1, source=_SOURCE)


def _mode(name: str, tuning: dict[str, Dim]) -> MethodDef:
    # Adam at 1e-3, labels shifted by 2.4 s (docs/methods/emobed.md).
    return MethodDef(name=name, build=build, teacher="auxiliary", step_pairing=True, lr=1e-3, label_delay_s=2.4,
                     tuning={**tuning, "dropout": DROPOUT, "lr": LR_1E3})


METHODS = [
    _mode("emobed", {"alpha": _ALPHA, "beta": _BETA}),
    _mode("joint", {"alpha": _ALPHA}),
    _mode("triplet", {"beta": _BETA}),
]
