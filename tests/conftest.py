"""Shared fixtures: tiny in-memory datasets (frame-level and utterance-level) that train in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stew.data.dataset import Dataset, Sequence
from stew.data.formats.native import write_native

MOSI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mosi-utterance"
needs_mosi = pytest.mark.skipif(not (MOSI_DIR / "train_ids.csv").is_file(), reason="CMU-MOSI features not present")


def tiny_frames(seed: int = 0, n_per_split: int = 3, length: int = 120) -> Dataset:
    """Regression at 25 Hz: 'a' carries the target clearly, 'b' weakly. Some 'b' steps are missing."""
    rng = np.random.default_rng(seed)
    seqs = []
    for split in ("train", "val", "test"):
        for i in range(n_per_split):
            t = np.cumsum(rng.normal(0, 0.2, size=length))
            y = np.tanh(t / (np.abs(t).max() + 1e-6) * 2)[:, None].astype(np.float32)
            a = np.concatenate([y + rng.normal(0, 0.1, (length, 1)), rng.normal(0, 1, (length, 3))], 1)
            b = np.concatenate([y + rng.normal(0, 1.0, (length, 1)), rng.normal(0, 1, (length, 4))], 1)
            present_b = np.ones(length, bool)
            present_b[10:20] = False
            b[~present_b] = 0
            sid = f"{split}{i}"
            seqs.append(Sequence(
                id=sid, group=sid, split=split,
                features={"a": a.astype(np.float32), "b": b.astype(np.float32)},
                masks={"a": np.ones(length, bool), "b": present_b},
                targets=y, step_ids=[f"{sid}_{k}" for k in range(length)],
            ))
    return Dataset(name="tiny-frames", task="regression", targets=["y"], modalities={"a": 4, "b": 5},
                   sequences=seqs, label_range=(-1.0, 1.0), step_rate_hz=25.0)


def tiny_utterances(seed: int = 0, n_videos: int = 24) -> Dataset:
    """Binary, utterance-level, variable-length videos (padding is exercised); no val split."""
    rng = np.random.default_rng(seed)
    seqs = []
    for v in range(n_videos):
        n = int(rng.integers(3, 9))
        bias = rng.normal()
        y = (bias + rng.normal(0, 0.7, n) > 0).astype(np.float32)[:, None]
        strong = np.concatenate([(2 * y - 1) + rng.normal(0, 0.3, (n, 1)), rng.normal(0, 1, (n, 2))], 1)
        weak = np.concatenate([(2 * y - 1) + rng.normal(0, 2.0, (n, 1)), rng.normal(0, 1, (n, 3))], 1)
        sid = f"vid{v:02d}"
        seqs.append(Sequence(
            id=sid, group=sid, split="test" if v >= n_videos - 6 else "train",
            features={"text": strong.astype(np.float32), "audio": weak.astype(np.float32)},
            masks={"text": np.ones(n, bool), "audio": np.ones(n, bool)},
            targets=y, step_ids=[f"{sid}_{k + 1}" for k in range(n)],
        ))
    return Dataset(name="tiny-utt", task="binary", targets=["sentiment"], modalities={"text": 3, "audio": 4},
                   sequences=seqs, n_classes=2)


def tiny_clips(seed: int = 0, n: int = 48, task: str = "multiclass") -> Dataset:
    """One label per sequence, modalities on their own clocks: 'long' (10-30 steps) carries the class
    clearly, 'short' (2-6 steps) weakly; 'short' is absent (one masked step) from every 8th clip."""
    rng = np.random.default_rng(seed)
    seqs = []
    for i in range(n):
        c = int(rng.integers(0, 3)) if task == "multiclass" else int(rng.integers(0, 2))
        t_long, t_short = int(rng.integers(10, 31)), int(rng.integers(2, 7))
        long = rng.normal(0, 1, (t_long, 4)).astype(np.float32)
        long[:, c] += 1.5
        short = rng.normal(0, 1, (t_short, 3)).astype(np.float32)
        short[:, c % 3] += 0.5
        present_short = np.ones(t_short, bool)
        if i % 8 == 7:
            short, present_short = np.zeros((1, 3), np.float32), np.zeros(1, bool)
        split = "train" if i < n * 0.6 else "val" if i < n * 0.8 else "test"
        sid = f"clip{i:03d}"
        seqs.append(Sequence(
            id=sid, group=sid, split=split, features={"long": long, "short": short},
            masks={"long": np.ones(t_long, bool), "short": present_short},
            targets=np.array([[c]], np.float32), step_ids=[sid],
        ))
    return Dataset(name="tiny-clips", task=task, targets=["emotion"], modalities={"long": 4, "short": 3},
                   sequences=seqs, n_classes=3 if task == "multiclass" else 2, label_level="sequence")


def tiny_waves(n: int = 30, samples: int = 8000, seed: int = 0) -> Dataset:
    """Raw 8 kHz 'clips' whose label in [-1, 1] sets the loudness of a 1.8 kHz tone over a 200 Hz one."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 8000
    seqs = []
    for i in range(n):
        level = rng.uniform(-1, 1)
        x = np.sin(2 * np.pi * 200 * t) + (level + 1) * 0.5 * np.sin(2 * np.pi * 1800 * t) + rng.normal(0, 0.1, samples)
        x = (x / np.sqrt(np.mean(x**2))).astype(np.float32)[:, None]
        split = "train" if i < 0.6 * n else "val" if i < 0.8 * n else "test"
        sid = f"clip{i:03d}"
        seqs.append(Sequence(id=sid, group=sid, split=split, features={"audio": x},
                             masks={"audio": np.ones(samples, bool)}, targets=np.array([[level]], np.float32),
                             step_ids=[sid]))
    return Dataset(name="tiny-waves", task="regression", targets=["conflict"], modalities={"audio": 1},
                   sequences=seqs, label_range=(-1.0, 1.0), label_level="sequence", meta={"unscaled": ["audio"]})


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    return write_native(tiny_clips(), tmp_path / "clips")


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    return write_native(tiny_frames(), tmp_path / "frames")


@pytest.fixture
def utt_dir(tmp_path: Path) -> Path:
    return write_native(tiny_utterances(), tmp_path / "utt")


# Small and quick model settings for training tests.
FAST = {"gru_units": 8, "d_model": 8, "ffn": 16, "clf_hidden": 16, "max_epochs": 3, "patience": 3,
        "lr": 1e-2, "progress": False, "val_groups": 4}


def kill_training_after(monkeypatch: pytest.MonkeyPatch, epoch: int):
    """Make the next fit stop as a kill would (KeyboardInterrupt) at the end of ``epoch`` (0-based), having
    checkpointed every epoch before it; returns the undo, after which fits run to the end again."""
    from stew.training import loop

    monkeypatch.setattr(loop, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every epoch
    original = loop.StewModule.on_train_epoch_end

    def killed(self):
        original(self)
        if self.current_epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.StewModule, "on_train_epoch_end", killed)
    return lambda: monkeypatch.setattr(loop.StewModule, "on_train_epoch_end", original)
