"""SHA-256 of files, streamed in 1 MiB chunks so a large file is never read into memory at once: data
folder fingerprints, the openSMILE feature cache, model-folder digests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from stew.errors import DataError

_CHUNK = 1 << 20


def feed_file(h: Any, path: Path) -> None:
    """Stream the bytes of ``path`` into the hash object ``h``; an unreadable file is a one-line DataError."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=path) from None


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of the file at ``path``."""
    h = hashlib.sha256()
    feed_file(h, path)
    return h.hexdigest()
