"""The ONNX Runtime engine: a model folder's ``model.onnx`` in one session, without torch.

This module and everything it imports use numpy, pydantic and onnxruntime only: ``stew
predict`` on an ONNX model and ``stew serve`` run on a machine without torch (tests/test_onnx.py guards
the imports). The windows, standardisation, label delay and stitching are the torch engine's
(:func:`stew.data.preprocess.predict_windows`), rebuilt on numpy arrays from the same ``model.json``:
both engines write the same CSV to 1e-5 (:func:`stew.deploy.predict.predict_dataset` picks the engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stew.data.dataset import Sequence
from stew.data.windows import Standardizer, eval_windows, unshift_predictions
from stew.deploy.inputs import input_modalities
from stew.deploy.integrity import notice_unverified, verify
from stew.deploy.meta import META, ONNX, meta_dict, read_meta
from stew.errors import DataError, first_line
from stew.models.specs import FusedSpec, RawAudioSpec, StudentSpec

# Evaluation windows per ONNX Runtime call: a 5-minute recording at 25 Hz is 100 windows of 3 s, one call.
# Bounded so that a large dataset never builds one giant padded batch.
BATCH_WINDOWS = 256


def session_options(threads: int) -> Any:
    """ONNX Runtime options with explicit thread counts: ``threads`` for one operator, 1 between operators
    (a sequential graph), no spinning threads burning a shared core, every graph optimisation on."""
    import onnxruntime as ort  # here, not at the top: the torch engine and torch-side imports skip its 0.2 s

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
        # The whole folder, model.safetensors included, though this engine never parses it.
        verified = verify(path, meta)
        import onnxruntime as ort  # here, not at the top: see session_options

        try:
            self.session = ort.InferenceSession(str(path / ONNX), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a malformed or foreign graph
            raise DataError(f"not a readable ONNX model: {first_line(e)}", file=path / ONNX) from None
        self.path, self.spec, self.meta = path, meta.student, meta_dict(meta)
        self.fused = isinstance(self.spec, FusedSpec)
        self.modalities = input_modalities(self.spec, self.meta)
        want = input_names(self.spec)
        dims = {m: self.meta["dims"][m] for m in self.modalities} if self.fused else {self.meta["modality"]: meta.dim}
        got = {i.name: i.shape[-1] for i in self.session.get_inputs()}
        x_names = [f"x_{m}" for m in self.modalities] if self.fused else ["x"]
        if list(got) != want or [got[n] for n in x_names] != list(dims.values()):
            raise DataError(f"the ONNX graph does not match model.json (inputs {list(got)}; model.json implies "
                            f"{want} with feature dimensions {list(dims.values())})", file=path / ONNX)
        self.scaler = Standardizer.from_json(self.meta["standardizer"])
        if not verified:
            notice_unverified(path)

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
