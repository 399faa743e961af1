"""stew's own dataset format: a YAML manifest plus one table per modality (Parquet or NPZ).

Layout::

    DIR/manifest.yaml
    DIR/index.parquet      # one row per step: sequence, step, step_id, group, split, <target columns>
    DIR/<modality>.parquet # one row per step: sequence, step, f0..f{d-1} [, present]

``manifest.yaml``::

    stew_format: 1
    name: synth-recola
    task: regression            # regression | binary | multiclass
    targets: [arousal, valence]
    label_range: [-1.0, 1.0]    # regression only
    n_classes: 2                # binary (2) / multiclass only
    step_rate_hz: 25.0          # frames; null for utterance-level data
    label_level: step           # step (default) | sequence: one label per sequence (see below)
    labelled: true              # false: recordings without labels (no target columns; see below)
    index: index.parquet
    modalities:
      audio: {dim: 88, file: audio.parquet}

Every table may be ``.parquet`` or ``.npz`` (an NPZ holds one array per column; features may be one
2-D array named ``features`` instead of ``f0..``). Rows of a modality table must carry the same
``(sequence, step)`` keys, in the same order, as the index. The optional boolean ``present`` column
is the missing-step mask; without it a step whose features are all zero counts as missing.

With ``label_level: sequence`` (one label per clip or utterance) the index has one row per sequence
(``step`` 0), and each modality table has its own steps: rows ``(sequence, 0..T_m-1)`` grouped by
sequence, every sequence named in the index. A sequence absent from a modality table has that
modality missing (one masked step of zeros).

With ``labelled: false`` the index has no target columns (any there are ignored) and every label reads
as NaN: recordings to predict on, or CM-StEW's ``--unlabelled`` pairs. ``targets`` still names the task's
targets; ``stew train`` refuses such a folder as its ``--data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stew.data.dataset import SPLITS, Dataset, Sequence
from stew.data.validate import check_dim, check_finite, check_labels, check_unique, read_yaml, require_file
from stew.errors import DataError
from stew.util.atomic import atomic_dir

MANIFEST = "manifest.yaml"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModalitySpec(_Strict):
    file: str = Field(min_length=1)
    dim: int | None = Field(default=None, ge=1)


class Manifest(_Strict):
    """The manifest's schema: every key, type and range is checked before any table is opened."""

    stew_format: Literal[1] = FORMAT_VERSION
    name: str | int | float | None = None  # YAML reads a name like 2016 as a number
    task: Literal["regression", "binary", "multiclass"]
    targets: list[str] = Field(min_length=1)
    label_range: tuple[float, float] | None = None  # regression only
    n_classes: int | None = Field(default=None, ge=2)
    step_rate_hz: float | None = Field(default=None, gt=0)  # None: utterance-level data
    label_level: Literal["step", "sequence"] = "step"
    labelled: bool = True
    index: str = Field(min_length=1)
    modalities: dict[str, ModalitySpec] = Field(min_length=1)
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct, not {self.targets}")
        if self.label_range is not None and not self.label_range[0] < self.label_range[1]:
            raise ValueError(f"label_range must be [low, high] with low < high, not {list(self.label_range)}")
        if self.task == "multiclass" and self.n_classes is None:
            raise ValueError("multiclass datasets must declare n_classes")
        if self.task == "binary" and self.n_classes not in (None, 2):
            raise ValueError(f"a binary task has n_classes 2, not {self.n_classes}")
        return self


def read_manifest(path: Path) -> Manifest:
    """Parse and validate ``manifest.yaml``; any problem is one DataError line naming the key."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise DataError("a manifest must be a mapping", file=path)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise DataError(f"invalid manifest{' key ' + repr(loc) if loc else ''}: {err['msg']}", file=path) from None


def is_native(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _read_table(path: Path) -> dict[str, np.ndarray]:
    require_file(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
            return {c: df[c].to_numpy() for c in df.columns}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read table: {e}", file=path) from e
    raise DataError("unsupported table type (use .parquet or .npz)", file=path)


def _feature_matrix(cols: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, list[str]]:
    if "features" in cols:
        x = np.asarray(cols["features"], dtype=np.float64)
        if x.ndim != 2:
            raise DataError("'features' must be a 2-D array", file=path)
        names = [f"features[{j}]" for j in range(x.shape[1])]
        check_finite(x, path, names)
        return x.astype(np.float32), names
    names = [c for c in cols if c.startswith("f") and c[1:].isdigit()]
    names.sort(key=lambda c: int(c[1:]))
    if [int(c[1:]) for c in names] != list(range(len(names))):
        raise DataError("feature columns must be f0..f{d-1} without gaps", file=path)
    if not names:
        raise DataError("no feature columns (f0..f{d-1})", file=path)
    # Filled column by column in float32 (the dtype every model reads): a float64 copy of the whole
    # table beside pandas' own made reading a 632-d, 200k-row file peak at several GB. A value beyond
    # float32's range becomes inf here, so check_finite reports it instead of it turning inf later.
    x = np.empty((len(cols[names[0]]), len(names)), np.float32)
    for j, c in enumerate(names):
        try:
            column = np.asarray(cols[c], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"non-numeric feature values: {e}", file=path) from e
        check_finite(column[:, None], path, [c])  # NaN, Inf or beyond float32, named by row and column
        x[:, j] = column
    return x, names


def read_native(root: Path) -> Dataset:
    """Read and validate a native-format dataset folder."""
    mpath = root / MANIFEST
    man = read_manifest(mpath)
    task = man.task
    targets = list(man.targets)
    n_classes = man.n_classes if man.n_classes is not None else (2 if task == "binary" else None)
    label_range = man.label_range

    ipath = root / man.index
    idx = _read_table(ipath)
    for c in ("sequence", "step", "group", "split", *(targets if man.labelled else [])):
        if c not in idx:
            raise DataError(f"index lacks column '{c}'", file=ipath, column=c)
    seq_col = idx["sequence"].astype(str)
    step_col = np.asarray(idx["step"]).astype(np.int64)
    keys = [f"{a}\x00{b}" for a, b in zip(seq_col, step_col, strict=True)]
    step_ids = idx["step_id"].astype(str) if "step_id" in idx else np.array([k.replace("\x00", "_") for k in keys])
    check_unique(list(step_ids), ipath, "step_id")
    check_unique(keys, ipath, "sequence,step")
    bad_split = [i for i, s in enumerate(idx["split"].astype(str)) if s not in SPLITS]
    if bad_split:
        raise DataError(f"split must be one of {SPLITS}", file=ipath, row=bad_split[0] + 1, column="split")
    if man.labelled:
        y = np.stack([np.asarray(idx[t], dtype=np.float64) for t in targets], axis=1)
        check_labels(y, ipath, targets, label_range=label_range, n_classes=n_classes if task != "regression" else None)
    else:
        y = np.full((len(seq_col), len(targets)), np.nan)

    if man.label_level == "sequence":
        bad_step = np.flatnonzero(step_col != 0)
        if bad_step.size:
            raise DataError("label_level sequence: the index has one row per sequence, with step 0",
                            file=ipath, row=int(bad_step[0]) + 1, column="step")
    feats: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    own_steps: dict[str, dict[str, slice]] = {}  # sequence-level data: each modality's rows per sequence
    for mod, spec in man.modalities.items():
        fpath = root / spec.file
        cols = _read_table(fpath)
        for c in ("sequence", "step"):
            if c not in cols:
                raise DataError(f"lacks column '{c}'", file=fpath, column=c)
        mseq, mstep = cols["sequence"].astype(str), np.asarray(cols["step"]).astype(np.int64)
        x, names = _feature_matrix(cols, fpath)
        check_dim(x.shape[1], spec.dim, fpath)  # x is float32, every value checked by _feature_matrix
        feats[mod], dims[mod] = x, x.shape[1]
        present[mod] = cols["present"].astype(bool) if "present" in cols else np.any(x != 0, axis=1)
        if man.label_level == "sequence":
            own_steps[mod] = _own_steps(mseq, mstep, set(seq_col), fpath)
            continue
        if len(cols["sequence"]) != len(keys):
            raise DataError(f"{len(cols['sequence'])} rows but the index has {len(keys)}", file=fpath)
        mismatch = np.flatnonzero((mseq != seq_col) | (mstep != step_col))
        if mismatch.size:
            r = int(mismatch[0])
            raise DataError(
                f"ids disagree with the index ({mseq[r]}/{mstep[r]} vs {seq_col[r]}/{step_col[r]})",
                file=fpath, row=r + 1, column="sequence,step",
            )

    sequences = []
    order = np.lexsort((step_col, seq_col))
    seq_sorted = seq_col[order]
    bounds = np.flatnonzero(np.r_[True, seq_sorted[1:] != seq_sorted[:-1], True])
    groups, splits = idx["group"].astype(str), idx["split"].astype(str)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        sid = str(seq_sorted[a])
        for col, vals in (("group", groups[rows]), ("split", splits[rows])):
            if len(set(vals)) != 1:
                raise DataError(
                    f"sequence {sid!r} has more than one {col}", file=ipath, row=int(rows[0]) + 1, column=col
                )
        if man.label_level == "sequence":
            features, masks = {}, {}
            for m in feats:
                r = own_steps[m].get(sid)
                features[m] = feats[m][r] if r is not None else np.zeros((1, dims[m]), np.float32)
                masks[m] = present[m][r] if r is not None else np.zeros(1, bool)
        else:
            features, masks = {m: feats[m][rows] for m in feats}, {m: present[m][rows] for m in feats}
        sequences.append(
            Sequence(
                id=sid, group=str(groups[rows[0]]), split=str(splits[rows[0]]), features=features, masks=masks,
                targets=y[rows].astype(np.float32), step_ids=[str(i) for i in step_ids[rows]],
            )
        )
    if not sequences:
        raise DataError("dataset has no rows", file=ipath)
    _check_group_leakage(groups, splits, ipath)
    return Dataset(
        name=str(man.name if man.name is not None else root.name), task=task, targets=targets, modalities=dims,
        sequences=sequences, n_classes=n_classes, label_range=label_range,
        step_rate_hz=man.step_rate_hz, meta=dict(man.meta or {}), label_level=man.label_level,
    )


def _own_steps(mseq: np.ndarray, mstep: np.ndarray, known: set[str], fpath: Path) -> dict[str, slice]:
    """Rows of each sequence in a sequence-level modality table: contiguous, steps 0..T-1 in order."""
    if len(mseq) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, mseq[1:] != mseq[:-1]])
    ends = np.r_[starts[1:], len(mseq)]
    out: dict[str, slice] = {}
    for a, b in zip(starts, ends, strict=True):
        sid = str(mseq[a])
        if sid in out:
            raise DataError(f"rows of sequence {sid!r} are not contiguous", file=fpath, row=int(a) + 1,
                            column="sequence")
        if sid not in known:
            raise DataError(f"sequence {sid!r} is not in the index", file=fpath, row=int(a) + 1, column="sequence")
        bad = np.flatnonzero(mstep[a:b] != np.arange(b - a))
        if bad.size:
            raise DataError(f"steps of sequence {sid!r} must run 0, 1, 2, ... in order", file=fpath,
                            row=int(a + bad[0]) + 1, column="step")
        out[sid] = slice(int(a), int(b))
    return out


def _check_group_leakage(groups: np.ndarray, splits: np.ndarray, ipath: Path) -> None:
    """A group (speaker, video) in two splits leaks its identity into evaluation: an error, as in the
    CMU-MOSI reader. Names the first row where the group turns up in a second split."""
    pairs = pd.DataFrame({"group": groups, "split": splits}).drop_duplicates()  # first row of each pair kept
    twice = pairs[pairs.duplicated("group", keep=False)]
    if twice.empty:
        return
    g = twice["group"].iloc[0]
    twice_g = twice[twice["group"] == g]
    (a, sp_a), (b, sp_b) = list(twice_g["split"].items())[:2]
    raise DataError(
        f"group {g!r} is in split {sp_b!r} and also in split {sp_a!r} (row {a + 1}): a group must stay in one split",
        file=ipath, row=int(b) + 1, column="group",
    )


def write_native(ds: Dataset, out: Path, fmt: str = "parquet") -> Path:
    """Write ``ds`` to ``out`` atomically (a temporary sibling folder renamed into place)."""
    if fmt not in ("parquet", "npz"):
        raise ValueError(f"fmt must be parquet or npz, not {fmt!r}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        seq = np.concatenate([[s.id] * len(s) for s in ds.sequences])
        step = np.concatenate([np.arange(len(s)) for s in ds.sequences])
        index = {
            "sequence": seq, "step": step,
            "step_id": np.concatenate([s.step_ids for s in ds.sequences]),
            "group": np.concatenate([[s.group] * len(s) for s in ds.sequences]),
            "split": np.concatenate([[s.split] * len(s) for s in ds.sequences]),
        }
        y = np.concatenate([s.targets for s in ds.sequences])
        labelled = not np.isnan(y).all()  # labels all NaN: a folder of recordings without labels
        if labelled:
            for j, t in enumerate(ds.targets):
                index[t] = y[:, j]
        _write_table(index, tmp / f"index.{fmt}")
        mods = {}
        for m, d in ds.modalities.items():
            x = np.concatenate([s.features[m] for s in ds.sequences]).astype(np.float32)
            # Each modality on its own clock when labels are per sequence; else on the index's steps.
            m_seq = np.concatenate([[s.id] * s.length(m) for s in ds.sequences])
            m_step = np.concatenate([np.arange(s.length(m)) for s in ds.sequences])
            cols: dict[str, np.ndarray] = {"sequence": m_seq, "step": m_step}
            cols |= {f"f{j}": x[:, j] for j in range(d)}
            cols["present"] = np.concatenate([s.masks[m] for s in ds.sequences])
            _write_table(cols, tmp / f"{m}.{fmt}")
            mods[m] = {"dim": d, "file": f"{m}.{fmt}"}
        man = {
            "stew_format": FORMAT_VERSION, "name": ds.name, "task": ds.task, "targets": ds.targets,
            "label_range": list(ds.label_range) if ds.label_range else None, "n_classes": ds.n_classes,
            "step_rate_hz": ds.step_rate_hz, "label_level": ds.label_level, "labelled": labelled,
            "index": f"index.{fmt}",
            "modalities": mods, "meta": ds.meta,
        }
        (tmp / MANIFEST).write_text(yaml.safe_dump(man, sort_keys=False))
    return out


def _write_table(cols: dict[str, np.ndarray], path: Path) -> None:
    if path.suffix == ".parquet":
        pd.DataFrame(cols).to_parquet(path, index=False)
    else:
        np.savez_compressed(path, **{k: np.asarray(v) if v.dtype != object else v.astype(str) for k, v in cols.items()})
