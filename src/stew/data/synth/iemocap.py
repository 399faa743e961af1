"""Synthetic 7-class IEMOCAP written in the AMH fold layout (the layout ``stew.data.iemocap`` reads).

IEMOCAP is licensed, so tests and demos use this instead. The files have the real release's names,
ranks and integer conventions (class indices, token ids with 0 as padding, raw ``*_seqN`` lengths
that may exceed the stored frames); see docs/synthetic.md, "Synthetic IEMOCAP (AMH fold layout)",
for the generative model. In short: every modality shows a class code plus noise, with a class signal
that is strong in the text, medium in the video and weak in the audio; a share of utterances has one
modality that shows no class at all; angry/frustrated and happy/excited are confusable pairs.

Everything is deterministic per seed: the same arguments give bit-identical files.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from stew.data.formats.iemocap import CLASS_COUNTS, CLASSES, EMBEDDING, N_FOLDS, array_path, fold_name
from stew.util.atomic import atomic_dir

__all__ = ["FULL", "MIN_UTTERANCES", "SMALL", "Shapes", "class_counts", "write_synthetic_iemocap"]

GENERATOR_VERSION = 1
MIN_UTTERANCES = 50
MFCC = 40  # base coefficients; the stored audio is MFCC + delta + delta-delta (120)
PROSODY = 35


@dataclass(frozen=True)
class Shapes:
    """Array sizes, and the rates at which a simulated utterance fills them."""

    audio_frames: int
    audio_rate_hz: float
    video_frames: int
    video_rate_hz: float
    video_dim: int
    text_tokens: int
    text_dim: int
    vocab: int


# The real release: 1,000 MFCC frames (10 s at 100 Hz), 32 ResNet frames (3 Hz), 128 GloVe-300 tokens,
# a 3,747-word dictionary. SMALL keeps the 120 audio dims and the same 10 s window at lower rates.
FULL = Shapes(1000, 100.0, 32, 3.0, 2048, 128, 300, 3747)
SMALL = Shapes(32, 3.2, 8, 0.75, 64, 24, 50, 400)

# Length of the class code added to each audio frame's 40 MFCC latents, each video frame's 16 latents
# and each emotion word's embedding (noise has unit scale per latent, 0.4 per embedding dim). With the
# emotion-word share below, a linear probe on mean-pooled features ranks text > video > audio.
_SIGNAL = {"text": 12.0, "video": 3.0, "audio": 2.5}
_CODE_DIMS = 6  # dimension of each modality's class code
# Confusable pairs (as in the thesis's confusion matrices) share part of their class code.
_PAIRS = {("angry", "frustrated"): 0.6, ("excited", "happy"): 0.6, ("sad", "neutral"): 0.3}
_EMOTION_TOKEN_P = 0.4  # share of an informative transcript's tokens that are emotion words
_UNK_P = 0.02


def class_counts(utterances: int) -> list[int]:
    """The thesis's IEMOCAP class counts (7,487 utterances) scaled to ``utterances`` by largest remainder, each >= 1."""
    exact = np.asarray(CLASS_COUNTS, float) * utterances / sum(CLASS_COUNTS)
    n = np.maximum(np.floor(exact).astype(int), 1)
    for k in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if n.sum() >= utterances:
            break
        n[k] += 1
    while n.sum() > utterances:  # only when the floor of 1 overshot: take from the largest class
        n[int(np.argmax(n))] -= 1
    return n.tolist()


def _codes(rng: np.random.Generator) -> np.ndarray:
    """``[7, _CODE_DIMS]`` unit-norm class codes; paired classes are mixed towards each other."""
    z = rng.standard_normal((len(CLASSES), _CODE_DIMS))
    mu = z.copy()
    for (a, b), rho in _PAIRS.items():
        i, j = CLASSES.index(a), CLASSES.index(b)
        mu[i], mu[j] = z[i] + rho * z[j], z[j] + rho * z[i]
    return mu / np.linalg.norm(mu, axis=1, keepdims=True)


def _basis(rng: np.random.Generator, dims: int) -> np.ndarray:
    """``[dims, _CODE_DIMS]`` orthonormal columns: where a modality's class code lives in its latent space."""
    q, _ = np.linalg.qr(rng.standard_normal((dims, _CODE_DIMS)))
    return q


def _ar1(rng: np.random.Generator, shape: tuple[int, int, int], phi: float) -> np.ndarray:
    """Unit-variance AR(1) noise along axis 1 (frames), started stationary."""
    e = rng.standard_normal(shape)
    x0 = rng.standard_normal((shape[0], 1, shape[2]))
    out, _ = lfilter([np.sqrt(1 - phi * phi)], [1.0, -phi], e, axis=1, zi=phi * x0)
    return out


def _pad_mask(lengths: np.ndarray, frames: int) -> np.ndarray:
    return np.arange(frames)[None, :] < lengths[:, None]


@dataclass
class _Corpus:
    labels: np.ndarray
    off: np.ndarray  # [U] index of the modality without class information, -1 for none
    audio: np.ndarray
    audio_len: np.ndarray  # raw frame counts (may exceed the stored frames, as in the release)
    prosody: np.ndarray
    video: np.ndarray
    video_len: np.ndarray
    tokens: np.ndarray
    embedding: np.ndarray
    words: list[str]


_MODS = ("audio", "video", "text")


def _generate(seed: int, n: int, shapes: Shapes, uninformative: float, no_video: float) -> _Corpus:
    world, utt = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    counts = class_counts(n)
    y = utt.permutation(np.repeat(np.arange(len(CLASSES)), counts))
    off = np.full(n, -1)
    chosen = utt.choice(n, round(uninformative * n), replace=False)
    off[chosen] = utt.integers(0, len(_MODS), len(chosen))
    on = {m: (off != i).astype(float) for i, m in enumerate(_MODS)}

    # Utterance durations (s): log-normal, median 3.7 s, about 3 % beyond the 10 s window.
    dur = np.clip(np.exp(utt.normal(1.3, 0.55, n)), 0.6, 30.0)
    a_len = np.maximum(1, np.round(dur * shapes.audio_rate_hz)).astype(np.int64)
    v_len = np.maximum(1, np.round(dur * shapes.video_rate_hz)).astype(np.int64)
    v_len[utt.choice(n, round(no_video * n), replace=False)] = 0
    t_len = np.minimum(1 + utt.poisson(2.5 * dur), shapes.text_tokens).astype(np.int64)

    # Audio: 40 MFCC-like coefficients = class code (weak) + a per-utterance offset ("speaker", channel)
    # + slow frame noise, at arbitrary per-coefficient offsets and scales; then deltas.
    code_a, basis_a = _codes(world), _basis(world, MFCC)
    mfcc_off, mfcc_scale = world.normal(0, 4, MFCC), np.exp(world.normal(0, 0.5, MFCC))
    mfcc_scale[0] *= 5  # c0 (energy) dominates, as in real MFCCs
    f = shapes.audio_frames
    audio = np.zeros((n, f, 3 * MFCC), np.float32)
    for a in range(0, n, 256):
        b = min(a + 256, n)
        sig = _SIGNAL["audio"] * on["audio"][a:b, None] * (code_a[y[a:b]] @ basis_a.T)
        base = sig[:, None] + utt.standard_normal((b - a, 1, MFCC)) + _ar1(utt, (b - a, f, MFCC), 0.8)
        base = mfcc_off + mfcc_scale * base
        d1 = np.gradient(base, axis=1) if f > 1 else np.zeros_like(base)
        d2 = np.gradient(d1, axis=1) if f > 1 else np.zeros_like(base)
        x = np.concatenate([base, d1, d2], 2) * _pad_mask(np.minimum(a_len[a:b], f), f)[:, :, None]
        audio[a:b] = x
    # Prosody (utterance statistics): never read by stew, written because the AMH loaders load it.
    sig = 0.5 * _SIGNAL["audio"] * on["audio"][:, None] * (code_a[y] @ world.standard_normal((_CODE_DIMS, PROSODY)))
    prosody = (sig + utt.standard_normal((n, PROSODY)) + world.normal(0, 3, PROSODY)).astype(np.float32)

    # Video: a 16-d latent (class code, per-utterance nuisance, frame noise) through a random ReLU
    # layer: non-negative, partly sparse features like pooled ResNet activations.
    lat = 16
    code_v, basis_v = _codes(world), _basis(world, lat)
    mix = world.standard_normal((shapes.video_dim, lat)) / np.sqrt(lat)
    fv = shapes.video_frames
    video = np.zeros((n, fv, shapes.video_dim), np.float32)
    for a in range(0, n, 256):
        b = min(a + 256, n)
        sig = _SIGNAL["video"] * on["video"][a:b, None] * (code_v[y[a:b]] @ basis_v.T)
        h = sig[:, None] + 0.8 * utt.standard_normal((b - a, 1, lat)) + _ar1(utt, (b - a, fv, lat), 0.5)
        x = np.maximum(h @ mix.T - 0.25, 0.0) * _pad_mask(np.minimum(v_len[a:b], fv), fv)[:, :, None]
        video[a:b] = x

    # Text: a vocabulary of emotion words (each tied to one class) and neutral words with Zipf
    # frequencies; GloVe-like embeddings in which emotion words carry their class code.
    v, dt = shapes.vocab, shapes.text_dim
    per_class = max(2, (v - 2) // 20)
    n_emo = per_class * len(CLASSES)
    if v < 2 + n_emo + 10:
        raise ValueError(f"vocabulary of {v} words is too small")
    code_t, basis_t = _codes(world), _basis(world, dt)
    emb = 0.4 * world.standard_normal((v, dt))
    emb[0] = 0.0  # _PAD_
    emo_class = np.repeat(np.arange(len(CLASSES)), per_class)
    emb[2 : 2 + n_emo] += _SIGNAL["text"] * (code_t[emo_class] @ basis_t.T) * world.uniform(0.5, 1.5, (n_emo, 1))
    neutral = np.arange(2 + n_emo, v)
    zipf = 1.0 / np.arange(2, len(neutral) + 2)
    tt = shapes.text_tokens
    tok = neutral[utt.choice(len(neutral), (n, tt), p=zipf / zipf.sum())]
    pair = np.arange(len(CLASSES))
    for (ca, cb) in _PAIRS:
        i, j = CLASSES.index(ca), CLASSES.index(cb)
        pair[i], pair[j] = j, i
    cls = np.where(utt.random((n, tt)) < 0.25, pair[y][:, None], y[:, None])
    emo_word = 2 + cls * per_class + utt.integers(0, per_class, (n, tt))
    tok = np.where(utt.random((n, tt)) < _EMOTION_TOKEN_P * on["text"][:, None], emo_word, tok)
    tok = np.where(utt.random((n, tt)) < _UNK_P, 1, tok)
    tok = np.where(_pad_mask(t_len, tt), tok, 0).astype(np.int64)
    words = ["_PAD_", "_UNK_"] + [f"{CLASSES[c]}_{k}" for c in range(len(CLASSES)) for k in range(per_class)]
    words += [f"word_{k}" for k in range(len(neutral))]
    return _Corpus(y.astype(np.int64), off, audio, a_len, prosody, video, v_len, tok, emb.astype(np.float32), words)


def _folds(seed: int, labels: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Five partitions of the same utterances, stratified by class.

    As in the MDRE/AMH scripts: every utterance falls in one of five held-out blocks; fold k trains on
    the other four blocks and splits block k into dev (30 %) and test (70 %).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    block = np.empty(len(labels), int)
    dev = np.zeros(len(labels), bool)
    start = 0
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Continue the round-robin across classes, so blocks differ in size by at most one.
        block[idx] = (start + np.arange(len(idx))) % N_FOLDS
        start += len(idx)
        for k in range(N_FOLDS):
            members = idx[block[idx] == k]
            dev[members[: int(round(0.3 * len(members)))]] = True
    return [{"train": np.flatnonzero(block != k), "dev": np.flatnonzero((block == k) & dev),
             "test": np.flatnonzero((block == k) & ~dev)} for k in range(N_FOLDS)]


def _save_rows(path: Path, x: np.ndarray, rows: np.ndarray) -> None:
    """Write ``x[rows]`` as .npy in chunks (the full-size audio of a partition is gigabytes)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=x.dtype, shape=(len(rows), *x.shape[1:]))
    for a in range(0, len(rows), 512):
        out[a : a + 512] = x[rows[a : a + 512]]
    out.flush()
    del out


def write_synthetic_iemocap(
    out: Path,
    *,
    utterances: int = 350,
    seed: int = 0,
    full_shapes: bool = False,
    uninformative: float = 0.2,
    no_video: float = 0.02,
) -> Path:
    """Write ``out/folds/fold01..fold05`` in the AMH layout, plus ``out/synthetic.json``; return ``out``.

    ``utterances``: corpus size (the thesis's class imbalance scaled down from 7,487; at least
    MIN_UTTERANCES). ``full_shapes``: the real array sizes (1,000 x 120 audio, 32 x 2,048 video, 128 tokens
    of 300-d, 3,747 words) for timing; by default SMALL (32 x 120, 8 x 64, 24 tokens of 50-d, 400
    words): 350 utterances take about 32 MB. ``uninformative``: share of utterances with one modality
    (chosen at random) that carries no class information. ``no_video``: share with video length 0
    (the reader drops them). ``out`` must be absent or empty; it appears only when complete.
    """
    if utterances < MIN_UTTERANCES:
        raise ValueError(f"utterances must be at least {MIN_UTTERANCES}, not {utterances}")
    for name, v in (("uninformative", uninformative), ("no_video", no_video)):
        if not 0.0 <= v <= 0.5:
            raise ValueError(f"{name} must be in [0, 0.5], not {v}")
    shapes = FULL if full_shapes else SMALL
    c = _generate(seed, utterances, shapes, uninformative, no_video)
    folds = _folds(seed, c.labels)
    dic = {w: i for i, w in enumerate(c.words)}
    arrays = {"audio_mfcc": c.audio, "audio_seqN": c.audio_len, "audio_prosody": c.prosody, "video": c.video,
              "video_seqN": c.video_len, "nlp_trans": c.tokens, "label": c.labels}
    with atomic_dir(Path(out)) as tmp:
        for k, parts in enumerate(folds, start=1):
            d = tmp / "folds" / fold_name(k)
            d.mkdir(parents=True)
            for part, rows in parts.items():
                for kind, x in arrays.items():
                    _save_rows(array_path(d, part, kind), x, rows)
            np.save(d / EMBEDDING, c.embedding)
            # The AMH loader reads len(dic.pkl) for the vocabulary size; stew never reads it.
            with (d / "dic.pkl").open("wb") as fh:
                pickle.dump(dic, fh, protocol=2)
            lines = [" ".join(map(str, parts[p])) for p in ("train", "dev", "test")]
            (d / f"{fold_name(k)}_id.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary = {
            "generator": "stew.data.synthetic_iemocap", "version": GENERATOR_VERSION, "seed": seed,
            "utterances": utterances, "full_shapes": full_shapes, "shapes": asdict(shapes),
            "uninformative": uninformative, "no_video": no_video,
            "classes": list(CLASSES), "class_counts": class_counts(utterances),
            "signal": _SIGNAL, "labels": c.labels.tolist(),
            "uninformative_modality": [_MODS[i] if i >= 0 else None for i in c.off.tolist()],
        }
        (tmp / "synthetic.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return Path(out)
