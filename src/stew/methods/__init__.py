"""Methods: one readable file each. They compose parts from stew.models and stew.objectives.

The registry below is how the shared trainer finds them; every method is configured by the same
:class:`stew.config.TrainConfig` and trained by the same loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stew.config import EMOBED_MODES
from stew.errors import DataError

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.methods.base import Method
    from stew.train.core import Bundle


def required_modalities(cfg: TrainConfig) -> list[str]:
    """The modalities a method reads while training: the student's, plus the teacher's if any."""
    if cfg.method == "fusion":
        assert cfg.fusion.modalities is not None  # resolved from the data by training.resolve
        return list(cfg.fusion.modalities)
    assert cfg.modality is not None
    if cfg.method in ("unimodal", "linear", "cermtl", "conflictnet"):
        return [cfg.modality]
    if cfg.teacher is None:
        role = "auxiliary" if cfg.method in EMOBED_MODES else "stronger"
        raise DataError(f"--method {cfg.method} needs --teacher (the {role} modality)")
    if cfg.modality in cfg.teachers:
        raise DataError("--teacher must differ from --modality")
    if len(cfg.teachers) > 1 and cfg.method != "cmstew":
        raise DataError(f"several teachers (--teacher {cfg.teacher}) apply to --method cmstew only")
    return [cfg.modality, *cfg.teachers]


def prepare(cfg: TrainConfig, ds, work: Path) -> TrainConfig:
    """Work done once per run before any candidate is trained (CM-StEW's stage 1)."""
    if cfg.method == "cmstew":
        from stew.methods.cmstew import prepare as prepare_cmstew

        return prepare_cmstew(cfg, ds, work)
    return cfg


def search_space(cfg: TrainConfig) -> list[TrainConfig]:
    """Candidate configurations to select among on validation (one unless a grid is open)."""
    if cfg.method == "cmstew":
        from stew.methods.cmstew import search_space as cmstew_space

        return cmstew_space(cfg)
    return [cfg]


def build_method(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> Method:
    if cfg.method == "unimodal":
        from stew.methods.unimodal import Unimodal
        from stew.train.core import student_spec

        if cfg.ablation:
            raise DataError("--ablation applies to sew and cmstew only")
        # EmoBed's classic system (--arch gru) gets the paper's L2 penalty like every EmoBed network.
        return Unimodal(student_spec(cfg, bundle.ds, cfg.modality), cfg.loss,
                        l2=cfg.emobed.l2 if cfg.arch == "gru" else 0.0)
    if cfg.method == "linear":
        from stew.methods.linear import build

        return build(cfg, bundle)
    if cfg.method == "sew":
        from stew.methods.sew import build

        return build(cfg, bundle, run_dir)
    if cfg.method == "cmstew":
        from stew.methods.cmstew import build

        return build(cfg, bundle, run_dir)
    if cfg.method in EMOBED_MODES:
        from stew.methods.emobed import build

        return build(cfg, bundle, run_dir)
    if cfg.method == "cermtl":
        from stew.methods.cermtl import build

        return build(cfg, bundle, run_dir)
    if cfg.method == "fusion":
        from stew.methods.fusion import build

        return build(cfg, bundle)
    if cfg.method == "conflictnet":
        from stew.methods.conflictnet import build

        return build(cfg, bundle)
    raise DataError(f"unknown method {cfg.method!r}")
