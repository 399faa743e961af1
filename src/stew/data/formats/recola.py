"""Reader for the AVEC 2016 RECOLA feature release, and a writer of that layout for test fixtures.

Layout (``FS`` is a feature set: ``arousal`` or ``valence``)::

    ROOT/features_audio/FS/{train,dev,test}_N.arff             # frameTime + 88 eGeMAPS functionals
    ROOT/features_video_appearance/FS/{train,dev,test}_N.arff  # frameTime + 168 (PCA of LGBP-TOP)
    ROOT/features_video_geometric/FS/{train,dev,test}_N.arff   # frameTime + 632 (49 landmarks)
    ROOT/ratings_gold_standard/{arousal,valence}/{train,dev,test}_N.arff  # Instance_name, frameTime, GoldStandard

One row per 40 ms frame. AVEC 2016 computes each feature set with window sizes tuned per target
dimension, hence one copy per target; ``feature_set`` picks which copy to load. Every file may
instead be a ``.csv`` with a header row (``;`` separated, AVEC 2018 style) and the same columns.

In every table the ``frameTime`` column is required; columns before it are identifiers and are
ignored, columns after it are the values. See docs/formats.md for what is validated.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stew.data.dataset import Dataset, Sequence
from stew.data.validate import check_dim, check_finite, check_labels, require_file
from stew.errors import DataError
from stew.util.atomic import atomic_dir

FORMAT = "avec2016-recola"
MODALITY_DIRS = {
    "audio": "features_audio",
    "video_app": "features_video_appearance",
    "video_geo": "features_video_geometric",
}
STANDARD_DIMS = {"audio": 88, "video_app": 168, "video_geo": 632}
LABEL_DIR = "ratings_gold_standard"
TARGETS = ("arousal", "valence")
SPLIT_OF = {"train": "train", "dev": "val", "test": "test"}
PREFIX_OF = {v: k for k, v in SPLIT_OF.items()}
LABEL_RANGE = (-1.0, 1.0)
STEP_RATE_HZ = 25.0
TIME_TOL = 1e-6

_RECORDING_RE = re.compile(r"(train|dev|test)_(\d+)\.(arff|csv)")
_NAME_RE = re.compile(r"(train|dev|test)_(\d+)")
_ATTR_RE = re.compile(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)", re.IGNORECASE)
_NUMERIC_TYPES = ("numeric", "real", "integer")


@dataclass
class _Table:
    path: Path
    columns: list[str]  # the value columns, after frameTime
    times: np.ndarray  # [rows] float64
    values: np.ndarray  # [rows, len(columns)] float64


def is_recola(root: Path) -> bool:
    """True when ``root`` has the gold-standard folder or any AVEC 2016 feature folder."""
    return (root / LABEL_DIR).is_dir() or any((root / d).is_dir() for d in MODALITY_DIRS.values())


# ---------------------------------------------------------------------------------------------- parsing


def _lines(path: Path) -> list[str]:
    require_file(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: {e}", file=path) from e
    except OSError as e:
        raise DataError(f"cannot read: {e}", file=path) from e
    if not any(ln.strip() for ln in lines):
        raise DataError("empty file", file=path)
    return lines


def _read_arff(path: Path) -> _Table:
    lines = _lines(path)
    names: list[str] = []
    types: list[str] = []
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("%") or s.lower().startswith("@relation"):
            continue
        if s.lower().startswith("@attribute"):
            m = _ATTR_RE.fullmatch(s)
            if m is None:
                raise DataError(f"malformed attribute declaration {s!r}", file=path)
            names.append(m.group(1).strip("'\""))
            types.append(m.group(2).strip().lower())
        elif s.lower() == "@data":
            data = [ln for ln in lines[i + 1 :] if ln.strip() and not ln.lstrip().startswith("%")]
            return _parse(path, names, data, sep=",", quotechar="'", types=types)
        else:
            raise DataError(f"unexpected line before @data: {s!r}", file=path)
    raise DataError("no @data section", file=path)


def _read_csv(path: Path) -> _Table:
    lines = [ln for ln in _lines(path) if ln.strip()]
    sep = ";" if ";" in lines[0] else ","
    names = [c.strip() for c in next(csv.reader([lines[0]], delimiter=sep))]
    return _parse(path, names, lines[1:], sep=sep, quotechar='"')


def _read_table(path: Path) -> _Table:
    return _read_arff(path) if path.suffix == ".arff" else _read_csv(path)


def _parse(path: Path, names: list[str], data: list[str], *, sep: str, quotechar: str, types=None) -> _Table:
    lowered = [n.lower() for n in names]
    if "frametime" not in lowered:
        raise DataError("no frameTime column", file=path, column="frameTime")
    t_col = lowered.index("frametime")
    cols = list(range(t_col, len(names)))
    if len(cols) < 2:
        raise DataError("no value columns after frameTime", file=path)
    for j in cols if types else ():
        if types[j] not in _NUMERIC_TYPES:
            raise DataError(f"attribute type {types[j]!r}, expected numeric", file=path, column=names[j])
    if not data:
        raise DataError("no data rows", file=path)
    # Identifiers are recording names and values are numbers: neither contains the separator.
    counts = [ln.count(sep) + 1 for ln in data]
    bad = next((i for i, c in enumerate(counts) if c != len(names)), None)
    if bad is not None:
        raise DataError(f"{counts[bad]} fields, expected {len(names)}", file=path, row=bad + 1)
    try:
        arr = pd.read_csv(
            io.StringIO("\n".join(data)), header=None, sep=sep, quotechar=quotechar,
            usecols=cols, dtype=np.float64, na_values=["?"],
        ).to_numpy()
    except ValueError:
        raise _locate_non_numeric(path, data, cols, names, sep=sep, quotechar=quotechar) from None
    check_finite(arr, path, [names[j] for j in cols])
    times = arr[:, 0]
    step = np.diff(times)
    back = np.flatnonzero(step <= 0)
    if back.size:
        r = int(back[0]) + 1
        what = "duplicate" if step[r - 1] == 0 else "decreasing"
        msg = f"{what} frameTime {times[r]:g} after {times[r - 1]:g}"
        raise DataError(msg, file=path, row=r + 1, column=names[t_col])
    return _Table(path, [names[j] for j in cols[1:]], times, arr[:, 1:])


def _locate_non_numeric(path: Path, data, cols, names, *, sep: str, quotechar: str) -> DataError:
    # Slow path, only taken after the fast parser failed: find the first cell float() rejects.
    for i, row in enumerate(csv.reader(data, delimiter=sep, quotechar=quotechar)):
        for j in cols:
            v = row[j].strip()
            if v == "?":
                continue
            try:
                float(v)
            except ValueError:
                return DataError(f"not a number: {row[j]!r}", file=path, row=i + 1, column=names[j])
    return DataError("cannot parse numbers", file=path)


def _check_aligned(tab: _Table, ref: _Table) -> None:
    n, n_ref = len(tab.times), len(ref.times)
    if n != n_ref:
        raise DataError(
            f"{n} frames but {ref.path} has {n_ref}: the files must cover the same frames",
            file=tab.path, row=min(n, n_ref) + 1,
        )
    off = np.flatnonzero(np.abs(tab.times - ref.times) > TIME_TOL)
    if off.size:
        r = int(off[0])
        raise DataError(
            f"frameTime {tab.times[r]:g} but {ref.path} has {ref.times[r]:g} on this row",
            file=tab.path, row=r + 1, column="frameTime",
        )


# ---------------------------------------------------------------------------------------------- reading


def _recordings(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if _RECORDING_RE.fullmatch(p.name) is None:
            continue
        require_file(p)  # a folder or a symlink loop named like a recording is an error, not a gap
        if p.stem in found:
            raise DataError(f"both {found[p.stem].name} and {p.name} exist: keep one", file=p)
        found[p.stem] = p
    return found


def _order(name: str) -> tuple[int, int]:
    prefix, n = name.split("_")
    return list(SPLIT_OF).index(prefix), int(n)


def read_recola(
    root: Path, feature_set: str = "arousal", *, expected_dims: Mapping[str, int] | None = STANDARD_DIMS
) -> Dataset:
    """Read and validate an AVEC 2016 RECOLA folder: one Sequence per recording.

    ``feature_set`` picks the arousal- or valence-tuned copy of the features. ``expected_dims``
    (default: the AVEC 2016 sizes 88/168/632) is enforced per modality; ``None`` learns the sizes
    from the files and only requires them to agree across recordings. Test recordings without any
    gold standard are skipped (AVEC keeps test labels private) and listed in
    ``meta["unlabelled_skipped"]``.
    """
    root = Path(root)
    if feature_set not in TARGETS:
        raise DataError(f"feature_set must be one of {TARGETS}, not {feature_set!r}", file=root)
    mod_dirs: dict[str, Path] = {}
    for mod, d in MODALITY_DIRS.items():
        if (root / d).is_dir():
            if not (root / d / feature_set).is_dir():
                raise DataError(f"missing folder: {d}/ has no {feature_set!r} feature set", file=root / d / feature_set)
            mod_dirs[mod] = root / d / feature_set
    if not mod_dirs:
        raise DataError(f"no feature folder ({', '.join(MODALITY_DIRS.values())})", file=root)
    if not (root / LABEL_DIR).is_dir():
        raise DataError("missing folder", file=root / LABEL_DIR)
    label_dirs = {t: root / LABEL_DIR / t for t in TARGETS if (root / LABEL_DIR / t).is_dir()}
    if not label_dirs:
        raise DataError(f"no gold-standard folder ({' or '.join(TARGETS)})", file=root / LABEL_DIR)

    feat_files = {m: _recordings(d) for m, d in mod_dirs.items()}
    label_files = {t: _recordings(d) for t, d in label_dirs.items()}
    names = sorted(set().union(*feat_files.values()), key=_order)
    if not names:
        raise DataError("no recordings ({train,dev,test}_N.arff or .csv)", file=next(iter(mod_dirs.values())))
    for m, files in feat_files.items():
        for name in names:
            if name not in files:
                other = next(f[name] for f in feat_files.values() if name in f)
                raise DataError(f"missing file: {other} exists", file=mod_dirs[m] / other.name)
    for files in label_files.values():
        for name, p in files.items():
            if name not in names:
                raise DataError("missing file: gold standard for a recording without features", file=p)
    # train and dev are always labelled; test only when the release includes its gold standard.
    test_labelled = any(n in files for files in label_files.values() for n in names if n.startswith("test_"))

    dims: dict[str, tuple[int, Path]] = {}
    sequences: list[Sequence] = []
    skipped: list[str] = []
    for name in names:
        split = SPLIT_OF[name.split("_")[0]]
        if split == "test" and not test_labelled:
            skipped.append(name)
            continue
        for t, files in label_files.items():
            if name not in files:
                src = next(iter(feat_files.values()))[name]
                raise DataError(f"missing file: {src} has no {t} gold standard", file=label_dirs[t] / src.name)
        tables = {m: _read_table(feat_files[m][name]) for m in mod_dirs}
        ref = next(iter(tables.values()))
        for m, tab in tables.items():
            d = tab.values.shape[1]
            if expected_dims is not None and m in expected_dims:
                check_dim(d, expected_dims[m], tab.path)
            elif m in dims and dims[m][0] != d:
                raise DataError(f"wrong dimension: {d} features, but {dims[m][1]} has {dims[m][0]}", file=tab.path)
            dims.setdefault(m, (d, tab.path))
            _check_aligned(tab, ref)
        ys = []
        for files in label_files.values():
            lab = _read_table(files[name])
            if lab.values.shape[1] != 1:
                raise DataError(f"{lab.values.shape[1]} value columns, expected 1 (GoldStandard)", file=lab.path)
            check_labels(lab.values, lab.path, lab.columns, label_range=LABEL_RANGE)
            _check_aligned(lab, ref)
            ys.append(lab.values[:, 0])
        sequences.append(
            Sequence(
                id=name, group=name, split=split,
                features={m: tab.values.astype(np.float32) for m, tab in tables.items()},
                # AVEC 2016 forces the video features to 0 on frames where no face was detected.
                masks={m: np.any(tab.values != 0, axis=1) for m, tab in tables.items()},
                targets=np.stack(ys, axis=1).astype(np.float32),
                step_ids=[f"{name}@{t:.3f}" for t in ref.times],
            )
        )
    if not sequences:
        raise DataError("no labelled recordings", file=root / LABEL_DIR)
    return Dataset(
        name="recola", task="regression", targets=list(label_dirs),
        modalities={m: dims[m][0] for m in mod_dirs}, sequences=sequences, n_classes=None,
        label_range=LABEL_RANGE, step_rate_hz=STEP_RATE_HZ,
        meta={"format": FORMAT, "source": str(root), "feature_set": feature_set, "unlabelled_skipped": skipped},
    )


# ---------------------------------------------------------------------------------------------- writing


def _recording_names(ds: Dataset) -> list[str]:
    for s in ds.sequences:
        if s.split not in PREFIX_OF:
            raise ValueError(f"sequence {s.id!r} has split {s.split!r}; expected one of {tuple(PREFIX_OF)}")
    ids = [s.id for s in ds.sequences]
    keep = len(set(ids)) == len(ids) and all(
        (m := _NAME_RE.fullmatch(s.id)) is not None and m.group(1) == PREFIX_OF[s.split] for s in ds.sequences
    )
    if keep:
        return ids
    counters = dict.fromkeys(PREFIX_OF.values(), 0)
    names = []
    for s in ds.sequences:
        prefix = PREFIX_OF[s.split]
        counters[prefix] += 1
        names.append(f"{prefix}_{counters[prefix]}")
    return names


def _format_table(fmt: str, columns: list[str], times: np.ndarray, values: np.ndarray, instance: str | None) -> str:
    sep = "," if fmt == "arff" else ";"
    buf = io.StringIO()
    # %.9g round-trips float32 exactly.
    np.savetxt(buf, np.column_stack([times, values]), fmt=["%.6f"] + ["%.9g"] * values.shape[1], delimiter=sep)
    rows = buf.getvalue().splitlines()
    if instance is not None:
        quoted = f"'{instance}'" if fmt == "arff" else instance
        rows = [f"{quoted}{sep}{r}" for r in rows]
    if fmt == "arff":
        header = ["@relation stew", ""]
        header += ["@attribute Instance_name string"] if instance is not None else []
        header += ["@attribute frameTime numeric", *(f"@attribute {c} numeric" for c in columns), "", "@data", ""]
    else:
        header = [sep.join((["name"] if instance is not None else []) + ["frameTime", *columns])]
    return "\n".join(header + rows) + "\n"


def write_recola_layout(ds: Dataset, root: Path, fmt: str = "arff") -> Path:
    """Write ``ds`` in the AVEC 2016 layout (for fixtures and interchange); returns ``root``.

    Modalities must be among audio/video_app/video_geo and targets among arousal/valence. Both
    feature-set folders get the same features; masked steps are written as all-zero rows, which is
    how the reader recognises them. Sequence ids are kept when they already read
    ``{train,dev,test}_N`` matching their split, else recordings are renumbered per split in order.
    Feature ARFFs start at frameTime (as in AVEC 2016); gold-standard files and all CSVs carry the
    recording name first.
    """
    if fmt not in ("arff", "csv"):
        raise ValueError(f"fmt must be arff or csv, not {fmt!r}")
    if not ds.modalities or set(ds.modalities) - set(MODALITY_DIRS):
        raise ValueError(f"modalities must be among {tuple(MODALITY_DIRS)}, not {tuple(ds.modalities)}")
    if not ds.targets or set(ds.targets) - set(TARGETS):
        raise ValueError(f"targets must be among {TARGETS}, not {tuple(ds.targets)}")
    root = Path(root)
    rate = ds.step_rate_hz or STEP_RATE_HZ
    with atomic_dir(root) as tmp:
        for seq, name in zip(ds.sequences, _recording_names(ds), strict=True):
            times = np.arange(len(seq)) / rate
            for m in ds.modalities:
                x = np.where(seq.masks[m][:, None], seq.features[m], 0.0)
                text = _format_table(fmt, [f"{m}_{j}" for j in range(x.shape[1])], times, x,
                                     name if fmt == "csv" else None)
                for fs in TARGETS:
                    path = tmp / MODALITY_DIRS[m] / fs / f"{name}.{fmt}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
            for j, t in enumerate(ds.targets):
                path = tmp / LABEL_DIR / t / f"{name}.{fmt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_format_table(fmt, ["GoldStandard"], times, seq.targets[:, j : j + 1], name))
    return root
