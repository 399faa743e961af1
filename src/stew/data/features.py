"""Audio files -> openSMILE features in stew's own format.

``stew features extract AUDIO_DIR --set S --out DATA_DIR`` (:func:`extract_folder`) turns an audio folder
(``labels.csv`` + audio files, see :mod:`stew.data.formats.audio`) into a native dataset: one clip-level
Sequence per file (``label_level: sequence``), one modality ``audio`` whose steps are the clip's
feature frames, labels, splits and groups carried over from ``labels.csv``, and
``meta["extractor"]``: the :class:`ExtractorSettings`. A model trained on it records them in its
``model.json``, and ``stew predict MODEL --audio FILE_OR_DIR`` (:func:`stew.deploy.audio.predict_audio`)
extracts with exactly those settings.

Feature sets (openSMILE through audEERING's ``opensmile`` package):

- ``egemaps``: the 88 eGeMAPS v02 functionals on a sliding window, RECOLA / AVEC 2016 style (8 s
  windows, 40 ms step). Frame ``i`` holds the functionals of ``[i / rate, i / rate + window)``:
  the window starts at the frame's time, as the AVEC organisers' extraction scripts set openSMILE
  (``frameMode = fixed``, ``frameSize = window``, ``frameStep = 1 / rate``, ``frameCenterSpecial = left``
  in ``FrameModeFunctionals.conf.inc``). openSMILE computes the LLDs once and the functionals of every
  window in the same pass (one call per file; a call per window would be ~100x slower).
- ``egemaps-lld`` (25-d) and ``compare-lld`` (65-d, ComParE 2016): low-level descriptors, which
  openSMILE gives every 10 ms (100 Hz). ``rate_hz`` below 100 averages each block of ``100 / rate``
  consecutive LLD frames (a box filter before decimation, so a 25 Hz frame summarises its 40 ms
  rather than sampling one 10 ms frame of it); ``rate_hz=100`` keeps openSMILE's frames.

Every clip of ``D`` seconds gives ``ceil(D * rate)`` frames at ``t = i / rate``: one per step of a label
grid at that rate, as the AVEC RECOLA release has one feature row per 40 ms label. Where a frame has
no openSMILE output of its own (a functionals window running past the end of the clip, the last few
LLD frames), the last computed frame is held; a clip shorter than the window gets the functionals of
the whole clip at every frame. Audio is decoded by :func:`stew.data.formats.waveform.read_audio` (mono, soxr
resampling to ``sample_rate``) and is not level-normalised: loudness and energy are features.

Per-file results are cached (``.npy``, read with ``allow_pickle=False``) under a key of the file's
content (sha256) and the settings, so re-extracting a folder, or predicting on files already
extracted, does not run openSMILE again.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import multiprocessing
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import opensmile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stew.data.dataset import Dataset, Sequence
from stew.data.formats.audio import LABELS, is_audio_folder, label_scaler, read_labels
from stew.data.formats.native import write_native
from stew.data.formats.waveform import SILENCE_RMS, read_audio
from stew.errors import DataError
from stew.util import progress
from stew.util.atomic import check_output_folder
from stew.util.digest import sha256_file

__all__ = ["MODALITY", "SETS", "ExtractorSettings", "cache_key", "default_cache_dir", "extract_all", "extract_file",
           "extract_folder", "features_of_signal", "opensmile_version", "resolve_cache"]

SetName = Literal["egemaps-lld", "egemaps", "compare-lld"]
# set -> (openSMILE feature set, feature level, dimension)
SETS: dict[str, tuple[opensmile.FeatureSet, opensmile.FeatureLevel, int]] = {
    "egemaps": (opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals, 88),
    "egemaps-lld": (opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.LowLevelDescriptors, 25),
    "compare-lld": (opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors, 65),
}
LLD_RATE_HZ = 100  # both sets' LLD configs step 10 ms
AVEC_WINDOW_S = 8.0  # AVEC 2016's audio features: functionals over an 8 s window, 40 ms step
MODALITY = "audio"
# Bumped whenever the cached arrays' layout or the framing code changes: old entries then miss.
CACHE_FORMAT = "stew-features-cache/1"
# opensmile-python casts ``x * 32768`` to int16, which wraps (full scale turns into its negative)
# instead of saturating; resampling can overshoot 1.0 slightly, so samples are clipped first.
INT16_TOP = 32767 / 32768


def opensmile_version() -> str:
    """The installed openSMILE package's version: features from another version are not reproduced."""
    return str(opensmile.__version__)


class ExtractorSettings(BaseModel):
    """Everything that decides the features of a file; recorded in the dataset and the model (JSON).

    ``window_s`` applies to ``egemaps`` only (default 8 s, AVEC 2016) and is None for the LLD sets.
    ``rate_hz`` must divide 100 (openSMILE's LLD rate) so that every output frame covers a whole
    number of 10 ms LLD frames. ``framing`` versions stew's own rules (window at the frame's start,
    end frames held, LLD block means), so a later change of them is never mistaken for these.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    set: SetName
    rate_hz: float = Field(default=25.0, gt=0, le=LLD_RATE_HZ)
    window_s: float | None = Field(default=None, gt=0, le=600)
    sample_rate: int = Field(default=16000, ge=8000, le=192000)
    opensmile_version: str = Field(default_factory=opensmile_version, min_length=1)
    framing: Literal[1] = 1

    @model_validator(mode="before")
    @classmethod
    def _default_window(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("set") == "egemaps" and data.get("window_s") is None:
            return {**data, "window_s": AVEC_WINDOW_S}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExtractorSettings:
        step = LLD_RATE_HZ / self.rate_hz
        if abs(step - round(step)) > 1e-6:
            raise ValueError(f"rate_hz must divide {LLD_RATE_HZ} (openSMILE's LLDs come every 10 ms): e.g. 100, 50, "
                             f"25, 20, 10, 5; got {self.rate_hz:g}")
        if self.set != "egemaps":
            if self.window_s is not None:
                raise ValueError(f"window_s applies to the egemaps functionals; {self.set} has none")
            return self
        assert self.window_s is not None
        if abs(self.window_s * LLD_RATE_HZ - round(self.window_s * LLD_RATE_HZ)) > 1e-6 or self.window_s < 0.1:
            raise ValueError(f"window_s must be a multiple of 0.01 s and at least 0.1 s, got {self.window_s:g}")
        return self

    @classmethod
    def make(cls, set: str, *, rate_hz: float = 25.0, window_s: float | None = None,
             sample_rate: int = 16000) -> ExtractorSettings:
        """Settings from command-line values; a bad value is one ValueError line naming the option."""
        try:
            return cls(set=set, rate_hz=rate_hz, window_s=window_s, sample_rate=sample_rate)  # type: ignore[arg-type]
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}") from None

    @property
    def dim(self) -> int:
        """Features per frame."""
        return SETS[self.set][2]

    @property
    def lld_step(self) -> int:
        """10 ms LLD frames per output frame."""
        return int(round(LLD_RATE_HZ / self.rate_hz))


# --------------------------------------------------------------------------------------------------
# One file


_conf_dir: Path | None = None
_smiles: dict[tuple, opensmile.Smile] = {}


def _frame_conf(window_s: float, hop_s: float) -> str:
    """A ``FrameModeFunctionals.conf.inc`` for sliding windows, written once per process (openSMILE
    reads its includes from files; stew ships no data files)."""
    global _conf_dir
    if _conf_dir is None:
        _conf_dir = Path(tempfile.mkdtemp(prefix="stew-opensmile-"))
        atexit.register(shutil.rmtree, _conf_dir, True)
    path = _conf_dir / f"frames_{window_s:g}_{hop_s:g}.conf.inc"
    if not path.is_file():
        path.write_text(f"frameMode = fixed\nframeSize = {window_s:g}\nframeStep = {hop_s:g}\n"
                        "frameCenterSpecial = left\n")
    return str(path)


def _smile(settings: ExtractorSettings, whole: bool = False) -> opensmile.Smile:
    """The openSMILE extractor for ``settings`` (made once per process: building one runs openSMILE
    to read the feature names). ``whole``: functionals of the whole signal, for clips shorter than
    the window."""
    fs, level, _ = SETS[settings.set]
    windowed = settings.set == "egemaps" and not whole
    key = (fs, level, settings.window_s if windowed else None, settings.rate_hz if windowed else None)
    if key not in _smiles:
        options = {}
        if windowed:
            assert settings.window_s is not None
            options["frameModeFunctionalsConf"] = _frame_conf(settings.window_s, 1.0 / settings.rate_hz)
        _smiles[key] = opensmile.Smile(feature_set=fs, feature_level=level, options=options)
    return _smiles[key]


def _run_opensmile(x: np.ndarray, sr: int, settings: ExtractorSettings, whole: bool = False) -> np.ndarray:
    """openSMILE's frames for mono ``x``: ``[frames, d]`` float32; an all-NaN row where it gave none."""
    with warnings.catch_warnings():
        # "Segment too short, filling with NaN": reported by the caller as a one-line DataError.
        warnings.simplefilter("ignore", UserWarning)
        y = _smile(settings, whole)(x[None, :], sr)
    return np.ascontiguousarray(y[0].T, dtype=np.float32)


def _hold(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` cut or extended to ``n`` rows, the last row repeated."""
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.repeat(y[-1:], n - len(y), axis=0)])


def features_of_signal(x: np.ndarray, sr: int, settings: ExtractorSettings, file: Path | str | None = None
                       ) -> np.ndarray:
    """Features of a mono float signal in [-1, 1): ``[ceil(seconds * rate), dim]`` float32 (see the module
    docstring for the framing). ``file`` only names the source in errors."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, INT16_TOP)
    n = max(1, math.ceil(len(x) / sr * settings.rate_hz - 1e-9))
    if settings.set == "egemaps":
        y = _run_opensmile(x, sr, settings)
        if np.isnan(y).all(axis=1).any():  # no full window: the clip is shorter than it
            y = _run_opensmile(x, sr, settings, whole=True)
    else:
        y = _run_opensmile(x, sr, settings)
    if np.isnan(y).all(axis=1).any():
        raise DataError(f"too short for openSMILE: {len(x) / sr:.3f} s gives no {settings.set} frame "
                        "(eGeMAPS needs at least 0.06 s)", file=file)
    if not np.isfinite(y).all():
        raise DataError(f"openSMILE gave non-finite {settings.set} features", file=file)
    if settings.set != "egemaps":
        k = settings.lld_step
        y = _hold(y, n * k).reshape(n, k, settings.dim).mean(axis=1, dtype=np.float64).astype(np.float32)
    return _hold(y, n)


def extract_file(path: Path, settings: ExtractorSettings) -> np.ndarray:
    """Features of one audio file, ``[frames, settings.dim]`` float32 (no cache).

    Decoding is :func:`stew.data.formats.waveform.read_audio`'s, so a file that is not audio, truncated, empty,
    has NaN samples, an unsupported encoding or more than two channels is its one-line DataError; an
    all-silent file is one too (openSMILE's features of digital silence are constants).
    """
    path = Path(path)
    x, sr = read_audio(path, settings.sample_rate)
    if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < SILENCE_RMS:
        raise DataError(f"all-silent audio (RMS below {SILENCE_RMS:g}): nothing to extract features from", file=path)
    return features_of_signal(x, sr, settings, path)


# --------------------------------------------------------------------------------------------------
# The cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stew/features`` (``~/.cache/stew/features`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stew" / "features"


def cache_key(content_sha256: str, settings: ExtractorSettings) -> str:
    """The cache entry of a file's content under ``settings`` (the settings JSON includes the openSMILE
    version and the framing version)."""
    text = "\0".join([CACHE_FORMAT, content_sha256, settings.model_dump_json()])
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_load(path: Path, dim: int) -> np.ndarray | None:
    """A cached array, or None when absent or unusable (then it is recomputed and overwritten)."""
    try:
        y = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = y.dtype == np.float32 and y.ndim == 2 and y.shape[0] >= 1 and y.shape[1] == dim and np.isfinite(y).all()
    return y if ok else None


def _cache_store(path: Path, y: np.ndarray) -> None:
    """Write atomically (a reader never sees half a file); a cache that cannot be written is skipped:
    the features are still returned."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            np.save(f, y, allow_pickle=False)
        tmp.replace(path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def resolve_cache(cache_dir: Path | None, cache: bool) -> Path | None:
    """The cache folder to use, or None. A folder the user named must be usable; the default one is
    skipped when it cannot be made (a read-only home still extracts)."""
    if not cache:
        return None
    chosen = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if cache_dir is None:
            return None
        raise DataError(f"cannot use as the feature cache: {e.strerror or e}", file=chosen) from None
    if not os.access(chosen, os.W_OK | os.X_OK):
        if cache_dir is None:
            return None
        raise DataError("cannot use as the feature cache: not writable", file=chosen)
    return chosen


def _extract_cached(path: Path, settings: ExtractorSettings, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return extract_file(path, settings)
    key = cache_key(sha256_file(path), settings)
    entry = cache_dir / key[:2] / f"{key}.npy"
    y = _cache_load(entry, settings.dim)
    if y is None:
        y = extract_file(path, settings)
        _cache_store(entry, y)
    return y


def _job(path: str, settings_json: str, cache_dir: str | None) -> tuple[np.ndarray | None, tuple | None]:
    """One file in a worker: (features, None), or (None, (message, file, row, column)) for a DataError:
    sent back as its parts, which the parent raises again (a pickled DataError would lose them)."""
    settings = ExtractorSettings.model_validate_json(settings_json)
    try:
        return _extract_cached(Path(path), settings, None if cache_dir is None else Path(cache_dir)), None
    except DataError as e:
        return None, (e.message, e.file, e.row, e.column)


# --------------------------------------------------------------------------------------------------
# Many files: a process pool and a progress bar


class _FileProgress(progress.Runs):
    """Runs, with the off-terminal lines thinned to about 20 a stage: a folder may hold thousands of files."""

    def advance(self, note: str = "") -> None:
        every = max(1, self.total // 20)
        if self.console.is_terminal or (self.done + 1) % every == 0 or self.done + 1 == self.total:
            super().advance(note)
        else:
            self.done += 1


class _Quiet:
    def describe(self, label: str) -> None:
        pass

    def advance(self, note: str = "") -> None:
        pass


@contextmanager
def _progress(what: str, total: int, show: bool) -> Iterator[_FileProgress | _Quiet]:
    if not show:
        yield _Quiet()
        return
    with _FileProgress(progress.console(), what, total) as bar:
        yield bar


def extract_all(files: list[Path], names: list[str], settings: ExtractorSettings, *, workers: int,
                 cache_dir: Path | None, show: bool) -> list[np.ndarray]:
    """Features of every file, in order. The first bad file (in the given order, whatever the
    workers' timing) is one DataError; no later file is started."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out: list[np.ndarray | None] = [None] * len(files)
    sjson, cdir = settings.model_dump_json(), None if cache_dir is None else str(cache_dir)
    with _progress(f"extracting {settings.set}", len(files), show) as bar:
        if workers == 1 or len(files) == 1:
            for i, (p, name) in enumerate(zip(files, names, strict=True)):
                bar.describe(name)
                out[i] = _extract_cached(p, settings, cache_dir)
                bar.advance()
            return out  # type: ignore[return-value]
        # spawn, not fork: the parent may hold torch's threads (a forked child can deadlock on their locks).
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(workers, len(files)), mp_context=ctx)
        try:
            futures: dict[Future, int] = {pool.submit(_job, str(p), sjson, cdir): i for i, p in enumerate(files)}
            pending, failed = set(futures), False
            while pending and not failed:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    y, error = fut.result()
                    failed = failed or error is not None
                    if error is None:
                        out[futures[fut]] = y
                        bar.describe(names[futures[fut]])
                        bar.advance()
            if failed:
                # Let the running files finish (cancelling the rest), then report the first bad one in
                # the files' order, as one worker would.
                pool.shutdown(wait=True, cancel_futures=True)
                errors = sorted(((futures[f], f.result()) for f in futures
                                 if f.done() and not f.cancelled() and f.result()[1] is not None), key=lambda e: e[0])
                message, file, row, column = errors[0][1][1]
                raise DataError(message, file=file, row=row, column=column)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# The dataset


def extract_folder(audio_dir: Path, settings: ExtractorSettings, out: Path, *, workers: int = 1,
                   cache_dir: Path | None = None, cache: bool = True, progress: bool = True) -> Path:
    """Extract every file of an audio folder and write a native dataset to ``out`` (atomically).

    The folder needs ``labels.csv`` (a native dataset has targets; see :func:`stew.data.formats.audio.read_labels`
    for its columns and checks): one clip-level Sequence per row, id = the ``file`` column (the path
    relative to the folder), labels mapped onto [-1, 1] when ``audio.yaml`` declares their range (as
    :func:`stew.data.formats.audio.read_audio_folder` does: the models' outputs live there; ``meta["label_scale"]``
    keeps the original range), else as given,
    ``split`` and ``group`` carried over (each clip its own group without ``group``, every clip train
    without ``split``). ``cache=False`` (``--no-cache``) neither reads nor writes the cache. Any bad input
    is one DataError naming the file, and nothing is written to ``out``.
    """
    root, out = Path(audio_dir), Path(out)
    if not root.exists():
        raise DataError("missing folder", file=root)
    if not root.is_dir():
        raise DataError("not a folder: give the audio folder (labels.csv + audio files)", file=root)
    check_output_folder(out)  # an unusable --out fails before any file is decoded
    if not is_audio_folder(root):
        raise DataError(f"no {LABELS}: extraction writes a labelled dataset (file, one column per target, split "
                        "and/or group); to predict on unlabelled audio use predict --audio", file=root / LABELS)
    table = read_labels(root)
    cdir = resolve_cache(cache_dir, cache)
    files = list(table["file"])
    arrays = extract_all([root / f for f in files], files, settings, workers=workers, cache_dir=cdir, show=progress)
    targets: list[str] = list(table.attrs["targets"])
    scale, label_scale = label_scaler(table.attrs["label_range"])
    y = scale(table[targets].to_numpy(np.float64)).astype(np.float32)
    splits = list(table["split"]) if "split" in table else ["train"] * len(files)
    groups = list(table["group"]) if "group" in table else files
    seqs = [Sequence(id=f, group=str(g), split=str(sp), features={MODALITY: x}, masks={MODALITY: np.ones(len(x), bool)},
                     targets=y[i: i + 1], step_ids=[f])
            for i, (f, x, sp, g) in enumerate(zip(files, arrays, splits, groups, strict=True))]
    ds = Dataset(name=root.resolve().name, task="regression", targets=targets, modalities={MODALITY: settings.dim},
                 sequences=seqs, label_range=(-1.0, 1.0) if label_scale else table.attrs["label_range"],
                 step_rate_hz=None, meta={"extractor": settings.model_dump(mode="json"),
                                          "source": "stew features extract", "label_scale": label_scale},
                 label_level="sequence")
    return write_native(ds, out)
