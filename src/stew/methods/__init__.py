"""Methods: one readable file each, composing parts from stew.models and stew.objectives.

Each file registers a :class:`~stew.methods.base.MethodDef`; :func:`get` is how the shared trainer,
``stew tune`` and the CLI find a method. Every method is configured by the same
:class:`stew.config.TrainConfig` and trained by the same loop (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.errors import DataError
from stew.methods import cermtl, cmstew, conflictnet, emobed, fusion, linear, sew, unimodal
from stew.methods.base import Method, MethodDef

REGISTRY: dict[str, MethodDef] = {
    d.name: d for d in (unimodal.METHOD, linear.METHOD, sew.METHOD, cmstew.METHOD, *emobed.METHODS, cermtl.METHOD,
                        fusion.METHOD, conflictnet.METHOD)
}


def get(name: str) -> MethodDef:
    """The registered method called ``name`` (a one-line error naming the others if there is none)."""
    if name not in REGISTRY:
        raise DataError(f"unknown method {name!r}; choose from {list(REGISTRY)}")
    return REGISTRY[name]


def required_modalities(cfg: TrainConfig) -> list[str]:
    """The modalities ``cfg.method`` reads while training."""
    return get(cfg.method).required_modalities(cfg)


def build_method(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> Method:
    """``cfg.method``'s model, built on a run's data (``run_dir`` holds what it trains first)."""
    return get(cfg.method).build(cfg, bundle, run_dir)
