"""Writers build their output in a temporary sibling (folder or file) and rename it into place, so a
failure (bad input found halfway, a full disk, Ctrl-C) never leaves a half-written dataset, model,
report or results file behind.

The ``check_*`` functions let a command refuse an unusable output path (a file where a folder is
needed, a folder where a file is needed, a path under a regular file, a read-only folder, a folder
holding the user's files) before it does any work; the writers repeat the checks and turn every
operating-system failure of their own into the one-line :class:`DataError`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from stew.errors import DataError


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def folder_mode() -> int:
    """What ``mkdir`` would give a new folder: 0o777 less the umask (0o755 under the usual 022)."""
    return 0o777 & ~_umask()


def file_mode() -> int:
    """What ``open(..., "w")`` would give a new file: 0o666 less the umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def follow_umask(path: Path) -> None:
    """Give ``path`` (a folder, or a file) the mode a plain mkdir or open would have: tempfile makes
    0700 folders and 0600 files, which would keep a model from a service account that only reads it."""
    os.chmod(path, folder_mode() if Path(path).is_dir() else file_mode())


def _existing_ancestor(out: Path) -> Path:
    """The nearest ancestor of ``out`` that exists (what ``mkdir(parents=True)`` would build under)."""
    for p in Path(os.path.abspath(out)).parents:
        if p.exists():
            return p
    return Path("/")  # pragma: no cover - "/" always exists


def check_writable_parent(out: Path) -> None:
    """``out``'s folder exists or can be made, and is writable."""
    anc = _existing_ancestor(out)
    if not anc.is_dir():
        raise DataError(f"cannot write under {anc}: it is a file, not a folder", file=out)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DataError(f"cannot write: folder {anc} is not writable", file=out)


def check_output_folder(
    out: Path, *, replaceable: Collection[str] | re.Pattern | None = None, overwrite: bool | None = None,
    resumable: bool = False,
) -> None:
    """Raise DataError unless ``out`` can become a folder without destroying anything: the one check of
    every output folder (run folders, model folders, ranking and transfer tables, synthetic data).

    ``out`` may be absent or empty; with ``replaceable`` (names, or a pattern the names match) it may
    also hold only those (a previous output of the same kind, which is replaced). Any other file in it
    is the user's. ``resumable``: the refusal of a non-empty folder also names --resume (a run folder).

    ``overwrite`` is for a command that writes into ``out`` and has an --overwrite option (rank,
    transfer): False refuses a non-empty ``out`` naming that option, True lets ``out`` hold anything
    (the command replaces only its own files). Either way ``out`` is kept, so its parent need not be
    writable.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise DataError("output is a dangling symbolic link", file=out)
    if out.exists():
        if not out.is_dir():
            raise DataError("output exists and is not a folder", file=out)
        if overwrite:
            return
        try:
            names = sorted(p.name for p in out.iterdir())
        except OSError as e:
            raise DataError(f"cannot read the output folder: {e.strerror}", file=out) from None
        foreign = [n for n in names if not _is_replaceable(n, replaceable)]
        if foreign:
            if overwrite is False:
                resume = "--resume to continue it, " if resumable else ""
                raise DataError(f"output folder is not empty (an earlier result?): give {resume}--overwrite to "
                                "replace it, or a new --out", file=out)
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            what = "is not empty" if replaceable is None else "holds files that are not stew's"
            raise DataError(f"output folder {what} ({shown}); give a new or empty folder", file=out)
        if overwrite is False:
            return  # written into, not renamed onto: its parent need not be writable
        if not os.access(out, os.W_OK | os.X_OK) or not os.access(out.parent, os.W_OK | os.X_OK):
            raise DataError("cannot replace the output folder: it or its parent is not writable", file=out)
    check_writable_parent(out)


def _is_replaceable(name: str, replaceable: Collection[str] | re.Pattern | None) -> bool:
    if replaceable is None:
        return False
    if isinstance(replaceable, re.Pattern):
        return replaceable.fullmatch(name) is not None
    return name in replaceable


def check_output_file(out: Path) -> None:
    """Raise DataError unless ``out`` can be written as a file (not a folder, not under a file, writable)."""
    out = Path(out)
    if out.is_dir():
        raise DataError("output is a folder; give the file to write", file=out)
    check_writable_parent(out)


@contextmanager
def atomic_dir(
    out: Path, *, overwrite: bool = False, replaceable: Collection[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` only if the block finishes.

    Without ``overwrite`` an existing ``out`` must be empty or, with ``replaceable``, hold only those
    names (checked before anything is written). ``overwrite`` replaces any folder: internal use only.
    """
    out = Path(out)
    if overwrite:
        if out.exists() and not out.is_dir():
            raise DataError("output exists and is not a folder", file=out)
        check_writable_parent(out)
    else:
        check_output_folder(out, replaceable=replaceable)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        follow_umask(tmp)
    except OSError as e:
        raise DataError(f"cannot write: {e.strerror or e}", file=out) from None
    try:
        yield tmp
        try:
            if out.exists():
                # Move the old folder aside first: a failure before the second rename leaves it intact.
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                old.rmdir()
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
        except OSError as e:
            raise DataError(f"cannot write: {e.strerror or e}", file=out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` through a temporary sibling file and a rename (mode as open() gives it)."""
    write_atomic(out, lambda f: f.write_text(text, encoding="utf-8"))


def write_atomic(out: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling of ``out``, then rename it into place.

    Every operating-system failure (read-only folder, a parent that is a file, a full disk) becomes a
    DataError naming ``out``, and the temporary file is removed.
    """
    out = Path(out)
    check_output_file(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise DataError(f"cannot write: {e.strerror or e}", file=out) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        follow_umask(tmp)  # mkstemp creates 0600
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write: {e.strerror or e}", file=out) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
