"""Model folders for the ONNX and serve tests, written directly (random weights, no training: fast).

:func:`make_run` writes ``RUN/model`` as training would (model.json + safetensors) with chosen
windows, label delay, post-processing and label scale, so that ``stew export RUN`` and both engines
can be compared on every preprocessing step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stew.data.dataset import Dataset
from stew.data.windows import Standardizer
from stew.deploy.model import _write_atomically
from stew.models.conflictnet import RawAudioModel
from stew.models.fused import FusedModel
from stew.models.specs import EncoderSpec, FusedSpec, FusionSpec, HeadSpec, RawAudioSpec, StudentSpec
from stew.models.student import SingleModalityModel


def small_spec(kind: str, d_in: int, task: str = "regression", targets: tuple[str, ...] = ("y",),
               n_classes: int | None = None, pool: str = "none") -> StudentSpec:
    """A small student of each deployable kind (the methods' encoder/head pairs, at test sizes)."""
    n_out = len(targets) if task == "regression" else 1 if task == "binary" else n_classes
    if kind == "unimodal":  # Bi-GRU (2 layers) + classifier
        enc = EncoderSpec(kind="bigru", d_in=d_in, gru_units=5, gru_layers=2)
    elif kind == "cmstew":  # Bi-GRU + transformer + classifier (CM-StEW's student)
        enc = EncoderSpec(kind="bigru-te", d_in=d_in, gru_units=6, gru_layers=1, d_model=8, heads=2, ffn=16,
                          te_layers=2)
    elif kind == "linear":
        enc = EncoderSpec(kind="identity", d_in=d_in)
    elif kind == "sew":
        enc = EncoderSpec(kind="mlp", d_in=d_in, mlp_sizes=[7, 6])
    elif kind == "emobed":
        enc = EncoderSpec(kind="gru", d_in=d_in, gru_units=6, gru_layers=2)
    elif kind == "cermtl":
        enc = EncoderSpec(kind="feature-image", d_in=d_in, image_steps=6, image_stride=2, filters=4, kernel=3,
                          pool=2)
    else:
        raise ValueError(kind)
    head_kind = {"linear": "linear", "sew": "gru4", "emobed": "gru", "cermtl": "task-gru"}.get(kind, "classifier")
    head = HeadSpec(kind=head_kind, d_in=enc.out_dim, n_out=n_out, hidden=9, gru_units=6, gru_layers=2,
                    seq_steps=enc.pooled_steps if kind == "cermtl" else 1, task_units=3, task_fc=2)
    return StudentSpec(modality="m", task=task, targets=list(targets), encoder=enc, head=head,
                       activation="identity" if kind == "linear" else "task", pool=pool)


def random_model(spec: StudentSpec, seed: int = 0) -> SingleModalityModel:
    torch.manual_seed(seed)
    model = SingleModalityModel(spec)
    with torch.no_grad():  # batch-norm-free models: spread the weights so that outputs are not all ~0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def make_run(run_dir: Path, spec: StudentSpec | RawAudioSpec, ds: Dataset, modality: str, *,
             window_steps: int | None = None, delay: int = 0, postprocess: dict | None = None,
             label_scale: dict | None = None, extractor: dict | None = None, seed: int = 0) -> Path:
    """``run_dir/model`` for ``spec`` reading ``modality`` of ``ds`` (standardiser fitted on its train split)."""
    spec = spec.model_copy(update={"modality": modality, "targets": ds.targets, "task": ds.task})
    if isinstance(spec, RawAudioSpec):
        torch.manual_seed(seed)
        model = RawAudioModel(spec).eval()
        model.out_scale.fill_(1.7)  # the affine map fitted after training: exported with the graph
        model.out_shift.fill_(-0.2)
    else:
        model = random_model(spec, seed)
    scaler = Standardizer.fit(ds.split("train"), [modality], unscaled=ds.meta.get("unscaled", ()))
    meta = {
        "format": "stew-model/1", "student": json.loads(spec.model_dump_json()), "modality": modality,
        "dim": ds.modalities[modality], "dims": None, "task": ds.task, "targets": ds.targets,
        "n_classes": ds.n_classes, "standardizer": scaler.to_json(), "step_rate_hz": ds.step_rate_hz,
        "label_delay_steps": delay, "window_steps": window_steps, "inputs": [modality],
        "postprocess": postprocess, "extractor": extractor, "label_scale": label_scale,
        "provenance": {"method": "test", "teacher": None, "seed": seed, "data": "tests"},
    }
    _write_atomically(run_dir / "model", {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    return run_dir


def random_features(steps: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, dim)).astype(np.float32)


def make_fused_run(run_dir: Path, ds: Dataset, fusion: str = "intra", impute: str = "zero", seed: int = 0) -> Path:
    """``run_dir/model`` for an attention-fusion model over all of ``ds``'s modalities (random weights,
    a random KNN bank when ``impute`` is knn)."""
    mods = dict(ds.modalities)
    fs = FusionSpec(modalities=mods, fusion=fusion, gru_units=6, heads=2, pool_time=ds.label_level == "sequence",
                    n_out=len(ds.targets) if ds.task == "regression" else 1 if ds.task == "binary" else ds.n_classes)
    spec = FusedSpec(task=ds.task, targets=ds.targets, fusion=fs, impute=impute, k=3,
                     bank_size=16 if impute == "knn" else 0)
    torch.manual_seed(seed)
    model = FusedModel(spec).eval()
    if impute == "knn":
        model.fill_bank({m: torch.randn(16, fs.width) for m in mods})
    scaler = Standardizer.fit(ds.split("train"), list(mods))
    meta = {
        "format": "stew-model/1", "student": json.loads(spec.model_dump_json()), "modality": "+".join(mods),
        "dim": sum(mods.values()), "dims": mods, "task": ds.task, "targets": ds.targets, "n_classes": ds.n_classes,
        "standardizer": scaler.to_json(), "step_rate_hz": ds.step_rate_hz, "label_delay_steps": 0,
        "window_steps": None, "inputs": list(mods), "postprocess": None, "extractor": None, "label_scale": None,
        "provenance": {"method": "test", "teacher": None, "seed": seed, "data": "tests"},
    }
    _write_atomically(run_dir / "model", {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    return run_dir
