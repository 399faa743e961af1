"""A model folder is whole or refused: the SHA-256 of every artefact, recorded in ``model.json`` and checked
on load, without torch.

Writing a model folder (training's ``model/``, ``stew export``) records ``{file: SHA-256}`` of every
artefact beside ``model.json`` (``model.safetensors``, ``model.onnx``) as ``sha256``. Every load checks
them before any artefact is parsed, whichever engine runs: the ONNX engine never reads the
safetensors file, so without the digests a damaged or swapped one would pass unnoticed. Refused, in
one line: a listed file missing, a digest that differs, and an artefact present but not listed (the
engine would read a file nobody vouched for, e.g. a ``model.onnx`` dropped into a safetensors-only
folder). Other files are never read and are ignored. ``model.json`` cannot hold its own digest; its
schema checks it (:mod:`stew.deploy.meta`). The digests catch corruption and mix-ups, not an attacker
who rewrites ``model.json`` too: stew signs nothing (docs/choices.md, "Untrusted model folders").

A folder from before the digests (no ``sha256`` key) still loads, unverified, with a one-line notice.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stew.deploy.meta import ARTEFACTS, ModelMeta
from stew.errors import DataError
from stew.util.digest import sha256_file

_log = logging.getLogger(__name__)
_noticed: set[Path] = set()


def artefact_digests(folder: Path) -> dict[str, str]:
    """``{file: SHA-256}`` of the artefacts present in ``folder`` (what a writer records in model.json)."""
    return {name: sha256_file(folder / name) for name in ARTEFACTS if (folder / name).exists()}


def verify(folder: Path, meta: ModelMeta) -> bool:
    """Check the artefacts of ``folder`` against ``meta.sha256`` before any of them is parsed.

    Returns True when checked, False for a folder without digests (nothing checked: the caller calls
    :func:`notice_unverified` once the model has loaded). Raises a one-line DataError naming the file
    for a listed artefact missing, a digest mismatch or an artefact present but not listed.
    """
    folder = Path(folder)
    if meta.sha256 is None:
        return False
    for name in ARTEFACTS:
        path = folder / name
        want = meta.sha256.get(name)
        if want is None:
            if path.exists() or path.is_symlink():
                raise DataError("not listed in model.json's sha256: this folder was changed after it was "
                                "written (export it again)", file=path)
            continue
        if not path.exists():
            raise DataError("missing file (model.json lists its sha256)", file=path)
        if sha256_file(path) != want:
            raise DataError("SHA-256 differs from the one model.json records: the file was changed or damaged "
                            "after export (export it again)", file=path)
    return True


def notice_unverified(folder: Path) -> None:
    """One warning line per folder and process: a folder from before the digests loaded unchecked."""
    key = Path(folder).resolve()
    if key in _noticed:
        return
    _noticed.add(key)
    _log.warning("note: %s: model.json records no SHA-256 digests (written before stew checked them); "
                 "loaded unverified: export it again to add them", folder)
