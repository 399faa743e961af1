"""``stew predict``: an exported model over a dataset, in either engine, and the predictions' columns.

Torch is imported only when the torch engine runs: with ``model.onnx`` the path is torch-free
(:mod:`stew.deploy.runtime`), and a deployment machine without torch predicts and serves.
Post-processing and the CSV columns are shared by both engines and by ``stew serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from stew.data.dataset import Dataset, Sequence
from stew.deploy.inputs import model_inputs
from stew.deploy.meta import ONNX, WEIGHTS, LabelScale
from stew.deploy.runtime import OnnxModel
from stew.errors import DataError
from stew.util.atomic import check_output_file, write_atomic

Engine = Literal["auto", "onnx", "torch"]


def choose_engine(model_dir: Path, engine: Engine) -> Literal["onnx", "torch"]:
    """``auto``: ONNX Runtime when the folder has ``model.onnx``, torch otherwise."""
    if engine != "auto":
        return engine
    return "onnx" if (Path(model_dir) / ONNX).is_file() else "torch"


def predict_dataset(
    model_dir: Path, data: Path | Dataset, out_csv: Path | None = None, engine: Engine = "auto",
    threads: int | None = None,
) -> pd.DataFrame:
    """Predict every step of every sequence in ``data`` (all splits) with an exported model.

    ``engine``: ``onnx`` (ONNX Runtime, no torch imported), ``torch``, or ``auto`` (onnx when the folder
    has ``model.onnx``). ``threads``: intra-op threads (None: ONNX Runtime 1, torch its default).
    """
    if out_csv is not None:  # refuse an unusable --out before the model and data are read
        check_output_file(Path(out_csv))
    model_dir = Path(model_dir)
    if choose_engine(model_dir, engine) == "onnx":
        model = OnnxModel(model_dir, threads or 1)
        meta = model.meta
        ds, used = model_inputs(model.spec, meta, data)
        seqs = ds.sequences
        preds = model.predict_sequences(seqs)
    else:
        if not (model_dir / WEIGHTS).is_file() and (model_dir / ONNX).is_file():
            raise DataError("missing file (an ONNX-only model folder: use --engine onnx)", file=model_dir / WEIGHTS)
        try:
            # Imported only for this engine: the ONNX path above must not import torch.
            from stew.deploy.model import predict_torch
        except ImportError as e:  # a torch-free install (requirements-serve.txt)
            raise DataError(f"the torch engine needs {e.name}, which is not installed; "
                            "export with --format both and use --engine onnx") from None

        preds, seqs, used, meta = predict_torch(model_dir, data, threads)
    result = predictions_frame(meta, preds, seqs, used)
    if out_csv is not None:
        write_atomic(Path(out_csv), lambda tmp: result.to_csv(tmp, index=False))
    return result


def postprocess(meta: dict, preds: list[np.ndarray]) -> list[np.ndarray]:
    """The AVEC post-processing chain chosen on validation (``model.json`` ``postprocess``), if any."""
    if not meta["postprocess"]:
        return preds
    # Imported only for a model with a chain: scipy costs ~0.8 s at start-up of `stew predict` / `serve`.
    from stew.scoring.postprocess import Chain, apply_chains

    chains = {t: Chain.from_json(c) for t, c in meta["postprocess"].items()}
    return apply_chains(chains, preds, meta["targets"])


def predictions_frame(meta: dict, preds: list[np.ndarray], seqs: list[Sequence], used: dict | None) -> pd.DataFrame:
    """The predictions CSV: one row per label step, post-processing applied, columns by task."""
    preds = postprocess(meta, preds)
    scale = LabelScale.model_validate(meta["label_scale"]) if meta["label_scale"] else None
    frames = []
    for p, s in zip(preds, seqs, strict=True):
        df = pd.DataFrame({"split": s.split, "sequence": s.id, "step": np.arange(len(s)), "step_id": s.step_ids})
        if used is not None:  # which of a fusion model's inputs this sequence had (the rest were absent)
            df["modalities"] = "+".join(used[s.id]) or "none"
        for name, col in output_columns(meta, p, scale).items():
            df[name] = col
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def output_columns(meta: dict, p: np.ndarray, scale: LabelScale | None = None) -> dict[str, np.ndarray]:
    """Prediction columns of activated outputs p [T, n_out]: pred_<target> (and _original), prob/pred."""
    cols: dict[str, np.ndarray] = {}
    if meta["task"] == "regression":
        for j, t in enumerate(meta["targets"]):
            cols[f"pred_{t}"] = p[:, j]
            if scale is not None:  # the same prediction in the labels' own units (e.g. conflict in [-10, 10])
                cols[f"pred_{t}_original"] = scale.to_original(p[:, j])
    elif meta["task"] == "binary":
        cols["prob"], cols["pred"] = p[:, 0], (p[:, 0] >= 0.5).astype(int)
    else:
        cols["pred"] = p.argmax(1)
        for c in range(p.shape[1]):
            cols[f"prob_{c}"] = p[:, c]
    return cols
