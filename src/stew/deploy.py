"""Deployable models: safetensors weights plus one JSON file, no pickle anywhere.

A model folder holds ``model.safetensors`` (the student's encoder and head, or a fusion model and its
KNN memory bank) and ``model.json`` (architecture, fitted standardisation, label delay, windowing,
targets and provenance). It loads without the training config and without executing code.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file

from stew.atomic import atomic_dir, check_output_file, check_output_folder, follow_umask, write_atomic
from stew.data.dataset import Dataset
from stew.data.io import load_dataset
from stew.data.preprocess import Standardizer, predict_windows, prepare
from stew.errors import DataError
from stew.models.conflictnet import RawAudioModel, RawAudioSpec
from stew.models.fused import FusedModel, FusedSpec
from stew.models.student import SingleModalityModel, StudentSpec

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.training import Bundle

FORMAT = "stew-model/1"
WEIGHTS, META = "model.safetensors", "model.json"
# A model folder holds these two files and nothing else; only such a folder is ever replaced.
MODEL_FILES = frozenset({WEIGHTS, META})


class _Stats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: list[float]
    std: list[float]


class _LabelScale(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    original: tuple[float, float]
    scaled: tuple[float, float] = (-1.0, 1.0)

    @model_validator(mode="after")
    def _ordered(self) -> _LabelScale:
        if not (self.original[0] < self.original[1] and self.scaled[0] < self.scaled[1]):
            raise ValueError("label_scale ranges must be [low, high] with low < high")
        return self

    def to_original(self, y: np.ndarray) -> np.ndarray:
        (lo, hi), (a, b) = self.original, self.scaled
        return (np.asarray(y, dtype=np.float64) - a) / (b - a) * (hi - lo) + lo


class ModelMeta(BaseModel):
    """The schema of ``model.json``. A model folder is untrusted input: every field the loader and
    ``predict`` read is checked here, and the fields that must agree with each other are cross-checked."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["stew-model/1"]
    student: StudentSpec | FusedSpec | RawAudioSpec
    modality: str = Field(min_length=1)  # a fusion model: its modalities joined by "+"
    dim: int = Field(ge=1)  # a fusion model: the sum of its inputs' dimensions
    dims: dict[str, int] | None = None  # a fusion model: each input's dimension
    task: Literal["regression", "binary", "multiclass"]
    targets: list[str] = Field(min_length=1)
    n_classes: int | None = Field(default=None, ge=2)
    standardizer: dict[str, _Stats]
    step_rate_hz: float | None = Field(default=None, gt=0)
    label_delay_steps: int = Field(ge=0)
    window_steps: int | None = Field(ge=1)  # None: the whole sequence at once (utterance data)
    # Older model folders lack these two: one input (the modality itself), raw predictions.
    inputs: list[str] | None = None
    postprocess: dict[str, dict[str, Any]] | None = None
    # How the features were made from audio files (stew features extract): `stew predict --audio`
    # extracts with exactly these settings. None: the model was trained on features made elsewhere.
    extractor: dict[str, Any] | None = None
    # The labels' own range when the reader mapped them onto [-1, 1] (audio folders: conflict / 10):
    # `stew predict` then also writes each prediction in those units.
    label_scale: _LabelScale | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMeta:
        if isinstance(self.student, FusedSpec):
            return self._consistent_fused(self.student)
        s, m = self.student, self.modality
        if (s.modality, s.task, s.targets) != (m, self.task, self.targets):
            raise ValueError("student.modality, task and targets must equal the top-level modality, task, targets")
        d_in = 1 if isinstance(s, RawAudioSpec) else s.encoder.d_in
        if d_in != self.dim:
            raise ValueError(f"the student reads {d_in} features per step but dim is {self.dim}")
        n_out = len(self.targets) if self.task == "regression" else 1 if self.task == "binary" else self.n_classes
        got = s.net.n_out if isinstance(s, RawAudioSpec) else s.head.n_out
        if got != n_out:
            raise ValueError(f"the student has {got} outputs; a {self.task} model of these targets has {n_out}")
        if set(self.standardizer) != {m}:
            raise ValueError(f"standardizer must have exactly one entry, {m!r}; it has {sorted(self.standardizer)}")
        _check_stats(m, self.standardizer[m], self.dim)
        if self.inputs is not None and "+".join(self.inputs) != m:
            raise ValueError(f"inputs {self.inputs} do not make up modality {m!r}")
        if self.postprocess:
            from stew.postprocess import Chain

            if self.task != "regression" or not set(self.postprocess) <= set(self.targets):
                raise ValueError(f"postprocess applies to regression targets only; got {sorted(self.postprocess)}")
            for t, c in self.postprocess.items():
                try:
                    Chain.from_json(c)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"postprocess.{t}: {e}") from None
        return self

    def _consistent_fused(self, s: FusedSpec) -> ModelMeta:
        mods = s.modalities
        if (s.task, s.targets) != (self.task, self.targets) or self.modality != "+".join(mods):
            raise ValueError("student.task, targets and modalities must equal the top-level task, targets, modality")
        dims = self.dims or {}
        if list(dims) != mods or any(s.fusion.modalities[m] != d for m, d in dims.items()):
            raise ValueError(f"dims must give each of {mods} the dimension student.fusion.modalities declares")
        if self.dim != sum(dims.values()) or self.inputs != mods:
            raise ValueError("dim must be the sum of dims, and inputs the model's modalities")
        n_out = len(self.targets) if self.task == "regression" else 1 if self.task == "binary" else self.n_classes
        if s.fusion.n_out != n_out:
            raise ValueError(f"student.fusion.n_out is {s.fusion.n_out}; a {self.task} model of these targets "
                             f"has {n_out}")
        if set(self.standardizer) != set(mods):
            raise ValueError(f"standardizer must have one entry per modality {mods}; "
                             f"it has {sorted(self.standardizer)}")
        for m in mods:
            _check_stats(m, self.standardizer[m], dims[m])
        if self.postprocess:
            raise ValueError("postprocess applies to single-modality models")
        return self


def _check_stats(m: str, st: _Stats, dim: int) -> None:
    if len(st.mean) != dim or len(st.std) != dim:
        raise ValueError(f"standardizer {m!r} has {len(st.mean)} means and {len(st.std)} stds; dim is {dim}")
    if not all(math.isfinite(v) for v in st.mean) or not all(math.isfinite(v) and v > 0 for v in st.std):
        raise ValueError(f"standardizer {m!r} must have finite means and positive finite stds")


def build_student(spec: StudentSpec | FusedSpec | RawAudioSpec) -> SingleModalityModel | FusedModel | RawAudioModel:
    if isinstance(spec, FusedSpec):
        return FusedModel(spec)
    return RawAudioModel(spec) if isinstance(spec, RawAudioSpec) else SingleModalityModel(spec)


def save_model(
    student: SingleModalityModel | FusedModel, bundle: Bundle, cfg: TrainConfig, out: Path,
    postprocess: dict | None = None,
) -> Path:
    fused = isinstance(student, FusedModel)
    parts = student.spec.modalities if fused else [student.spec.modality]
    m = "+".join(parts) if fused else student.spec.modality
    dims = {p: bundle.ds.modalities[p] for p in parts}
    meta = {
        "format": FORMAT,
        "student": json.loads(student.spec.model_dump_json()),
        "modality": m,
        "dim": sum(dims.values()),
        "dims": dims if fused else None,
        "task": bundle.task,
        "targets": bundle.targets,
        "n_classes": bundle.ds.n_classes,
        "standardizer": Standardizer({p: bundle.scaler.mean[p] for p in dims},
                                     {p: bundle.scaler.std[p] for p in dims}).to_json(),
        "step_rate_hz": bundle.ds.step_rate_hz,
        "label_delay_steps": bundle.k_delay,
        "window_steps": bundle.eval_win,
        # An early-fused input is rebuilt from these modalities at prediction time.
        "inputs": parts if fused else m.split("+"),
        # The AVEC chain chosen on validation, applied by `stew predict` (None: raw predictions).
        "postprocess": {t: c.to_json() for t, c in postprocess.items()} if postprocess else None,
        "extractor": bundle.ds.meta.get("extractor"),
        "label_scale": bundle.ds.meta.get("label_scale") if bundle.task == "regression" else None,
        "provenance": {"method": cfg.method, "teacher": cfg.teacher, "seed": cfg.seed, "data": str(cfg.data)},
    }
    _write_atomically(out, {k: v.detach().contiguous() for k, v in student.state_dict().items()}, meta)
    return out


def _write_atomically(out: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    # A previous model folder is replaced; a folder holding anything else is the user's and is refused.
    with atomic_dir(out, replaceable=MODEL_FILES) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        follow_umask(tmp / WEIGHTS)  # safetensors writes 0600: a service account could not read the model
        (tmp / META).write_text(json.dumps(meta, indent=2))


def export(run_dir: Path, out: Path, impute: str | None = None, k: int | None = None) -> Path:
    """Copy a run's deployable model (weaker encoder and head only) to ``out``, checking it loads.

    ``out`` must be new, empty or an earlier model folder: a folder with any other file is refused,
    never emptied (checked before anything is read or written). ``impute``/``k`` set how a fusion
    model fills absent modalities at prediction (default: as it was trained).
    """
    run_dir, out = Path(run_dir), Path(out)
    check_output_folder(out, replaceable=MODEL_FILES)
    src = run_dir / "model"
    if not (src / META).is_file() or not (src / WEIGHTS).is_file():
        raise DataError("not a finished stew run (no model/model.json and model/model.safetensors)", file=run_dir)
    model, meta = load_model(src)
    if impute is not None or k is not None:
        if not isinstance(model, FusedModel):
            raise DataError("--impute and --k apply to fusion models", file=run_dir)
        try:
            spec = FusedSpec.model_validate({**meta["student"], "impute": impute or model.spec.impute,
                                             "k": k or model.spec.k})
        except ValidationError as e:
            raise DataError(_first_line(e).removeprefix("Value error, "), file=run_dir) from None
        meta["student"] = json.loads(spec.model_dump_json())
    run_metrics = run_dir / "metrics.json"
    if run_metrics.is_file():
        val = _read_json(run_metrics).get("val", {})
        if not isinstance(val, dict):
            raise DataError("'val' must be a mapping of metric -> value", file=run_metrics)
        meta["provenance"]["run"] = str(run_dir.resolve())
        meta["provenance"]["validation"] = val
    _write_atomically(out, {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; any failure (not UTF-8, not JSON, truncated, not an object) is a DataError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", file=path, row=e.lineno, column=e.colno) from None
    except UnicodeDecodeError:
        raise DataError("not a JSON file (not UTF-8 text)", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=path) from None
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object, found {type(raw).__name__}", file=path)
    return raw


def read_meta(path: Path) -> ModelMeta:
    """``model.json`` validated against :class:`ModelMeta` (one-line DataError naming the key)."""
    from stew.config import first_error

    raw = _read_json(path)
    if raw.get("format") != FORMAT:
        raise DataError(f"unknown model format {raw.get('format')!r} (this stew reads {FORMAT!r})", file=path)
    try:
        return ModelMeta.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid '{loc}': {msg}" if loc else msg, file=path) from None


def _first_line(e: Exception) -> str:
    """The first line of ``e``'s message (its type's name when it has none): a one-line DataError's text."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types (and OSError) for any malformed file
        text = _first_line(e)
        try:
            with open(path, "rb") as f:
                magic = f.read(2)
        except OSError:
            magic = b""
        if magic[:1] == b"\x80" or magic == b"PK":  # pickle protocol 2+, or torch.save's zip of pickles
            text += " (it looks like a pickle or torch.save file: stew never unpickles)"
        raise DataError(f"not a readable safetensors file: {text}", file=path) from None


def _check_weights(spec: StudentSpec | FusedSpec | RawAudioSpec, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The weights' names, shapes and values match the model ``spec`` declares, before the real build.

    The reference model is built on the meta device: nothing is allocated, so a model.json declaring
    absurd sizes cannot exhaust memory before the mismatch is reported.
    """
    try:
        with torch.device("meta"):
            ref = build_student(spec).state_dict()
    except Exception as e:  # the spec passed its schema but torch rejects it (e.g. a negative size)
        raise DataError(f"cannot build the model it declares: {_first_line(e)}", file=path.parent / META) from None
    missing = [k for k in ref if k not in tensors]
    unexpected = [k for k in tensors if k not in ref]
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise DataError(f"weights do not match model.json: {what}", file=path)
    for k, want in ref.items():
        got = tensors[k]
        if tuple(got.shape) != tuple(want.shape):
            raise DataError(f"weights do not match model.json: {k!r} has shape {tuple(got.shape)}, "
                            f"model.json implies {tuple(want.shape)}", file=path)
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise DataError(f"weights do not match model.json: {k!r} has dtype {got.dtype}", file=path)
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise DataError(f"tensor {k!r} holds NaN or infinite values", file=path)


def load_model(path: Path) -> tuple[SingleModalityModel | FusedModel | RawAudioModel, dict]:
    """The model of a model folder and its metadata; every malformed file is a one-line DataError.

    ``model.json`` is checked against its schema and the weights against the model it declares before
    the model is built; safetensors never executes code, so a pickle renamed ``.safetensors`` is refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError("not a model folder", file=path)
    for f in (META, WEIGHTS):
        if not (path / f).is_file():
            raise DataError("missing file", file=path / f)
    meta = read_meta(path / META)
    tensors = _read_weights(path / WEIGHTS)
    _check_weights(meta.student, tensors, path / WEIGHTS)
    model = build_student(meta.student)
    model.load_state_dict(tensors)
    model.eval()
    raw = json.loads(meta.model_dump_json())
    raw["inputs"] = raw["inputs"] or meta.modality.split("+")
    return model, raw


def predict_dataset(model_dir: Path, data: Path | Dataset, out_csv: Path | None = None) -> pd.DataFrame:
    """Predict every step of every sequence in ``data`` (all splits) with an exported model."""
    if out_csv is not None:  # refuse an unusable --out before the model and data are read
        check_output_file(Path(out_csv))
    model, meta = load_model(model_dir)
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    where = None if isinstance(data, Dataset) else data
    used = None
    if isinstance(model, FusedModel):
        if model.spec.fusion.pool_time != (ds.label_level == "sequence"):
            want = "one label per sequence" if model.spec.fusion.pool_time else "one label per step"
            raise DataError(f"the model predicts {want}; these data have label_level {ds.label_level!r}", file=where)
        ds, used = _with_absent_modalities(ds, meta["dims"], where)
        seqs = ds.sequences
        prepared = _prepare_unlabelled(seqs, list(meta["dims"]), Standardizer.from_json(meta["standardizer"]))
        preds = predict_windows(model, prepared, meta["window_steps"], meta["label_delay_steps"])
    else:
        preds, seqs = _predict_single(model, meta, ds, where)
    if meta["postprocess"]:
        from stew.postprocess import Chain, apply_chains

        chains = {t: Chain.from_json(c) for t, c in meta["postprocess"].items()}
        preds = apply_chains(chains, preds, meta["targets"])
    frames = []
    for p, s in zip(preds, seqs, strict=True):
        df = pd.DataFrame({"split": s.split, "sequence": s.id, "step": np.arange(len(s)), "step_id": s.step_ids})
        if used is not None:  # which of a fusion model's inputs this sequence had (the rest were absent)
            df["modalities"] = "+".join(used[s.id]) or "none"
        if meta["task"] == "regression":
            for j, t in enumerate(meta["targets"]):
                df[f"pred_{t}"] = p[:, j]
                if meta["label_scale"]:  # the same prediction in the labels' own units (e.g. conflict in [-10, 10])
                    df[f"pred_{t}_original"] = _LabelScale.model_validate(meta["label_scale"]).to_original(p[:, j])
        elif meta["task"] == "binary":
            df["prob"], df["pred"] = p[:, 0], (p[:, 0] >= 0.5).astype(int)
        else:
            df["pred"] = p.argmax(1)
            for c in range(p.shape[1]):
                df[f"prob_{c}"] = p[:, c]
        frames.append(df)
    result = pd.concat(frames, ignore_index=True)
    if out_csv is not None:
        write_atomic(Path(out_csv), lambda tmp: result.to_csv(tmp, index=False))
    return result


def _predict_single(
    model: SingleModalityModel | RawAudioModel, meta: dict, ds: Dataset, where: Path | None
) -> tuple[list, list]:
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
    prepared = _prepare_unlabelled(ds.sequences, [m], Standardizer.from_json(meta["standardizer"]))
    return predict_windows(model, prepared, meta["window_steps"], meta["label_delay_steps"]), ds.sequences


def _with_absent_modalities(ds: Dataset, dims: dict[str, int], where: Path | None) -> tuple[Dataset, dict]:
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


def _prepare_unlabelled(seqs: list, modalities: list[str], scaler: Standardizer) -> list:
    # Prediction needs no labels: targets are placeholders of the right length, never read.
    stripped = [replace(s, targets=np.zeros((len(s), 1), np.float32)) for s in seqs]
    return prepare(stripped, modalities, [0], scaler, 0)
