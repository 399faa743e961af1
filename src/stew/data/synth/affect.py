"""Synthetic RECOLA-like and CMU-MOSI-like datasets from a known latent-variable model.

Both generators draw a low-dimensional latent state (the affect factors behind the labels plus
nuisance factors) and render every modality as a fixed random mixing of *its own view* of that state
plus noise. The views differ on purpose, to reproduce the modality strengths of the real data:

* the **stronger** modality sees the target factor almost without view noise, with a large, nearly
  linear loading and little nuisance variance;
* the **weaker** modality also sees the target factor (the information is genuinely shared, with
  moderate view noise), but almost only through pathways that a linear or small-data model reads
  badly: a product with a nuisance factor (``f * tanh(q)``, whose sign flips with ``q``) and a
  saturating random ``tanh`` layer in which it is entangled with nuisance factors of larger variance.

Why a weak-modality model can gain from a strong one: with few training speakers/videos and slow
latent dynamics (a small effective sample), a flexible weak model fits nuisance directions and label
noise that happen to correlate with the label in the training set; the labels are noisy (RECOLA's
gold standard is the mean of 6 raters with their own drifts, biases and reaction delays; MOSI's a
noisy, thresholded annotator mean). The strong modality shows the shared factor nearly linearly and
in step with the weak features, so a teacher trained on it, or the strong features themselves, are
a denser target without the label's unlearnable parts: translating weak -> strong features or
aligning to the teacher's latent is extra supervision for the hard weak-side decoding. The headroom
is real: the same weak model trained on three times as many speakers does clearly better, and even a
naive teacher signal recovers part of that for a nonlinear student (numbers in docs/synthetic.md).

Everything is deterministic per seed: the same arguments give bit-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter
from threadpoolctl import threadpool_limits

from stew.data.dataset import Dataset, Sequence

__all__ = ["MOSI_DIMS", "RECOLA_DIMS", "synth_mosi", "synth_recola"]

RECOLA_DIMS = {"audio": 88, "video_app": 168, "video_geo": 632}
MOSI_DIMS = {"text": 100, "audio": 73, "video": 100}
RATE_HZ = 25.0
FEATURE_WINDOW_S = 8.0  # AVEC 2016: mean and std of the frame descriptors over an 8 s window
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Building blocks


def _ou(rng: np.random.Generator, n: int, dims: int, tau_steps: float) -> np.ndarray:
    """``[n, dims]`` stationary unit-variance Ornstein-Uhlenbeck (AR(1)) paths with time constant tau.

    Started from the stationary distribution, so there is no burn-in transient at the beginning.
    """
    phi = float(np.exp(-1.0 / tau_steps))
    e = rng.standard_normal((n, dims))
    x0 = rng.standard_normal((1, dims))
    out, _ = lfilter([np.sqrt(1.0 - phi * phi)], [1.0, -phi], e, axis=0, zi=phi * x0)
    return out


def _interp_knots(knots: np.ndarray, n: int, stride: int) -> np.ndarray:
    """Linear interpolation ``[n, dims]`` (float32) between rows of ``knots`` placed every ``stride`` steps."""
    m = -(-n // stride)  # intervals needed; the caller provides m + 1 knots
    f = (np.arange(stride, dtype=np.float32) / stride)[None, :, None]
    k = knots.astype(np.float32)
    out = k[:m, None, :] * (1.0 - f) + k[1 : m + 1, None, :] * f
    return out.reshape(m * stride, -1)[:n]


def _window_stats(x: np.ndarray, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over the windows ``x[i:i + w]`` for ``i = 0 .. n - 1`` (cumulative sums)."""
    c1 = np.cumsum(np.concatenate([np.zeros((1, x.shape[1])), x]), axis=0)
    c2 = np.cumsum(np.concatenate([np.zeros((1, x.shape[1])), x * x]), axis=0)
    m = (c1[w : w + n] - c1[:n]) / w
    return m, np.maximum((c2[w : w + n] - c2[:n]) / w - m * m, 0.0)


@dataclass(frozen=True)
class _View:
    """How one modality renders the latent state: ``x = A h' + B tanh(C h' + c0) + noise``.

    ``h'`` is the modality's own view of the latent groups ``h``:

    * ``view_noise[f]``: factor ``f`` is seen as ``(f + s * xi) / sqrt(1 + s^2)`` with a private
      unit-variance process ``xi`` (same time scale): this caps what even a perfect model of this
      modality can know about ``f``;
    * ``gated = (f, q, weight)`` adds a group ``f * tanh(1.5 q)`` with loading ``weight``: its sign
      depends on the nuisance group ``q`` (how arousal shows in a face depends on pose), so it is
      invisible to a linear model and decodable only by one that also models ``q``.

    ``lin[g]``: loading of group ``g`` in the linear part (its variance share per output is
    ``lin[g]**2``). ``nonlin[g]``: gain of ``g`` inside the random tanh layer (large gains saturate
    the units and entangle the groups); ``nl_scale``: weight of that layer's output. ``noise``: std of
    the per-output noise. RECOLA only: ``white`` is the frame-level noise std, whose log follows
    ``hetero`` (group -> gain on its first factor; voice-energy variability rises with arousal), which
    the window *std* features pick up.
    """

    n_out: int
    view_noise: dict[str, float]
    lin: dict[str, float]
    gated: tuple[str, str, float] | None
    nonlin: dict[str, float]
    nl_scale: float
    noise: float
    white: float = 0.0
    hetero: dict[str, float] = field(default_factory=dict)
    hidden: int = 32


@dataclass(frozen=True)
class _Mixer:
    """The fixed random weights of one :class:`_View` (drawn once per dataset seed)."""

    view: _View
    groups: list[str]
    a: np.ndarray  # [n_out, sum |g|] linear loadings, already scaled by lin[g]
    c: np.ndarray  # [hidden, sum |g|] tanh-layer input weights, already scaled by nonlin[g]
    c0: np.ndarray  # [hidden] tanh-layer biases
    b: np.ndarray  # [n_out, hidden] tanh-layer output weights, already scaled by nl_scale

    @classmethod
    def draw(cls, rng: np.random.Generator, view: _View, sizes: dict[str, int]) -> _Mixer:
        lin, sizes = dict(view.lin), dict(sizes)
        if view.gated:
            _, q, weight = view.gated
            lin["gated"], sizes["gated"] = weight, sizes[q]
        groups = sorted(set(lin) | set(view.nonlin))
        a, c = [], []
        for g in groups:
            # Entries ~ N(0, 1/|g|): a unit-variance group adds gain**2 variance to each output.
            a.append(lin.get(g, 0.0) * rng.standard_normal((view.n_out, sizes[g])) / np.sqrt(sizes[g]))
            c.append(view.nonlin.get(g, 0.0) * rng.standard_normal((view.hidden, sizes[g])) / np.sqrt(sizes[g]))
        c0 = rng.normal(0.0, 0.5, view.hidden)
        b = view.nl_scale * rng.standard_normal((view.n_out, view.hidden)) / np.sqrt(view.hidden)
        return cls(view, groups, np.concatenate(a, 1), np.concatenate(c, 1), c0, b)

    def latent_view(self, h: dict[str, np.ndarray], xi: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This modality's view ``h'`` of the latent groups; ``xi[f]``: private noise for ``view_noise[f]``."""
        v = self.view
        out = dict(h)
        for f, s in v.view_noise.items():
            out[f] = (h[f] + s * xi[f]) / np.sqrt(1.0 + s * s)
        if v.gated:
            f, q, _ = v.gated
            out["gated"] = out[f][:, :1] * np.tanh(1.5 * h[q])
        return out

    def render(self, hv: dict[str, np.ndarray]) -> np.ndarray:
        """Noise-free outputs ``[n, n_out]`` from a latent view ``hv`` (one row per step)."""
        hz = np.concatenate([hv[g] for g in self.groups], axis=1)
        return hz @ self.a.T + np.tanh(hz @ self.c.T + self.c0) @ self.b.T

    def window_features(self, rng: np.random.Generator, hv: dict[str, np.ndarray], w: int, n: int) -> np.ndarray:
        """One recording's ``[n, 2 * n_out]`` features: the mean and std over ``[t, t + w)`` of

        ``x_t = diag(g) (A h'_t + B tanh(C h'_t + c0) + e_t) + o``, plus slow feature noise; ``g``, ``o``
        are the speaker's descriptor gains and offsets and ``e_t`` is white noise of std
        ``white * exp(hetero . h'_t)``. Computed from windowed statistics of the low-dimensional
        ``h'`` and hidden units, never of the descriptors themselves (632-d at 25 Hz would be slow).
        The mean is exact; the variance sums the within-window variances of the components as if
        they were uncorrelated.
        """
        v = self.view
        hz = np.concatenate([hv[g] for g in self.groups], axis=1)
        hid = np.tanh(hz @ self.c.T + self.c0)
        log_sd = sum((k * hv[g][:, :1] for g, k in v.hetero.items()), np.zeros((len(hz), 1)))
        mean_z, var_z = _window_stats(hz, w, n)
        mean_h, var_h = _window_stats(hid, w, n)
        white_var, _ = _window_stats((v.white * np.exp(log_sd)) ** 2, w, n)

        gain = np.exp(rng.normal(0.0, _SPK_FEAT_LOGSCALE, v.n_out))
        offset = rng.normal(0.0, _SPK_FEAT_OFFSET, v.n_out)
        # Slow noise as knots every _NOISE_STRIDE frames, interpolated. The speaker offset (and, for
        # the std half, the log gain) rides on the knots, so the interpolation adds them for free.
        m = -(-n // _NOISE_STRIDE) + 1
        knots = v.noise * _ou(rng, m, 2 * v.n_out, _NOISE_TAU_S * RATE_HZ / _NOISE_STRIDE)
        knots[:, : v.n_out] = gain * knots[:, : v.n_out] + offset
        knots[:, v.n_out :] = 0.5 * knots[:, v.n_out :] + np.log(gain)
        noise = _interp_knots(knots, n, _NOISE_STRIDE)

        # float32 from here on: these [n, 632] products dominate the generation time.
        out = np.empty((n, 2 * v.n_out), np.float32)
        ab = np.concatenate([self.a, self.b], axis=1)
        stats = np.concatenate([mean_z, mean_h], axis=1).astype(np.float32)
        np.matmul(stats, (ab * gain[:, None]).T.astype(np.float32), out=out[:, : v.n_out])
        out[:, : v.n_out] += noise[:, : v.n_out]
        var = np.concatenate([var_z, var_h], axis=1).astype(np.float32) @ (ab**2).T.astype(np.float32)
        var += white_var.astype(np.float32)
        # Multiplicative noise on the std half keeps it positive, like a real std functional.
        np.multiply(np.sqrt(var, out=var), np.exp(noise[:, v.n_out :]), out=out[:, v.n_out :])
        return out


# --------------------------------------------------------------------------------------------------
# RECOLA-like frames

# Latent groups (unit-variance OU processes) and their time constants in seconds.
_RECOLA_LATENT_TAU = {
    "arousal": (5.0,),
    "valence": (12.0,),
    "shared": (2.0, 6.0),  # seen by audio and video (speaking turns, head and body motion)
    "face": (3.0, 6.0, 12.0, 20.0),  # seen by both video sets (pose, expression style, lighting)
    "audio_own": (1.0, 2.0, 4.0, 8.0, 16.0, 30.0),  # private: phonetic content, channel, ...
    "app_own": (1.0, 2.0, 4.0, 8.0, 16.0, 30.0),
    "geo_own": (1.0, 2.0, 4.0, 8.0, 16.0, 30.0),
}

# Audio: arousal strong, nearly linear, little view noise; valence almost only through the pathway
# gated by the speaking-turn factor. Video: valence linear; arousal almost only through the
# pose-gated pathway and the saturating layer, entangled with the larger "face"/"shared" nuisance.
# video_geo sees valence more cleanly than video_app; video_app has fewer, less noisy outputs
# (the real ones are PCA-reduced).
_RECOLA_VIEWS = {
    "audio": _View(
        n_out=44,
        view_noise={"arousal": 0.3, "valence": 0.5},
        lin={"arousal": 1.0, "valence": 0.05, "shared": 0.5, "audio_own": 0.7},
        gated=("valence", "shared", 0.8),
        nonlin={"arousal": 0.8, "valence": 0.5, "shared": 0.8, "audio_own": 1.0},
        nl_scale=0.6, noise=0.6, white=1.0, hetero={"arousal": 0.35},
    ),
    "video_app": _View(
        n_out=84,
        view_noise={"arousal": 0.4, "valence": 0.55},
        lin={"arousal": 0.1, "valence": 0.6, "shared": 0.6, "face": 1.0, "app_own": 0.8},
        gated=("arousal", "face", 1.0),
        nonlin={"arousal": 0.6, "valence": 1.0, "shared": 1.5, "face": 2.0, "app_own": 1.5},
        nl_scale=1.0, noise=0.5, white=1.0, hetero={"shared": 0.4},
    ),
    "video_geo": _View(
        n_out=316,
        view_noise={"arousal": 0.4, "valence": 0.4},
        lin={"arousal": 0.05, "valence": 0.7, "shared": 0.6, "face": 1.0, "geo_own": 0.8},
        gated=("arousal", "face", 1.0),
        nonlin={"arousal": 0.6, "valence": 1.0, "shared": 1.5, "face": 2.0, "geo_own": 1.5},
        nl_scale=1.0, noise=0.8, white=1.0, hetero={"shared": 0.4},
    ),
}
_NOISE_TAU_S = 3.0  # slow per-feature noise (drifts that survive the 8 s window)
_NOISE_STRIDE = 10  # its knots are drawn every 10 frames (0.4 s) and interpolated (speed)
_SPK_AFFECT_MEAN = 0.3  # per-speaker mean of the affect latents (visible in features and labels)
_SPK_FEAT_OFFSET = 0.3  # per-speaker descriptor offsets and log-gains (voice, face shape)
_SPK_FEAT_LOGSCALE = 0.2
_LABEL_GAIN = {"arousal": 0.7, "valence": 0.8}  # a rater reports tanh(gain * latent) + ...
_N_RATERS = 6  # the gold standard is the mean of 6 raters, as in RECOLA
_RATER_DELAY_SD_S = 0.5  # each rater's reaction delay scatters around the nominal delay
# A rater's slow drift (std) around the truth and per-speaker impression (std); both shrink by
# sqrt(6) in the mean. Sized so that single raters agree only moderately and the gold standard has
# about RECOLA's reliability (Cronbach's alpha ~ 0.8 arousal, ~ 0.75 valence): the labels are
# noisier than what the stronger modality shows of the latent.
_RATER_NOISE = {"arousal": 0.5, "valence": 0.6}
_RATER_BIAS = {"arousal": 0.3, "valence": 0.35}
_RATER_NOISE_TAU_S = 3.0
_MISSING_FRACTION = (0.05, 0.15)  # share of face-not-found frames per recording
_MISSING_RUN_S = (0.5, 5.0)


def _missing_runs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mask ``[n]`` (True = face found) with runs of 0.5-5 s missing covering 5-15 % of frames."""
    present = np.ones(n, bool)
    target = min(rng.uniform(*_MISSING_FRACTION) * n, n - 1)
    lo, hi = (int(round(s * RATE_HZ)) for s in _MISSING_RUN_S)
    while (~present).sum() < target:
        length = min(int(np.exp(rng.uniform(np.log(lo), np.log(hi)))), n - 1)  # log-uniform: many short
        start = int(rng.integers(0, n - length + 1))
        present[start : start + length] = False
    return present


def _recola(seed: int, n_speakers: int, minutes: float, label_delay_s: float) -> tuple[Dataset, dict[str, np.ndarray]]:
    """:func:`synth_recola` plus, per speaker, the noise-free affect ``tanh(gain * latent)`` on the
    label time axis (``[n, 2]``, nominal delay): what a perfect rater would report (for analysis)."""
    if n_speakers < 3 or n_speakers % 3:
        raise ValueError(f"n_speakers must be a positive multiple of 3, not {n_speakers}")
    n = int(round(minutes * 60 * RATE_HZ))
    if n < 2:
        raise ValueError(f"minutes={minutes} gives fewer than 2 frames")
    if label_delay_s < 0:
        raise ValueError("label_delay_s must be >= 0")
    delay = int(round(label_delay_s * RATE_HZ))
    win = int(round(FEATURE_WINDOW_S * RATE_HZ))

    world_ss, split_ss, *spk_ss = np.random.SeedSequence(seed).spawn(2 + n_speakers)
    world = np.random.default_rng(world_ss)
    sizes = {g: len(t) for g, t in _RECOLA_LATENT_TAU.items()}
    mixers = {m: _Mixer.draw(world, v, sizes) for m, v in _RECOLA_VIEWS.items()}
    # Rater reaction delays scatter around the nominal one; centred, so their mean is the nominal
    # delay up to rounding. The scatter shrinks for short delays so that none is negative.
    jitter = world.normal(0.0, min(_RATER_DELAY_SD_S * RATE_HZ, delay / 3), _N_RATERS)
    rater_delay = np.maximum(np.round(delay + jitter - jitter.mean()), 0).astype(int)
    true_delay = float(rater_delay.mean())

    order = np.random.default_rng(split_ss).permutation(n_speakers)
    split_of = {int(k): ("train", "val", "test")[i // (n_speakers // 3)] for i, k in enumerate(order)}

    # World time: the features at frame t summarise the window [t + dmax, t + dmax + win), centred on
    # world time c_t = t + dmax + win // 2. A rater with delay d labels frame t with the latent at
    # c_{t-d}: labels lag the features. dmax leaves room for the slowest rater.
    dmax = int(max(rater_delay.max(), delay))
    length = n + dmax + win
    seqs, truth = [], {}
    for k in range(n_speakers):
        rng = np.random.default_rng(spk_ss[k])
        h = {
            g: np.concatenate([_ou(rng, length, 1, t * RATE_HZ) for t in taus], axis=1)
            for g, taus in _RECOLA_LATENT_TAU.items()
        }
        for g in ("arousal", "valence"):
            h[g] = h[g] + rng.normal(0.0, _SPK_AFFECT_MEAN)
        hf = {g: x[dmax:] for g, x in h.items()}
        feats = {}
        for m, mix in mixers.items():
            xi = {f: _ou(rng, len(hf[f]), 1, _RECOLA_LATENT_TAU[f][0] * RATE_HZ) for f in mix.view.view_noise}
            feats[m] = mix.window_features(rng, mix.latent_view(hf, xi), win, n)
        face = _missing_runs(rng, n)
        for m in ("video_app", "video_geo"):
            feats[m][~face] = 0.0
        masks = {"audio": np.ones(n, bool), "video_app": face.copy(), "video_geo": face.copy()}

        gold, clean = np.zeros((n, 2)), np.zeros((n, 2))
        for j, g in enumerate(("arousal", "valence")):
            c = dmax + win // 2 - delay
            clean[:, j] = np.tanh(_LABEL_GAIN[g] * h[g][c : c + n, 0])
            for d in rater_delay:
                c = dmax + win // 2 - d
                drift = _RATER_NOISE[g] * _ou(rng, n, 1, _RATER_NOISE_TAU_S * RATE_HZ)[:, 0]
                gold[:, j] += np.tanh(_LABEL_GAIN[g] * h[g][c : c + n, 0]) + drift + rng.normal(0.0, _RATER_BIAS[g])
        targets = np.clip(gold / _N_RATERS, -1.0, 1.0).astype(np.float32)

        spk = f"spk{k + 1:02d}"
        truth[spk] = clean.astype(np.float32)
        seqs.append(
            Sequence(
                id=spk, group=spk, split=split_of[k], features=feats, masks=masks, targets=targets,
                step_ids=[f"{spk}_{t:06d}" for t in range(n)],
            )
        )
    ds = Dataset(
        name="synth-recola", task="regression", targets=["arousal", "valence"], modalities=dict(RECOLA_DIMS),
        sequences=seqs, label_range=(-1.0, 1.0), step_rate_hz=RATE_HZ,
        meta={
            "generator": "stew.data.synthetic.synth_recola", "version": GENERATOR_VERSION, "seed": int(seed),
            "label_delay_s": round(true_delay / RATE_HZ, 4), "label_delay_frames": int(round(true_delay)),
            "rater_delays_s": [float(d / RATE_HZ) for d in rater_delay], "feature_window_s": FEATURE_WINDOW_S,
            "stronger": {"arousal": "audio", "valence": "video_geo"},
        },
    )
    return ds, truth


def synth_recola(seed: int, n_speakers: int = 27, minutes: float = 5.0, *, label_delay_s: float = 2.4) -> Dataset:
    """RECOLA-like continuous arousal/valence data at 25 Hz, one recording per speaker.

    Speakers (``spk01`` ...) are split into equal train/val/test thirds at random. Features are
    ``audio`` (88), ``video_app`` (168) and ``video_geo`` (632): window mean and std of frame
    descriptors over 8 s. Audio is the stronger modality for arousal, video (geo more than app) for
    valence. Both video sets share runs of all-zero, masked-out frames (face not found). Labels, the
    mean of 6 simulated raters, lag the features: the label at frame t describes the affect that the
    features showed at frame ``t - delay``. ``meta["label_delay_s"]`` is the true delay (the mean of
    the raters' delays, ``label_delay_s`` up to rounding to frames).
    """
    # The matrix products here are small; threaded BLAS only adds overhead, and on a busy machine
    # its spinning threads made generation 3x slower. (threadpoolctl comes with scikit-learn.)
    with threadpool_limits(limits=1, user_api="blas"):
        return _recola(seed, n_speakers, minutes, label_delay_s)[0]


# --------------------------------------------------------------------------------------------------
# MOSI-like utterances

_MOSI_SIZES = {"sent": 1, "speaker": 4, "topic": 4, "text_own": 6, "audio_own": 6, "video_own": 6}
# Sentiment z = sqrt(.45) mu_video + sqrt(.30) r_utt + sqrt(.25) e_utt: a video tendency, a persistent
# AR(1) drift over the utterances (phi = 0.7) and the utterance's own content. Text sees all of z;
# voice and face only the persistent part p = (sqrt(.45) mu + sqrt(.30) r) / sqrt(.75), which
# neighbouring utterances share, so context models that pool a video beat per-utterance ones.
_MOSI_VAR = {"video": 0.45, "drift": 0.30, "own": 0.25}
_MOSI_DRIFT_PHI = 0.7
_MOSI_TOPIC_PHI = 0.5
_MOSI_LABEL_NOISE = 0.35  # the annotators' mean score is a noisy reading of z
_MOSI_VIEWS = {
    "text": _View(
        n_out=100,
        view_noise={"sent": 0.8},
        lin={"sent": 1.0, "topic": 0.7, "speaker": 0.3, "text_own": 0.6},
        gated=None,
        nonlin={"sent": 0.5, "topic": 0.8, "text_own": 0.8},
        nl_scale=0.5, noise=0.4,
    ),
    "audio": _View(
        n_out=73,
        view_noise={"sent": 1.9},
        lin={"sent": 0.15, "speaker": 1.2, "topic": 0.4, "audio_own": 1.0},
        gated=("sent", "speaker", 0.7),
        nonlin={"sent": 0.6, "speaker": 1.5, "audio_own": 1.5},
        nl_scale=0.8, noise=0.8,
    ),
    "video": _View(
        n_out=100,
        view_noise={"sent": 1.9},
        lin={"sent": 0.15, "speaker": 1.0, "video_own": 1.0},
        gated=("sent", "speaker", 0.7),
        nonlin={"sent": 0.6, "speaker": 1.5, "video_own": 1.5},
        nl_scale=0.8, noise=0.8,
    ),
}
_MOSI_NO_FACE = 0.06  # utterances without a detected face (all-zero visual row, masked out)
_MOSI_VIDEO_SPARSITY = 0.8  # ReLU threshold in output stds: ~79 % zeros, like the 3D-CNN features


def _ar1(rng: np.random.Generator, n: int, dims: int, phi: float) -> np.ndarray:
    """``[n, dims]`` stationary unit-variance AR(1) over utterances."""
    return _ou(rng, n, dims, -1.0 / np.log(phi))


def _mosi(seed: int, n_videos: int) -> tuple[Dataset, dict[str, np.ndarray]]:
    """:func:`synth_mosi` plus, per video, the latent sentiment ``z`` per utterance (for analysis)."""
    if n_videos < 3:
        raise ValueError(f"n_videos must be at least 3, not {n_videos}")
    world_ss, split_ss, *vid_ss = np.random.SeedSequence(seed).spawn(2 + n_videos)
    world = np.random.default_rng(world_ss)
    mixers = {m: _Mixer.draw(world, v, _MOSI_SIZES) for m, v in _MOSI_VIEWS.items()}
    # Global per-output scales and offsets: openSMILE descriptors live on very different scales.
    audio_scale = np.exp(world.normal(0.0, 1.0, MOSI_DIMS["audio"]))
    audio_offset = world.normal(0.0, 2.0, MOSI_DIMS["audio"]) * audio_scale
    video_scale = np.exp(world.normal(1.0, 0.3, MOSI_DIMS["video"]))

    test = set(np.random.default_rng(split_ss).permutation(n_videos)[: n_videos // 3].tolist())
    width = len(str(n_videos - 1))
    seqs, truth = [], {}
    for v in range(n_videos):
        rng = np.random.default_rng(vid_ss[v])
        n = int(rng.integers(5, 31))
        mu, drift, own = rng.standard_normal(), _ar1(rng, n, 1, _MOSI_DRIFT_PHI), rng.standard_normal((n, 1))
        persistent = (np.sqrt(_MOSI_VAR["video"]) * mu + np.sqrt(_MOSI_VAR["drift"]) * drift) / np.sqrt(
            _MOSI_VAR["video"] + _MOSI_VAR["drift"]
        )
        z = np.sqrt(_MOSI_VAR["video"]) * mu + np.sqrt(_MOSI_VAR["drift"]) * drift + np.sqrt(_MOSI_VAR["own"]) * own
        h = {
            "speaker": np.repeat(rng.standard_normal((1, 4)), n, axis=0),  # one speaker per video
            "topic": _ar1(rng, n, 4, _MOSI_TOPIC_PHI),
            **{f"{m}_own": rng.standard_normal((n, 6)) for m in MOSI_DIMS},
        }
        feats = {}
        for m, mix in mixers.items():
            hm = dict(h, sent=z if m == "text" else persistent)
            xi = {"sent": rng.standard_normal((n, 1))}
            x = mix.render(mix.latent_view(hm, xi)) + mix.view.noise * rng.standard_normal((n, mix.view.n_out))
            feats[m] = x
        feats["text"] = np.tanh(0.6 * feats["text"])  # bounded, like the CNN's activations
        feats["audio"] = feats["audio"] * audio_scale + audio_offset
        sd = feats["video"].std() + 1e-12
        feats["video"] = np.maximum(feats["video"] / sd - _MOSI_VIDEO_SPARSITY, 0.0) * video_scale
        face = rng.random(n) >= _MOSI_NO_FACE
        feats["video"][~face] = 0.0
        # A present row must not read as missing (a reader infers missing from all-zero rows).
        empty = face & ~feats["video"].any(axis=1)
        feats["video"][empty, 0] = 1e-3
        masks = {"text": np.ones(n, bool), "audio": np.ones(n, bool), "video": face}

        y = (z[:, 0] + _MOSI_LABEL_NOISE * rng.standard_normal(n) >= 0).astype(np.float32)
        vid = f"vid{v:0{width}d}"
        truth[vid] = z[:, 0].astype(np.float32)
        seqs.append(
            Sequence(
                id=vid, group=vid, split="test" if v in test else "train",
                features={m: x.astype(np.float32) for m, x in feats.items()}, masks=masks,
                targets=y[:, None], step_ids=[f"{vid}_{i + 1}" for i in range(n)],
            )
        )
    ds = Dataset(
        name="synth-mosi", task="binary", targets=["sentiment"], modalities=dict(MOSI_DIMS), sequences=seqs,
        n_classes=2, step_rate_hz=None,
        meta={
            "generator": "stew.data.synthetic.synth_mosi", "version": GENERATOR_VERSION, "seed": int(seed),
            "stronger": {"sentiment": "text"},
        },
    )
    return ds, truth


def synth_mosi(seed: int, n_videos: int = 93) -> Dataset:
    """MOSI-like binary sentiment per utterance; a sequence is one video of 5-30 utterances.

    A third of the videos (31 of 93) go to ``test``, the rest to ``train`` (validation is carved from
    train later, by videos). Step ids are ``<video>_<n>`` with ``n`` from 1 in temporal order. Text is
    the stronger modality; audio and video are weak and profit from context, because the utterances
    of a video share a persistent sentiment latent. Visual features are sparse (ReLU) and some rows
    are all zero (no face found) and masked out.
    """
    return _mosi(seed, n_videos)[0]
