"""Deployable models: ``model.json`` plus safetensors weights and/or an ONNX graph, no pickle anywhere.

- :mod:`stew.deploy.meta`: the folder's files and the ``model.json`` schema (no torch);
- :mod:`stew.deploy.model`: build, save, export and load with torch; the torch engine;
- :mod:`stew.deploy.onnx`: ONNX export, checked against torch;
- :mod:`stew.deploy.runtime`: ``predict_dataset`` and the ONNX Runtime engine (no torch);
- :mod:`stew.deploy.serve`: ``stew serve``, the HTTP service (FastAPI, no torch).

The names below keep ``from stew.deploy import export, load_model, predict_dataset, ModelMeta`` working.
They are imported on first use (PEP 562): importing ``stew.deploy.runtime`` runs this file first, and
the torch-free path must not import torch through it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FORMAT": "meta", "META": "meta", "WEIGHTS": "meta", "ONNX": "meta", "MODEL_FILES": "meta",
    "ModelMeta": "meta", "read_meta": "meta",
    "build_student": "model", "save_model": "model", "export": "model", "load_model": "model",
    "onnx_exportable": "model",
    "predict_dataset": "runtime", "OnnxModel": "runtime",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'stew.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"stew.deploy.{_WHERE[name]}"), name)
