"""The model folder's files and the schema of ``model.json``, without torch.

Everything that reads a model folder starts here: the torch engine (:mod:`stew.deploy.model`), the
torch-free ONNX Runtime engine (:mod:`stew.deploy.runtime`) and the HTTP service
(:mod:`stew.deploy.serve`). ``model.json`` stays the single source of truth for standardisation,
label delay, windows, post-processing, targets and extractor, whichever weights file sits beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from stew.config import first_error
from stew.errors import DataError
from stew.models.specs import FusedSpec, RawAudioSpec, StudentSpec

FORMAT = "stew-model/1"
WEIGHTS, META, ONNX = "model.safetensors", "model.json", "model.onnx"
# The files beside model.json that loading reads: model.json records the SHA-256 of each one present
# (stew.deploy.integrity, docs/choices.md "Untrusted model folders").
ARTEFACTS = (WEIGHTS, ONNX)
# A model folder holds these files and nothing else; only such a folder is ever replaced.
MODEL_FILES = frozenset({META, *ARTEFACTS})
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Stats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: list[float]
    std: list[float]


class LabelScale(BaseModel):
    """The labels' own range when a reader mapped them onto another (``model.json`` ``label_scale``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    original: tuple[float, float]
    scaled: tuple[float, float] = (-1.0, 1.0)

    @model_validator(mode="after")
    def _ordered(self) -> LabelScale:
        if not (self.original[0] < self.original[1] and self.scaled[0] < self.scaled[1]):
            raise ValueError("label_scale ranges must be [low, high] with low < high")
        return self

    def to_original(self, y: np.ndarray) -> np.ndarray:
        """Values on the scaled range mapped back onto the original one."""
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
    label_scale: LabelScale | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    # {artefact: SHA-256 hex} of every artefact written beside model.json (stew.deploy.integrity). None: a
    # folder written before stew recorded them, loaded unverified with a one-line notice.
    sha256: dict[Literal["model.safetensors", "model.onnx"], Sha256] | None = None

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
            # Imported only for a model with a chain: scipy costs ~0.8 s at start-up of `stew predict` / `serve`.
            from stew.scoring.postprocess import Chain

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


def read_json(path: Path) -> dict[str, Any]:
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
    raw = read_json(path)
    if raw.get("format") != FORMAT:
        raise DataError(f"unknown model format {raw.get('format')!r} (this stew reads {FORMAT!r})", file=path)
    try:
        return ModelMeta.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid '{loc}': {msg}" if loc else msg, file=path) from None


def meta_dict(meta: ModelMeta) -> dict:
    """The validated metadata as a plain dict, ``inputs`` filled in (older folders lack it)."""
    raw = json.loads(meta.model_dump_json())
    raw["inputs"] = raw["inputs"] or meta.modality.split("+")
    return raw
