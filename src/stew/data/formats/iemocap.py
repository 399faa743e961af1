"""Reader for 7-class IEMOCAP in the AMH fold layout (Yoon et al., ICASSP 2020; docs/methods/fusion.md#data).

The self-/cross-attention system reads the AMH preprocessed release (``.../IEMOCAP/seven_category_120``)::

    ROOT/folds/fold01 ... fold05/
        {P}_audio_mfcc.npy     [N, 1000, 120] float   40 MFCC + delta + delta-delta, 10 ms hop, zero padded
        {P}_audio_seqN.npy     [N] int                audio frames (the raw count: may exceed the 1000 stored)
        {P}_audio_prosody.npy  [N, 35] float          not read (the thesis uses MFCC only)
        {P}_video.npy          [N, 32, 2048] float    ResNet-101 at 3 Hz, zero padded
        {P}_video_seqN.npy     [N] int                video frames; 0 = no video for the utterance
        {P}_nlp_trans.npy      [N, 128] int           token ids into W_embedding; 0 (_PAD_) pads
        {P}_label.npy          [N] int                class index 0..6 (AMH one-hot encodes it at batch time)
        W_embedding.npy        [V, 300] float32       GloVe row per token id; row 0 (_PAD_) is zeros
        dic.pkl                                       word -> id: a pickle, never read here

with ``P`` in ``train``, ``dev``, ``test``. Row i of a partition's files is one utterance. The text
has no lengths file: as in the AMH batcher, its length is the position of the first pad id (0).

``ROOT`` may be the folder holding ``folds/``, the ``folds/`` folder itself, or one fold folder
(``.../folds/fold03``, what the authors' ``--data_path`` points at; then only its own fold can be
read). Everything is validated before a Dataset is returned; each problem is one DataError naming
the file and, for array contents, the 0-based index into the array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stew.data.dataset import Dataset, Sequence
from stew.data.validate import entry_exists, require_file
from stew.errors import DataError

__all__ = ["CLASSES", "CLASS_COUNTS", "FORMAT", "N_FOLDS", "PARTITIONS", "is_iemocap", "read_iemocap"]

FORMAT = "iemocap-amh"
N_FOLDS = 5
# The AMH code one-hot encodes the index but never names the classes; this is the order of the class
# table in the AMH README (and the thesis). The counts are all distinct, so read_iemocap checks the
# order against them when a fold holds the whole corpus.
CLASSES = ("angry", "excited", "happy", "sad", "frustrated", "surprise", "neutral")
CLASS_COUNTS = (1103, 1041, 595, 1084, 1849, 107, 1708)
PARTITIONS = {"train": "train", "dev": "val", "test": "test"}  # AMH file prefix -> stew split
EMBEDDING = "W_embedding.npy"
ARRAYS = ("audio_mfcc", "audio_seqN", "video", "video_seqN", "nlp_trans", "label")
_FOLD_RE = re.compile(r"fold0?([1-9])")
_NPY_MAGIC = b"\x93NUMPY"


def fold_name(k: int) -> str:
    return f"fold{k:02d}"


def array_path(fold_dir: Path, partition: str, kind: str) -> Path:
    return Path(fold_dir) / f"{partition}_{kind}.npy"


def _holds_fold_files(d: Path) -> bool:
    return entry_exists(d / EMBEDDING) or any(entry_exists(array_path(d, p, k)) for p in PARTITIONS for k in ARRAYS)


def _folds_parent(root: Path) -> Path | None:
    """The folder holding ``fold01`` ... ``fold05`` (``root/folds`` or ``root`` itself), if any."""
    for base in (root / "folds", root):
        if any(entry_exists(base / fold_name(k)) for k in range(1, N_FOLDS + 1)):
            return base
    return None


def is_iemocap(root: Path) -> bool:
    """True when ``root`` looks like the AMH layout: it (or its ``folds/``) holds a ``foldNN`` entry, or it
    holds an AMH partition file or ``W_embedding.npy`` itself (a fold folder). read_iemocap then reports
    whatever is missing or wrong."""
    root = Path(root)
    return root.is_dir() and (_folds_parent(root) is not None or _holds_fold_files(root))


def _fold_dir(root: Path, fold: int) -> Path:
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 1 <= fold <= N_FOLDS:
        raise DataError(f"fold {fold!r} is out of range: the AMH layout has folds 1..{N_FOLDS}", file=root)
    parent = _folds_parent(root)
    if parent is not None:
        d = parent / fold_name(int(fold))
        if not d.is_dir():
            raise DataError(f"missing fold folder {d.name} (fold {fold})", file=d)
        return d
    if _holds_fold_files(root):
        m = _FOLD_RE.fullmatch(root.name)
        own = int(m.group(1)) if m else 1
        if own != fold:
            raise DataError(f"this folder is fold {own} alone; give the folder holding folds/ to read fold {fold}",
                            file=root)
        return root
    raise DataError("not the AMH IEMOCAP layout: no folds/fold01..fold05 and no fold files", file=root)


def _load(path: Path, ranks: tuple[int, ...], what: str) -> np.ndarray:
    """A numeric .npy array of one of ``ranks``, memory-mapped (nothing is read until sliced).

    Never unpickles: a pickle, or an object array inside a .npy, is refused.
    """
    require_file(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=path) from None
    if head != _NPY_MAGIC:
        kind = "a pickle" if head[:1] == b"\x80" else "not a .npy file"
        raise DataError(f"{kind}: expected a NumPy .npy array (stew never unpickles)", file=path)
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "Python objects" in str(e) or "pickle" in str(e):
            raise DataError("an object array (pickled Python objects): stew reads numeric arrays only",
                            file=path) from None
        raise DataError(f"unreadable .npy array (truncated or corrupt?): {e}", file=path) from None
    except (OSError, EOFError) as e:
        raise DataError(f"unreadable .npy array (truncated or corrupt?): {e}", file=path) from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
        raise DataError(f"{what} must be a numeric array, found dtype {getattr(a, 'dtype', type(a))}", file=path)
    if a.ndim not in ranks:
        shape = " or ".join(f"{r} dimensions" for r in ranks)
        raise DataError(f"{what} must have {shape}, found shape {a.shape}", file=path)
    return a


def _integers(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``a`` as int64; floats are accepted only when every value is a whole number."""
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"{what} is not a whole number at index {list(idx)}: {a[idx]!r}", file=path)
    return np.asarray(a, dtype=np.int64)


def _first_bad(bad: np.ndarray) -> list[int]:
    return [int(i) for i in np.argwhere(bad)[0]]


@dataclass
class _Partition:
    """One AMH partition of a fold, validated; big arrays stay memory-mapped."""

    name: str
    paths: dict[str, Path]
    mfcc: np.ndarray
    audio_len: np.ndarray  # clamped to the stored frames
    video: np.ndarray
    video_len: np.ndarray
    tokens: np.ndarray
    text_len: np.ndarray
    labels: np.ndarray
    cut: dict[str, np.ndarray]  # per modality: the raw length exceeds the stored frames


def _lengths(a: np.ndarray, path: Path, stored: int) -> tuple[np.ndarray, np.ndarray]:
    n = _integers(a, path, "length")
    if (n < 0).any():
        i = int(np.flatnonzero(n < 0)[0])
        raise DataError(f"negative length {n[i]} at index {i}", file=path)
    # The AMH lengths count the whole utterance while the arrays keep the first 1,000 / 32 frames, and
    # the AMH batcher takes min(seqN, frames): longer utterances are truncated, not an error.
    return np.minimum(n, stored), n > stored


def _read_partition(fold_dir: Path, part: str, n_vocab: int) -> _Partition:
    paths = {k: array_path(fold_dir, part, k) for k in ARRAYS}
    mfcc = _load(paths["audio_mfcc"], (3,), "audio MFCCs [N, frames, dims]")
    a_len = _load(paths["audio_seqN"], (1,), "audio lengths [N]")
    video = _load(paths["video"], (3,), "video features [N, frames, dims]")
    v_len = _load(paths["video_seqN"], (1,), "video lengths [N]")
    tokens = _load(paths["nlp_trans"], (2,), "token ids [N, tokens]")
    labels = _load(paths["label"], (1, 2), "labels [N]")
    if labels.ndim == 2:
        raise DataError(f"labels must be class indices [N] as in the AMH release, found shape {labels.shape} "
                        "(one-hot?)", file=paths["label"])
    arrays = dict(zip(ARRAYS, (mfcc, a_len, video, v_len, tokens, labels), strict=True))
    sizes = {k: len(a) for k, a in arrays.items()}
    # Blame the file that disagrees with the others (the most common utterance count).
    counts = list(sizes.values())
    n = max(set(counts), key=counts.count)
    odd = next((k for k, s in sizes.items() if s != n), None)
    if odd is not None:
        ref = next(k for k, s in sizes.items() if s == n)
        raise DataError(f"{sizes[odd]} utterances, but {paths[ref].name} has {n}", file=paths[odd])
    if n == 0:
        raise DataError(f"partition {part!r} is empty", file=paths["label"])

    y = _integers(labels, paths["label"], "label")
    bad = (y < 0) | (y >= len(CLASSES))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"label {y[i]} at index {i} is not a class in 0..{len(CLASSES) - 1}", file=paths["label"])
    ids = _integers(tokens, paths["nlp_trans"], "token id")
    bad = (ids < 0) | (ids >= n_vocab)
    if bad.any():
        i, j = _first_bad(bad)
        raise DataError(f"token id {ids[i, j]} at index [{i}, {j}] is outside W_embedding (rows 0..{n_vocab - 1})",
                        file=paths["nlp_trans"])
    pad = ids == 0
    t_len = np.where(pad.any(1), pad.argmax(1), ids.shape[1])
    a_n, a_cut = _lengths(a_len, paths["audio_seqN"], mfcc.shape[1])
    v_n, v_cut = _lengths(v_len, paths["video_seqN"], video.shape[1])
    return _Partition(part, paths, mfcc, a_n, video, v_n, ids, t_len, y, {"audio": a_cut, "video": v_cut})


def _gather(x: np.ndarray, lengths: np.ndarray, rows: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real steps ``x[i, :lengths[i]]`` of ``rows``, stacked in one float32 buffer, and row offsets.

    Only these steps are read from the memory map, so the zero padding (most of the 1,000 x 120 MFCC
    block) never reaches memory; each utterance's features are then a view into the buffer.
    """
    n = lengths[rows]
    starts = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    buf = np.empty((int(starts[-1]), x.shape[2]), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for k, i in enumerate(rows):
            buf[starts[k]:starts[k + 1]] = x[i, : n[k]]
    finite = np.isfinite(buf).all(1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        k = int(np.searchsorted(starts, r, side="right") - 1)
        raise DataError(f"NaN, Inf or a value beyond float32 at index [{int(rows[k])}, {r - starts[k]}]", file=path)
    return buf, starts


def _class_names(labels: list[np.ndarray]) -> tuple[list[str], str]:
    """Class names per index, and how the order was established."""
    counts = np.bincount(np.concatenate(labels), minlength=len(CLASSES)).tolist()
    if sorted(counts) == sorted(CLASS_COUNTS):
        return [CLASSES[CLASS_COUNTS.index(c)] for c in counts], "matched to the published class counts"
    return list(CLASSES), "assumed: the AMH README's class-table order (the AMH code never names the indices)"


def _embedding(fold_dir: Path) -> tuple[np.ndarray, Path]:
    here = fold_dir / EMBEDDING
    # Some copies keep one W_embedding.npy beside folds/ (the MDRE scripts linked it into each fold).
    path = next((p for p in (here, fold_dir.parent / EMBEDDING, fold_dir.parent.parent / EMBEDDING)
                 if entry_exists(p)), here)
    w = _load(path, (2,), "word embeddings [vocabulary, dims]")
    if len(w) == 0:
        raise DataError("W_embedding.npy has no rows", file=path)
    w = np.array(w, dtype=np.float32)  # a small copy, so the memory map is released
    finite = np.isfinite(w).all(1)
    if not finite.all():
        raise DataError(f"NaN, Inf or a value beyond float32 in row {int(np.flatnonzero(~finite)[0])}", file=path)
    return w, path


def read_iemocap(root: Path, fold: int = 1) -> Dataset:
    """Read and validate one fold of IEMOCAP in the AMH layout: one Sequence per utterance.

    Splits: AMH ``train`` -> train, ``dev`` -> val, ``test`` -> test. Sequence ids are
    ``<partition>/<row>`` (``dev/000012`` is row 12 of the ``dev_*.npy`` files). The release has no
    speaker or session ids, so ``group`` is the utterance id; nothing keeps a speaker in one split.

    Sequence-level labels (``targets`` [1, 1], the class index) and modalities on their own clocks:
    ``audio`` [frames, 120] MFCC+delta+delta-delta, ``video`` [frames, 2048], ``text`` [tokens, 300] GloVe
    rows looked up by token id. Each modality keeps exactly its real steps (padding dropped, lengths
    from ``*_seqN`` clamped to the stored frames as the AMH batcher does; text up to the first pad);
    a length-0 modality is one masked zero row. Utterances with no video (``video_seqN`` 0) are dropped
    from every partition, as the authors' code does; ``meta["dropped_no_video"]`` counts them.

    The MFCCs are not standardised here: the trainer z-scores every modality with statistics of the
    present training steps (``stew.data.preprocess.Standardizer``), which is the standardisation the
    thesis describes for the MFCCs (the released code computed it but discarded the result); video and
    text are z-scored too unless ``standardize`` names only some modalities (docs/choices.md).
    """
    root = Path(root)
    fold_dir = _fold_dir(root, fold)
    for part in PARTITIONS:
        for k in ARRAYS:
            require_file(array_path(fold_dir, part, k))  # a missing file first, before any content problem
    w, w_path = _embedding(fold_dir)
    parts = [_read_partition(fold_dir, p, len(w)) for p in PARTITIONS]
    for kind, attr in (("audio_mfcc", "mfcc"), ("video", "video")):
        d0 = getattr(parts[0], attr).shape[2]
        for p in parts[1:]:
            if getattr(p, attr).shape[2] != d0:
                raise DataError(f"{getattr(p, attr).shape[2]} feature dims, but {parts[0].paths[kind].name} has {d0}",
                                file=p.paths[kind])
    names, order = _class_names([p.labels for p in parts])

    dims = {"audio": parts[0].mfcc.shape[2], "video": parts[0].video.shape[2], "text": w.shape[1]}
    sequences: list[Sequence] = []
    dropped: dict[str, int] = {}
    truncated = {"audio": 0, "video": 0}
    for p in parts:
        split = PARTITIONS[p.name]
        keep = np.flatnonzero(p.video_len > 0)
        dropped[split] = int(len(p.labels) - len(keep))
        if len(keep) == 0:
            raise DataError(f"every utterance of partition {p.name!r} has video length 0", file=p.paths["video_seqN"])
        for m in truncated:
            truncated[m] += int(p.cut[m][keep].sum())
        bufs = {
            "audio": _gather(p.mfcc, p.audio_len, keep, p.paths["audio_mfcc"]),
            "video": _gather(p.video, p.video_len, keep, p.paths["video"]),
        }
        t_n = p.text_len[keep]
        t_starts = np.concatenate([[0], np.cumsum(t_n)]).astype(np.int64)
        token_rows = [p.tokens[i, :n] for i, n in zip(keep, t_n, strict=True)]
        bufs["text"] = (w[np.concatenate(token_rows)] if t_starts[-1] else np.empty((0, dims["text"]), np.float32),
                        t_starts)
        for k, i in enumerate(keep):
            feats, masks = {}, {}
            for m, (buf, starts) in bufs.items():
                a, b = starts[k], starts[k + 1]
                if b > a:
                    feats[m], masks[m] = buf[a:b], np.ones(b - a, bool)
                else:
                    feats[m], masks[m] = np.zeros((1, dims[m]), np.float32), np.zeros(1, bool)
            uid = f"{p.name}/{int(i):06d}"
            sequences.append(Sequence(
                id=uid, group=uid, split=split, features=feats, masks=masks,
                targets=np.array([[p.labels[i]]], np.float32), step_ids=[uid],
            ))
    meta = {
        "format": FORMAT, "source": str(root), "fold": int(fold), "fold_dir": str(fold_dir),
        "embedding": str(w_path), "classes": names, "class_order": order,
        "dropped_no_video": dropped, "truncated": truncated,
        # The release's padded lengths: the fusion model's time-step convs mix exactly these many steps.
        "max_steps": {"audio": int(parts[0].mfcc.shape[1]), "video": int(parts[0].video.shape[1]),
                      "text": int(parts[0].tokens.shape[1])},
    }
    return Dataset(
        name="iemocap", task="multiclass", targets=["emotion"], modalities=dims, sequences=sequences,
        n_classes=len(CLASSES), label_range=None, step_rate_hz=None, meta=meta, label_level="sequence",
    )
