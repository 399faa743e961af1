"""CM-StEW (SeqSEW in the thesis): sequential cross-modal knowledge transfer (docs/methods/cmstew.md).

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

The teacher is frozen, so m_ss is computed once per training sequence before stage 2 and travels
with the batch as the input ``teacher:<modality>``. That is what makes three extensions cheap
(docs/transfer.md):

- cross-fitting: with ``teacher_folds`` K, the latents of the training groups in fold k come from a
  teacher trained without fold k, so the student aligns to the teacher's view of unseen groups;
- several teachers (``--teacher text,video``): one alignment and one translation term each;
- unlabelled pairs (``--unlabelled DIR``): their steps have no label, so L_p skips them, but they
  carry teacher latents and stronger features for the other two terms.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.preprocess import Standardizer, predict_windows
from stew.deploy import load_model
from stew.errors import DataError
from stew.methods.base import DROPOUT, LR_ADAM, Dim, Method, MethodDef, prediction_loss, student_spec
from stew.models.decoders import BiGRUDecoder
from stew.models.encoders import MLP
from stew.models.student import LatentProbe, SingleModalityModel, StudentSpec
from stew.objectives import dcca_loss, masked_mae

ABLATIONS = {"-LFA": {"alpha": 0.0}, "-Decoder": {"beta": 0.0}}


class CMStEW(Method):
    def __init__(
        self, student: StudentSpec, teachers: list[str], decoders: dict[str, nn.Module],
        loss: str, alpha: float, beta: float, k: int | None, r1: float, r2: float, gamma: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = SingleModalityModel(student)  # W_E + C_W
        self.teachers = teachers  # the stronger modalities; their frozen S_E outputs come with the batch
        self.strong_decoders = nn.ModuleDict(decoders)  # S_D per teacher (none when beta = 0)
        self.loss_name, self.alpha, self.beta, self.gamma = loss, alpha, beta, gamma
        self.k, self.r1, self.r2 = k, r1, r2

    @property
    def weak_encoder(self) -> nn.Module:
        return self.student.encoder

    @property
    def weak_classifier(self) -> nn.Module:
        return self.student.head

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"]
        m_sw = self.weak_encoder(batch["x"][self.student.spec.modality], mask)
        # Unlabelled steps (NaN labels) are left out of L_p by prediction_loss; they still align and translate.
        task = self.student.spec.task
        out = self.weak_classifier(m_sw)
        pred_loss = prediction_loss(out, batch["y"], mask, task, self.loss_name)
        loss, parts = pred_loss, {"prediction": pred_loss.detach()}
        for strong in self.teachers:
            m_ss = batch["x"][TEACHER + strong]
            suffix = "" if len(self.teachers) == 1 else f"_{strong}"
            if self.alpha:
                alignment_loss = dcca_loss(m_ss, m_sw, mask, k=self.k, r1=self.r1, r2=self.r2)
                loss = loss + self.alpha * alignment_loss
                parts["alignment" + suffix] = alignment_loss.detach()
            if self.beta and strong in self.strong_decoders:
                m_s = batch["x"][strong]
                translation_loss = masked_mae(self.strong_decoders[strong](m_sw, mask), m_s, mask)
                loss = loss + self.beta * translation_loss
                parts["translation" + suffix] = translation_loss.detach()
        if self.gamma:
            distillation_loss = self.distillation_loss(batch, out, mask)
            loss = loss + self.gamma * distillation_loss
            parts["distillation"] = distillation_loss.detach()
        return loss, parts

    def distillation_loss(self, batch: dict, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_p against the teachers' mean prediction, on the steps that have no label (0 if none)."""
        y = batch["y"]
        unlabelled = ~torch.isfinite(y).all(-1) & mask
        if not bool(unlabelled.any()):
            return out.sum() * 0.0  # keeps the graph; nothing to distil in this batch
        soft = torch.stack([batch["x"][TEACHER_PRED + t] for t in self.teachers]).mean(0)
        task = self.student.spec.task
        if task == "multiclass":
            soft = soft.argmax(-1, keepdim=True).to(y.dtype)
        return prediction_loss(out, soft, unlabelled, task, self.loss_name)

    def extra_record(self) -> dict:
        return {"teacher": ",".join(self.teachers), "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "k": self.k,
                "arch": self.student.spec.encoder.kind}


# --------------------------------------------------------------------------------------------------
# The recipes. "paper" is the thesis's: one Bi-GRU + TE teacher on the whole training split, a Bi-GRU +
# TE student, alpha and beta from a grid on the validation carve. "stew" is what the
# measurements support (BENCHMARKS.md, "Making transfer pay", "CMU-MOSI on unseen videos"): cross-fitted
# teachers, a student without context across frames at a frame rate and a Bi-GRU over a recording's
# utterances otherwise (docs/transfer.md#choices-where-the-sources-are-silent-u), fixed alpha and beta,
# distillation on unlabelled steps, and the negative-transfer guard.

TEACHER = "teacher:"
TEACHER_PRED = "teacher-prediction:"
STEW_GAMMA = 1.0  # acts only on steps without labels: with --unlabelled pairs (BENCHMARKS.md, "Making transfer pay")
STEW_ARCH = {"frames": "mlp", "utterances": "bigru"}
STEW_ALPHA, STEW_BETA = 0.1, 0.1
STEW_FOLDS = 5
PER_STEP = ("mlp", "classifier")  # students without context across steps


def recipe_arch(ds: Dataset) -> str:
    """The stew recipe's student architecture for this data: per frame at a frame rate (RECOLA), a Bi-GRU
    over the utterances of a recording otherwise (CMU-MOSI: +2.4 and +3.9 F1 for audio on unseen videos)."""
    return STEW_ARCH["frames" if ds.step_rate_hz is not None else "utterances"]


def apply_recipe(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    """Fill what the user left open with the recipe's choices (explicit values always win)."""
    c = cfg.cmstew
    if cfg.recipe == "paper":
        upd = {"teacher_folds": c.teacher_folds or 1, "guard_folds": 0 if c.guard_folds is None else c.guard_folds,
               "teacher_arch": c.teacher_arch or "bigru-te", "gamma": c.gamma or 0.0}
        return cfg.model_copy(update={"arch": "bigru-te", "cmstew": c.model_copy(update=upd)})
    arch = cfg.arch if "arch" in cfg.model_fields_set else recipe_arch(ds)
    if arch not in ("mlp", "bigru", "bigru-te"):
        raise DataError(f"--method cmstew aligns the student encoder's latent: --arch mlp, bigru or bigru-te, "
                        f"not {arch}")
    upd = {
        "teacher_folds": c.teacher_folds or (1 if c.teacher_run is not None else STEW_FOLDS),
        "guard_folds": STEW_FOLDS if c.guard_folds is None else c.guard_folds,
        "teacher_arch": c.teacher_arch or arch,
        "alpha": STEW_ALPHA if c.alpha is None else c.alpha,
        "beta": STEW_BETA if c.beta is None else c.beta,
        "gamma": STEW_GAMMA if c.gamma is None else c.gamma,
    }
    return cfg.model_copy(update={"arch": arch, "cmstew": c.model_copy(update=upd)})


# --------------------------------------------------------------------------------------------------
# Stage 1's folders and folds (stew.training.stages trains the teachers) and the validation grid.


def fold_of_groups(ds: Dataset, k: int, seed: int) -> dict[str, int]:
    """Cross-fitting folds over the training groups (seeded, whole groups). Labelled and unlabelled groups
    are each spread evenly over the folds: with k no larger than the labelled groups, every fold holds
    one and every teacher keeps some to learn from, however many unlabelled groups there are."""
    rng = np.random.default_rng(seed)
    out: dict[str, int] = {}
    for split in ("train", UNLABELLED):
        groups = sorted({s.group for s in ds.sequences if s.split == split})
        out |= {groups[j]: i % k for i, j in enumerate(rng.permutation(len(groups)))}
    return out


def teacher_dirs(cfg: TrainConfig, work: Path) -> dict[str, list[Path]]:
    """Where each teacher's fold runs live: ``teacher/`` for the paper's single teacher."""
    c = cfg.cmstew
    if c.teacher_run is not None:
        return {cfg.teacher: [Path(c.teacher_run)]}
    if c.teacher_folds == 1 and len(cfg.teachers) == 1:
        return {cfg.teacher: [work / "teacher"]}
    return {t: [work / "teacher" / t / f"fold{i}" for i in range(c.teacher_folds or 1)] for t in cfg.teachers}


def search_space(cfg: TrainConfig) -> list[TrainConfig]:
    """alpha and beta: fixed if given, else every pair of the grid (selected on validation)."""
    c = cfg.cmstew
    METHOD.check_ablation(cfg.ablation)
    fixed = ABLATIONS.get(cfg.ablation or "", {})
    alphas = [fixed["alpha"]] if "alpha" in fixed else ([c.alpha] if c.alpha is not None else c.alpha_grid)
    betas = [fixed["beta"]] if "beta" in fixed else ([c.beta] if c.beta is not None else c.beta_grid)
    return [
        cfg.model_copy(update={"cmstew": c.model_copy(update={"alpha": a, "beta": b})}) for a in alphas for b in betas
    ]


def attach_teacher_latents(cfg: TrainConfig, bundle: Bundle, work: Path) -> None:
    """Add ``teacher:<m>`` (m_ss, on the input time axis) to every training sequence, from the teacher
    that did not see its group. Each teacher reads its inputs with its own standardisation."""
    dirs = teacher_dirs(cfg, work)
    k = len(next(iter(dirs.values())))
    fold_of = fold_of_groups(bundle.ds, k, cfg.seed) if k > 1 else {}
    for strong, runs in dirs.items():
        for fold, run_dir in enumerate(runs):
            teacher, meta = load_model(Path(run_dir) / "model")
            if meta["targets"] != bundle.targets:
                raise DataError(f"teacher predicts {meta['targets']}, this run {bundle.targets}", file=run_dir)
            seqs = [s for s in bundle.train if k == 1 or fold_of[s.source.group] == fold]
            if not seqs:
                continue
            scaler = Standardizer.from_json(meta["standardizer"])
            own = [replace(s, x={strong: torch.from_numpy(
                scaler.transform(strong, s.source.features[strong], s.source.masks[strong]))}) for s in seqs]
            for s, z in zip(seqs, predict_windows(LatentProbe(teacher), own, bundle.eval_win, 0), strict=True):
                s.x[TEACHER + strong] = torch.from_numpy(z)
                s.present[TEACHER + strong] = s.present[strong]
            if cfg.cmstew.gamma:  # the teacher's activated prediction, on the (shifted) label axis like y
                for s, p in zip(seqs, predict_windows(teacher, own, bundle.eval_win, 0), strict=True):
                    s.x[TEACHER_PRED + strong] = torch.from_numpy(p)
                    s.present[TEACHER_PRED + strong] = s.present[strong]


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> CMStEW:
    c = cfg.cmstew
    assert c.alpha is not None and c.beta is not None
    # The grid's candidates share stage 1; its runs live in <run>/grid/<candidate>, stage 1 in <run>.
    work = run_dir.parent.parent if run_dir.parent.name == "grid" else run_dir
    attach_teacher_latents(cfg, bundle, work)
    student = student_spec(cfg, bundle.ds, cfg.modality)
    decoders = {}
    if c.beta:
        for strong in cfg.teachers:
            d_strong = bundle.ds.modalities[strong]
            # docs/methods/cmstew.md#decoder: 250 units, 500 when translating into wide video features [U for MOSI];
            # one layer for the RECOLA valence audio model (frame-level audio student), else two.
            # Those are defaults only: an explicit ``cmstew.decoder_layers`` wins for every student.
            units = c.decoder_units or (500 if d_strong >= 168 else 250)
            layers = c.decoder_layers or (1 if (bundle.ds.step_rate_hz and cfg.modality == "audio") else 2)
            d_latent = student.encoder.out_dim
            if cfg.arch in PER_STEP:
                # A per-step student translates step by step [U]: an MLP S_D, ~20x cheaper than the Bi-GRU.
                decoders[strong] = MLP(d_latent, [units, d_strong])
            else:
                decoders[strong] = BiGRUDecoder(d_latent, units, layers, d_strong)
    return CMStEW(
        student, cfg.teachers, decoders, cfg.loss,
        alpha=c.alpha, beta=c.beta, k=c.k, r1=c.r1, r2=c.r2, gamma=c.gamma or 0.0,
    )


def candidate_name(cfg: TrainConfig) -> str:
    """A grid candidate's folder: ``alpha0.1_beta1``."""
    return f"alpha{cfg.cmstew.alpha:g}_beta{cfg.cmstew.beta:g}"


def adopt(cfg: TrainConfig, chosen: TrainConfig) -> TrainConfig:
    """``cfg`` with the alpha and beta that ``chosen`` (a grid candidate) fixed, keeping its paths."""
    return cfg.model_copy(update={"cmstew": chosen.cmstew.model_copy(update={"teacher_run": cfg.cmstew.teacher_run})})


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    METHOD.required_modalities(cfg)  # a missing or equal --teacher is named before the recipe is read
    return apply_recipe(cfg, ds)


def trial_settings(cfg: TrainConfig) -> dict:
    """A ``stew tune`` trial is one validation score: alpha and beta fixed (the config's, else 1.0; None
    would open the validation grid) and the paper recipe's single fit (the stew recipe's guard would
    cross-validate every trial) unless a recipe is given."""
    c = cfg.cmstew
    upd: dict = {"cmstew.alpha": 1.0 if c.alpha is None else c.alpha, "cmstew.beta": 1.0 if c.beta is None else c.beta}
    if "recipe" not in cfg.model_fields_set:
        upd["recipe"] = "paper"
    return upd


_SOURCE = "CM-StEW paper: grid search over [0.001, 1]; log-uniform here"

METHOD = MethodDef(
    name="cmstew", build=build, teacher="stronger", several_teachers=True, ablations=ABLATIONS, step_pairing=True,
    trains_on_unlabelled=True, stage1_teachers=True, resolve=resolve, search_space=search_space,
    candidate_name=candidate_name, adopt=adopt,
    tuning={
        "alpha": Dim("cmstew.alpha", "log", 1e-3, 1.0, source=_SOURCE),
        "beta": Dim("cmstew.beta", "log", 1e-3, 1.0, source=_SOURCE),
        "dropout": DROPOUT,
        "lr": LR_ADAM,
    },
    trial_settings=trial_settings,
)
