"""Boundary checks shared by every reader. Each raises DataError naming file, row and column.

Row numbers are 1-based data rows as a person sees them in the file (header lines not counted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stew.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def entry_exists(path: Path) -> bool:
    """True when anything sits at ``path``: a file, a folder, or a link (even a broken one or a loop).

    Readers use this to tell "absent" from "present but unreadable", so a folder or a symlink loop in
    place of a data file is reported as such instead of as a missing modality.
    """
    return os.path.lexists(path)


def require_file(path: Path) -> Path:
    """``path`` must be a readable regular file (or a link to one); the error says what is there instead."""
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError("a folder, expected a file", file=path)
    if path.is_symlink():
        # exists() follows the link: False for a dangling link and for a loop (ELOOP).
        raise DataError("a broken symlink or a symlink loop, expected a file", file=path)
    if os.path.lexists(path):
        raise DataError("not a regular file", file=path)
    raise DataError("missing file", file=path)


def check_finite(values: np.ndarray, file: Path | str, columns: Seq[str] | None = None) -> None:
    """Fail on the first NaN, Inf, or value too large for float32 in a [rows, cols] table.

    Every reader hands its data on as float32, so the check is made on what the cast gives: 1e308
    is finite in float64 but Inf in float32, and would only surface as a non-finite loss mid-training.
    """
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        col = columns[c] if columns is not None else int(c) + 1
        v = values[r, c]
        kind = "NaN value" if np.isnan(v) else "Inf value" if np.isinf(v) else f"value {v:g} overflows float32"
        raise DataError(kind, file=file, row=int(r) + 1, column=col)


def check_unique(ids: Seq[str], file: Path | str, column: str) -> None:
    seen: dict[str, int] = {}
    for i, k in enumerate(ids):
        if k in seen:
            raise DataError(f"duplicate id {k!r} (first at row {seen[k] + 1})", file=file, row=i + 1, column=column)
        seen[k] = i


def check_labels(
    labels: np.ndarray,
    file: Path | str,
    columns: Seq[str],
    *,
    label_range: tuple[float, float] | None = None,
    n_classes: int | None = None,
) -> None:
    """Labels must be finite, inside the declared range, or integer classes in [0, n_classes)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    check_finite(labels, file, columns)
    if n_classes is not None:
        bad = (labels != np.round(labels)) | (labels < 0) | (labels >= n_classes)
        what = f"label is not a class in 0..{n_classes - 1}"
    elif label_range is not None:
        lo, hi = label_range
        bad = (labels < lo) | (labels > hi)
        what = f"label outside the declared range [{lo}, {hi}]"
    else:
        return
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{what}: {labels[r, c]:g}", file=file, row=int(r) + 1, column=columns[c])


def check_dim(n_cols: int, expected: int | None, file: Path | str, what: str = "features") -> None:
    if expected is not None and n_cols != expected:
        raise DataError(f"wrong dimension: {n_cols} {what}, expected {expected}", file=file)


def check_splits_nonempty(split_counts: dict[str, int], file: Path | str) -> None:
    for sp, n in split_counts.items():
        if n == 0:
            raise DataError(f"split {sp!r} is empty", file=file)


def parse_yaml(text: str, file: Path | str) -> Any:
    """``yaml.safe_load`` whose errors are one DataError line: ``invalid YAML at line L, column C: problem``.

    PyYAML's own message spans several lines (context, a quoted excerpt, a caret), which breaks the
    CLI's one-line error contract.
    """
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise DataError(f"invalid YAML{where}: {problem}", file=file) from None
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML: {' '.join(str(e).split())}", file=file) from None


def read_text(path: Path) -> str:
    """A text file's contents (UTF-8, a BOM dropped); a folder, a missing or non-UTF-8 file is one DataError line."""
    require_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: {e}", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=path) from None


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file; a folder, a non-UTF-8 file or bad YAML is one DataError line."""
    return parse_yaml(read_text(path), path)
