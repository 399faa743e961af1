"""A synthetic stand-in for the SSPNet Conflict Corpus (licensed): 30 s clips of debate audio at 8 kHz.

Each clip is two or three synthetic talkers taking turns: syllable-sized voiced grains (a glottal
pulse train with a pitch contour, shaped by vowel formants, led by a noise consonant). A latent
conflict level c in [-10, 10] drives the turn-taking (shorter turns, overlaps, interruptions, fewer
pauses), the voices (louder, higher and wider pitch, pressed and brighter) and shouted turns.
Distractors that are loud but not conflictual (laughter-like bursts, music, microphone taps) are
most frequent in low-conflict clips, as in the thesis's case studies (docs/methods/conflictnet.md#explanations),
so energy alone misleads. docs/synthetic.md ("Synthetic conflict corpus") gives the model in full.

Written as the audio-folder layout that ``stew.data.audio.read_audio_folder`` reads::

    OUT/labels.csv     # file, conflict, split, group (the debate)
    OUT/audio.yaml     # label_range: [-10, 10], sample_rate, clip_s
    OUT/segments.csv   # file, start_s, end_s, kind: where the conflictual events and distractors are
    OUT/synthetic.yaml # generator version, seed, sizes (provenance)
    OUT/*.wav          # PCM_16 mono

Deterministic: the same arguments give identical files; a clip's audio depends on the seed and its
index only, not on how many clips are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import yaml
from scipy.signal import lfilter

from stew.util.atomic import atomic_dir

__all__ = [
    "CONFLICT_KINDS", "DEFAULT_CLIPS", "DISTRACTOR_KINDS", "GENERATOR_VERSION", "Clip", "synth_conflict_clip",
    "write_synthetic_conflict",
]

GENERATOR_VERSION = 1
# ConflictNET on 240,000-sample clips costs 1-2 s per clip and epoch on 2 CPU cores: 240 clips (seed 0:
# 132 train, 36 val, 72 test) take about 4.5 min per epoch and reach a test PCC of 0.61 after 2 epochs
# (docs/synthetic.md). clips=1430 gives the corpus's size.
DEFAULT_CLIPS = 240
LABEL_RANGE = (-10.0, 10.0)
# INTERSPEECH 2013 partition sizes (docs/methods/conflictnet.md#data): 793 / 240 / 397 of 1,430 clips.
SPLIT_SHARES = {"train": 793 / 1430, "val": 240 / 1430, "test": 397 / 1430}
CONFLICT_KINDS = ("overlap", "interruption", "shouting")
DISTRACTOR_KINDS = ("laughter", "music", "tap")
LABEL_NOISE = 1.0  # rater disagreement: the label is the latent level plus N(0, 1) (corpus labels: mean of 10)

# Vowel formants F1-F3 (Hz) of an adult male voice (Peterson & Barney-like); scaled per talker.
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410],
                   [300, 870, 2240], [660, 1720, 2410]], dtype=np.float64)
BANDWIDTHS = np.array([90.0, 110.0, 160.0])
FORMANT_GAINS = np.array([1.0, 0.55, 0.3])
REF_RMS = 0.05  # a clip's RMS after broadcast levelling, before its random gain of +-6 dB
DISTRACTOR_RATE = 3.8  # distractor events per 30 s in calm clips
FRAME_S = 0.01  # time grid of the event bookkeeping (segments.csv)


@dataclass
class Talker:
    f0: float  # Hz, habitual pitch
    formant_scale: float  # vocal-tract length: ~1.0 male, ~1.15 female
    level_db: float  # habitual loudness relative to 0 dB
    oq: float  # glottal open quotient at rest (lower = pressed, brighter voice)


@dataclass
class _Grains:
    """Syllable-sized grains to render, one entry per grain (filled by the planner, then arrays)."""

    start: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    cons: list[int] = field(default_factory=list)  # samples of leading consonant noise
    f0a: list[float] = field(default_factory=list)
    f0b: list[float] = field(default_factory=list)
    level_db: list[float] = field(default_factory=list)
    oq: list[float] = field(default_factory=list)
    breath: list[float] = field(default_factory=list)  # aspiration noise share (laughter is breathy)
    formants: list[np.ndarray] = field(default_factory=list)

    def add(self, start: int, length: int, cons: int, f0a: float, f0b: float, level_db: float, oq: float,
            breath: float, formants: np.ndarray) -> None:
        self.start.append(start)
        self.length.append(length)
        self.cons.append(cons)
        self.f0a.append(f0a)
        self.f0b.append(f0b)
        self.level_db.append(level_db)
        self.oq.append(oq)
        self.breath.append(breath)
        self.formants.append(formants)


@dataclass
class Clip:
    """One rendered clip: float32 samples in [-1, 1], the label, and its annotated events."""

    audio: np.ndarray
    conflict: float
    latent: float  # the level that drove the generator (the label is this plus rater noise)
    segments: list[tuple[float, float, str]]
    n_talkers: int


# --------------------------------------------------------------------------------------------------
# Rendering


def _render_grains(g: _Grains, n_out: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Overlap-add every grain into ``n_out`` samples. Grains are rendered as [grains, samples] arrays in
    chunks of similar length, so little work goes into padding."""
    out = np.zeros(n_out)
    if not g.start:
        return out
    start, length, cons = (np.asarray(v, dtype=np.int64) for v in (g.start, g.length, g.cons))
    params = np.stack([np.asarray(v, dtype=np.float64) for v in (g.f0a, g.f0b, g.level_db, g.oq, g.breath)], 1)
    formants = np.stack(g.formants)
    order = np.argsort(length, kind="stable")
    for chunk in np.array_split(order, max(1, len(order) // 48)):
        idx, x = _render_chunk(start[chunk], length[chunk], cons[chunk], params[chunk], formants[chunk], sr, rng)
        keep = (idx >= 0) & (idx < n_out) & (x != 0)
        out += np.bincount(idx[keep], weights=x[keep], minlength=n_out)[:n_out]
    return out


def _render_chunk(start: np.ndarray, length: np.ndarray, cons: np.ndarray, params: np.ndarray, formants: np.ndarray,
                  sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample positions and values of a few grains ([grains, L] float32, zero past each grain's end)."""
    f0a, f0b, level, oq, breath = (params[:, i: i + 1].astype(np.float32) for i in range(5))
    n, L = len(start), int(length.max())
    j = np.arange(L, dtype=np.float32)[None, :]
    valid = j < length[:, None]
    # Glottal source: a raised-cosine pulse per period, differentiated (radiation), so the spectrum falls
    # about 6 dB per octave; a smaller open quotient gives a shorter pulse and a brighter voice.
    f0 = f0a * np.power(f0b / f0a, np.minimum(j / length[:, None], 1.0), dtype=np.float32)
    p = (np.cumsum(f0 / sr, axis=1) + rng.uniform(0, 1, (n, 1)).astype(np.float32)) % 1.0
    pulse = np.where(p < oq, 0.5 - 0.5 * np.cos((2 * np.pi) * p / oq), 0.0).astype(np.float32)
    src = np.diff(pulse, axis=1, prepend=np.float32(0))
    src /= np.sqrt(np.mean(src**2, axis=1, keepdims=True)) + 1e-12
    noise = np.diff(rng.standard_normal((n, L), dtype=np.float32), axis=1, prepend=np.float32(0)) / np.sqrt(2)
    src = src * (1 - breath) + noise * breath
    # Vowel formants as a zero-phase spectral envelope (a sum of resonance curves), applied by FFT.
    nfft = 1 << int(np.ceil(np.log2(L + 256)))
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr).astype(np.float32)[None, None, :]
    half_bw = (BANDWIDTHS / 2).astype(np.float32)[None, :, None]
    env = (FORMANT_GAINS.astype(np.float32)[None, :, None]
           / (1 + ((freqs - formants.astype(np.float32)[:, :, None]) / half_bw) ** 2)).sum(1)
    voiced = np.fft.irfft(np.fft.rfft(src, nfft, axis=1) * env, nfft, axis=1)[:, :L].astype(np.float32)
    # Leading consonant: high-passed noise at -14 dB, then the vowel.
    in_cons = j < cons[:, None]
    v_rms = np.sqrt((voiced**2 * (valid & ~in_cons)).sum(1, keepdims=True) / np.maximum(length - cons, 1)[:, None])
    x = np.where(in_cons, 0.2 * noise, voiced / (v_rms + 1e-12))
    # Smoothstep attack (8 ms) and release (35 ms) on the whole grain.
    r = np.minimum(np.minimum(j / (0.008 * sr), (length[:, None] - j) / (0.035 * sr)), 1.0).clip(0.0, 1.0)
    x *= (r * r * (3 - 2 * r)) * valid * 10 ** (level / 20)
    return start[:, None] + np.arange(L)[None, :], x


def _music(t0: float, dur: float, level_db: float, n_out: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A few seconds of chords: three harmonic tones per chord, a chord every 0.3-0.6 s."""
    out = np.zeros(n_out)
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    t = t0
    while t < t0 + dur:
        d = rng.uniform(0.3, 0.6)
        a, b = int(t * sr), int(min(t + d, t0 + dur) * sr)
        a, b = max(a, 0), min(b, n_out)
        if b - a > 8:
            tt = np.arange(b - a) / sr
            notes = root * 2 ** (rng.choice(scale, 3, replace=False) / 12)
            harm = np.arange(1, 5)[:, None, None]
            tone = (np.sin(2 * np.pi * harm * notes[None, :, None] * tt) / harm**1.5).sum((0, 1))
            env = np.exp(-tt / rng.uniform(0.25, 0.6)) * np.minimum(tt / 0.01, 1)
            seg = tone * env
            out[a:b] += seg / (np.sqrt(np.mean(seg**2)) + 1e-12)
        t += d
    return out * 10 ** (level_db / 20)


def _taps(t0: float, level_db: float, n_out: int, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A cluster of 2-5 microphone taps: a thump (decaying low sine) with a click. Returns the end time."""
    out = np.zeros(n_out)
    t = t0
    for _ in range(int(rng.integers(2, 6))):
        n = int(0.08 * sr)
        tt = np.arange(n) / sr
        thump = np.sin(2 * np.pi * rng.uniform(60, 200) * tt) * np.exp(-tt / rng.uniform(0.01, 0.03))
        click = rng.standard_normal(n) * np.exp(-tt / 0.002)
        seg = thump + 0.5 * click
        seg *= 10 ** ((level_db + rng.uniform(-3, 3)) / 20) / (np.sqrt(np.mean(seg[: int(0.03 * sr)] ** 2)) + 1e-12)
        a = int(t * sr)
        if 0 <= a < n_out:
            m = min(n, n_out - a)
            out[a: a + m] += seg[:m]
        t += rng.uniform(0.12, 0.45)
    return out, t


# --------------------------------------------------------------------------------------------------
# Planning one clip


def _voice(rng: np.random.Generator, female: bool) -> Talker:
    return Talker(f0=float(rng.uniform(175, 235) if female else rng.uniform(95, 140)),
                  formant_scale=float((1.15 if female else 1.0) * rng.uniform(0.95, 1.05)),
                  level_db=float(rng.uniform(-2.5, 2.5)), oq=float(rng.uniform(0.55, 0.7)))


def _phrases(rng: np.random.Generator, a: float, b: float, k: float) -> list[tuple[float, float]]:
    """Voiced stretches of a turn [a, b): 1-3 s phrases; pauses between them get rarer as conflict rises."""
    out, t = [], a
    while t < b - 0.15:
        e = min(t + rng.uniform(1.0, 3.0), b)
        out.append((t, e))
        t = e + (rng.uniform(0.2, 0.7) if rng.random() < 0.8 - 0.7 * k else 0.03)
    return out


def _speak(g: _Grains, rng: np.random.Generator, who: Talker, a: float, b: float, k: float, shout: bool,
           sr: int, level_offset: float = 0.0) -> None:
    """Syllables of one phrase: rate, pitch (raise, range, declination), loudness and effort follow ``k``."""
    rate = rng.uniform(3.8, 4.6) + 1.6 * k
    raise_st = 5.0 * k + 3.0 * shout + rng.normal(0, 1.0)
    level = who.level_db + 9.0 * k + 6.0 * shout + level_offset + rng.normal(0, 1.5)
    oq = max(0.3, who.oq - 0.2 * k - 0.1 * shout)
    t = a
    while t < b - 0.08:
        d = min(rng.uniform(0.7, 1.3) / rate, b - t)
        pos = (t - a) / max(b - a, 1e-3)
        st = raise_st - 2.0 * pos + rng.normal(0, 1.0 + 2.5 * k)  # declination and accents, in semitones
        f0a = who.f0 * 2 ** (st / 12)
        f0b = f0a * 2 ** (rng.normal(0, 0.8) / 12)
        last = t + d >= b - 0.08
        n = int(d * sr)
        g.add(int(t * sr), n, int(rng.uniform(0.15, 0.3) * n), f0a, f0b,
              level + rng.normal(0, 2.0) - 4.0 * last, oq, 0.04,
              VOWELS[rng.integers(len(VOWELS))] * who.formant_scale)
        t += d


def _runs(active: np.ndarray, min_len: int, bridge: int) -> list[tuple[int, int]]:
    """[start, end) frame runs of True, gaps shorter than ``bridge`` closed, runs shorter than ``min_len`` dropped."""
    edges = np.flatnonzero(np.diff(np.r_[0, active.astype(np.int8), 0]))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
    merged: list[tuple[int, int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < bridge:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return [(s, e) for s, e in merged if e - s >= min_len]


def synth_conflict_clip(rng: np.random.Generator, latent: float, voices: list[Talker], *, sr: int = 8000,
                        clip_s: float = 30.0) -> Clip:
    """Render one clip of the talkers in ``voices`` (2 or 3) at latent conflict ``latent`` in [-10, 10]."""
    k = float(np.clip((latent + 10) / 20, 0, 1))
    n_out = int(round(clip_s * sr))
    g = _Grains()
    segments: list[tuple[float, float, str]] = []
    n_frames = int(np.ceil(clip_s / FRAME_S))
    talking = np.zeros((len(voices), n_frames), dtype=bool)

    # Turn-taking: gamma-distributed turns, shorter as conflict rises; the next talker either waits a
    # gap, starts early (overlap) or breaks in mid-turn (interruption: the current talker is cut off).
    mean_turn = 7.0 - 5.0 * k
    cur = int(rng.integers(len(voices)))
    t = -rng.uniform(0.0, 4.0)  # a clip is a window cut out of a debate: it may start mid-turn
    interrupting = False
    while t < clip_s:
        end = t + float(np.clip(rng.gamma(2.0, mean_turn / 2), 0.8, 18.0))
        nxt = int(rng.choice([i for i in range(len(voices)) if i != cur]))
        if rng.random() < 0.04 + 0.7 * k:
            if rng.random() < 0.25 + 0.65 * k:
                start_next = t + (end - t) * rng.uniform(0.35, 0.85)
                end = min(end, start_next + rng.uniform(0.4, 0.6 + 1.2 * k))
                segments.append((start_next, end, "interruption"))
                next_interrupts = True
            else:
                start_next = max(t + 0.4, end - rng.uniform(0.3, 0.5 + 1.5 * k))
                next_interrupts = False
        else:
            start_next = end + rng.uniform(0.2, 1.2) * (1 - 0.7 * k)
            next_interrupts = False
        shout = rng.random() < min(1.0, 0.8 * k**2 + (0.25 * k if interrupting else 0.0))
        for a, b in _phrases(rng, t, end, k):
            if b > 0 and a < clip_s:
                _speak(g, rng, voices[cur], a, b, k, shout, sr, level_offset=3.0 * interrupting)
                talking[cur, max(int(a / FRAME_S), 0): int(b / FRAME_S)] = True
        if shout and end > 0 and t < clip_s:
            segments.append((t, end, "shouting"))
        t, cur, interrupting = start_next, nxt, next_interrupts

    # Backchannels ("mm-hm"): short and quiet, at any conflict level; overlap, but not conflictual.
    for _ in range(int(rng.poisson(0.06 * clip_s))):
        who = voices[int(rng.integers(len(voices)))]
        a = rng.uniform(0, clip_s - 0.5)
        _speak(g, rng, who, a, a + rng.uniform(0.2, 0.45), 0.0, False, sr, level_offset=-8.0)

    # Distractors: loud, not conflictual, mostly in low-conflict clips.
    extra = np.zeros(n_out)
    # Their rate falls from DISTRACTOR_RATE below c = -7 to none above c = +5 (a smoothstep in k), so
    # that loud moments are about as frequent at every level: loudness alone does not tell conflict.
    u = float(np.clip((k - 0.15) / 0.6, 0, 1))
    for _ in range(int(rng.poisson(DISTRACTOR_RATE * (1 - u * u * (3 - 2 * u)) * clip_s / 30.0))):
        kind = str(rng.choice(DISTRACTOR_KINDS, p=[0.45, 0.25, 0.30]))
        a = rng.uniform(0, clip_s - 1.0)
        if kind == "laughter":
            who, rate = voices[int(rng.integers(len(voices)))], rng.uniform(4.0, 6.0)
            n_ha, f0 = int(rng.integers(5, 15)), rng.uniform(230, 380)
            loud = who.level_db + rng.uniform(8, 14)
            for h in range(n_ha):
                n = int(rng.uniform(0.12, 0.18) * sr)
                f = f0 * 2 ** (rng.normal(-0.6 * h, 1.0) / 12)
                g.add(int((a + h / rate) * sr), n, int(0.25 * n), f, f * 0.92, loud - 1.2 * h, 0.5, 0.55,
                      VOWELS[0] * who.formant_scale)
            b = a + n_ha / rate
        elif kind == "music":
            b = min(a + rng.uniform(3.0, 9.0), clip_s)
            extra += _music(a, b - a, rng.uniform(5.0, 11.0), n_out, sr, rng)
        else:
            taps, b = _taps(a, rng.uniform(4.0, 12.0), n_out, sr, rng)
            extra += taps
        segments.append((a, b, kind))

    # Overlapping talk (two or more talkers' phrases at once), read off the 10 ms activity grid.
    both = talking.sum(0) >= 2
    segments += [(s * FRAME_S, e * FRAME_S, "overlap") for s, e in _runs(both, min_len=20, bridge=15)]

    x = _render_grains(g, n_out, sr, rng) + extra
    # Broadcast noise floor (low-passed white noise, -42 to -32 dB re a calm syllable), then broadcast
    # levelling: the clip's RMS is set to a random level, so absolute loudness says nothing about conflict
    # (the model sees RMS-normalised clips anyway); raised voices stay loud relative to calm ones.
    noise = lfilter([0.3], [1.0, -0.7], rng.standard_normal(n_out))
    x += noise / noise.std() * 10 ** (rng.uniform(-42, -32) / 20)
    x *= REF_RMS * 10 ** (rng.uniform(-6, 6) / 20) / np.sqrt(np.mean(x**2))
    peak = float(np.abs(x).max())
    if peak > 0.98:  # a limiter would; scaling keeps the waveform's shape
        x *= 0.98 / peak
    segs = sorted((max(a, 0.0), min(b, clip_s), kind) for a, b, kind in segments if b > 0 and a < clip_s)
    label = float(np.clip(latent + rng.normal(0, LABEL_NOISE), *LABEL_RANGE))
    return Clip(audio=x.astype(np.float32), conflict=round(label, 2), latent=latent,
                segments=[(round(a, 2), round(b, 2), kind) for a, b, kind in segs if b - a >= 0.05],
                n_talkers=len(voices))


# --------------------------------------------------------------------------------------------------
# The corpus


def _debate_size(clips: int) -> int:
    """Clips per synthetic debate: about 20 debates, at most 32 clips each (1,430 clips -> 45 debates, as in
    the corpus)."""
    return int(min(32, max(1, round(clips / 20))))


def _assign_splits(sizes: list[int], rng: np.random.Generator) -> list[str]:
    """Whole debates to train/val/test, greedily towards the corpus's proportions (largest deficit first)."""
    total = sum(sizes)
    have = dict.fromkeys(SPLIT_SHARES, 0)
    out = [""] * len(sizes)
    for d in rng.permutation(len(sizes)):
        sp = max(SPLIT_SHARES, key=lambda s: SPLIT_SHARES[s] * total - have[s])
        out[d] = sp
        have[sp] += sizes[d]
    return out


def write_synthetic_conflict(out: Path, *, clips: int = DEFAULT_CLIPS, seed: int = 0, sr: int = 8000,
                             clip_s: float = 30.0) -> Path:
    """Write a synthetic conflict corpus of ``clips`` clips to ``out`` (atomically; ``out`` must be absent
    or empty) as an audio folder; see the module docstring for the files. Returns ``out``."""
    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    if sr < 4000 or not clip_s >= 1.0:
        raise ValueError(f"need sr >= 4000 Hz and clip_s >= 1 s, got {sr} Hz and {clip_s} s")
    out = Path(out)
    size = _debate_size(clips)
    n_debates = -(-clips // size)
    sizes = [min(size, clips - d * size) for d in range(n_debates)]
    root = np.random.SeedSequence([seed, GENERATOR_VERSION])
    debate_ss, clip_ss, split_ss = root.spawn(3)
    split_of = _assign_splits(sizes, np.random.default_rng(split_ss))

    # A debate: a moderator and four guests (as in Canal 9), and a temperature shifting its clips' levels.
    debates = []
    for ss in debate_ss.spawn(n_debates):
        rng = np.random.default_rng(ss)
        people = [_voice(rng, female=rng.random() < 0.3) for _ in range(5)]
        debates.append((people, float(rng.normal(0, 2.0))))

    labels, segs = [], []
    with atomic_dir(out) as tmp:
        for i, ss in enumerate(clip_ss.spawn(clips)):
            rng = np.random.default_rng(ss)
            d = i // size
            people, heat = debates[d]
            latent = float(np.clip(10 * (2 * rng.beta(2.4, 2.6) - 1) + heat, -9.5, 9.5))
            n_talk = 3 if rng.random() < 0.2 + 0.5 * (latent + 10) / 20 else 2
            # The moderator (people[0]) is in most clips; the guests are drawn per clip.
            guests = rng.choice(np.arange(1, 5), n_talk, replace=False).tolist()
            who = ([0] + guests[: n_talk - 1]) if rng.random() < 0.7 else guests
            clip = synth_conflict_clip(rng, latent, [people[w] for w in who], sr=sr, clip_s=clip_s)
            start = int(round((i % size) * clip_s))
            name = f"debate{d:02d}_{start:04d}_{int(round(start + clip_s)):04d}.wav"
            sf.write(tmp / name, clip.audio, sr, subtype="PCM_16")
            labels.append({"file": name, "conflict": clip.conflict, "split": split_of[d], "group": f"debate{d:02d}"})
            segs += [{"file": name, "start_s": a, "end_s": b, "kind": kind} for a, b, kind in clip.segments]
        pd.DataFrame(labels).to_csv(tmp / "labels.csv", index=False)
        pd.DataFrame(segs, columns=["file", "start_s", "end_s", "kind"]).to_csv(tmp / "segments.csv", index=False)
        (tmp / "audio.yaml").write_text(f"label_range: [-10, 10]\nsample_rate: {sr}\nclip_s: {clip_s:g}\n",
                                        encoding="utf-8")
        info = {"generator": "stew.data.synthetic_conflict", "version": GENERATOR_VERSION, "seed": seed,
                "clips": clips, "sample_rate": sr, "clip_s": clip_s, "debates": n_debates}
        (tmp / "synthetic.yaml").write_text(yaml.safe_dump(info, sort_keys=False), encoding="utf-8")
    return out
