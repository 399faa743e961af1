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

The teacher is frozen, so m_ss is computed once per training sequence before stage 2 and travels
with the batch as the input ``teacher:<modality>``. That is what makes three extensions cheap
(issue 13, docs/transfer.md):

- cross-fitting: with ``teacher_folds`` K, the latents of the training groups in fold k come from a
  teacher trained without fold k, so the student aligns to the teacher's view of unseen groups;
- several teachers (``--teacher text,video``): one alignment and one translation term each;
- unlabelled pairs (``--unlabelled DIR``): their steps have no label, so L_p skips them, but they
  carry teacher latents and stronger features for the other two terms.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from stew.data.dataset import UNLABELLED
from stew.data.preprocess import Standardizer, predict_windows
from stew.data.splits import held_out_folds
from stew.deploy import load_model
from stew.errors import DataError
from stew.methods.base import Method, prediction_loss
from stew.models.decoders import BiGRUDecoder
from stew.models.encoders import MLP
from stew.models.student import SingleModalityModel, StudentSpec
from stew.objectives import dcca_loss, masked_mae
from stew.scoring import metrics
from stew.util import progress

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.data.dataset import Dataset
    from stew.train.core import Bundle

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
# TE student, alpha and beta from a grid on the validation carve. "stew" is what issue 13's
# measurements support (BENCHMARKS.md, "Making transfer pay"): cross-fitted teachers, a small per-step
# student, fixed alpha and beta, distillation on unlabelled steps, and the negative-transfer guard.

TEACHER = "teacher:"
TEACHER_PRED = "teacher-prediction:"
STEW_GAMMA = 1.0  # acts only on steps without labels: with --unlabelled pairs (BENCHMARKS.md)
STEW_ARCH = "mlp"
STEW_ALPHA, STEW_BETA = 0.1, 0.1
STEW_FOLDS = 5
PER_STEP = ("mlp", "classifier")  # students without context across steps


def apply_recipe(cfg: TrainConfig) -> TrainConfig:
    """Fill what the user left open with the recipe's choices (explicit values always win)."""
    c = cfg.cmstew
    if cfg.recipe == "paper":
        upd = {"teacher_folds": c.teacher_folds or 1, "guard_folds": 0 if c.guard_folds is None else c.guard_folds,
               "teacher_arch": c.teacher_arch or "bigru-te", "gamma": c.gamma or 0.0}
        return cfg.model_copy(update={"arch": "bigru-te", "cmstew": c.model_copy(update=upd)})
    arch = cfg.arch if "arch" in cfg.model_fields_set else STEW_ARCH
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
# Stage 1 and the validation grid, used by the shared trainer through the method registry.


def teacher_config(cfg: TrainConfig, out: Path, strong: str | None = None) -> TrainConfig:
    """The stronger modality's unimodal encoder-classifier, on the same data, carve and seed."""
    return cfg.model_copy(update={
        "method": "unimodal", "modality": strong or cfg.teacher, "teacher": None, "ablation": None,
        "arch": cfg.cmstew.teacher_arch or "bigru-te", "out": out, "cv": None, "unlabelled": None,
    })


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


def prepare(cfg: TrainConfig, ds: Dataset, work: Path) -> TrainConfig:
    """Stage 1: train the teacher(s) unless a finished unimodal run is given; cross-fitted with K folds."""
    from stew.train.core import run

    c = cfg.cmstew
    if c.teacher_run is not None:
        if len(cfg.teachers) > 1 or (c.teacher_folds or 1) > 1:
            raise DataError("cmstew.teacher_run is one teacher on the whole training split: "
                            "it cannot serve several teachers or cross-fitting (set cmstew.teacher_folds: 1)")
        _check_teacher(c.teacher_run, cfg, ds)
        return cfg
    say = progress.sayer(cfg.progress)
    # No more folds than labelled training groups: a fold without groups would train a teacher for nothing.
    k = min(c.teacher_folds or 1, len(ds.groups("train")))
    cfg = cfg.model_copy(update={"cmstew": c.model_copy(update={"teacher_folds": k})})
    c = cfg.cmstew
    dirs = teacher_dirs(cfg, work)
    fold_of = fold_of_groups(ds, k, cfg.seed) if k > 1 else {}
    n, t0 = sum(len(v) for v in dirs.values()), time.monotonic()
    arch = c.teacher_arch or "bigru-te"
    how = f"cross-fitted over {k} grouped folds" if k > 1 else "on the whole training split"
    say(f"stage 1: {n} teacher run(s) ({', '.join(cfg.teachers)}, {arch}) {how}")
    i = 0
    for strong, runs in dirs.items():
        for fold, run_dir in enumerate(runs):
            i += 1
            if (run_dir / "metrics.json").is_file():
                continue  # finished before an interruption: --resume reuses it
            shutil.rmtree(run_dir, ignore_errors=True)  # cut short by an interruption: trained again
            elapsed = time.monotonic() - t0
            say(f"teacher {i}/{n} ({strong}{f', fold {fold + 1}/{k}' if k > 1 else ''}) · "
                f"{progress.clock(elapsed)} elapsed · ~{progress.eta(elapsed, i - 1, n)} left")
            # Fold k's teacher never sees fold k's groups (nor any unlabelled ones: it learns from labels).
            teacher_ds = ds.replace_sequences(
                s for s in ds.sequences
                if s.split != UNLABELLED and not (s.split == "train" and fold_of.get(s.group) == fold)
            ) if k > 1 else ds
            teacher_cfg = teacher_config(cfg, run_dir, strong).model_copy(update={"progress": False, "resume": False})
            run(teacher_cfg, teacher_ds)
    say(f"stage 1 done in {progress.clock(time.monotonic() - t0)}; stage 2: CM-StEW on {cfg.modality}")
    if len(dirs) == 1 and k == 1:
        c = c.model_copy(update={"teacher_run": dirs[cfg.teacher][0]})
        return cfg.model_copy(update={"cmstew": c})
    return cfg


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


def attach_teacher_latents(cfg: TrainConfig, bundle: Bundle, work: Path) -> None:
    """Add ``teacher:<m>`` (m_ss, on the input time axis) to every training sequence, from the teacher
    that did not see its group. Each teacher reads its inputs with its own standardisation."""
    from stew.train.core import EncoderOutputs

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
            for s, z in zip(seqs, predict_windows(EncoderOutputs(teacher), own, bundle.eval_win, 0), strict=True):
                s.x[TEACHER + strong] = torch.from_numpy(z)
                s.present[TEACHER + strong] = s.present[strong]
            if cfg.cmstew.gamma:  # the teacher's activated prediction, on the (shifted) label axis like y
                for s, p in zip(seqs, predict_windows(teacher, own, bundle.eval_win, 0), strict=True):
                    s.x[TEACHER_PRED + strong] = torch.from_numpy(p)
                    s.present[TEACHER_PRED + strong] = s.present[strong]


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> CMStEW:
    from stew.train.core import student_spec

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
            # spec §6.3: 250 units, 500 when translating into wide video features [U for MOSI];
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


# --------------------------------------------------------------------------------------------------
# Unlabelled pairs and the negative-transfer guard.


def add_unlabelled(ds: Dataset, extra: Dataset, modalities: list[str], where: Path) -> Dataset:
    """``ds`` plus every sequence of ``extra`` as an unlabelled training pair (its labels are ignored)."""
    for m in modalities:
        if m not in extra.modalities:
            raise DataError(f"--unlabelled data lack modality {m!r} (they have {list(extra.modalities)})", file=where)
        if extra.modalities[m] != ds.modalities[m]:
            raise DataError(f"--unlabelled {m} features are {extra.modalities[m]}-d, the training data's "
                            f"{ds.modalities[m]}-d", file=where)
    if extra.label_level != ds.label_level or (extra.step_rate_hz or 0) != (ds.step_rate_hz or 0):
        raise DataError("--unlabelled data must have the training data's step rate and label level", file=where)
    extra = extra.select_modalities(modalities)
    own = {s.group for s in ds.sequences}
    n_targets = len(ds.targets)
    unlabelled = []
    for s in extra.sequences:
        group = f"unlabelled/{s.group}" if s.group in own else s.group  # never merged with a labelled group
        features = {**{m: np.zeros((len(s), d), np.float32) for m, d in ds.modalities.items()}, **s.features}
        masks = {**{m: np.zeros(len(s), bool) for m in ds.modalities}, **s.masks}
        unlabelled.append(replace(s, id=f"unlabelled/{s.id}", group=group, split=UNLABELLED, features=features,
                                  masks=masks, targets=np.full((len(s), n_targets), np.nan, np.float32)))
    if not unlabelled:
        raise DataError("--unlabelled data hold no sequences", file=where)
    return ds.replace_sequences([*ds.sequences, *unlabelled])


def unimodal_of(cfg: TrainConfig) -> TrainConfig:
    """The guard's other arm: the student's architecture trained on its own modality's labels."""
    return cfg.model_copy(update={"method": "unimodal", "teacher": None, "ablation": None, "unlabelled": None})


def guard_folds(ds: Dataset, k: int, seed: int, val_groups: int) -> list[Dataset] | str:
    """:func:`held_out_folds` over the labelled training groups, or why not when the groups are too few
    for K folds plus each fold run's validation carve."""
    own_val = bool(ds.split("val"))
    n = len(ds.groups("train"))
    k = min(k, n)
    left = n - math.ceil(n / k) - (0 if own_val else val_groups) if k >= 2 else 0
    if left < 1:
        return (f"{n} labelled training groups are too few for {k} guard folds"
                + ("" if own_val else f" plus a {val_groups}-group validation carve"))
    return held_out_folds(ds, k, seed)


def guarded_run(cfg: TrainConfig, ds: Dataset, out: Path | None, t0: float) -> dict:
    """Cross-validate CM-StEW against the unimodal model of the same architecture over grouped folds of
    the training groups, then fit the winner on all the training data and ship it.

    Transfer ships only when its held-out-fold mean beats unimodal's with a paired t-test over folds
    below ``cmstew.guard_p``; the decision, the scores and the p-value are recorded. Each fold's CM-StEW
    run cross-fits its own teachers, so no teacher has seen the fold a student is scored on.
    """
    from stew.train import core as training


    k = cfg.cmstew.guard_folds
    say = progress.sayer(cfg.progress)
    arms = {"transfer": cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={"guard_folds": 0})}),
            "unimodal": unimodal_of(cfg)}
    folds = guard_folds(ds, k, cfg.seed, cfg.val_groups)
    if isinstance(folds, str):
        # No held-out comparison is possible, so the measured evidence decides (BENCHMARKS.md): transfer
        # never beat the unimodal student from labelled data alone, and with unlabelled pairs and the
        # distillation term it never lost significantly and sometimes gained a lot (few labelled speakers,
        # many unlabelled).
        ship = "transfer" if ds.split(UNLABELLED) and cfg.cmstew.gamma else "unimodal"
        why = ("with unlabelled pairs and distillation, where transfer has gained and never significantly lost "
               "in stew's benchmarks, CM-StEW ships" if ship == "transfer" else
               "without unlabelled pairs transfer has not beaten the unimodal student in stew's benchmarks, "
               "so the unimodal model ships")
        reason = f"guard cannot run: {folds}; {why} (cmstew.guard_folds: 0 ships CM-StEW unguarded)"
        say(reason)
        record = {"recipe": {"name": cfg.recipe, "guard": {"folds": 0, "shipped": ship, "reason": reason}}}
        return training.fit_and_write(arms[ship], ds, out, t0, record)
    k = len(folds)
    scores: dict[str, list[float]] = {arm: [] for arm in arms}
    key, t_guard = "", time.monotonic()
    say(f"guard: CM-StEW vs unimodal ({cfg.arch}) on {k} grouped folds of the training groups, "
        f"{2 * k} runs before the final fit")
    for i, fold_ds in enumerate(folds):
        for arm, arm_cfg in arms.items():
            d = out / "guard" / f"fold{i}" / arm if out is not None else None
            if d is not None and (d / "metrics.json").is_file():  # finished before an interruption
                r = json.loads((d / "metrics.json").read_text())
            else:
                if d is not None:
                    shutil.rmtree(d, ignore_errors=True)  # cut short by an interruption: run again
                quiet = {"out": d, "progress": False, "resume": False, "overwrite": False}
                r = training.run(arm_cfg.model_copy(update=quiet), fold_ds)
            key = r["selection"]["key"]
            scores[arm].append(float(r["test"][key]))
            elapsed = time.monotonic() - t_guard
            done = 2 * i + (1 if arm == "transfer" else 2)
            say(f"guard fold {i + 1}/{k} {arm}: held-out {key} {scores[arm][-1]:.4g} · "
                f"{progress.clock(elapsed)} elapsed · ~{progress.eta(elapsed, done, 2 * k)} left")
    gain = float(np.mean(scores["transfer"]) - np.mean(scores["unimodal"]))
    p = float(metrics.paired_ttest(scores["transfer"], scores["unimodal"])[1])
    limit = cfg.cmstew.guard_p
    ship = "transfer" if gain > 0 and p < limit else "unimodal"
    verdict = ("transfer helps here" if ship == "transfer" else
               f"no evidence that transfer helps here (a gain with p < {limit:g} is needed)")
    reason = (f"CM-StEW's held-out {key} is {gain:+.4g} over unimodal across {k} grouped folds (paired t-test "
              f"p = {p:.3g}): {verdict}, so the {ship} model ships")
    say(f"guard: {reason}")
    record = {"recipe": {
        "name": cfg.recipe, "guard": {
            "folds": k, "metric": key, "transfer": scores["transfer"], "unimodal": scores["unimodal"],
            "mean_gain": gain, "p_value": p, "shipped": ship, "reason": reason,
            "wall_s": round(time.monotonic() - t_guard, 1)}}}
    say(f"final fit: {ship} ({cfg.modality}, {cfg.arch}) on all the training groups")
    return training.fit_and_write(arms[ship], ds, out, t0, record)
