"""stew: train with every modality, deploy with one.

The Python API (:mod:`stew.api`): ``stew.synth_data``, ``load_data``, ``train``, ``train_config``,
``load_run``, ``export`` and ``predict``, the same names and options as the CLI's commands (README,
"Python API").
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("synth_data", "load_data", "train", "train_config", "load_run", "export", "predict")
__all__ = [*API, "__version__"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import stew` alone (every CLI command, the torch-free `stew predict` and
    # `stew serve`) must not import torch, which stew.api's training functions need.
    if name in API:
        from stew import api

        return getattr(api, name)
    raise AttributeError(f"module 'stew' has no attribute {name!r}")
