"""Predictions straight from audio files: ``stew predict MODEL --audio FILE_OR_DIR``.

A model trained on ``stew features extract`` output records its
:class:`~stew.data.features.ExtractorSettings` in ``model.json``; each file is extracted with exactly
those (and the same feature cache). A raw-waveform model (ConflictNET) reads each file as its training
clips were read (:mod:`stew.data.formats.waveform`). Either way one clip per file is predicted by
:func:`stew.deploy.predict.predict_dataset`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from stew.config import first_error
from stew.data.dataset import Dataset, Sequence
from stew.data.features import MODALITY, ExtractorSettings, extract_all, opensmile_version, resolve_cache
from stew.data.formats.waveform import audio_files, prepare_clip, read_audio
from stew.deploy.integrity import verify
from stew.deploy.meta import META, ONNX, meta_dict, read_json, read_meta
from stew.deploy.predict import predict_dataset
from stew.errors import DataError
from stew.util.atomic import check_output_file


def model_extractor(model_dir: Path, meta: dict) -> ExtractorSettings:
    """The model's extractor settings, refused unless this environment reproduces them exactly and the
    model reads what they make. ``meta`` may be model.json as read, before its schema check."""
    where = model_dir / META
    raw = meta.get("extractor")
    if raw is None:
        raise DataError("this model was trained on features stew did not extract; give --data instead", file=model_dir)
    try:
        settings = ExtractorSettings.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"extractor{'.' + loc if loc else ''}: {msg} (not settings this stew can reproduce)",
                        file=where) from None
    if settings.opensmile_version != opensmile_version():
        raise DataError(f"the model's features came from opensmile {settings.opensmile_version}, this environment has "
                        f"{opensmile_version()}: install opensmile=={settings.opensmile_version} to reproduce them",
                        file=where)
    inputs = meta.get("inputs") or str(meta.get("modality", "")).split("+")
    if isinstance(inputs, list) and MODALITY not in inputs:
        raise DataError(f"the model reads {'+'.join(map(str, inputs))}, not {MODALITY!r}: audio files cannot feed it",
                        file=where)
    dims = meta.get("dims")
    dim = dims.get(MODALITY) if isinstance(dims, dict) else meta.get("dim")
    if dim is not None and dim != settings.dim:
        raise DataError(f"model.json says {MODALITY!r} has {dim} features but its extractor {settings.set} gives "
                        f"{settings.dim}", file=where)
    return settings


def _peek_model_json(model_dir: Path) -> dict | None:
    """model.json as plain JSON (no torch needed), or None when it cannot be read as an object."""
    try:
        return read_json(model_dir / META)
    except ValueError:  # a DataError, or json's own (an integer too long): the full load names the problem
        return None


def _load_model_meta(model_dir: Path) -> dict:
    """model.json, schema-checked. With model.onnx the ONNX Runtime engine predicts: no torch is imported
    (its session checks the graph); otherwise the torch model is built, which checks the weights too."""
    if (model_dir / ONNX).is_file():
        meta = read_meta(model_dir / META)
        verify(model_dir, meta)  # a damaged folder is refused before any audio is read
        return meta_dict(meta)
    from stew.deploy.model import load_model  # torch, imported only here: the ONNX path stays torch-free

    return load_model(model_dir)[1]


def _predict_waveforms(model_dir: Path, audio: Path, out_csv: Path | None) -> pd.DataFrame:
    """A raw-waveform model (ConflictNET): each file read as its training clips were (sample rate, clip
    length, RMS normalisation, from model.json), one prediction per file."""
    meta = _load_model_meta(model_dir)
    ext = meta["extractor"]
    files, ids = _audio_inputs(audio)
    m = meta["modality"]
    seqs = []
    for f, sid in zip(files, ids, strict=True):
        x, n = prepare_clip(read_audio(f, int(ext["sample_rate"]))[0], ext.get("clip_samples"))
        mask = np.arange(len(x)) < n
        seqs.append(Sequence(id=sid, group=sid, split="test", features={m: x[:, None]}, masks={m: mask},
                             targets=np.zeros((1, len(meta["targets"])), np.float32), step_ids=[sid]))
    ds = Dataset(name=audio.name, task=meta["task"], targets=list(meta["targets"]), modalities={m: 1},
                 sequences=seqs, step_rate_hz=None, meta={"unscaled": [m]}, label_level="sequence")
    return predict_dataset(model_dir, ds, out_csv)


def _audio_inputs(audio: Path) -> tuple[list[Path], list[str]]:
    """The files to predict and their ids: a file (its name), or every audio file under a folder
    (paths relative to it; hidden files and labels.csv are not read)."""
    if not audio.exists() and not audio.is_symlink():
        raise DataError("missing file or folder", file=audio)
    if not audio.is_dir():
        return [audio], [audio.name]
    files = audio_files(audio)
    if not files:
        raise DataError("no audio files in the folder (.wav, .flac, .ogg, .mp3, ...)", file=audio)
    return files, [p.relative_to(audio).as_posix() for p in files]


def predict_audio(model_dir: Path, audio: Path, out_csv: Path | None = None, *, workers: int = 1,
                  cache_dir: Path | None = None, cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """Predict from audio files with a model trained on ``stew features extract`` output.

    ``audio`` is one file or a folder (every audio file under it). Each file is extracted with the
    model's recorded settings (and the same cache), then predicted as one clip by
    :func:`stew.deploy.predict.predict_dataset`: one row per file, ``sequence`` = the path relative to the
    folder (the file name for a single file). A model whose features stew did not extract, or
    that needs another openSMILE version, is refused with one DataError line before any audio is read;
    damaged weights are found by the model's full check, which runs alongside the extraction.
    """
    model_dir, audio = Path(model_dir), Path(audio)
    if out_csv is not None:
        check_output_file(Path(out_csv))
    meta = _peek_model_json(model_dir)
    if meta is None:  # unreadable: load_model names the problem (missing folder, file, bad JSON)
        meta = _load_model_meta(model_dir)
    if isinstance(meta.get("extractor"), dict) and meta["extractor"].get("set") == "waveform":
        return _predict_waveforms(model_dir, audio, out_csv)
    settings = model_extractor(model_dir, meta)
    files, ids = _audio_inputs(audio)
    cdir = resolve_cache(cache_dir, cache)
    # Importing torch and checking the model (~2 s) overlaps the extraction: openSMILE runs in C through
    # ctypes, which releases the GIL. This keeps `predict --audio` close to the extraction's own time.
    with ThreadPoolExecutor(max_workers=1) as background:
        loading = background.submit(_load_model_meta, model_dir)
        try:
            arrays = extract_all(files, ids, settings, workers=workers, cache_dir=cdir, show=progress)
        except DataError:
            loading.result()  # a broken model folder is reported first, as it would be without the overlap
            raise
        meta = loading.result()
    settings = model_extractor(model_dir, meta)  # the same checks on the schema-checked model.json
    targets = list(meta["targets"])
    seqs = [Sequence(id=sid, group=sid, split="test", features={MODALITY: x}, masks={MODALITY: np.ones(len(x), bool)},
                     targets=np.zeros((1, len(targets)), np.float32), step_ids=[sid])  # placeholders, never read
            for sid, x in zip(ids, arrays, strict=True)]
    ds = Dataset(name=audio.name, task=meta["task"], targets=targets, modalities={MODALITY: settings.dim},
                 sequences=seqs, n_classes=meta.get("n_classes"), step_rate_hz=None,
                 meta={"extractor": settings.model_dump(mode="json")}, label_level="sequence")
    return predict_dataset(model_dir, ds, out_csv)
