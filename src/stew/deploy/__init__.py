"""Deployable models: ``model.json`` plus safetensors weights and/or an ONNX graph, no pickle anywhere.

Modules, each importing only those above it (torch enters at ``onnx``):

- :mod:`stew.deploy.meta`: the folder's files and the ``model.json`` schema (no torch);
- :mod:`stew.deploy.integrity`: the SHA-256 of every artefact, recorded at writing, checked at loading (no torch);
- :mod:`stew.deploy.inputs`: what a model reads from a dataset, shared by both engines (no torch);
- :mod:`stew.deploy.runtime`: the ONNX Runtime engine (no torch);
- :mod:`stew.deploy.onnx`: ONNX export, checked against torch;
- :mod:`stew.deploy.model`: build, save, export and load with torch; the torch engine;
- :mod:`stew.deploy.predict`: ``predict_dataset`` in either engine, torch imported only for its own;
- :mod:`stew.deploy.audio`: ``stew predict --audio``, predictions straight from audio files;
- :mod:`stew.deploy.serve`: ``stew serve``, the HTTP service (FastAPI, no torch).

The names below are importable from ``stew.deploy`` itself. They are imported on first use (PEP 562):
importing ``stew.deploy.runtime`` runs this file first, and the torch-free path must not import torch
through it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FORMAT": "meta", "META": "meta", "WEIGHTS": "meta", "ONNX": "meta", "MODEL_FILES": "meta",
    "ModelMeta": "meta", "read_meta": "meta",
    "build_student": "model", "save_model": "model", "export": "model", "load_model": "model",
    "onnx_exportable": "model",
    "predict_dataset": "predict", "OnnxModel": "runtime",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'stew.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"stew.deploy.{_WHERE[name]}"), name)
