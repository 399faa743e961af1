"""Boundary checks shared by every reader. Each raises DataError naming file, row and column.

Row numbers are 1-based data rows as a person sees them in the file (header lines not counted).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np

from stew.errors import DataError


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError("missing file", file=path)
    return path


def check_finite(values: np.ndarray, file: Path | str, columns: Seq[str] | None = None) -> None:
    """Fail on the first NaN or Inf in a [rows, cols] table."""
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        col = columns[c] if columns is not None else int(c) + 1
        kind = "NaN" if np.isnan(values[r, c]) else "Inf"
        raise DataError(f"{kind} value", file=file, row=int(r) + 1, column=col)


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
