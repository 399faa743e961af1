"""The one training loop, shared by every method.

``run(cfg)`` loads and validates the data, carves validation by whole groups, fits preprocessing on
train, builds the method, trains it with Lightning (progress bar, early stopping and selection on a
validation metric, resumable checkpoints, CSV logs), then evaluates the best epoch on validation and
test and writes ``metrics.json``, ``predictions.csv`` and the deployable ``model/`` folder.
The test split is never used for any choice.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from stew.config import EMOBED_MODES, TrainConfig
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.io import load_dataset
from stew.data.preprocess import (
    PreparedSequence,
    Standardizer,
    WindowDataset,
    context_of,
    delay_steps,
    loader,
    predict_windows,
    prepare,
    steps_for,
)
from stew.data.splits import carve_validation, grouped_folds
from stew.errors import DataError
from stew.methods.base import Method
from stew.models.encoders import EncoderSpec
from stew.models.heads import HeadSpec
from stew.models.student import StudentSpec, masked_mean
from stew.scoring import metrics
from stew.util import progress

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*(does not have many workers|num_workers|LeafSpec).*")
# CM-StEW's frozen teacher is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


# --------------------------------------------------------------------------------------------------
# Configuration defaults that depend on the data


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    """Fill the data-dependent defaults and check names against the dataset."""
    upd: dict = {}
    mods = list(ds.modalities)
    if cfg.targets is not None:
        if cfg.target is not None:
            raise DataError("give --target or --targets, not both")
        unknown = [t for t in cfg.targets if t not in ds.targets]
        if unknown or not cfg.targets or len(set(cfg.targets)) != len(cfg.targets):
            raise DataError(f"--targets {','.join(cfg.targets)}: choose distinct targets among {ds.targets}")
    if cfg.ablation and cfg.method not in ("sew", "cmstew", "conflictnet"):
        raise DataError(f"--ablation applies to sew, cmstew and conflictnet only, not --method {cfg.method}")
    if cfg.method == "fusion":
        from stew.methods.fusion import fusion_modalities

        if cfg.modality is not None or cfg.teacher is not None:
            raise DataError("--method fusion reads --modalities (default: all of the data's), "
                            "not --modality or --teacher")
        upd["fusion"] = cfg.fusion.model_copy(update={"modalities": fusion_modalities(cfg, ds.modalities)})
    # Spec §4.3 (fusion) and §3.3 (ConflictNET): early stopping after 10 epochs without a better score.
    if cfg.method in ("fusion", "conflictnet") and "patience" not in cfg.model_fields_set:
        upd["patience"] = 10
    # A teacher-student method without --teacher must say so: naming only --modality (or nothing
    # useful) sends the user after the wrong option.
    no_teacher = cfg.teacher is None and cfg.method not in ("unimodal", "linear", "cermtl", "fusion", "conflictnet")
    if cfg.modality is None and cfg.method != "fusion":
        if len(mods) != 1:
            raise DataError(f"choose {'--modality and --teacher' if no_teacher else '--modality'} among {mods}")
        upd["modality"] = mods[0]
    if no_teacher:
        role = "auxiliary" if cfg.method in EMOBED_MODES else "stronger"
        student = upd.get("modality", cfg.modality)
        others = [m for m in mods if m != student and "+" not in m and m not in str(student).split("+")]
        among = f": choose among {others}" if others else f"; the data has no modality besides {student!r}"
        raise DataError(f"--method {cfg.method} needs --teacher (the {role} modality){among}")
    for name in (cfg.modality, *cfg.teachers):
        if name is not None and name not in ds.modalities:
            raise DataError(f"unknown modality {name!r}; the data has {mods}")
    if cfg.target is not None and cfg.target not in ds.targets:
        raise DataError(f"unknown target {cfg.target!r}; the data has {ds.targets}")
    if cfg.loss is None:
        upd["loss"] = {"regression": "mse", "binary": "bce", "multiclass": "ce"}[ds.task]
        if cfg.method == "cermtl" and ds.task == "regression":
            upd["loss"] = "ccc"  # the paper's best loss (spec §2.6)
    elif (cfg.loss in ("bce",)) != (ds.task == "binary") or (cfg.loss == "ce") != (ds.task == "multiclass"):
        raise DataError(f"--loss {cfg.loss} does not fit a {ds.task} task")
    # Sequence-level labels (a clip, an utterance) are never windowed or delayed, whatever the frame rate.
    frame_level = ds.step_rate_hz is not None and ds.label_level == "step"
    if cfg.method in STEP_PAIRING:
        names = [m for m in (upd.get("modality", cfg.modality), *cfg.teachers) if m is not None]
        ds.select_modalities(names).require_aligned(f"--method {cfg.method}")
    if cfg.postprocess and not (frame_level and ds.task == "regression"):
        raise DataError("--postprocess needs continuous (frame-level regression) data")
    if cfg.method == "linear" and cfg.loss in ("ccc", "pcc"):
        raise DataError(f"--loss {cfg.loss} does not apply to --method linear (least squares, hinge or logistic)")
    if cfg.label_delay_s is None and cfg.method != "linear":  # linear searches its offset on validation
        # SEW and EmoBed shift RECOLA labels by 2.4 s, CM-StEW by 2.8 s; CER-MTL's paper shifts none.
        delay = 0.0 if cfg.method == "cermtl" else 2.4 if cfg.method in ("sew", *EMOBED_MODES) else 2.8
        upd["label_delay_s"] = delay if frame_level else 0.0
    if cfg.optimizer is None:
        upd["optimizer"] = "sgd" if cfg.method == "sew" else "adam"
    if cfg.window_s is None:
        upd["window_s"] = 1.0 / ds.step_rate_hz if (cfg.method == "sew" and frame_level) else 3.0
    if cfg.hop_s is None:
        upd["hop_s"] = 1.0 / ds.step_rate_hz if (cfg.method == "sew" and frame_level) else 1.0
    if cfg.eval_window_s is None:
        upd["eval_window_s"] = 3.0 if cfg.method == "sew" else upd.get("window_s", cfg.window_s)
    if cfg.lr is None:
        upd["lr"] = 1e-5 if frame_level else 1e-4
        if cfg.method in ("sew", *EMOBED_MODES):
            upd["lr"] = 1e-3  # SEW spec §5.5; EmoBed spec §1.4
        elif cfg.method == "cermtl":
            upd["lr"] = 5e-5  # spec §2.5
        elif cfg.method == "fusion":
            upd["lr"] = 1e-3  # spec §4.3
        elif cfg.method == "conflictnet":
            upd["lr"] = 1e-2  # spec §3.3, with Keras's decay 0.6 per update
    if cfg.unlabelled is not None and cfg.method != "cmstew":
        raise DataError(f"--unlabelled feeds CM-StEW's alignment and translation terms, not --method {cfg.method}")
    cfg = cfg.model_copy(update=upd)
    if cfg.method == "cmstew":
        from stew.methods import required_modalities
        from stew.methods.cmstew import apply_recipe

        required_modalities(cfg)  # a missing or equal --teacher is named before the recipe is read
        cfg = apply_recipe(cfg)
    return cfg


# Methods that pair step t of one modality with step t of another (alignment, translation, triplets,
# shared back-ends) or with the label at step t (CER-MTL's feature images): they need aligned steps.
STEP_PAIRING = ("sew", "cmstew", "cermtl", *EMOBED_MODES)


def target_names(cfg: TrainConfig, ds: Dataset) -> list[str]:
    if cfg.targets:
        return list(cfg.targets)
    return [cfg.target] if cfg.target else list(ds.targets)


def fuse_inputs(cfg: TrainConfig, ds: Dataset) -> tuple[TrainConfig, Dataset]:
    """Early fusion: ``--modality all`` or ``a+b`` becomes one concatenated input modality."""
    m = cfg.modality
    if m is None or (m != "all" and "+" not in m):
        return cfg, ds
    parts = [p for p in ds.modalities if "+" not in p] if m == "all" else m.split("+")
    if cfg.teacher in parts:
        raise DataError(f"--teacher {cfg.teacher} cannot also be part of the fused input {'+'.join(parts)}")
    try:
        ds = ds.fuse(parts)
    except ValueError as e:
        raise DataError(str(e)) from None
    return cfg.model_copy(update={"modality": "+".join(parts)}), ds


def student_spec(cfg: TrainConfig, ds: Dataset, modality: str, arch: str | None = None) -> StudentSpec:
    """The encoder + head of the unimodal architectures (spec §6.3, §6.5, §5.3)."""
    arch = arch or cfg.arch
    d_in = ds.modalities[modality]
    targets = target_names(cfg, ds)
    n_out = ds.n_outputs if ds.task != "regression" else len(targets)
    if arch == "gru":
        # EmoBed's networks (spec §1.4): GRU embedding net + GRU back-end; the classic monomodal system.
        e = cfg.emobed
        enc = EncoderSpec(kind="gru", d_in=d_in, gru_units=e.units, gru_layers=e.embed_layers, dropout=cfg.dropout)
        head = HeadSpec(kind="gru", d_in=e.units, n_out=n_out, gru_units=e.units, gru_layers=e.shared_layers,
                        dropout=cfg.dropout)
        return StudentSpec(modality=modality, task=ds.task, targets=targets, encoder=enc, head=head,
                           pool="mean" if ds.label_level == "sequence" else "none")
    # Spec §6.3: one Bi-GRU layer for the RECOLA audio models and the MOSI text model, two otherwise.
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


# --------------------------------------------------------------------------------------------------
# Data


@dataclass
class Bundle:
    """A dataset split and preprocessed for one run."""

    ds: Dataset
    modalities: list[str]
    targets: list[str]
    scaler: Standardizer
    k_delay: int
    win: int | None
    hop: int | None
    eval_win: int | None
    train: list[PreparedSequence]
    val: list[PreparedSequence]
    test: list[PreparedSequence]

    @property
    def task(self) -> str:
        return self.ds.task

    @property
    def target_cols(self) -> list[int]:
        """Columns of ``ds.targets`` this run predicts, in ``targets`` order."""
        return [self.ds.targets.index(t) for t in self.targets]


def make_bundle(cfg: TrainConfig, ds: Dataset, modalities: list[str]) -> Bundle:
    for sp in ("train", "val"):
        if not ds.split(sp):
            raise DataError(f"dataset {ds.name!r} has an empty {sp!r} split")
    targets = target_names(cfg, ds)
    cols = [ds.targets.index(t) for t in targets]
    # A waveform is left as it is (RMS-normalised per clip when read): z-scoring raw samples would
    # need every training sample in memory twice and changes nothing the model cares about.
    scaler = Standardizer.fit(ds.split("train"), modalities, unscaled=ds.meta.get("unscaled", ()))
    rate = ds.step_rate_hz if ds.label_level == "step" else None  # one label per sequence: no windows
    k = delay_steps(cfg.label_delay_s or 0.0, rate)
    parts = {sp: prepare(ds.split(sp), modalities, cols, scaler, k) for sp in ("train", "val", "test")}
    if cfg.method == "cmstew":
        # Unlabelled pairs train with the labelled ones (NaN labels: L_p skips them); they are never scored.
        # Their labels are blanked here, whatever the sequences carry: a caller that moves labelled
        # recordings to the unlabelled split (a learning curve) must not hand their labels to L_p.
        blank = [s.without_labels() for s in ds.split(UNLABELLED)]
        parts["train"] += prepare(blank, modalities, cols, scaler, k)
    return Bundle(
        ds=ds, modalities=modalities, targets=targets, scaler=scaler, k_delay=k,
        win=steps_for(cfg.window_s, rate), hop=steps_for(cfg.hop_s, rate),
        eval_win=steps_for(cfg.eval_window_s, rate), **parts,
    )


# --------------------------------------------------------------------------------------------------
# Prediction and metrics on whole sequences


def selection_key(method: Method, bundle: Bundle) -> str:
    """The validation metric that picks epochs: the method's own (ConflictNET: PCC), else the task's."""
    return method.selection or metrics.selection_metric(bundle.task, bundle.targets)


def predict_sequences(method: Method, seqs: list[PreparedSequence], bundle: Bundle) -> list[np.ndarray]:
    return predict_windows(method, seqs, bundle.eval_win, bundle.k_delay)


def score(preds: list[np.ndarray], seqs: list[PreparedSequence], bundle: Bundle) -> dict[str, float]:
    cols = bundle.target_cols
    y = np.concatenate([s.source.targets[:, cols] for s in seqs])
    # Per-sequence CCC needs several steps per sequence; with one label per sequence there is none.
    ids = np.concatenate([[i] * len(s.y) for i, s in enumerate(seqs)]) if bundle.ds.label_level == "step" else None
    return metrics.task_metrics(bundle.task, bundle.targets, y, np.concatenate(preds), sequence_ids=ids)


def predictions_frame(
    split: str, preds: list[np.ndarray], seqs: list[PreparedSequence], bundle: Bundle,
    raw: list[np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per step; with post-processing, ``pred_<t>`` is post-processed and ``raw_<t>`` is not."""
    cols = bundle.target_cols
    rows = []
    for k, (p, s) in enumerate(zip(preds, seqs, strict=True)):
        src = s.source
        df = pd.DataFrame({
            "split": split, "sequence": src.id, "group": src.group, "step": np.arange(len(src)),
            "step_id": src.step_ids,
        })
        y = src.targets[:, cols]
        if bundle.task == "regression":
            for j, t in enumerate(bundle.targets):
                df[f"y_{t}"], df[f"pred_{t}"] = y[:, j], p[:, j]
                if raw is not None:
                    df[f"raw_{t}"] = raw[k][:, j]
        elif bundle.task == "binary":
            df["y"], df["prob"], df["pred"] = y[:, 0].astype(int), p[:, 0], (p[:, 0] >= 0.5).astype(int)
        else:
            df["y"], df["pred"] = y[:, 0].astype(int), p.argmax(1)
            for c in range(p.shape[1]):
                df[f"prob_{c}"] = p[:, c]
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Lightning glue


class StewModule(L.LightningModule):
    """Wraps any Method: the loss comes from the method, everything else is shared."""

    def __init__(self, method: Method, cfg: TrainConfig, bundle: Bundle) -> None:
        super().__init__()
        self.method, self.cfg, self.bundle = method, cfg, bundle
        self.selection = selection_key(method, bundle)
        self.best_score = -float("inf")
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.method.training_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at epoch {self.current_epoch}: {parts}")
        n = int(batch["mask"].shape[0])
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        for k, v in parts.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        # Validation on whole stitched recordings, outside Lightning's per-batch loop.
        m = score(predict_sequences(self.method, self.bundle.val, self.bundle), self.bundle.val, self.bundle)
        val = m[self.selection]
        self.log("val_score", val, prog_bar=True)
        self.history.append({"epoch": self.current_epoch, "val_score": val})
        if val > self.best_score:
            self.best_score, self.best_epoch = val, self.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in self.method.state_dict().items()}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        params = list(self.method.trainable_parameters())
        if self.cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                  weight_decay=self.cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        factor = self.method.lr_factor()
        if factor is None:
            return opt
        # A per-update learning-rate factor (ConflictNET's Keras-style decay): stepped every batch.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stew_best"] = {
            "score": self.best_score, "epoch": self.best_epoch, "state": self.best_state, "history": self.history,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        b = checkpoint.get("stew_best", {})
        self.best_score, self.best_epoch = b.get("score", -float("inf")), b.get("epoch", -1)
        self.best_state, self.history = b.get("state"), b.get("history", [])


CHECKPOINT_EVERY_S = 30.0


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of an epoch once ``every_s`` seconds have passed since the last one, and
    when training ends, so a killed run loses at most that much work. (Lightning's ModelCheckpoint with
    ``save_top_k=0`` writes it only at the end; writing every epoch would cost up to a fifth of a
    short MOSI epoch.) Written to a temporary file and renamed: a kill never leaves half a checkpoint.
    As a Checkpoint, it runs after the module's epoch-end validation and after early stopping."""

    def __init__(self, path: Path, every_s: float) -> None:
        self.path, self.every_s = Path(path), every_s
        self._last = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(tmp)
        tmp.replace(self.path)
        self._last = time.monotonic()


def _epoch_status(trainer: L.Trainer, t0: float, first: int, patience: int) -> str:
    """"Epoch e/N · elapsed · lo-hi left": the time left is a range, from "early stopping fires if
    validation does not improve again" to "it runs all epochs"."""
    e, n = trainer.current_epoch, trainer.max_epochs
    elapsed = time.monotonic() - t0
    desc = f"Epoch {e + 1}/{n} · {progress.clock(elapsed)} elapsed"
    if e > first:
        per_epoch = elapsed / (e - first)
        best = getattr(trainer.lightning_module, "best_epoch", e - 1)
        soonest = max(0, min(n, best + 1 + patience) - e)
        lo, hi = progress.clock(per_epoch * soonest), progress.clock(per_epoch * (n - e))
        desc += f" · {lo if lo == hi else f'{lo}-{hi}'} left"
    return desc


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar, whose description also tells how far the whole run is: the epoch out of
    ``max_epochs``, the time elapsed, and the time left as a range (one epoch can take a minute on
    paper-sized data, so the epoch bar alone says little). For a terminal."""

    def __init__(self, patience: int) -> None:
        super().__init__()
        self.patience = patience
        self._t0, self._first = time.monotonic(), 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._t0, self._first = time.monotonic(), trainer.current_epoch  # a resumed run starts mid-way

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_epoch_status(trainer, self._t0, self._first, self.patience))


EPOCH_LINE_EVERY_S = 10.0


class EpochLines(Callback):
    """The same status as ``RunProgressBar``, as plain lines, for a stream that is not a terminal (a log,
    CI, ``| tee``), where tqdm's carriage returns make one unreadable line. A line for the first and the
    last epoch and at most one every ``every_s`` seconds between, so a 300-epoch run stays readable;
    then one line when training ends (the epochs run and the best one)."""

    def __init__(self, patience: int, every_s: float = EPOCH_LINE_EVERY_S) -> None:
        self.patience, self.every_s = patience, every_s
        self._t0, self._first, self._last = time.monotonic(), 0, -float("inf")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._first, self._last = time.monotonic(), trainer.current_epoch, -float("inf")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        e, now = trainer.current_epoch, time.monotonic()
        if e == self._first or e + 1 == trainer.max_epochs or now - self._last >= self.every_s:
            best = getattr(pl_module, "best_epoch", -1)
            score = f" · best val {pl_module.best_score:.4g} (epoch {best + 1})" if best >= 0 else ""
            progress.say(_epoch_status(trainer, self._t0, self._first, self.patience) + score)
            self._last = now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = getattr(pl_module, "best_epoch", -1)
        score = f"; best val {pl_module.best_score:.4g} at epoch {best + 1}" if best >= 0 else ""
        progress.say(f"trained {trainer.current_epoch}/{trainer.max_epochs} epochs in "
                     f"{progress.clock(time.monotonic() - self._t0)}{score}")


def _progress_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The bar on a terminal, lines elsewhere; nothing with ``progress`` off."""
    if not cfg.progress:
        return []
    return [RunProgressBar(cfg.patience)] if progress.console().is_terminal else [EpochLines(cfg.patience)]


def fit(method: Method, cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> StewModule:
    """Train ``method`` and leave it holding the weights of its best validation epoch."""
    module = StewModule(method, cfg, bundle)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resuming = cfg.resume and last.is_file()
    # A resumed run logs beside the original logs instead of overwriting them.
    version = f"resumed-{len(list((run_dir / 'logs').glob('resumed-*')))}" if resuming else ""
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, min_epochs=cfg.min_epochs, accelerator="cpu", devices=1,
        # torch's deterministic mode slows CPU GRUs ~40x; CPU runs are bit-identical per seed without it
        # (tests/test_training.py::test_deterministic_for_a_seed).
        deterministic=False,
        logger=CSVLogger(run_dir, name="logs", version=version), enable_model_summary=False,
        enable_progress_bar=cfg.progress and progress.console().is_terminal,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1,
        callbacks=[
            EarlyStopping(monitor="val_score", mode="max", patience=cfg.patience, check_on_train_epoch_end=True),
            LastCheckpoint(last, every_s=CHECKPOINT_EVERY_S),
            *_progress_callbacks(cfg),
        ],
    )
    train_ds = method.training_windows(
        WindowDataset.for_training(bundle.train, bundle.win, bundle.hop, context_of(method)))
    ckpt = str(last) if resuming else None
    trainer.fit(module, train_dataloaders=loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed), ckpt_path=ckpt)
    if module.best_state is not None:
        method.load_state_dict(module.best_state)
    return module


# --------------------------------------------------------------------------------------------------
# A whole run


# What stew writes in a run folder (reproduce's job file and grid candidates, a CV's folds, the
# temporary model folder a killed run leaves): the entries ``overwrite`` may delete.
RUN_FOLDER_ENTRIES = re.compile(
    r"metrics\.json|predictions\.csv|latents\.npz|model|checkpoints|logs|grid|teacher|guard|fold\d+|missing[^/]*\.json|"
    r"alpha[^/]*_beta[^/]*|stew-job\.json|\.model\..+"
)


def check_run_folder(cfg: TrainConfig) -> None:
    """Refuse a non-empty ``cfg.out`` unless the run resumes it or (if it holds only stew's files)
    replaces it: an earlier run must not be lost to a typo or a re-used command line."""
    if cfg.out is None:
        return
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        # Before the data are loaded (seconds to minutes on real data), not when the run is written.
        raise DataError("exists and is not a folder (the run folder)", file=out)
    if cfg.resume:
        return
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise DataError(f"cannot read the run folder: {e.strerror}", file=out) from None
    if not names:
        return
    if not cfg.overwrite:
        raise DataError(
            "run folder is not empty (an earlier run?): give --resume to continue it, --overwrite to replace it, "
            "or a new --out", file=out,
        )
    foreign = [n for n in names if not RUN_FOLDER_ENTRIES.fullmatch(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataError(f"--overwrite replaces only a stew run folder; this one also holds {shown}", file=out)


def run(cfg: TrainConfig, ds: Dataset | None = None) -> dict:
    """Train, select and evaluate one configuration; write its artefacts under ``cfg.out``.

    Methods with a validation grid (CM-StEW's alpha and beta) train one candidate per grid point
    and keep the best on validation; the others are recorded in ``metrics.json``.
    """
    from stew.methods import required_modalities

    t0 = time.time()
    check_run_folder(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if ds is None:
        ds = load_dataset(cfg.data, feature_set=cfg.feature_set or cfg.target, fold=cfg.fold)
    if not ds.labelled:
        raise DataError("these recordings have no labels (labelled: false): train on labelled data and give "
                        "these to CM-StEW as --unlabelled, or predict on them", file=cfg.data)
    cfg, ds = fuse_inputs(cfg, ds)
    cfg = resolve(cfg, ds)
    required_modalities(cfg)  # a missing or equal --teacher fails here, before CM-StEW's stage 1 trains
    out = Path(cfg.out) if cfg.out else None
    if cfg.overwrite and out is not None and out.is_dir() and any(out.iterdir()):
        # Replaced only now that the configuration and data have passed their checks.
        shutil.rmtree(out)
    if cfg.method == "cmstew" and cfg.unlabelled is not None and not ds.split(UNLABELLED):
        # Added once: the guard's and --cv's fold runs get a dataset that already holds them.
        from stew.methods.cmstew import add_unlabelled

        ds = add_unlabelled(ds, load_dataset(cfg.unlabelled), required_modalities(cfg), cfg.unlabelled)
    if cfg.cv:
        return _run_cv(cfg, ds, out)
    if cfg.method == "cmstew" and cfg.cmstew.guard_folds:
        from stew.methods.cmstew import guarded_run

        return guarded_run(cfg, ds, out, t0)
    return fit_and_write(cfg, ds, out, t0)


def fit_and_write(cfg: TrainConfig, ds: Dataset, out: Path | None, t0: float, record: dict | None = None) -> dict:
    """One resolved configuration on one dataset: carve validation, stage 1, the grid, the fit, the run
    folder. ``record`` joins metrics.json (CM-StEW's guard writes its decision there)."""
    from stew.methods import prepare, search_space

    ds = carve_validation(ds, cfg.val_groups, cfg.seed)
    work = out or Path(tempfile.mkdtemp(prefix="stew-run-"))
    fresh = out is not None and not out.exists()
    try:
        cfg = prepare(cfg, ds, work)
        candidates = search_space(cfg)
        if len(candidates) == 1:
            result = _fit_one(candidates[0], ds, work)
        else:
            result = _fit_grid(candidates, ds, work)
    except DataError:
        # Bad input found while building the method: leave no half-made run folder behind.
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if out is None:
            shutil.rmtree(work, ignore_errors=True)
    result.update(record or {})
    result["wall_s"] = round(time.time() - t0, 2)
    if out is not None:
        _write_run(result, out)
    return result


def _fit_grid(candidates: list[TrainConfig], ds: Dataset, work: Path) -> dict:
    """One run per grid point (CM-StEW's alpha x beta), announced: the grid multiplies the run's time.

    Returns the best on validation, every candidate's score recorded in its ``selection["grid"]``."""
    say = progress.sayer(candidates[0].progress)
    n, t0 = len(candidates), time.monotonic()
    say(f"alpha/beta grid: {n} candidates on validation, each trained like one run")
    grid: list[dict] = []
    best: dict | None = None
    for i, c in enumerate(candidates):
        elapsed = time.monotonic() - t0
        say(f"candidate {i + 1}/{n} (alpha {c.cmstew.alpha:g}, beta {c.cmstew.beta:g}) · "
            f"{progress.clock(elapsed)} elapsed · ~{progress.eta(elapsed, i, n)} left")
        r = _fit_one(c, ds, work / "grid" / _grid_name(c))
        key = r["selection"]["key"]
        grid.append({**r["method"], f"val_{key}": r["val"][key]})
        # Only the best so far is kept: each result holds its model and prepared data (GBs on long
        # frame-level sets), and the grid would otherwise hold 16 of them at once.
        if best is None or r["val"][key] > best["val"][key]:
            best = r
    assert best is not None
    say(f"alpha/beta grid done in {progress.clock(time.monotonic() - t0)}: alpha {best['method']['alpha']:g}, "
        f"beta {best['method']['beta']:g} chosen (val {key} {best['val'][key]:.4g})")
    best["selection"]["grid"] = grid
    return best


def public(result: dict) -> dict:
    """A run's result without its in-memory parts (model, prepared data): what metrics.json holds."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _grid_name(cfg: TrainConfig) -> str:
    return f"alpha{cfg.cmstew.alpha:g}_beta{cfg.cmstew.beta:g}"


def _fit_one(cfg: TrainConfig, ds: Dataset, fit_dir: Path) -> dict:
    """One candidate: build the method, fit it, evaluate its best epoch on validation and test."""
    from stew.methods import build_method, required_modalities

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    bundle = make_bundle(cfg, ds, required_modalities(cfg))
    fit_dir.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg, bundle, fit_dir)
    key = selection_key(method, bundle)
    if method.closed_form:
        offset = method.fit_closed_form(bundle, lambda preds: score(preds, bundle.val, bundle)[key])
        # The label offset found on validation plays the label delay's part from here on (predict, export).
        bundle = replace(bundle, k_delay=offset)
        selection = {"key": key, "best_epoch": None, "epochs_run": 0}
    else:
        module = fit(method, cfg, bundle, fit_dir)
        method.after_fit(bundle)
        selection = {"key": key, "best_epoch": module.best_epoch, "epochs_run": len(module.history)}
    result: dict = {"val": {}, "test": {}, "_frames": [], "_postprocess": None}
    raw = {sp: predict_sequences(method, getattr(bundle, sp), bundle) for sp in ("val", "test") if getattr(bundle, sp)}
    chains = None
    if cfg.postprocess:
        # The AVEC chain is searched on validation only, then applied unchanged to test.
        from stew.scoring.postprocess import apply_chains, fit_chains

        cols = bundle.target_cols
        chains, report = fit_chains(
            raw["val"], [s.source.targets[:, cols] for s in bundle.val],
            np.concatenate([s.source.targets[:, cols] for s in bundle.train]), bundle.targets, bundle.ds.step_rate_hz,
        )
        result["postprocess"] = {t: {**chains[t].to_json(), **report[t]} for t in bundle.targets}
        result["_postprocess"] = chains
    for split, preds in raw.items():
        seqs = getattr(bundle, split)
        final = preds
        if chains is not None:
            final = apply_chains(chains, preds, bundle.targets)
            result[f"{split}_raw"] = score(preds, seqs, bundle)
        result[split] = score(final, seqs, bundle)
        result["_frames"].append(predictions_frame(split, final, seqs, bundle, raw=preds if chains else None))
    result["config"] = json.loads(cfg.model_dump_json())
    result["selection"] = selection
    result["method"] = {"name": cfg.method, **method.extra_record()}
    if cfg.method == "cmstew":
        # One stage-1 run, or None: cross-fitted teachers live in <run>/teacher/<modality>/fold<k>.
        teacher_run = cfg.cmstew.teacher_run
        result["method"]["stage1_run"] = str(teacher_run) if teacher_run is not None else None
        result["method"]["teacher_folds"] = cfg.cmstew.teacher_folds
    result["data"] = {
        "name": ds.name, "val_groups": ds.groups("val"), "label_delay_steps": bundle.k_delay,
        "window_steps": bundle.win, "hop_steps": bundle.hop, "eval_window_steps": bundle.eval_win,
    }
    result["_method"], result["_bundle"], result["_cfg"] = method, bundle, cfg
    return result


class EncoderOutputs(torch.nn.Module):
    """A model seen through its encoder: ``predict`` returns latents, so they stitch like predictions
    (the report's validation latents; CM-StEW's frozen teacher latents)."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def predict(self, batch: dict) -> torch.Tensor:
        m = self.student.spec.modality
        if self.student.spec.pool == "mean":
            return masked_mean(self.student.encoder(batch["x"][m], batch["present"][m]), batch["present"][m])
        return self.student.encoder(batch["x"][m], batch["mask"])


LATENT_STEPS = 2000  # validation steps kept in latents.npz: enough for the report's 2-D projection


def validation_latents(method: Method, bundle: Bundle, max_steps: int = LATENT_STEPS) -> dict[str, np.ndarray]:
    """The student encoder's latents on at most ``max_steps`` evenly spaced validation steps where its
    modality is present, with the first target: what ``stew report`` projects to 2-D."""
    seqs = bundle.val
    student = method.student
    # A fusion or raw-audio model names its own latent (the vector its classifier reads); present where
    # any of its inputs is.
    probe = _OwnLatents(student) if hasattr(student, "latents") else EncoderOutputs(student)
    z = np.concatenate(predict_windows(probe, seqs, bundle.eval_win, bundle.k_delay))
    modalities = getattr(student.spec, "modalities", None) or [student.spec.modality]
    if bundle.ds.label_level == "sequence":
        present = np.array([any(bool(s.present[m].any()) for m in modalities) for s in seqs])
    else:
        present = np.logical_or.reduce([np.concatenate([s.present[m].numpy() for s in seqs]) for m in modalities])
    y = np.concatenate([s.source.targets[:, bundle.target_cols[0]] for s in seqs])
    step = np.concatenate([np.arange(len(s.y)) for s in seqs])
    seq = np.concatenate([[i] * len(s.y) for i, s in enumerate(seqs)])
    # One grid over all steps, then the present ones: runs of other modalities on the same carve pick
    # the same steps, so the report can pair weaker and stronger latents step for step.
    grid = np.unique(np.linspace(0, len(present) - 1, min(max_steps, len(present))).astype(int))
    keep = grid[present[grid].astype(bool)]
    return {"latent": z[keep].astype(np.float32), "y": y[keep].astype(np.float32), "sequence": seq[keep],
            "step": step[keep]}


class _OwnLatents(torch.nn.Module):
    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def predict(self, batch: dict) -> torch.Tensor:
        return self.student.latents(batch)


def _write_run(result: dict, out: Path) -> None:
    from stew.deploy import save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(result["_method"].student, result["_bundle"], result["_cfg"], out / "model", result["_postprocess"])
    # npz of plain arrays (np.load with allow_pickle=False reads it); written before metrics.json,
    # whose presence marks a complete run folder.
    np.savez(out / "latents.npz", **validation_latents(result["_method"], result["_bundle"]))
    pd.concat(result["_frames"], ignore_index=True).to_csv(out / "predictions.csv", index=False)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "metrics.json").write_text(json.dumps(public, indent=2))


def _run_cv(cfg: TrainConfig, ds: Dataset, out: Path | None) -> dict:
    """Grouped K-fold over the training groups: one run per fold, then mean and std of each metric."""
    folds = grouped_folds(ds, cfg.cv, cfg.seed)
    results = []
    for i, fold_ds in enumerate(folds):
        fold_cfg = cfg.model_copy(update={"cv": None, "out": (out / f"fold{i}") if out else None})
        results.append(run(fold_cfg, fold_ds))
    summary: dict = {"config": json.loads(cfg.model_dump_json()), "folds": []}
    for split in ("val", "test"):
        keys = results[0][split].keys()
        summary[split] = {k: float(np.mean([r[split][k] for r in results])) for k in keys}
        summary[f"{split}_std"] = {k: float(np.std([r[split][k] for r in results], ddof=1)) for k in keys}
    summary["folds"] = [{"val": r["val"], "test": r["test"]} for r in results]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
