"""The one training loop, shared by every method: a LightningModule that takes its loss from the method
and selects epochs on whole validation recordings, resumable checkpoints, and progress reporting."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.data.preprocess import WindowDataset, context_of, loader, to_device
from stew.errors import DataError
from stew.methods.base import Method
from stew.training import tracking
from stew.training.devices import resolve_device, used_by
from stew.training.evaluate import predict_sequences, score, selection_key
from stew.util import progress

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*(does not have many workers|num_workers|LeafSpec).*")
# CM-StEW's frozen teacher is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")



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
        self.tracked: dict | None = None  # where the tracker logged this fit (stew.training.tracking.describe)
        self.device_used: dict | None = None  # where it trained (stew.training.devices.used_by), for metrics.json

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
        entry = {"epoch": self.current_epoch, "val_score": val, "lr": self.optimizers().param_groups[0]["lr"]}
        if self.cfg.lr_scheduler == "plateau":
            # Logged before Lightning steps the plateau schedule at the end of this epoch (it monitors val_loss).
            entry["val_loss"] = self.validation_loss()
            self.log("val_loss", entry["val_loss"])
        self.history.append(entry)
        if val > self.best_score:
            self.best_score, self.best_epoch = val, self.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in self.method.state_dict().items()}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The method's loss on the validation windows (:meth:`Method.validation_loss`, eval mode), the mean
        over batches weighted by their windows. The RNG is left as it was, so that computing it changes
        nothing in training."""
        method, bundle = self.method, self.bundle
        was = method.training
        method.eval()
        windows = WindowDataset.for_evaluation(bundle.val, bundle.eval_win, context_of(method))
        total, n = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            for batch in loader(windows, self.cfg.batch_size, shuffle=False):
                k = int(batch["mask"].shape[0])
                total += float(method.validation_loss(to_device(batch, self.device))) * k
                n += k
        method.train(was)
        return total / max(n, 1)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        params = list(self.method.trainable_parameters())
        if self.cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                  weight_decay=self.cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        factor = self.method.lr_factor()
        if self.cfg.lr_scheduler == "plateau":
            if factor is not None:  # MethodDef.ignores refuses it before the run starts (PLATEAU_KNOBS)
                raise DataError("lr_scheduler plateau does not combine with the method's own per-update schedule")
            # ReduceLROnPlateau on the validation loss (docs/methods/fusion.md#defaults), stepped once an epoch.
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=self.cfg.plateau_factor, patience=self.cfg.plateau_patience)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}}
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
    device = resolve_device(cfg)
    module = StewModule(method, cfg, bundle)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resuming = cfg.resume and last.is_file()
    if not resuming:  # a fresh fit replaces the folder's run: logs of an earlier fit there would mix with its own
        shutil.rmtree(run_dir / "logs", ignore_errors=True)
    trackers = tracking.loggers(cfg, run_dir)
    # A resumed run logs beside the original logs instead of overwriting them.
    version = f"resumed-{len(list((run_dir / 'logs').glob('resumed-*')))}" if resuming else ""
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, min_epochs=cfg.min_epochs,
        **device.trainer_args(),  # accelerator, devices, precision, deterministic (stew.training.devices)
        logger=[CSVLogger(run_dir, name="logs", version=version), *trackers], enable_model_summary=False,
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
    batches = loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, pin_memory=device.gpu)
    trainer.fit(module, train_dataloaders=batches, ckpt_path=ckpt)
    module.tracked, module.device_used = tracking.describe(cfg, trackers), used_by(trainer).to_json()
    if module.best_state is not None:
        method.load_state_dict(module.best_state)
    # Lightning hands the module back on the CPU; the run's evaluation runs where its training ran.
    method.to(trainer.strategy.root_device)
    return module


