"""The torch-free inference path: a model folder's ``model.onnx`` in ONNX Runtime.

This module and everything it imports at module level use numpy, pandas, pydantic and onnxruntime
only: ``stew predict`` on an ONNX model and ``stew serve`` run on a machine without torch
(tests/test_onnx.py guards the imports). The windows, standardisation, label delay, stitching,
post-processing and CSV columns are the torch engine's (:func:`stew.data.preprocess.predict_windows`),
rebuilt on numpy arrays from the same ``model.json``: both engines write the same CSV to 1e-5.

:func:`predict_dataset` is also the torch engine's entry point: it picks the engine and imports
:mod:`stew.deploy.model` (torch) only when the torch engine runs.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stew.data.dataset import Dataset, Sequence
from stew.data.windows import Standardizer, eval_windows, unshift_predictions
from stew.deploy.meta import META, ONNX, WEIGHTS, _first_line, _LabelScale, meta_dict, read_meta
from stew.errors import DataError
from stew.models.specs import FusedSpec, RawAudioSpec, StudentSpec
from stew.util.atomic import check_output_file, write_atomic

Engine = Literal["auto", "onnx", "torch"]
# Evaluation windows per ONNX Runtime call: a 5-minute recording at 25 Hz is 100 windows of 3 s, one call.
# Bounded so that a large dataset never builds one giant padded batch.
BATCH_WINDOWS = 256


def session_options(threads: int) -> Any:
    """ONNX Runtime options with explicit thread counts: ``threads`` for one operator, 1 between operators
    (a sequential graph), no spinning threads burning a shared core, every graph optimisation on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about unused initialisers are noise for a user
    return so


class OnnxModel:
    """A model folder's validated ``model.json`` and its ``model.onnx`` in one ONNX Runtime session.

    Loaded once (the server keeps it for its lifetime); :meth:`run` is thread-safe, as ONNX Runtime's
    ``InferenceSession.run`` is. Nothing is unpickled: the graph is protobuf, the metadata JSON.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_dir():
            raise DataError("not a model folder", file=path)
        if not (path / META).is_file():
            raise DataError("missing file", file=path / META)
        meta = read_meta(path / META)
        if not (path / ONNX).is_file():
            raise DataError("missing file (export with --format onnx or both)", file=path / ONNX)
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path / ONNX), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a malformed or foreign graph
            raise DataError(f"not a readable ONNX model: {_first_line(e)}", file=path / ONNX) from None
        self.path, self.spec, self.meta = path, meta.student, meta_dict(meta)
        self.fused = isinstance(self.spec, FusedSpec)
        self.modalities = list(self.meta["dims"]) if self.fused else [self.meta["modality"]]
        want = input_names(self.spec)
        dims = {m: self.meta["dims"][m] for m in self.modalities} if self.fused else {self.meta["modality"]: meta.dim}
        got = {i.name: i.shape[-1] for i in self.session.get_inputs()}
        x_names = [f"x_{m}" for m in self.modalities] if self.fused else ["x"]
        if list(got) != want or [got[n] for n in x_names] != list(dims.values()):
            raise DataError(f"the ONNX graph does not match model.json (inputs {list(got)}; model.json implies "
                            f"{want} with feature dimensions {list(dims.values())})", file=path / ONNX)
        self.scaler = Standardizer.from_json(self.meta["standardizer"])

    @property
    def context(self) -> tuple[int, int]:
        return self.spec.encoder.context if isinstance(self.spec, StudentSpec) else (0, 0)

    @property
    def per_sequence(self) -> bool:
        """One prediction per sequence (a pooled student, a raw-audio clip, a time-pooled fusion model)."""
        if isinstance(self.spec, FusedSpec):
            return self.spec.fusion.pool_time
        return isinstance(self.spec, RawAudioSpec) or self.spec.pool == "mean"

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A single-modality model's activated outputs [B, T, n_out] ([B, 1, n_out] per sequence) of
        x [B, L + T + R, d] and mask [B, T] (a per-sequence model: the modality's present mask)."""
        return self.session.run(None, {"x": x, "mask": mask})[0]

    def run_batch(self, x: dict[str, np.ndarray], present: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """Activated outputs of a collated batch: per modality x [B, T_m, d_m] and present [B, T_m], and the
        label steps' mask [B, T] (what :class:`stew.data.preprocess.WindowDataset` collates)."""
        if self.fused:
            feed = {f"x_{m}": x[m] for m in self.modalities} | {f"present_{m}": present[m] for m in self.modalities}
            return self.session.run(None, {**feed, "mask": mask})[0]
        m = self.modalities[0]
        return self.run(x[m], present[m] if self.per_sequence else mask)

    def predict_sequences(self, seqs: list[Sequence]) -> list[np.ndarray]:
        """Per sequence, activated predictions on its label steps: :func:`predict_windows`'s numbers."""
        xs = [{m: self.scaler.transform(m, s.features[m], s.masks[m]) for m in self.modalities} for s in seqs]
        return predict_arrays(self, xs, [{m: s.masks[m] for m in self.modalities} for s in seqs],
                              [len(s) for s in seqs])


def input_names(spec: StudentSpec | FusedSpec | RawAudioSpec) -> list[str]:
    """The ONNX graph's inputs: x and mask, or a fusion model's x_<m>, present_<m> per modality and mask."""
    if isinstance(spec, FusedSpec):
        mods = spec.modalities
        return [f"x_{m}" for m in mods] + [f"present_{m}" for m in mods] + ["mask"]
    return ["x", "mask"]


def predict_arrays(model: OnnxModel, xs: list[dict[str, np.ndarray]], present: list[dict[str, np.ndarray]],
                   n_labels: list[int]) -> list[np.ndarray]:
    """Standardised inputs ``xs[i][m]`` [T_i, d_m] (masks ``present[i][m]``) with ``n_labels[i]`` label
    steps -> activated predictions [n_labels[i], n_out], label delay undone.

    The windows and their batch layout are :class:`stew.data.preprocess.WindowDataset`'s: non-overlapping
    evaluation windows (or whole sequences), padded to the longest in the batch, ``context`` steps around
    each window (edge steps repeated); a modality on its own clock comes whole.
    """
    meta = model.meta
    win = meta["window_steps"]
    spans = [(i, a, b) for i, n in enumerate(n_labels) for a, b in (eval_windows(n, win) if win else [(0, n)])]
    left, right = model.context
    full: list[np.ndarray | None] = [None] * len(xs)
    for c in range(0, len(spans), BATCH_WINDOWS):
        items = spans[c: c + BATCH_WINDOWS]
        batch_x, batch_p = {}, {}
        for m in model.modalities:
            own = [xs[i][m].shape[0] != n_labels[i] for i, _, _ in items]
            steps = max(xs[i][m].shape[0] if o else b - a for (i, a, b), o in zip(items, own, strict=True))
            x = np.zeros((len(items), left + steps + right, xs[items[0][0]][m].shape[1]), np.float32)
            have = np.zeros((len(items), steps), bool)
            for j, ((i, a, b), o) in enumerate(zip(items, own, strict=True)):
                if o:
                    k = xs[i][m].shape[0]
                    x[j, :k], have[j, :k] = xs[i][m], present[i][m]
                else:
                    rows = np.clip(np.arange(a - left, b + right), 0, n_labels[i] - 1) if left or right else slice(a, b)
                    x[j, : left + b - a + right] = xs[i][m][rows]
                    have[j, : b - a] = present[i][m][a:b]
            batch_x[m], batch_p[m] = x, have
        mask = np.zeros((len(items), max(b - a for _, a, b in items)), bool)
        for j, (_, a, b) in enumerate(items):
            mask[j, : b - a] = True
        out = model.run_batch(batch_x, batch_p, mask)
        for (i, a, b), o in zip(items, out, strict=True):
            if full[i] is None:
                full[i] = np.full((n_labels[i], out.shape[-1]), np.nan, np.float32)
            full[i][a:b] = o[: b - a]
    for i, f in enumerate(full):
        if f is None or np.isnan(f).any():
            raise DataError(f"sequence {i}: some steps were never predicted (NaN outputs)")
    return [unshift_predictions(f, meta["label_delay_steps"]) for f in full]


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
    from stew.data.io import load_dataset

    if out_csv is not None:  # refuse an unusable --out before the model and data are read
        check_output_file(Path(out_csv))
    model_dir = Path(model_dir)
    where = None if isinstance(data, Dataset) else data
    used = None
    if choose_engine(model_dir, engine) == "onnx":
        model = OnnxModel(model_dir, threads or 1)
        meta = model.meta
        ds = data if isinstance(data, Dataset) else load_dataset(data)
        if model.fused:
            check_label_level(model.spec, ds, where)
            ds, used = with_absent_modalities(ds, meta["dims"], where)
        else:
            ds = select_input(meta, ds, where)
        seqs = ds.sequences
        preds = model.predict_sequences(seqs)
    else:
        if not (model_dir / WEIGHTS).is_file() and (model_dir / ONNX).is_file():
            raise DataError("missing file (an ONNX-only model folder: use --engine onnx)", file=model_dir / WEIGHTS)
        try:
            from stew.deploy.model import predict_torch
        except ImportError as e:  # a torch-free install (requirements-serve.txt)
            raise DataError(f"the torch engine needs {e.name}, which is not installed; "
                            "export with --format both and use --engine onnx") from None

        preds, seqs, used, meta = predict_torch(model_dir, data, where, threads)
    result = predictions_frame(meta, preds, seqs, used)
    if out_csv is not None:
        write_atomic(Path(out_csv), lambda tmp: result.to_csv(tmp, index=False))
    return result


def select_input(meta: dict, ds: Dataset, where: Path | None) -> Dataset:
    """The dataset with the single-modality model's input modality (an early-fused one rebuilt from its
    parts), its dimension checked."""
    m = meta["modality"]
    if m not in ds.modalities:  # an early-fused model: rebuild its input from the parts
        inputs = meta["inputs"]
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
    return ds


def check_label_level(spec: FusedSpec, ds: Dataset, where: Path | None) -> None:
    """A fusion model predicts per sequence or per step; the data must be labelled the same way."""
    if spec.fusion.pool_time != (ds.label_level == "sequence"):
        want = "one label per sequence" if spec.fusion.pool_time else "one label per step"
        raise DataError(f"the model predicts {want}; these data have label_level {ds.label_level!r}", file=where)


def with_absent_modalities(ds: Dataset, dims: dict[str, int], where: Path | None) -> tuple[Dataset, dict]:
    """A fusion model's inputs from whatever subset of them the data hold; the others become absent
    (one masked step of zeros per sequence, or masked steps on the labels' grid). Returns the dataset
    and, per sequence, the modalities it really had."""
    have = [m for m in dims if m in ds.modalities]
    if not have:
        raise DataError(f"the model reads {list(dims)}; the data have none of them ({list(ds.modalities)})", file=where)
    for m in have:
        if ds.modalities[m] != dims[m]:
            raise DataError(f"dimension mismatch for {m!r}: the data has {ds.modalities[m]} features, the model "
                            f"expects {dims[m]}", file=where)
    seqs, used = [], {}
    for s in ds.sequences:
        n = 1 if ds.label_level == "sequence" else len(s)
        features = {m: s.features[m] if m in have else np.zeros((n, d), np.float32) for m, d in dims.items()}
        masks = {m: s.masks[m] if m in have else np.zeros(n, bool) for m in dims}
        seqs.append(replace(s, features=features, masks=masks))
        used[s.id] = [m for m in dims if bool(masks[m].any())]
    return replace(ds, modalities=dict(dims), sequences=seqs), used


def postprocess(meta: dict, preds: list[np.ndarray]) -> list[np.ndarray]:
    """The AVEC post-processing chain chosen on validation (``model.json`` ``postprocess``), if any."""
    if not meta["postprocess"]:
        return preds
    from stew.scoring.postprocess import Chain, apply_chains

    chains = {t: Chain.from_json(c) for t, c in meta["postprocess"].items()}
    return apply_chains(chains, preds, meta["targets"])


def predictions_frame(meta: dict, preds: list[np.ndarray], seqs: list[Sequence], used: dict | None) -> pd.DataFrame:
    """The predictions CSV: one row per label step, post-processing applied, columns by task."""
    preds = postprocess(meta, preds)
    scale = _LabelScale.model_validate(meta["label_scale"]) if meta["label_scale"] else None
    frames = []
    for p, s in zip(preds, seqs, strict=True):
        df = pd.DataFrame({"split": s.split, "sequence": s.id, "step": np.arange(len(s)), "step_id": s.step_ids})
        if used is not None:  # which of a fusion model's inputs this sequence had (the rest were absent)
            df["modalities"] = "+".join(used[s.id]) or "none"
        for name, col in output_columns(meta, p, scale).items():
            df[name] = col
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def output_columns(meta: dict, p: np.ndarray, scale: _LabelScale | None = None) -> dict[str, np.ndarray]:
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


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
