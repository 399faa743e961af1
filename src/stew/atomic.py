"""Writers build their output in a temporary sibling (folder or file) and rename it into place, so a
failure (bad input found halfway, a full disk, Ctrl-C) never leaves a half-written dataset, model,
report or results file behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stew.errors import DataError


@contextmanager
def atomic_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` only if the block finishes.

    Without ``overwrite`` an existing non-empty ``out`` is an error (checked before anything is written).
    """
    out = Path(out)
    if not overwrite and out.exists() and any(out.iterdir()):
        raise DataError("output folder exists and is not empty", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` through a temporary sibling file and a rename (readable by all, like open())."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
