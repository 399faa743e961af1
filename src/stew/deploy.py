"""Deployable single-modality models: safetensors weights plus one JSON file, no pickle anywhere.

A model folder holds ``model.safetensors`` (the student's encoder and head) and ``model.json``
(architecture, fitted standardisation, label delay, windowing, targets and provenance). It loads
without the training config and without executing code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from stew.atomic import atomic_dir
from stew.data.dataset import Dataset
from stew.data.io import load_dataset
from stew.data.preprocess import Standardizer, predict_windows, prepare
from stew.errors import DataError
from stew.models.student import SingleModalityModel, StudentSpec

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.training import Bundle

FORMAT = "stew-model/1"
WEIGHTS, META = "model.safetensors", "model.json"


def save_model(
    student: SingleModalityModel, bundle: Bundle, cfg: TrainConfig, out: Path, postprocess: dict | None = None
) -> Path:
    m = student.spec.modality
    meta = {
        "format": FORMAT,
        "student": json.loads(student.spec.model_dump_json()),
        "modality": m,
        "dim": bundle.ds.modalities[m],
        "task": bundle.task,
        "targets": bundle.targets,
        "n_classes": bundle.ds.n_classes,
        "standardizer": Standardizer({m: bundle.scaler.mean[m]}, {m: bundle.scaler.std[m]}).to_json(),
        "step_rate_hz": bundle.ds.step_rate_hz,
        "label_delay_steps": bundle.k_delay,
        "window_steps": bundle.eval_win,
        # An early-fused input is rebuilt from these modalities at prediction time.
        "inputs": m.split("+"),
        # The AVEC chain chosen on validation, applied by `stew predict` (None: raw predictions).
        "postprocess": {t: c.to_json() for t, c in postprocess.items()} if postprocess else None,
        "provenance": {"method": cfg.method, "teacher": cfg.teacher, "seed": cfg.seed, "data": str(cfg.data)},
    }
    _write_atomically(out, {k: v.detach().contiguous() for k, v in student.state_dict().items()}, meta)
    return out


def _write_atomically(out: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    with atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / META).write_text(json.dumps(meta, indent=2))


def export(run_dir: Path, out: Path) -> Path:
    """Copy a run's deployable model (weaker encoder and head only) to ``out``, checking it loads."""
    src = Path(run_dir) / "model"
    if not (src / META).is_file() or not (src / WEIGHTS).is_file():
        raise DataError("not a finished stew run (no model/model.json and model/model.safetensors)", file=run_dir)
    model, meta = load_model(src)
    run_metrics = Path(run_dir) / "metrics.json"
    if run_metrics.is_file():
        meta["provenance"]["run"] = str(Path(run_dir).resolve())
        meta["provenance"]["validation"] = json.loads(run_metrics.read_text()).get("val", {})
    _write_atomically(Path(out), {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    return Path(out)


def load_model(path: Path) -> tuple[SingleModalityModel, dict]:
    path = Path(path)
    for f in (META, WEIGHTS):
        if not (path / f).is_file():
            raise DataError("missing file", file=path / f)
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"unknown model format {meta.get('format')!r}", file=path / META)
    model = SingleModalityModel(StudentSpec.model_validate(meta["student"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    model.eval()
    return model, meta


def predict_dataset(model_dir: Path, data: Path | Dataset, out_csv: Path | None = None) -> pd.DataFrame:
    """Predict every step of every sequence in ``data`` (all splits) with an exported model."""
    model, meta = load_model(model_dir)
    m = meta["modality"]
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    where = None if isinstance(data, Dataset) else data
    if m not in ds.modalities:  # an early-fused model: rebuild its input from the parts
        inputs = meta.get("inputs", [m])
        missing = [p for p in inputs if p not in ds.modalities]
        if missing:
            raise DataError(
                f"the model needs modality {', '.join(map(repr, missing))}; the data has {list(ds.modalities)}",
                file=where,
            )
        ds = ds.fuse(inputs)
    if ds.modalities[m] != meta["dim"]:
        raise DataError(
            f"dimension mismatch for {m!r}: the data has {ds.modalities[m]} features, the model expects {meta['dim']}",
            file=where,
        )
    seqs = ds.sequences
    prepared = _prepare_unlabelled(seqs, m, Standardizer.from_json(meta["standardizer"]))
    preds = predict_windows(model, prepared, meta["window_steps"], meta["label_delay_steps"])
    if meta.get("postprocess"):
        from stew.postprocess import Chain, apply_chains

        chains = {t: Chain.from_json(c) for t, c in meta["postprocess"].items()}
        preds = apply_chains(chains, preds, meta["targets"])
    frames = []
    for p, s in zip(preds, seqs, strict=True):
        df = pd.DataFrame({"split": s.split, "sequence": s.id, "step": np.arange(len(s)), "step_id": s.step_ids})
        if meta["task"] == "regression":
            for j, t in enumerate(meta["targets"]):
                df[f"pred_{t}"] = p[:, j]
        elif meta["task"] == "binary":
            df["prob"], df["pred"] = p[:, 0], (p[:, 0] >= 0.5).astype(int)
        else:
            df["pred"] = p.argmax(1)
            for c in range(p.shape[1]):
                df[f"prob_{c}"] = p[:, c]
        frames.append(df)
    result = pd.concat(frames, ignore_index=True)
    if out_csv is not None:
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_csv.with_name(f".{out_csv.name}.tmp")
        result.to_csv(tmp, index=False)
        tmp.replace(out_csv)
    return result


def _prepare_unlabelled(seqs: list, modality: str, scaler: Standardizer) -> list:
    # Prediction needs no labels: targets are placeholders of the right length, never read.
    stripped = [replace(s, targets=np.zeros((len(s), 1), np.float32)) for s in seqs]
    return prepare(stripped, [modality], [0], scaler, 0)
