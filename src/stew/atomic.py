"""Writers build their output in a temporary sibling folder and rename it into place, so a failure
(bad input found halfway, a full disk, Ctrl-C) never leaves a half-written dataset or model behind."""

from __future__ import annotations

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
