"""One audio file as a model reads it: which files are audio, decoding, resampling, cut, pad, RMS.

Every waveform stew reads goes through here: the audio-folder and SSPNet readers
(:mod:`stew.data.formats.audio`), openSMILE extraction (:mod:`stew.data.features`) and prediction from
audio files (:mod:`stew.deploy.audio`, ``stew serve``), so a deployed model reads a new file exactly as
its training clips were read. Decoding is mono (stereo averaged), resampled with soxr.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from stew.data.validate import require_file
from stew.errors import DataError

# What the "file without a label" check counts as audio (libsndfile's common containers, plus mp3).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".snd",
                            ".w64", ".rf64", ".caf"})
# Below 16-bit PCM's smallest step (3e-5): normalising would only amplify rounding noise.
SILENCE_RMS = 1e-6


def _sf_reason(e: Exception) -> str:
    """libsndfile's reason for a failure, on one line."""
    reason = getattr(e, "error_string", None) or str(e)
    return " ".join(str(reason).split()).rstrip(".")


def read_audio(path: Path, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 mono samples in [-1, 1) (PCM) and its sample rate.

    Stereo is averaged to mono; more channels are refused (which two to keep is the user's call).
    With ``sr`` the samples are resampled with soxr (HQ) and ``sr`` is returned.
    """
    path = Path(path)
    require_file(path)
    if sr is not None and sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError("cannot open as audio: not audio, a corrupt or truncated header, or an unsupported sample "
                        f"format (libsndfile: {_sf_reason(e)})", file=path) from None
    if info.channels > 2:
        raise DataError(f"{info.channels} channels: expected mono or stereo audio (mix it down first)", file=path)
    if info.frames == 0:
        raise DataError("zero-length audio: no samples", file=path)
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"cannot decode the samples ({info.subtype_info or info.subtype}: {_sf_reason(e)})",
                        file=path) from None
    if x.shape[0] == 0:
        raise DataError("zero-length audio: the header promises samples but the file holds none", file=path)
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(x[i]).any() else "Inf"
        raise DataError(f"{kind} sample at {i / rate:.3f} s (sample {i})", file=path)
    mono = x.mean(axis=1) if x.shape[1] == 2 else x[:, 0]
    if sr is not None and sr != rate:
        mono = soxr.resample(mono, rate, sr, quality="HQ")
        rate = sr
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def rms_normalise(x: np.ndarray) -> np.ndarray:
    """``x / sqrt(mean(x**2))``: unit RMS (target RMS 1.0, as ConflictNET reads its clips). An all-silent
    ``x`` (RMS below ``SILENCE_RMS``) is returned unchanged, never divided by zero."""
    x = np.asarray(x, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms < SILENCE_RMS:
        return x.copy()
    return (x / rms).astype(np.float32)


def fit_length(x: np.ndarray, samples: int) -> tuple[np.ndarray, int]:
    """Truncate ``x`` to ``samples`` or zero-pad it at the end; also return how many samples are real."""
    if samples <= 0:
        raise ValueError(f"clip length must be positive, got {samples} samples")
    x = np.asarray(x, dtype=np.float32)
    if len(x) >= samples:
        return x[:samples].copy(), samples
    out = np.zeros(samples, dtype=np.float32)
    out[: len(x)] = x
    return out, len(x)


def prepare_clip(x: np.ndarray, samples: int | None) -> tuple[np.ndarray, int]:
    """A decoded waveform as the model sees it: cut to ``samples``, RMS-normalised, zero-padded to
    ``samples`` (None: full length, no padding). Returns the clip and how many samples are real.

    The order matters: RMS is taken over the samples kept, so a long file's kept part and a short
    clip's speech both have unit RMS (the authors' code normalises after padding; identical for
    full-length clips). Use this wherever a file is read for a model trained on read_audio_folder.
    """
    x = rms_normalise(x[:samples] if samples is not None else x)
    return fit_length(x, samples) if samples is not None else (x, len(x))


def audio_files(folder: Path) -> list[Path]:
    """Audio files (by suffix) under ``folder``, hidden files and folders skipped (editors, atomic writes)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_SUFFIXES]
    return found
