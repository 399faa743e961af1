"""From a TrainConfig and a dataset to what one run trains on: the data-dependent defaults (each
method's own, from its :class:`~stew.methods.base.MethodDef`), early fusion of inputs, and the
:class:`~stew.data.bundle.Bundle` of preprocessed splits."""

from __future__ import annotations

from stew import methods
from stew.config import TRAIN_VAL_GROUPS, TrainConfig
from stew.data.bundle import Bundle
from stew.data.dataset import UNLABELLED, Dataset
from stew.data.leakage import LeakageVerdict, declared, leakage_verdict
from stew.data.preprocess import Standardizer, delay_steps, prepare, steps_for
from stew.data.splits import carve_validation
from stew.errors import DataError
from stew.methods.base import target_names


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    """Fill the data-dependent defaults and check names against the dataset."""
    d = methods.get(cfg.method)
    upd: dict = {}
    mods = list(ds.modalities)
    if cfg.targets is not None:
        if cfg.target is not None:
            raise DataError("give --target or --targets, not both")
        unknown = [t for t in cfg.targets if t not in ds.targets]
        if unknown or not cfg.targets or len(set(cfg.targets)) != len(cfg.targets):
            raise DataError(f"--targets {','.join(cfg.targets)}: choose distinct targets among {ds.targets}")
    if cfg.ablation and not d.ablations:
        takers = [n for n, m in methods.REGISTRY.items() if m.ablations]
        raise DataError(f"--ablation applies to {', '.join(takers[:-1])} and {takers[-1]} only, "
                        f"not --method {cfg.method}")
    if d.fuses:
        cfg = d.resolve(cfg, ds)
    if d.patience is not None and "patience" not in cfg.model_fields_set:
        upd["patience"] = d.patience
    # A teacher-student method without --teacher must say so: naming only --modality (or nothing
    # useful) sends the user after the wrong option.
    no_teacher = cfg.teacher is None and d.teacher is not None
    if cfg.modality is None and not d.fuses:
        if len(mods) != 1:
            raise DataError(f"choose {'--modality and --teacher' if no_teacher else '--modality'} among {mods}")
        upd["modality"] = mods[0]
    if no_teacher:
        student = upd.get("modality", cfg.modality)
        others = [m for m in mods if m != student and "+" not in m and m not in str(student).split("+")]
        among = f": choose among {others}" if others else f"; the data has no modality besides {student!r}"
        raise DataError(f"--method {cfg.method} needs --teacher (the {d.teacher} modality){among}")
    for name in (cfg.modality, *cfg.teachers):
        if name is not None and name not in ds.modalities:
            raise DataError(f"unknown modality {name!r}; the data has {mods}")
    if cfg.target is not None and cfg.target not in ds.targets:
        raise DataError(f"unknown target {cfg.target!r}; the data has {ds.targets}")
    if cfg.standardize != "all":
        unknown = [m for m in cfg.standardize if m not in ds.modalities]
        if unknown:
            raise DataError(f"--standardize names {', '.join(unknown)}, which the data does not have ({mods})")
    if cfg.loss is None:
        upd["loss"] = {"regression": d.regression_loss or "mse", "binary": "bce", "multiclass": "ce"}[ds.task]
    elif (cfg.loss in ("bce",)) != (ds.task == "binary") or (cfg.loss == "ce") != (ds.task == "multiclass"):
        raise DataError(f"--loss {cfg.loss} does not fit a {ds.task} task")
    # Sequence-level labels (a clip, an utterance) are never windowed or delayed, whatever the frame rate.
    frame_level = ds.step_rate_hz is not None and ds.label_level == "step"
    if d.step_pairing:
        names = [m for m in (upd.get("modality", cfg.modality), *cfg.teachers) if m is not None]
        ds.select_modalities(names).require_aligned(f"--method {cfg.method}")
    if cfg.postprocess and not (frame_level and ds.task == "regression"):
        raise DataError("--postprocess needs continuous (frame-level regression) data")
    if cfg.label_delay_s is None and d.label_delay_s is not None:
        upd["label_delay_s"] = d.label_delay_s if frame_level else 0.0
    if cfg.optimizer is None:
        upd["optimizer"] = d.optimizer
    per_step = d.per_step and frame_level
    if cfg.window_s is None:
        upd["window_s"] = 1.0 / ds.step_rate_hz if per_step else 3.0
    if cfg.hop_s is None:
        upd["hop_s"] = 1.0 / ds.step_rate_hz if per_step else 1.0
    if cfg.eval_window_s is None:
        upd["eval_window_s"] = 3.0 if d.per_step else upd.get("window_s", cfg.window_s)
    if cfg.lr is None:
        upd["lr"] = d.lr or (1e-5 if frame_level else 1e-4)
    if cfg.unlabelled is not None and not d.trains_on_unlabelled:
        raise DataError(f"--unlabelled feeds CM-StEW's alignment and translation terms, not --method {cfg.method}")
    cfg = cfg.model_copy(update=upd)
    if d.resolve is not None and not d.fuses:
        cfg = d.resolve(cfg, ds)
    return cfg


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



def make_bundle(cfg: TrainConfig, ds: Dataset, modalities: list[str]) -> Bundle:
    """Standardise on train, shift the labels and fix the window sizes of one run."""
    for sp in ("train", "val"):
        if not ds.split(sp):
            raise DataError(f"dataset {ds.name!r} has an empty {sp!r} split")
    targets = target_names(cfg, ds)
    cols = [ds.targets.index(t) for t in targets]
    # A waveform is left as it is (RMS-normalised per clip when read): z-scoring raw samples changes nothing
    # the model cares about. `standardize` leaves others as they are too (docs/choices.md, "Standardisation").
    unscaled = set(ds.meta.get("unscaled", ()))
    if cfg.standardize != "all":
        unscaled |= set(modalities) - set(cfg.standardize)
    scaler = Standardizer.fit(ds.split("train"), modalities, unscaled=unscaled)
    rate = ds.step_rate_hz if ds.label_level == "step" else None  # one label per sequence: no windows
    k = delay_steps(cfg.label_delay_s or 0.0, rate)
    parts = {sp: prepare(ds.split(sp), modalities, cols, scaler, k) for sp in ("train", "val", "test")}
    if methods.get(cfg.method).trains_on_unlabelled:
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


def choose_validation(
    cfg: TrainConfig, ds: Dataset, modalities: list[str], fingerprint: str | None = None
) -> tuple[TrainConfig, LeakageVerdict]:
    """Decide where validation comes from (``val_from``, ``val_groups``) and which of the run's modalities
    look fitted on their own training labels (``flagged``: the leakage probe's verdict, cached per data
    folder by ``fingerprint``, or the user's declaration), and fill them into the configuration.

    Validation carved from train measures memorised features for a flagged modality, so ``auto`` takes
    it from whole groups of a labelled test split there, and reports test on the other test groups.
    """
    if cfg.flagged is None:
        verdict = leakage_verdict(ds, modalities, fingerprint)
    else:
        unknown = [m for m in cfg.flagged if m not in ds.modalities]
        if unknown:
            raise DataError(f"--flagged names {', '.join(unknown)}, which the data does not have "
                            f"({list(ds.modalities)})")
        verdict = declared(ds, cfg.flagged)
    used_flagged = verdict.used(modalities)
    test_groups = len(ds.groups("test")) if verdict.test_labelled else 0
    val_from = cfg.val_from
    if ds.split("val"):
        # Validation is already there (the data's own, or carved by the run this one is a stage of).
        val_from = "train" if val_from == "auto" else val_from
    elif val_from == "test":
        if cfg.cv:
            raise DataError("--cv validates on folds of the training groups; it cannot take --val-from test")
        if test_groups < 2:
            raise DataError("--val-from test needs a labelled test split of at least 2 groups"
                            + ("" if ds.split("test") else "; the data has no test split"))
    elif val_from == "auto":
        val_from = "test" if used_flagged and test_groups >= 2 and not cfg.cv and not ds.split("val") else "train"
    n = cfg.val_groups or (TRAIN_VAL_GROUPS if val_from == "train" else max(1, round(test_groups / 3)))
    if val_from == "test" and n >= test_groups and not ds.split("val"):
        raise DataError(f"--val-groups {n}: the test split has {test_groups} groups, and at least one must stay "
                        "for test")
    return cfg.model_copy(update={"val_from": val_from, "val_groups": n, "flagged": verdict.flagged}), verdict


def carve(cfg: TrainConfig, ds: Dataset) -> Dataset:
    """The run's validation split: ``val_groups`` whole groups of ``val_from`` (train, or the test split)."""
    source = "test" if cfg.val_from == "test" else "train"
    return carve_validation(ds, cfg.val_groups or TRAIN_VAL_GROUPS, cfg.seed, source)
