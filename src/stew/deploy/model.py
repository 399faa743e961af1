"""The torch side of deployment: build, save, export and load a model folder, and the torch engine.

A model folder holds ``model.json`` (architecture, fitted standardisation, label delay, windowing,
targets and provenance; :mod:`stew.deploy.meta`), ``model.safetensors`` (the student's encoder and
head, or a fusion model and its KNN memory bank) and, for the models ONNX can express,
``model.onnx`` (:mod:`stew.deploy.onnx`). It loads without the training config and without
executing code. :func:`stew.deploy.predict.predict_dataset` imports this module only for the torch engine.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from stew.data.dataset import Dataset, Sequence
from stew.data.preprocess import Standardizer, predict_windows, prepare
from stew.deploy.inputs import input_modalities, model_inputs
from stew.deploy.integrity import artefact_digests, notice_unverified, verify
from stew.deploy.meta import FORMAT, META, MODEL_FILES, ONNX, WEIGHTS, meta_dict, read_json, read_meta
from stew.deploy.onnx import fused_to_onnx, to_onnx
from stew.errors import DataError, first_line
from stew.models.conflictnet import RawAudioModel, RawAudioSpec
from stew.models.fused import FusedModel, FusedSpec
from stew.models.student import SingleModalityModel, StudentSpec
from stew.util.atomic import atomic_dir, check_output_folder, follow_umask

if TYPE_CHECKING:
    from stew.config import TrainConfig
    from stew.data.bundle import Bundle

ExportFormat = Literal["onnx", "safetensors", "both"]


def build_student(spec: StudentSpec | FusedSpec | RawAudioSpec) -> SingleModalityModel | FusedModel | RawAudioModel:
    """The (untrained) model a spec declares."""
    if isinstance(spec, FusedSpec):
        return FusedModel(spec)
    return RawAudioModel(spec) if isinstance(spec, RawAudioSpec) else SingleModalityModel(spec)


def save_model(
    student: SingleModalityModel | FusedModel, bundle: Bundle, cfg: TrainConfig, out: Path,
    postprocess: dict | None = None,
) -> Path:
    """Write a trained ``student`` as a model folder at ``out`` (atomically): its weights and ``model.json``
    with the run's standardisation, label delay, windows, targets, extractor and ``postprocess`` chains."""
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
    # Weights on the CPU whatever device trained them: a model folder loads anywhere.
    _write_atomically(out, {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, meta)
    return out


def _write_atomically(out: Path, tensors: dict[str, torch.Tensor] | None, meta: dict,
                      graph: bytes | None = None) -> None:
    # A previous model folder is replaced; a folder holding anything else is the user's and is refused.
    with atomic_dir(out, replaceable=MODEL_FILES) as tmp:
        if tensors is not None:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
            follow_umask(tmp / WEIGHTS)  # safetensors writes 0600: a service account could not read the model
        if graph is not None:
            (tmp / ONNX).write_bytes(graph)
        # The digests of what was just written, replacing any copied from the source folder.
        (tmp / META).write_text(json.dumps({**meta, "sha256": artefact_digests(tmp)}, indent=2))


def onnx_exportable(model: SingleModalityModel | FusedModel | RawAudioModel) -> str | None:
    """None when ``model`` exports to ONNX, else the one-line reason it does not."""
    if isinstance(model, RawAudioModel) and model.spec.net.gate_activation == "hard_sigmoid":
        return "ConflictNET with hard-sigmoid LSTM gates (a Python loop over time) has no ONNX export"
    return None


def export(
    run_dir: Path, out: Path, impute: str | None = None, k: int | None = None, fmt: ExportFormat = "both"
) -> Path:
    """Copy a run's deployable model (weaker encoder and head only) to ``out``, checking it loads.

    ``fmt``: ``both`` (default) writes ``model.safetensors`` and, for the models ONNX expresses,
    ``model.onnx``; ``safetensors`` or ``onnx`` writes one of them (``onnx`` for a torch-free
    deployment; a model without an ONNX export is then refused). ``model.json`` is always written.
    The ONNX graph is checked against torch before anything is written.

    ``out`` must be new, empty or an earlier model folder: a folder with any other file is refused,
    never emptied (checked before anything is read or written). ``impute``/``k`` set how a fusion
    model fills absent modalities at prediction (default: as it was trained).
    """
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in ("onnx", "safetensors", "both"):
        raise DataError(f"--format must be onnx, safetensors or both, not {fmt!r}")
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
            raise DataError(first_line(e).removeprefix("Value error, "), file=run_dir) from None
        meta["student"] = json.loads(spec.model_dump_json())
    why_not = onnx_exportable(model)
    if fmt == "onnx" and why_not:
        raise DataError(f"--format onnx: {why_not}; use --format safetensors", file=run_dir)
    run_metrics = run_dir / "metrics.json"
    if run_metrics.is_file():
        val = read_json(run_metrics).get("val", {})
        if not isinstance(val, dict):
            raise DataError("'val' must be a mapping of metric -> value", file=run_dir / "metrics.json")
        meta["provenance"]["run"] = str(run_dir.resolve())
        meta["provenance"]["validation"] = val
    graph = None
    if fmt != "safetensors" and not why_not:
        graph = fused_to_onnx(model) if isinstance(model, FusedModel) else to_onnx(model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()} if fmt != "onnx" else None
    _write_atomically(out, tensors, meta, graph)
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types (and OSError) for any malformed file
        text = first_line(e)
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
        raise DataError(f"cannot build the model it declares: {first_line(e)}", file=path.parent / META) from None
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

    ``model.json`` is checked against its schema, every artefact against the SHA-256 it records
    (:mod:`stew.deploy.integrity`), and the weights against the model it declares before the model is
    built; safetensors never executes code, so a pickle renamed ``.safetensors`` is refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError("not a model folder", file=path)
    for f in (META, WEIGHTS):
        if not (path / f).is_file():
            raise DataError("missing file", file=path / f)
    meta = read_meta(path / META)
    verified = verify(path, meta)  # every artefact's digest, before any is parsed
    tensors = _read_weights(path / WEIGHTS)
    _check_weights(meta.student, tensors, path / WEIGHTS)
    model = build_student(meta.student)
    model.load_state_dict(tensors)
    model.eval()
    if not verified:
        notice_unverified(path)
    return model, meta_dict(meta)


def predict_torch(
    model_dir: Path, data: Path | Dataset, threads: int | None = None
) -> tuple[list[np.ndarray], list[Sequence], dict | None, dict]:
    """The torch engine of :func:`stew.deploy.predict.predict_dataset`: activated predictions per
    sequence, the sequences, a fusion model's modalities per sequence (else None) and the metadata."""
    if threads:
        torch.set_num_threads(threads)
    model, meta = load_model(model_dir)
    ds, used = model_inputs(model.spec, meta, data)
    modalities = input_modalities(model.spec, meta)
    prepared = _prepare_unlabelled(ds.sequences, modalities, Standardizer.from_json(meta["standardizer"]))
    preds = predict_windows(model, prepared, meta["window_steps"], meta["label_delay_steps"])
    return preds, ds.sequences, used, meta


def _prepare_unlabelled(seqs: list, modalities: list[str], scaler: Standardizer) -> list:
    # Prediction needs no labels: targets are placeholders of the right length, never read.
    stripped = [replace(s, targets=np.zeros((len(s), 1), np.float32)) for s in seqs]
    return prepare(stripped, modalities, [0], scaler, 0)
