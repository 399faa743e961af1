"""Audio clips in: a folder of audio files with a labels table, and the SSPNet Conflict Corpus.

Clip-level labels, as ConflictNET is trained: one Sequence per file, ``label_level="sequence"``, one
modality ``"audio"`` holding the waveform as ``[samples, 1]`` float32 (mask False on padding), targets
``[1, k]``. Every file is decoded once, by :mod:`stew.data.formats.waveform`: mono (stereo averaged),
resampled with soxr, cut or zero-padded to the clip length, RMS-normalised.

**Audio folder** (``is_audio_folder`` / ``read_audio_folder``)::

    ROOT/labels.csv     # file, <one column per target>, split and/or group
    ROOT/audio.yaml     # optional: label_range: [-10, 10], sample_rate: 8000, clip_s: 30 (how to read)
    ROOT/<file>         # WAV, FLAC, OGG, ... anything libsndfile decodes; subfolders allowed

``labels.csv``: ``file`` is the path relative to ROOT; every column other than ``file``, ``split`` and
``group`` is a numeric regression target. ``split`` is train/val/test ("dev", "valid", "validation"
mean val). With only ``group``, every clip is train and the trainer carves validation groups out of
it (``stew.data.splits.carve_validation``); with only ``split``, each clip is its own group; with both,
a group must stay in one split. ``audio.yaml`` declares the labels' range: a label outside it is an
error, and with ``rescale`` the labels are mapped linearly onto [-1, 1] (conflict in [-10, 10] becomes
conflict / 10).

Errors (each a one-line DataError naming the file): a row naming a missing file, an audio file in the
folder without a row, a duplicate row, a missing or non-numeric label, a label outside the declared
range, a bad split; a file that is not audio, has a corrupt or truncated header, an encoding libsndfile
cannot decode, no samples, more than two channels, NaN/Inf samples, or is all silent.

**SSPNet Conflict Corpus** (``is_sspnet`` / ``read_sspnet``), as it ships and as the authors' code reads
it (``smartcameras/ConflictNET`` dataLoad.py)::

    ROOT/conflictlevel.csv        # Name (clip name without extension), Value (conflict in [-10, 10])
    ROOT/audiodata/*.wav          # xx-yy-zz_start_end.wav: debate date, start and end second
                                  # or audiodata/{train,dev|val,test}/*.wav, pre-split
    ROOT/moderators.csv           # optional: debate (xx-yy-zz), moderator (speaker number)

The debate (``xx-yy-zz``) is the group. The split is, in this order: a ``split`` column of
conflictlevel.csv; the audiodata/ subfolder; the INTERSPEECH 2013 ComParE partition (moderator
#50 -> train, #153 -> val, any other -> test) applied to a ``moderator`` column of conflictlevel.csv or to
moderators.csv. The corpus's participant list and diarization files are not read: their formats are
not documented publicly, so the moderator of each debate must be given explicitly.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from stew.data.dataset import Dataset, Sequence
from stew.data.formats.waveform import AUDIO_SUFFIXES, SILENCE_RMS, audio_files, prepare_clip, read_audio
from stew.data.validate import entry_exists, read_text, read_yaml, require_file
from stew.errors import DataError
from stew.util import progress

__all__ = [
    "LABELS", "is_audio_folder", "is_sspnet", "label_scaler", "labels_to_original", "read_audio_folder", "read_labels",
    "read_sspnet",
]

LABELS = "labels.csv"
AUDIO_YAML = "audio.yaml"
SSPNET_LABELS = "conflictlevel.csv"
SSPNET_MODERATORS = "moderators.csv"
SSPNET_RANGE = (-10.0, 10.0)
# INTERSPEECH 2013 ComParE Conflict sub-challenge partition, by each debate's moderator.
SSPNET_RULE = {"50": "train", "153": "val"}
RESERVED = ("file", "split", "group")
SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val", "validation": "val",
                 "development": "val", "test": "test"}


# --------------------------------------------------------------------------------------------------
# The labels table


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a small CSV as strings (whitespace stripped, trailing blank lines dropped)."""
    text = read_text(path)
    try:
        rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO(text))]
    except csv.Error as e:
        raise DataError(f"not a CSV table: {e}", file=path) from None
    while rows and not any(rows[-1]):
        rows.pop()
    if not rows:
        raise DataError("empty file", file=path)
    header = rows[0]
    if "" in header:
        raise DataError(f"empty column name in the header (column {header.index('') + 1})", file=path)
    dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if dup is not None:
        raise DataError(f"column {dup!r} appears twice in the header", file=path)
    for i, r in enumerate(rows[1:]):
        if len(r) != len(header):
            raise DataError(f"{len(r)} fields, expected {len(header)} (as in the header)", file=path, row=i + 1)
    if len(rows) == 1:
        raise DataError("no data rows", file=path)
    return header, rows[1:]


def _numbers(values: list[str], path: Path, column: str, *, what: str = "label") -> np.ndarray:
    out = np.empty(len(values))
    for i, v in enumerate(values):
        if v == "":
            raise DataError(f"missing {what}", file=path, row=i + 1, column=column)
        try:
            out[i] = float(v)
        except ValueError:
            raise DataError(f"{what} is not a number: {v!r}", file=path, row=i + 1, column=column) from None
        if not np.isfinite(out[i]) or abs(out[i]) > np.finfo(np.float32).max:
            raise DataError(f"{what} is not finite in float32: {v!r}", file=path, row=i + 1, column=column)
    return out


AUDIO_KEYS = ("label_range", "sample_rate", "clip_s")


def _audio_yaml(root: Path) -> dict:
    """ROOT/audio.yaml as a mapping (empty when absent): ``label_range``, and how the clips are meant to
    be read, ``sample_rate`` (Hz) and ``clip_s`` (seconds per clip, null: full length)."""
    path = root / AUDIO_YAML
    if not entry_exists(path):
        return {}
    doc = read_yaml(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise DataError("expected a mapping (label_range: [lo, hi])", file=path)
    unknown = sorted(set(doc) - set(AUDIO_KEYS))
    if unknown:
        raise DataError(f"unknown key {unknown[0]!r} (known: {', '.join(AUDIO_KEYS)})", file=path)
    sr = doc.get("sample_rate")
    if sr is not None and (not isinstance(sr, int) or isinstance(sr, bool) or sr < 1000):
        raise DataError(f"sample_rate must be a whole number of Hz (at least 1000), got {sr!r}", file=path)
    clip = doc.get("clip_s")
    if clip is not None and (not isinstance(clip, int | float) or isinstance(clip, bool) or not clip > 0):
        raise DataError(f"clip_s must be a positive number of seconds (or null: full length), got {clip!r}", file=path)
    return doc


def _label_range(root: Path) -> tuple[float, float] | None:
    """``label_range`` from ROOT/audio.yaml, or None when the file or the key is absent."""
    path = root / AUDIO_YAML
    lr = _audio_yaml(root).get("label_range")
    if lr is None:
        return None
    ok = (isinstance(lr, list) and len(lr) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                         for v in lr))
    if not ok or not (np.isfinite(lr).all() and lr[0] < lr[1]):
        raise DataError(f"label_range must be [lo, hi] with finite lo < hi, got {lr!r}", file=path)
    return float(lr[0]), float(lr[1])


def _safe_relative(name: str, path: Path, row: int) -> str:
    p = Path(name)
    if name == "" or p.is_absolute() or ".." in p.parts:
        raise DataError(f"file must be a path inside the folder, got {name!r}", file=path, row=row, column="file")
    return p.as_posix()


def _check_split(values: list[str], path: Path, column: str = "split") -> list[str]:
    out = []
    for i, v in enumerate(values):
        sp = SPLIT_ALIASES.get(v.lower())
        if sp is None:
            raise DataError(f"split must be train, val (or dev) or test, got {v!r}", file=path, row=i + 1,
                            column=column)
        out.append(sp)
    return out


def _check_group_leakage(table: pd.DataFrame, path: Path) -> None:
    """A group (speaker, debate) in two splits leaks into evaluation: an error, as in the native reader."""
    first: dict[str, tuple[str, int]] = {}
    for i, (g, sp) in enumerate(zip(table["group"], table["split"], strict=True)):
        g0 = first.setdefault(g, (sp, i))
        if g0[0] != sp:
            raise DataError(f"group {g!r} is in split {sp!r} and also in split {g0[0]!r} (row {g0[1] + 1}): a group "
                            "must stay in one split", file=path, row=i + 1, column="group")


def _check_range(table: pd.DataFrame, targets: list[str], label_range: tuple[float, float] | None,
                 path: Path, declared_in: str) -> None:
    if label_range is None:
        return
    lo, hi = label_range
    for t in targets:
        bad = np.flatnonzero((table[t].to_numpy() < lo) | (table[t].to_numpy() > hi))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"label {table[t].iloc[i]:g} for {table['file'].iloc[i]} is outside [{lo:g}, {hi:g}] "
                            f"(declared in {declared_in})", file=path, row=i + 1, column=t)


def _check_files(root: Path, table: pd.DataFrame, path: Path, scan: Path) -> None:
    """Every row's file exists, and every audio file under ``scan`` has a row."""
    for i, f in enumerate(table["file"]):
        p = root / f
        if not entry_exists(p):
            raise DataError(f"missing file: listed in {path.name} (row {i + 1})", file=p)
        require_file(p)
    listed = {os.path.normpath(root / f) for f in table["file"]}
    for p in audio_files(scan):
        if os.path.normpath(p) not in listed:
            raise DataError(f"audio file without a label: no row in {path.name}", file=p)


def read_labels(root: Path) -> pd.DataFrame:
    """Read and validate ROOT/labels.csv (and ROOT/audio.yaml).

    Returns one row per clip: ``file`` (relative path), the float target columns, ``split``
    (normalised: dev -> val) and ``group`` when given. ``attrs`` holds ``targets`` and ``label_range``.
    Every referenced file must exist and every audio file in the folder must have a row.
    """
    root = Path(root)
    path = root / LABELS
    header, rows = _read_csv(path)
    if "file" not in header:
        raise DataError("needs a 'file' column", file=path)
    if "split" not in header and "group" not in header:
        raise DataError("needs a 'split' or a 'group' column (or both)", file=path)
    targets = [c for c in header if c not in RESERVED]
    if not targets:
        raise DataError("no label column: every column other than file, split and group is a target", file=path)
    cols = {c: [r[j] for r in rows] for j, c in enumerate(header)}
    table = pd.DataFrame({"file": [_safe_relative(f, path, i + 1) for i, f in enumerate(cols["file"])]})
    seen: dict[str, int] = {}
    for i, f in enumerate(table["file"]):
        if f in seen:
            raise DataError(f"duplicate file {f!r} (first at row {seen[f] + 1})", file=path, row=i + 1, column="file")
        seen[f] = i
    for t in targets:
        table[t] = _numbers(cols[t], path, t)
    if "split" in cols:
        table["split"] = _check_split(cols["split"], path)
    if "group" in cols:
        empty = next((i for i, g in enumerate(cols["group"]) if g == ""), None)
        if empty is not None:
            raise DataError("empty group", file=path, row=empty + 1, column="group")
        table["group"] = cols["group"]
    if "split" in table and "group" in table:
        _check_group_leakage(table, path)
    label_range = _label_range(root)
    _check_range(table, targets, label_range, path, AUDIO_YAML)
    _check_files(root, table, path, root)
    table.attrs.update(targets=targets, label_range=label_range)
    return table


def is_audio_folder(root: Path) -> bool:
    """True when ``root`` holds a labels.csv (then read_audio_folder reports what is wrong)."""
    return entry_exists(Path(root) / LABELS)


# --------------------------------------------------------------------------------------------------
# Decoding and the Dataset


def _clip_samples(sr: int, clip_s: float | None) -> int | None:
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    if clip_s is None:
        return None
    if not clip_s > 0:
        raise ValueError(f"clip length must be positive, got {clip_s} s")
    return int(round(clip_s * sr))


def _decode(path: Path, sr: int, samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One clip as the model sees it: ``[samples, 1]`` unit-RMS waveform and its mask (False on padding)."""
    x, _ = read_audio(path, sr)
    kept = x[:samples] if samples is not None else x
    if float(np.sqrt(np.mean(np.square(kept, dtype=np.float64)))) < SILENCE_RMS:
        where = f" in the first {samples / sr:g} s" if samples is not None else ""
        raise DataError(f"all-silent audio{where} (RMS below {SILENCE_RMS:g}): nothing to normalise", file=path)
    x, n = prepare_clip(x, samples)
    mask = np.zeros(len(x), dtype=bool)
    mask[:n] = True
    return x[:, None], mask


def label_scaler(label_range: tuple[float, float] | None, rescale: bool = True
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], dict | None]:
    """The map of labels onto [-1, 1] from a declared range (conflict in [-10, 10]: conflict / 10) and the
    ``meta["label_scale"]`` record of it; identity and None without a range or with ``rescale`` off."""
    if not rescale or label_range is None:
        return (lambda y: y), None
    lo, hi = label_range
    return (lambda y: 2.0 * (y - lo) / (hi - lo) - 1.0), {"original": [lo, hi], "scaled": [-1.0, 1.0]}


def labels_to_original(y: np.ndarray, meta: dict) -> np.ndarray:
    """Map labels or predictions on the [-1, 1] scale back to the range the files declared
    (``meta["label_scale"]``, set when the reader rescaled); unchanged when it did not."""
    scale = meta.get("label_scale")
    if not scale:
        return np.asarray(y)
    lo, hi = scale["original"]
    return (np.asarray(y, dtype=np.float64) + 1.0) / 2.0 * (hi - lo) + lo


def _build(root: Path, table: pd.DataFrame, *, name: str, source: str, sr: int, clip_s: float | None,
           rescale: bool, progress_lines: bool) -> Dataset:
    """The Dataset of a validated table (file, targets, split?, group?, id?): decode every file once."""
    samples = _clip_samples(sr, clip_s)
    targets: list[str] = list(table.attrs["targets"])
    label_range = table.attrs["label_range"]
    scale, label_scale = label_scaler(label_range, rescale)
    ids = list(table["id"]) if "id" in table else [str(Path(f).with_suffix("").as_posix()) for f in table["file"]]
    seen: dict[str, str] = {}
    for sid, f in zip(ids, table["file"], strict=True):
        if sid in seen:
            raise DataError(f"two audio files share the name {sid!r} ({seen[sid]}, {f})", file=root / f)
        seen[sid] = f
    say = progress.sayer(progress_lines)
    length = f"{clip_s:g} s clips" if clip_s is not None else "full length"
    say(f"decoding {len(table)} audio files ({sr} Hz, {length})")
    y = scale(table[targets].to_numpy(np.float64)).astype(np.float32)
    splits = table["split"] if "split" in table else ["train"] * len(table)
    groups = table["group"] if "group" in table else ids
    sequences = []
    for i, (f, sid, sp, g) in enumerate(zip(table["file"], ids, splits, groups, strict=True)):
        x, mask = _decode(root / f, sr, samples)
        sequences.append(Sequence(id=sid, group=str(g), split=str(sp), features={"audio": x}, masks={"audio": mask},
                                  targets=y[i: i + 1], step_ids=[sid]))
    meta = {"sample_rate": sr, "clip_samples": samples, "source": source, "label_scale": label_scale}
    return Dataset(name=name, task="regression", targets=targets, modalities={"audio": 1}, sequences=sequences,
                   label_range=(-1.0, 1.0) if label_scale else label_range, step_rate_hz=None, meta=meta,
                   label_level="sequence")


DECLARED = "declared"  # read_audio_folder: take the value from audio.yaml (else ConflictNET's 8 kHz, 30 s)


def read_audio_folder(root: Path, *, sr: int | None = None, clip_s: float | None | str = DECLARED,
                      rescale: bool = True, progress_lines: bool = False) -> Dataset:
    """Read an audio folder (labels.csv + audio files): one clip-level Sequence per file.

    ``sr`` and ``clip_s`` default to audio.yaml's ``sample_rate`` and ``clip_s``, else 8,000 Hz and 30 s
    (ConflictNET's clips); ``clip_s=None`` keeps every clip's full length. With ``rescale`` and a declared label
    range the targets are mapped onto [-1, 1]; ``meta["label_scale"]`` keeps the original range
    (``labels_to_original`` maps predictions back).
    """
    root = Path(root)
    declared = _audio_yaml(root)
    sr = sr if sr is not None else int(declared.get("sample_rate") or 8000)
    if clip_s == DECLARED:
        clip_s = float(declared["clip_s"]) if declared.get("clip_s") else None if "clip_s" in declared else 30.0
    _clip_samples(sr, clip_s)  # bad arguments fail before any file is read
    table = read_labels(root)
    return _build(root, table, name=root.name, source="audio-folder", sr=sr, clip_s=clip_s, rescale=rescale,
                  progress_lines=progress_lines)


# --------------------------------------------------------------------------------------------------
# SSPNet Conflict Corpus


def is_sspnet(root: Path) -> bool:
    """True when ``root`` holds the corpus's conflictlevel.csv."""
    return entry_exists(Path(root) / SSPNET_LABELS)


def _speaker(v: str) -> str:
    """A speaker number as the rule compares it: "50", "spk_50", "50.0" -> "50"."""
    m = re.fullmatch(r"(?:spk_?|speaker\s*#?\s*)?(\d+)(?:\.0*)?", v.strip(), flags=re.IGNORECASE)
    return str(int(m.group(1))) if m else v.strip()


def _debate(name: str) -> str:
    """The debate of a clip ``xx-yy-zz_start_end``: its date prefix."""
    return name.split("_", 1)[0]


def read_sspnet(root: Path, *, sr: int = 8000, clip_s: float | None = 30.0, rescale: bool = True,
                progress_lines: bool = False) -> Dataset:
    """Read the SSPNet Conflict Corpus (see the module docstring): target ``conflict``, [-10, 10] rescaled
    to [-1, 1] (conflict / 10), group = debate, split by the INTERSPEECH 2013 rule unless given."""
    root = Path(root)
    _clip_samples(sr, clip_s)
    path = root / SSPNET_LABELS
    header, rows = _read_csv(path)
    lower = {c.lower(): j for j, c in enumerate(header)}
    for need in ("name", "value"):
        if need not in lower:
            raise DataError(f"needs a {need.capitalize()!r} column (clip name, conflict level)", file=path)
    names = [r[lower["name"]] for r in rows]
    for i, n in enumerate(names):
        if n == "" or Path(n).name != n:
            raise DataError(f"bad clip name {n!r}", file=path, row=i + 1, column="Name")
    stems = [Path(n).stem if Path(n).suffix.lower() in AUDIO_SUFFIXES else n for n in names]
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):
        if s in seen:
            raise DataError(f"duplicate clip {s!r} (first at row {seen[s] + 1})", file=path, row=i + 1, column="Name")
        seen[s] = i
    values = _numbers([r[lower["value"]] for r in rows], path, header[lower["value"]])

    audio_dir = root / "audiodata" if (root / "audiodata").is_dir() else root
    found: dict[str, Path] = {}
    for p in audio_files(audio_dir):
        if p.stem in found:
            raise DataError(f"two audio files for clip {p.stem!r} ({found[p.stem].relative_to(root)})", file=p)
        found[p.stem] = p
    for p in found.values():
        if p.stem not in seen:
            raise DataError(f"audio file without a label: no row in {SSPNET_LABELS}", file=p)
    for i, s in enumerate(stems):
        if s not in found:
            raise DataError(f"missing file: no audio for clip {s!r} ({SSPNET_LABELS} row {i + 1})",
                            file=audio_dir / f"{s}.wav")
    files = [found[s].relative_to(root).as_posix() for s in stems]
    table = pd.DataFrame({"file": files, "id": stems, "conflict": values, "group": [_debate(s) for s in stems]})
    table["split"] = _sspnet_splits(root, header, rows, lower, stems, files, path)
    _check_group_leakage(table, path)
    _check_range(table, ["conflict"], SSPNET_RANGE, path, "the SSPNet layout")
    table.attrs.update(targets=["conflict"], label_range=SSPNET_RANGE)
    return _build(root, table, name=root.name, source="sspnet", sr=sr, clip_s=clip_s, rescale=rescale,
                  progress_lines=progress_lines)


def _sspnet_splits(root: Path, header: list[str], rows: list[list[str]], lower: dict[str, int], stems: list[str],
                   files: list[str], path: Path) -> list[str]:
    """Split per clip: a split column, else the audiodata/ subfolder, else the moderator rule."""
    if "split" in lower:
        return _check_split([r[lower["split"]] for r in rows], path, header[lower["split"]])
    folders = [Path(f).parts[1] if len(Path(f).parts) == 3 and Path(f).parts[0] == "audiodata" else None
               for f in files]
    if all(f is not None and f.lower() in SPLIT_ALIASES for f in folders):
        return [SPLIT_ALIASES[f.lower()] for f in folders]  # type: ignore[union-attr]
    if "moderator" in lower:
        mods = [r[lower["moderator"]] for r in rows]
        empty = next((i for i, m in enumerate(mods) if m == ""), None)
        if empty is not None:
            raise DataError("missing moderator", file=path, row=empty + 1, column=header[lower["moderator"]])
    else:
        mpath = root / SSPNET_MODERATORS
        if not entry_exists(mpath):
            raise DataError(
                "cannot apply the INTERSPEECH 2013 split: give a split or moderator column here, a moderators.csv "
                "(debate, moderator), or audiodata/{train,dev,test}/ folders", file=path)
        mheader, mrows = _read_csv(mpath)
        if [c.lower() for c in mheader[:2]] != ["debate", "moderator"] or len(mheader) != 2:
            raise DataError("expected the columns debate, moderator", file=mpath)
        by_debate: dict[str, str] = {}
        for i, (d, m) in enumerate(mrows):
            if d == "" or m == "":
                raise DataError("empty debate or moderator", file=mpath, row=i + 1)
            if d in by_debate:
                raise DataError(f"debate {d!r} listed twice", file=mpath, row=i + 1, column="debate")
            by_debate[d] = m
        lacking = next((s for s in stems if _debate(s) not in by_debate), None)
        if lacking is not None:
            raise DataError(f"no moderator for debate {_debate(lacking)!r} (clip {lacking})", file=mpath)
        mods = [by_debate[_debate(s)] for s in stems]
    return [SSPNET_RULE.get(_speaker(m), "test") for m in mods]
