"""Format auto-detection: the one entry point that turns a folder into a Dataset."""

from __future__ import annotations

from pathlib import Path

from stew.data.dataset import Dataset
from stew.errors import DataError


def load_dataset(path: str | Path, *, feature_set: str | None = None, fold: int | None = None) -> Dataset:
    """Load a dataset folder, detecting its layout.

    - stew native: ``manifest.yaml``;
    - CMU-MOSI utterance release: ``{train,test}_ids.csv`` with ``{audio,video,text}_{split}0.csv``;
    - IEMOCAP in the AMH fold layout: ``folds/fold01..fold05`` (``fold`` picks one; default 1);
    - AVEC 2016 RECOLA: ``ratings_gold_standard/`` plus ``features_*`` folders. ``feature_set`` picks
      the arousal or valence feature set (default: arousal).

    ``fold`` picks one of the five folds of a layout that has them (IEMOCAP AMH); elsewhere it is an error.
    """
    from stew.data import iemocap, mosi, native, recola

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
    if mosi.is_mosi(root):
        return mosi.read_mosi(root)
    if recola.is_recola(root):
        return recola.read_recola(root, feature_set=feature_set or "arousal")
    raise DataError(
        "unknown dataset layout (expected manifest.yaml, CMU-MOSI *_ids.csv, IEMOCAP AMH folds/, "
        "or AVEC 2016 ratings_gold_standard/)",
        file=root,
    )
