"""Reader for the public CMU-MOSI utterance-level feature release.

Layout (either split and any modality may be absent)::

    ROOT/{train,test}_ids.csv          # header 'utterance_id', then one id per row
    ROOT/{audio,video,text}_{split}0.csv  # no header, values double-quoted, CRLF; label last (0/1)

Row i of every file of a split is the same utterance. An utterance id is ``<video_id>_<n>``; the video
is the sequence and ``n`` its temporal position, so each video's rows are sorted by ``int(n)``. The
video id is everything before the last underscore (YouTube ids contain underscores). See
docs/formats.md for what is validated.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from stew.data.dataset import Dataset, Sequence
from stew.data.validate import check_finite, check_labels, check_unique, entry_exists, read_text, require_file
from stew.errors import DataError

SPLITS = ("train", "test")
MODALITIES = ("audio", "video", "text")
FORMAT = "cmu-mosi-utterance"
ID_HEADER = "utterance_id"
_ID_RE = re.compile(r"(.+)_(\d+)")


def ids_path(root: Path, split: str) -> Path:
    return root / f"{split}_ids.csv"


def feature_path(root: Path, modality: str, split: str) -> Path:
    return root / f"{modality}_{split}0.csv"


def is_mosi(root: Path) -> bool:
    """True when ``root`` holds any CMU-MOSI ids or feature file (then read_mosi reports what is wrong)."""
    return any(
        entry_exists(ids_path(root, sp)) or any(entry_exists(feature_path(root, m, sp)) for m in MODALITIES)
        for sp in SPLITS
    )


def _lines(path: Path) -> list[str]:
    lines = read_text(path).splitlines()
    # Trailing blank lines are an editor artefact; blank lines inside the data are errors.
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError("empty file", file=path)
    return lines


def _read_ids(path: Path) -> list[str]:
    rows = list(csv.reader(_lines(path)))
    header = [c.strip() for c in rows[0]]
    if header != [ID_HEADER]:
        raise DataError(f"expected the header {ID_HEADER!r}, found {','.join(rows[0])!r}", file=path)
    if len(rows) == 1:
        raise DataError("split is empty: the ids file has no rows", file=path)
    ids = []
    for i, r in enumerate(rows[1:]):
        if len(r) != 1:
            raise DataError(f"{len(r)} columns, expected 1", file=path, row=i + 1)
        ids.append(r[0].strip())
    return ids


def _parse_id(uid: str, path: Path, row: int) -> tuple[str, int]:
    m = _ID_RE.fullmatch(uid)
    if m is None:
        msg = f"malformed utterance id {uid!r}: expected <video_id>_<n>"
        raise DataError(msg, file=path, row=row, column=ID_HEADER)
    return m.group(1), int(m.group(2))


def _locate_non_numeric(lines: list[str], path: Path) -> DataError:
    # Slow path, only taken after the fast parser failed: find the first cell float() rejects.
    for i, row in enumerate(csv.reader(lines)):
        for j, v in enumerate(row):
            try:
                float(v)
            except ValueError:
                return DataError(f"not a number: {v!r}", file=path, row=i + 1, column=j + 1)
    return DataError("cannot parse numbers", file=path)


def _read_features(path: Path) -> np.ndarray:
    """A headerless quoted CSV of numbers: ``[rows, d + 1]`` float64, the label last."""
    lines = _lines(path)
    # Values are quoted numbers, never containing commas, so counting commas counts the columns.
    counts = [ln.count(",") + 1 if ln.strip() else 0 for ln in lines]
    n = counts[0]
    if n < 2:
        raise DataError("needs at least one feature column and the label", file=path, row=1)
    bad = next((i for i, c in enumerate(counts) if c != n), None)
    if bad is not None:
        raise DataError(f"{counts[bad]} columns, expected {n} (as in row 1)", file=path, row=bad + 1)
    try:
        x = pd.read_csv(io.StringIO("\n".join(lines)), header=None, dtype=np.float64).to_numpy()
    except ValueError:
        raise _locate_non_numeric(lines, path) from None
    check_finite(x, path)
    check_labels(x[:, -1:], path, [n], n_classes=2)
    return x


def _split_files(root: Path) -> dict[str, tuple[Path, dict[str, Path]]]:
    found: dict[str, tuple[Path, dict[str, Path]]] = {}
    for sp in SPLITS:
        ipath = ids_path(root, sp)
        # Anything at a file's name counts as present (a folder or a symlink loop is then reported as
        # such by require_file), not as an absent modality.
        feats = {m: require_file(p) for m in MODALITIES if entry_exists(p := feature_path(root, m, sp))}
        if not feats and not entry_exists(ipath):
            continue
        if not feats:
            names = ", ".join(feature_path(root, m, sp).name for m in MODALITIES)
            raise DataError(f"ids file without any feature file ({names})", file=ipath)
        if not entry_exists(ipath):
            raise DataError(f"missing file: {next(iter(feats.values())).name} needs its ids file", file=ipath)
        require_file(ipath)
        found[sp] = (ipath, feats)
    if not found:
        raise DataError("no CMU-MOSI ids or feature files", file=root)
    first = next(iter(found))
    for sp, (_, feats) in found.items():
        for m in MODALITIES:
            if (m in feats) != (m in found[first][1]):
                lacking = sp if m not in feats else first
                raise DataError(
                    f"missing file: modality {m!r} is present in one split and absent in {lacking!r}",
                    file=feature_path(root, m, lacking),
                )
    return found


def read_mosi(root: Path) -> Dataset:
    """Read and validate a CMU-MOSI utterance-level folder: one Sequence per video."""
    root = Path(root)
    found = _split_files(root)
    dims: dict[str, tuple[int, Path]] = {}
    video_split: dict[str, tuple[str, Path, int]] = {}
    sequences: list[Sequence] = []
    for sp, (ipath, fpaths) in found.items():
        ids = _read_ids(ipath)
        check_unique(ids, ipath, ID_HEADER)
        parsed = [_parse_id(u, ipath, i + 1) for i, u in enumerate(ids)]
        for i, (vid, _) in enumerate(parsed):
            other = video_split.setdefault(vid, (sp, ipath, i + 1))
            if other[0] != sp:
                raise DataError(
                    f"video {vid!r} is also in split {other[0]!r} ({other[1].name}, row {other[2]})",
                    file=ipath, row=i + 1, column=ID_HEADER,
                )

        feats: dict[str, np.ndarray] = {}
        labels: np.ndarray | None = None
        label_src: Path | None = None
        for m, fpath in fpaths.items():
            x = _read_features(fpath)
            if len(x) != len(ids):
                raise DataError(f"{len(x)} rows but {ipath.name} has {len(ids)} ids", file=fpath)
            d = x.shape[1] - 1
            if m in dims and dims[m][0] != d:
                raise DataError(
                    f"{d + 1} columns but {dims[m][1].name} has {dims[m][0] + 1}", file=fpath, row=1
                )
            dims.setdefault(m, (d, fpath))
            if labels is None:
                labels, label_src = x[:, -1], fpath
            else:
                diff = np.flatnonzero(x[:, -1] != labels)
                if diff.size:
                    r = int(diff[0])
                    assert label_src is not None
                    raise DataError(
                        f"label {x[r, -1]:g} disagrees with {label_src.name} ({labels[r]:g})",
                        file=fpath, row=r + 1, column=d + 1,
                    )
            feats[m] = x[:, :-1]
        assert labels is not None

        vids = np.array([v for v, _ in parsed])
        pos = np.array([n for _, n in parsed])
        order = np.lexsort((pos, vids))
        same = (vids[order][1:] == vids[order][:-1]) & (pos[order][1:] == pos[order][:-1])
        if same.any():
            k = int(np.flatnonzero(same)[0])
            a, b = sorted((int(order[k]), int(order[k + 1])))
            raise DataError(
                f"utterance {ids[b]!r} has the same position in video {vids[b]!r} as {ids[a]!r} (row {a + 1})",
                file=ipath, row=b + 1, column=ID_HEADER,
            )
        vs = vids[order]
        bounds = np.flatnonzero(np.r_[True, vs[1:] != vs[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[a:b]
            sequences.append(
                Sequence(
                    id=str(vs[a]), group=str(vs[a]), split=sp,
                    features={m: feats[m][rows].astype(np.float32) for m in feats},
                    # The video features are exactly zero where no face was found.
                    masks={m: np.any(feats[m][rows] != 0, axis=1) for m in feats},
                    targets=labels[rows].astype(np.float32)[:, None],
                    step_ids=[ids[r] for r in rows],
                )
            )
    return Dataset(
        name="cmu-mosi", task="binary", targets=["sentiment"],
        modalities={m: dims[m][0] for m in MODALITIES if m in dims},
        sequences=sequences, n_classes=2, label_range=None, step_rate_hz=None,
        meta={"format": FORMAT, "source": str(root)},
    )
