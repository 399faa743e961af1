"""Format auto-detection: the one entry point that turns a folder into a Dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stew.data.dataset import Dataset
from stew.errors import DataError
from stew.util.digest import feed_file


def load_dataset(path: str | Path, *, feature_set: str | None = None, fold: int | None = None) -> Dataset:
    """Load a dataset folder, detecting its layout.

    - stew native: ``manifest.yaml``;
    - CMU-MOSI utterance release: ``{train,test}_ids.csv`` with ``{audio,video,text}_{split}0.csv``;
    - IEMOCAP in the AMH fold layout: ``folds/fold01..fold05`` (``fold`` picks one; default 1);
    - an audio folder (``labels.csv`` + audio files) or the SSPNet Conflict Corpus (``conflictlevel.csv``):
      one waveform per clip, modality ``audio`` (see :mod:`stew.data.formats.audio`);
    - AVEC 2016 RECOLA: ``ratings_gold_standard/`` plus ``features_*`` folders. ``feature_set`` picks
      the arousal or valence feature set (default: arousal).

    ``fold`` picks one of the five folds of a layout that has them (IEMOCAP AMH); elsewhere it is an error.
    """
    # Imported here for start-up only: stew/data/__init__.py imports this module, so every `import stew.data.*`
    # would otherwise pay ~0.5 s for the readers' pandas, soundfile and soxr.
    from stew.data.formats import audio, iemocap, mosi, native, recola

    root = Path(path)
    if not root.exists():
        raise DataError("missing folder", file=root)
    if not root.is_dir():
        raise DataError("not a folder", file=root)
    if iemocap.is_iemocap(root):
        return iemocap.read_iemocap(root, fold=fold or 1)
    if fold is not None:
        raise DataError(f"--fold {fold}: this dataset has no folds (IEMOCAP AMH folds/fold01..fold05 do)", file=root)
    if native.is_native(root):
        return native.read_native(root)
    if audio.is_sspnet(root) or audio.is_audio_folder(root):
        ds = audio.read_sspnet(root) if audio.is_sspnet(root) else audio.read_audio_folder(root)
        ds.meta["unscaled"] = ["audio"]  # waveforms are RMS-normalised per clip, never z-scored
        # What a deployed model needs to read a new file as these were read (stew predict --audio, explain).
        ds.meta["extractor"] = {"set": "waveform", "sample_rate": ds.meta["sample_rate"],
                                "clip_samples": ds.meta["clip_samples"], "rms_normalise": True}
        return ds
    if mosi.is_mosi(root):
        return mosi.read_mosi(root)
    if recola.is_recola(root):
        return recola.read_recola(root, feature_set=feature_set or "arousal")
    raise DataError(
        "unknown dataset layout (expected manifest.yaml, CMU-MOSI *_ids.csv, IEMOCAP AMH folds/, "
        "an audio folder's labels.csv, or AVEC 2016 ratings_gold_standard/)",
        file=root,
    )


def data_files(path: Path) -> list[Path]:
    """The files a data path stands for: the path itself, or every file under the folder (hidden ones
    excluded, as caches are), sorted."""
    path = Path(path)
    return [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def data_fingerprint(path: Path) -> str:
    """SHA-256 over every data file's relative path and contents (:func:`data_files`)."""
    path = Path(path)
    if not path.exists():
        raise DataError("data folder does not exist", file=path)
    h = hashlib.sha256()
    for f in data_files(path):
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        feed_file(h, f)
    return h.hexdigest()[:20]
