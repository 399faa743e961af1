"""CM-StEW (SeqSEW in the thesis): sequential cross-modal knowledge transfer (spec §6).

Stage 1. The stronger modality's encoder-classifier (Bi-GRU + transformer encoder + classifier) is
trained on the labels, then frozen. Its encoder S_E turns the stronger features M_S into m_ss.

Stage 2. The weaker encoder W_E (same template) turns the weaker features into m_sw; three losses
shape it:

    L = L_p(C_W(m_sw), y) + alpha * (-corr(m_ss, m_sw)) + beta * MAE(S_D(m_sw), M_S)

- L_p, the prediction loss of the weaker classifier C_W (MSE for regression, BCE for binary);
- latent feature alignment (LFA): deep CCA between the frozen teacher's latent and the student's,
  over all valid steps of the batch (the trace norm: all singular values, as in the paper);
- translation: the Bi-GRU decoder S_D maps m_sw to the stronger *features*, scored by MAE.

Only S_E is taken from the teacher; its classifier C_S is not used in stage 2. Gradients reach
W_E, S_D and C_W only. At inference W_E + C_W are the deployable ``student``. Ablations:
``-LFA`` (alpha = 0) and ``-Decoder`` (beta = 0, S_D is not built).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stew import progress
from stew.deploy import load_model
from stew.errors import DataError
from stew.methods.base import Method, prediction_loss
from stew.models.decoders import BiGRUDecoder
from stew.models.student import SingleModalityModel, StudentSpec
from stew.objectives import dcca_loss, masked_mae

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.data.dataset import Dataset
    from stew.training import Bundle

ABLATIONS = {"-LFA": {"alpha": 0.0}, "-Decoder": {"beta": 0.0}}


class CMStEW(Method):
    def __init__(
        self, student: StudentSpec, teacher: SingleModalityModel, decoder: BiGRUDecoder | None,
        loss: str, alpha: float, beta: float, k: int | None, r1: float, r2: float,
    ) -> None:
        super().__init__()
        self.student = SingleModalityModel(student)  # W_E + C_W
        self.strong = teacher.spec.modality
        self.strong_encoder = teacher.encoder.requires_grad_(False)  # S_E, frozen after stage 1
        self.strong_decoder = decoder  # S_D
        self.loss_name, self.alpha, self.beta = loss, alpha, beta
        self.k, self.r1, self.r2 = k, r1, r2

    @property
    def weak_encoder(self) -> torch.nn.Module:
        return self.student.encoder

    @property
    def weak_classifier(self) -> torch.nn.Module:
        return self.student.head

    def train(self, mode: bool = True) -> CMStEW:
        super().train(mode)
        self.strong_encoder.eval()  # the frozen teacher never uses dropout
        return self

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"]
        m_w, m_s = batch["x"][self.student.spec.modality], batch["x"][self.strong]
        m_sw = self.weak_encoder(m_w, mask)
        with torch.no_grad():
            m_ss = self.strong_encoder(m_s, mask)

        task = self.student.spec.task
        pred_loss = prediction_loss(self.weak_classifier(m_sw), batch["y"], mask, task, self.loss_name)
        loss, parts = pred_loss, {"prediction": pred_loss.detach()}
        if self.alpha:
            alignment_loss = dcca_loss(m_ss, m_sw, mask, k=self.k, r1=self.r1, r2=self.r2)
            loss = loss + self.alpha * alignment_loss
            parts["alignment"] = alignment_loss.detach()
        if self.beta and self.strong_decoder is not None:
            translation_loss = masked_mae(self.strong_decoder(m_sw, mask), m_s, mask)
            loss = loss + self.beta * translation_loss
            parts["translation"] = translation_loss.detach()
        return loss, parts

    def extra_record(self) -> dict:
        return {"teacher": self.strong, "alpha": self.alpha, "beta": self.beta, "k": self.k}


# --------------------------------------------------------------------------------------------------
# Stage 1 and the validation grid, used by the shared trainer through the method registry.


def teacher_config(cfg: TrainConfig, out: Path) -> TrainConfig:
    """The stronger modality's unimodal Bi-GRU + TE + Classifier, on the same data, carve and seed."""
    return cfg.model_copy(update={
        "method": "unimodal", "modality": cfg.teacher, "teacher": None, "ablation": None, "arch": "bigru-te",
        "out": out, "cv": None,
    })


def prepare(cfg: TrainConfig, ds: Dataset, work: Path) -> TrainConfig:
    """Stage 1: train the teacher unless a finished unimodal run of it is given."""
    from stew.training import run

    c = cfg.cmstew
    if c.teacher_run is None:
        teacher_dir = work / "teacher"
        # Announced: stage 1 is a whole training run before CM-StEW itself starts (minutes, silent before).
        say = progress.sayer(cfg.progress)
        t0 = time.monotonic()
        say(f"stage 1: training the stronger modality's teacher ({cfg.teacher}, Bi-GRU + TE) -> {teacher_dir}")
        run(teacher_config(cfg, teacher_dir), ds)
        say(f"stage 1 done in {progress.clock(time.monotonic() - t0)}; stage 2: CM-StEW on {cfg.modality}")
        c = c.model_copy(update={"teacher_run": teacher_dir})
    _check_teacher(c.teacher_run, cfg, ds)
    return cfg.model_copy(update={"cmstew": c})


def _check_teacher(run_dir: Path, cfg: TrainConfig, ds: Dataset) -> None:
    meta_path, metrics_path = Path(run_dir) / "model" / "model.json", Path(run_dir) / "metrics.json"
    for p in (meta_path, metrics_path):
        if not p.is_file():
            raise DataError("teacher run is not a finished stew run", file=p)
    meta, rec = json.loads(meta_path.read_text()), json.loads(metrics_path.read_text())
    if meta["modality"] != cfg.teacher:
        raise DataError(f"teacher run is for {meta['modality']!r}, not --teacher {cfg.teacher!r}", file=meta_path)
    # The teacher must share the training split: otherwise it has seen this run's validation data,
    # and its standardisation differs from the one applied to this run's inputs.
    if sorted(rec.get("data", {}).get("val_groups", [])) != ds.groups("val"):
        raise DataError("teacher run used a different validation carve (seed or data differ)", file=metrics_path)


def search_space(cfg: TrainConfig) -> list[TrainConfig]:
    """alpha and beta: fixed if given, else every pair of the grid (selected on validation)."""
    c = cfg.cmstew
    fixed = ABLATIONS.get(cfg.ablation or "", {})
    if cfg.ablation and cfg.ablation not in ABLATIONS:
        raise DataError(f"unknown CM-StEW ablation {cfg.ablation!r}; choose from {list(ABLATIONS)}")
    alphas = [fixed["alpha"]] if "alpha" in fixed else ([c.alpha] if c.alpha is not None else c.alpha_grid)
    betas = [fixed["beta"]] if "beta" in fixed else ([c.beta] if c.beta is not None else c.beta_grid)
    return [
        cfg.model_copy(update={"cmstew": c.model_copy(update={"alpha": a, "beta": b})}) for a in alphas for b in betas
    ]


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> CMStEW:
    from stew.training import student_spec

    c = cfg.cmstew
    assert c.teacher_run is not None and c.alpha is not None and c.beta is not None
    teacher, meta = load_model(Path(c.teacher_run) / "model")
    if meta["targets"] != bundle.targets:
        raise DataError(f"teacher predicts {meta['targets']}, this run {bundle.targets}", file=c.teacher_run)
    d_strong = bundle.ds.modalities[cfg.teacher]
    decoder = None
    if c.beta:
        # spec §6.3: 250 units, 500 when translating into wide video features [U for MOSI];
        # one layer for the RECOLA valence audio model (frame-level audio student), else two.
        # Those are defaults only: an explicit ``cmstew.decoder_layers`` wins for every student.
        units = c.decoder_units or (500 if d_strong >= 168 else 250)
        layers = c.decoder_layers or (1 if (bundle.ds.step_rate_hz and cfg.modality == "audio") else 2)
        decoder = BiGRUDecoder(cfg.d_model, units, layers, d_strong)
    return CMStEW(
        student_spec(cfg, bundle.ds, cfg.modality, arch="bigru-te"), teacher, decoder, cfg.loss,
        alpha=c.alpha, beta=c.beta, k=c.k, r1=c.r1, r2=c.r2,
    )
