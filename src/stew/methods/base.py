"""What every method provides to the shared trainer.

A method is an ``nn.Module`` holding a deployable ``student`` (one encoder + one head over the
weaker modality) plus whatever it needs only while training (teachers, decoders, alignment). It
defines one thing: its training loss. Configuration, data, the training loop, checkpoints, early
stopping, evaluation and artefacts are shared (see :mod:`stew.training`).

Each method file also registers a :class:`MethodDef`: what the shared trainer must know about the
method (its defaults, the modalities it reads, its ablations, its search space for ``stew tune``), so
that no code outside ``stew.methods`` tests a method's name (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from stew.config import TrainConfig, moved_fields
from stew.data.bundle import Bundle
from stew.data.dataset import Dataset, Task
from stew.data.preprocess import WindowDataset
from stew.errors import DataError
from stew.models.encoders import EncoderSpec
from stew.models.heads import HeadSpec
from stew.models.student import SingleModalityModel, StudentSpec
from stew.objectives import ccc_loss, l2_penalty, masked_bce, masked_ce, masked_mse, pcc_loss

if TYPE_CHECKING:
    import optuna


class Method(nn.Module):
    student: SingleModalityModel  # or, for fusion, a FusedModel (several modalities)
    # True for methods fitted without gradient descent (linear): the trainer calls their
    # ``fit_closed_form(bundle, evaluate)`` instead of the Lightning loop.
    closed_form = False
    # The correlation that selects epochs on regression targets, when the method's paper names one
    # (ConflictNET: "pcc", i.e. pcc or pcc_mean over several targets); None: the task's (CCC, weighted F1, accuracy).
    selection: Literal["ccc", "pcc"] | None = None

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def validation_loss(self, batch: dict) -> torch.Tensor:
        """The loss of a validation batch, which ``lr_scheduler: plateau`` watches: the training loss, called
        in eval mode (so no random modality drops or dropout)."""
        return self.training_loss(batch)[0]

    def predict(self, batch: dict) -> torch.Tensor:
        """Activated outputs of the deployable student on its own modality."""
        return self.student.predict(batch)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def l2_regularised(
        self, loss: torch.Tensor, parts: dict[str, torch.Tensor], l2: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss + l2 * R(theta)``, R = 1/2 ||theta||^2 over the trainable parameters (EmoBed's lambda,
        docs/methods/emobed.md#losses); R is logged as ``parts["l2"]``. ``l2 = 0`` leaves the loss as it is."""
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
    out = out.float()  # mixed precision: the loss and its correlations in float32, not bfloat16/float16
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


# --------------------------------------------------------------------------------------------------
# What a method tells the shared trainer


@dataclass(frozen=True)
class Dim:
    """One ``stew tune`` search dimension: the TrainConfig field it sets and the values searched.

    ``kind``: ``log`` (log-uniform float in [low, high]), ``linear`` (uniform float on a ``step`` grid)
    or ``categorical`` (one of ``choices``).
    """

    path: str
    kind: Literal["log", "linear", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[float, ...] = ()
    source: str = ""

    def suggest(self, trial: optuna.Trial) -> float:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "log":
            return trial.suggest_float(self.path, self.low, self.high, log=True)
        # Rounded so that 0.1-steps are stored as 0.3, not 0.30000000000000004.
        return round(trial.suggest_float(self.path, self.low, self.high, step=self.step), 10)


@dataclass(frozen=True)
class MethodDef:
    """A method as the trainer, ``stew tune`` and the CLI see it. Defaults hold for frame-level data;
    utterance- or clip-level data never window or delay (the trainer applies that)."""

    name: str
    build: Callable[[TrainConfig, Bundle, Path], Method]
    # The second modality it reads while training: None, "stronger" (a teacher) or "auxiliary" (EmoBed).
    teacher: Literal["stronger", "auxiliary"] | None = None
    several_teachers: bool = False  # --teacher a,b (CM-StEW)
    fuses: bool = False  # reads every modality named by --modalities (attention fusion)
    ablations: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> the weights it zeroes
    # Pairs step t of one modality with step t of another, or with the label at step t: needs aligned steps.
    step_pairing: bool = False
    trains_on_unlabelled: bool = False  # --unlabelled pairs join its training split (CM-StEW)
    lr: float | None = None  # None: 1e-5 on frame-level data, 1e-4 otherwise (CM-StEW's)
    optimizer: Literal["adam", "sgd"] = "adam"
    label_delay_s: float | None = 2.8  # frame-level label shift; None: the method searches its own offset
    per_step: bool = False  # trains on single frames, scored on 3 s windows (SEW)
    patience: int | None = None  # None: TrainConfig's
    regression_loss: str | None = None  # None: mse
    # Trains the stronger modality's models first (CM-StEW's stage 1) and may run the negative-transfer guard.
    stage1_teachers: bool = False
    resolve: Callable[[TrainConfig, Dataset], TrainConfig] | None = None  # method-specific defaults and checks
    search_space: Callable[[TrainConfig], list[TrainConfig]] | None = None  # candidates selected on validation
    # A grid candidate's folder name, and a configuration taking the values a chosen candidate fixed.
    candidate_name: Callable[[TrainConfig], str] | None = None
    adopt: Callable[[TrainConfig, TrainConfig], TrainConfig] | None = None
    tuning: dict[str, Dim] = field(default_factory=dict)  # what ``stew tune`` searches
    # Settings every ``stew tune`` trial of this method gets before the searched values are applied.
    trial_settings: Callable[[TrainConfig], dict] | None = None
    # Generic TrainConfig knobs the method does not read (e.g. STUDENT_KNOBS, where its networks have their
    # own section), and where its own are: a run that sets one explicitly is refused (check_knobs).
    ignores: frozenset[str] = frozenset()
    own_knobs: str = ""
    # Method-specific knobs set but unused by this configuration: (key, why), e.g. fusion.k without knn.
    unused: Callable[[TrainConfig], list[tuple[str, str]]] | None = None

    def candidates(self, cfg: TrainConfig) -> list[TrainConfig]:
        return self.search_space(cfg) if self.search_space is not None else [cfg]

    def check_ablation(self, ablation: str | None) -> None:
        if ablation and ablation not in self.ablations:
            raise DataError(f"unknown {self.name} ablation {ablation!r}; choose from {list(self.ablations)}")

    def check_knobs(self, cfg: TrainConfig) -> None:
        """Refuse a knob the user set (YAML, option or keyword: pydantic's ``model_fields_set``; defaults
        never trip it) that this method does not read, instead of ignoring it silently."""
        moved = moved_fields(cfg)
        unread = sorted(self.ignores & moved)
        if unread:
            where = f" ({self.own_knobs})" if self.own_knobs else ""
            names = ", ".join(knob_name(k) for k in unread)
            raise DataError(f"{names} {'does' if len(unread) == 1 else 'do'} not apply to --method {cfg.method}"
                            f"{where}; leave {'it' if len(unread) == 1 else 'them'} out")
        unused = self.unused(cfg) if self.unused is not None else []
        unused += [(k, "applies to --lr-scheduler plateau; leave it out")
                   for k in ("plateau_factor", "plateau_patience")
                   if k in moved and cfg.lr_scheduler != "plateau"]
        for key, why in unused:
            raise DataError(f"{knob_name(key)} {why}")

    def required_modalities(self, cfg: TrainConfig) -> list[str]:
        """The modalities the method reads while training: the student's, plus its teachers if any."""
        if self.fuses:
            assert cfg.fusion.modalities is not None  # resolved from the data by stew.training.resolve
            return list(cfg.fusion.modalities)
        assert cfg.modality is not None
        if self.teacher is None:
            return [cfg.modality]
        if cfg.teacher is None:
            raise DataError(f"--method {cfg.method} needs --teacher (the {self.teacher} modality)")
        if cfg.modality in cfg.teachers:
            raise DataError("--teacher must differ from --modality")
        if len(cfg.teachers) > 1 and not self.several_teachers:
            raise DataError(f"several teachers (--teacher {cfg.teacher}) apply to --method cmstew only")
        return [cfg.modality, *cfg.teachers]


def knob_name(key: str) -> str:
    """A configuration key as a user may have written it: ``--gru-units (gru_units)``, ``--k (fusion.k)``."""
    return f"--{key.rsplit('.', 1)[-1].replace('_', '-')} ({key})"


# --------------------------------------------------------------------------------------------------
# The unimodal students every method builds on

# The generic knobs of the unimodal encoder and head (student_spec, docs/methods/unimodal.md#encoder): a
# method with networks of its own (fusion, ConflictNET) declares them in ``MethodDef.ignores``.
STUDENT_KNOBS = frozenset({"arch", "gru_units", "gru_layers", "d_model", "heads", "ffn", "te_layers", "dropout",
                           "clf_hidden", "clf_dropout"})
# The learning-rate schedule on the validation loss: a method with its own schedule (Method.lr_factor) ignores it.
PLATEAU_KNOBS = frozenset({"lr_scheduler", "plateau_factor", "plateau_patience"})


def target_names(cfg: TrainConfig, ds: Dataset) -> list[str]:
    """The targets a run predicts: ``--targets``, ``--target`` or every target of the data."""
    if cfg.targets:
        return list(cfg.targets)
    return [cfg.target] if cfg.target else list(ds.targets)


def student_spec(cfg: TrainConfig, ds: Dataset, modality: str, arch: str | None = None) -> StudentSpec:
    """The encoder + head of the unimodal architectures (docs/methods/unimodal.md)."""
    arch = arch or cfg.arch
    d_in = ds.modalities[modality]
    targets = target_names(cfg, ds)
    n_out = ds.n_outputs if ds.task != "regression" else len(targets)
    if arch == "gru":
        # EmoBed's networks: GRU embedding net + GRU back-end; the classic monomodal system.
        e = cfg.emobed
        enc = EncoderSpec(kind="gru", d_in=d_in, gru_units=e.units, gru_layers=e.embed_layers, dropout=cfg.dropout)
        head = HeadSpec(kind="gru", d_in=e.units, n_out=n_out, gru_units=e.units, gru_layers=e.shared_layers,
                        dropout=cfg.dropout)
        return StudentSpec(modality=modality, task=ds.task, targets=targets, encoder=enc, head=head,
                           pool="mean" if ds.label_level == "sequence" else "none")
    # One Bi-GRU layer for the RECOLA audio models and the MOSI text model, two otherwise (the thesis's).
    one_layer = modality == "text" or (ds.step_rate_hz is not None and modality == "audio")
    enc = EncoderSpec(
        kind={"classifier": "identity", "mlp": "mlp", "bigru": "bigru", "bigru-te": "bigru-te",
              "gru4": "identity"}[arch],
        # mlp [U]: two per-step layers to a d_model latent (tanh between), a student small enough for
        # ~1,000 utterances and with a latent that alignment can shape (the identity encoder has none).
        mlp_sizes=[cfg.d_model, cfg.d_model] if arch == "mlp" else [],
        d_in=d_in, gru_units=cfg.gru_units or d_in, gru_layers=cfg.gru_layers or (1 if one_layer else 2),
        d_model=cfg.d_model, heads=cfg.heads, ffn=cfg.ffn, te_layers=cfg.te_layers, dropout=cfg.dropout,
    )
    head = HeadSpec(
        kind="gru4" if arch == "gru4" else "classifier", d_in=enc.out_dim, n_out=n_out,
        hidden=cfg.clf_hidden, dropout=cfg.clf_dropout,
    )
    return StudentSpec(modality=modality, task=ds.task, targets=targets, encoder=enc, head=head,
                       pool="mean" if ds.label_level == "sequence" else "none")


# Tuning dimensions several methods share.
DROPOUT = Dim("dropout", "categorical", choices=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
              source="CM-StEW paper: tuned per model from {0.2, ..., 0.7}")


def lr_dim(low: float, high: float, why: str) -> Dim:
    return Dim("lr", "log", low, high, source=f"[U] one decade around {why}")


LR_ADAM = lr_dim(1e-6, 1e-3, "the CM-StEW paper's 1e-5 (frame-level) and 1e-4 (utterance-level)")
LR_1E3 = lr_dim(1e-4, 1e-2, "the paper's 1e-3")
