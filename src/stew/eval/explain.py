"""LIME for raw-audio regressors (SoundLIME/SLIME) and the thesis's true-vs-predicted analysis plot
(docs/methods/conflictnet.md#explanations).

The interpretable representation is a binary vector over contiguous time segments ("super-samples"); a
perturbation keeps the segments whose bit is 1 and zero-fills the rest. The surrogate is fitted by
``lime.lime_base.LimeBase`` so the ridge, its weighted R^2 and the sorting are exactly lime's:

- ``feature_selection="none"``: every segment is in the explanation (the thesis uses 10 features of 10).
  lime's ``"auto"`` (SLIME's setting) picks ``highest_weights`` for 10 features, which selects the same full set.
- The surrogate is LimeBase's default ``Ridge(alpha=1, fit_intercept=True)``; the thesis leaves alpha
  open, and sklearn's default is 1.0.
- LimeBase does not compute distances or the kernel: it calls ``kernel_fn(distances)``. We pass the
  thesis's eq. 3.5, ``exp(-d^2 / sigma^2)``. lime_image (which SLIME patched) uses
  ``sqrt(exp(-d^2 / w^2)) = exp(-d^2 / (2 w^2))``, i.e. the thesis's kernel with sigma = w * sqrt(2); with
  cosine distances in [0, 1] and sigma = 25 both are flat to within 0.2 %, so the choice barely matters.
- Its returned weights are sorted by |weight| descending (the thesis's "sort by |coefficient|"), ties in
  segment order, and keep their sign.

No torch here: ``predict`` is any function from a batch of waveforms to one score per waveform
(``explain_model`` loads an exported model for it). ``analysis_run`` draws a finished run's analysis
plot from its predictions.csv.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stew.data.validate import require_file
from stew.errors import DataError
from stew.util import progress
from stew.util.atomic import write_atomic, write_text_atomic
from stew.util.figures import figure

if TYPE_CHECKING:
    import pandas as pd

Predict = Callable[[np.ndarray], np.ndarray]
# Given a clip's super-samples [start, end), a function from 0/1 masks (batch, super-samples) to scores, or None
SegmentPredict = Callable[[list[tuple[int, int]]], Predict | None]

# The true-vs-predicted categories' names, in the thesis's numbering (1-4).
CATEGORIES: tuple[str, ...] = (
    "same_polarity_close",  # 1: same polarity and |y - y_hat| <= epsilon
    "true_pos_pred_neg",  # 2: y >= 0, y_hat < 0
    "true_neg_pred_pos",  # 3: y < 0, y_hat >= 0
    "same_polarity_far",  # 4: same polarity and |y - y_hat| > epsilon
)


@dataclass
class Explanation:
    """One clip's LIME explanation; ``segments`` is sorted most relevant (largest |weight|) first."""

    segments: list[dict[str, Any]]  # {"index", "start_s", "end_s", "weight"}
    intercept: float
    score: float  # LimeBase's weighted R^2 on the perturbations (sklearn gives 1.0 when every score is equal)
    prediction: float  # predict() on the unperturbed clip (the raw score, whatever ``target``)
    local_prediction: float  # the surrogate at the all-ones vector, on the ``target`` scale
    target: str = "score"  # "score" (raw output) or "p_pos" ((1 + score) / 2, the thesis's eq. 3.7)
    sample_rate: int = 0
    n_samples: int = 0
    kernel_width: float = 25.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``segments`` first)."""
        d = asdict(self)
        return {"segments": d.pop("segments"), **d}

    def to_json(self) -> str:
        """JSON text; NaN/inf are refused rather than written as invalid JSON."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def segment_bounds(n: int, sr: int, segment_s: float = 3.0, n_segments: int | None = None) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the super-samples of an ``n``-sample clip.

    With ``n_segments`` the clip is split into that many near-equal contiguous parts (``segment_s`` is
    ignored). Otherwise it is cut into consecutive ``segment_s`` parts; a last partial part becomes its
    own, shorter segment if it is at least half a segment long and is merged into the previous segment
    otherwise (so a few samples of rounding never become a feature of their own).
    """
    if n_segments is not None:
        if n_segments < 1:
            raise ValueError(f"n_segments must be at least 1, got {n_segments}")
        if n < n_segments:
            raise DataError(f"the clip has {n} samples, fewer than n_segments={n_segments}")
        edges = np.linspace(0, n, n_segments + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    if not segment_s > 0:
        raise ValueError(f"segment_s must be positive, got {segment_s}")
    seg = int(round(segment_s * sr))
    if seg < 1:
        raise ValueError(f"segment_s={segment_s} s is shorter than one sample at {sr} Hz")
    if n < seg:
        raise DataError(f"the clip is {n / sr:.3g} s long, shorter than one {segment_s:g} s super-sample")
    full, rest = divmod(n, seg)
    bounds = [(i * seg, (i + 1) * seg) for i in range(full)]
    if rest * 2 >= seg:
        bounds.append((full * seg, n))
    elif rest:
        bounds[-1] = (bounds[-1][0], n)
    return bounds


def _cosine_to_ones(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each binary mask to the all-ones vector: 1 - sqrt(k / n) for k ones of n.

    Closed form of sklearn's pairwise cosine distance to x' = 1; the all-zeros mask (cosine undefined)
    gets distance 1, as sklearn gives it, so no NaN reaches the kernel.
    """
    n = masks.shape[1]
    return 1.0 - np.sqrt(masks.sum(axis=1) / n)


def _scores(out: Any, rows: int) -> np.ndarray:
    """predict's output as a float vector of length ``rows``, or a DataError saying what was wrong."""
    arr = np.asarray(out, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (rows,):
        raise DataError(
            f"predict returned shape {np.shape(out)} for a batch of {rows}; expected ({rows},) or ({rows}, 1)"
        )
    if not np.isfinite(arr).all():
        raise DataError(f"predict returned {int((~np.isfinite(arr)).sum())} non-finite scores in a batch of {rows}")
    return arr


def explain_clip(
    predict: Predict,
    wave: np.ndarray,
    sr: int,
    *,
    segment_s: float = 3.0,
    n_segments: int | None = None,
    n_samples: int = 2000,
    kernel_width: float = 25.0,
    seed: int = 0,
    batch_size: int = 32,
    positive_probability: bool = False,
    by_segments: SegmentPredict | None = None,
    say: Callable[[str], None] | None = None,
) -> Explanation:
    """Explain ``predict(wave)`` with LIME over time segments
    (docs/methods/conflictnet.md#explanations).

    ``predict`` maps a float32 batch (batch, samples) to (batch,) or (batch, 1) scores and is called
    ``ceil(n_samples / batch_size)`` times; row 0 of the first batch is the unperturbed clip. Pass the clip
    exactly as the model sees it (e.g. already RMS-normalised): the perturbations zero-fill that signal.
    ``positive_probability`` explains P_pos = (1 + score) / 2 (eq. 3.7, the thesis's scale); since ridge
    is linear in its targets, that halves every weight and keeps the order.

    ``by_segments``: called once with the super-samples' bounds; when it returns a function, that function
    scores each batch of perturbations from their masks instead of ``predict`` from their waveforms (the
    same scores, computed faster: stew.eval.perturb). ``say``: a progress line every 10 s and at the end.
    """
    from lime.lime_base import LimeBase  # lime pulls in sklearn: import only when explaining

    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 (the unperturbed clip plus one perturbation), got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be positive, got {kernel_width}")
    if sr < 1:
        raise ValueError(f"sample rate must be positive, got {sr}")
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 1:  # the paper's (samples, 1) input layout
        x = x[:, 0]
    if x.ndim != 1:
        raise DataError(f"expected a mono waveform (samples,) or (samples, 1), got shape {np.shape(wave)}")
    if not np.isfinite(x).all():
        raise DataError("the waveform holds NaN or infinite samples")

    bounds = segment_bounds(len(x), sr, segment_s, n_segments)
    n_feat = len(bounds)
    seg_of_sample = np.repeat(np.arange(n_feat), [b - a for a, b in bounds])

    # SLIME draws each bit uniformly; row 0 is the original clip, which LimeBase requires.
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, size=(n_samples, n_feat), dtype=np.int8)
    masks[0] = 1

    score = by_segments(bounds) if by_segments is not None else None
    if score is None:
        def score(m: np.ndarray) -> np.ndarray:
            return predict(x[None, :] * m[:, seg_of_sample].astype(np.float32))

    scores = np.empty(n_samples)
    t0 = last = time.monotonic()
    for lo in range(0, n_samples, batch_size):
        m = masks[lo : lo + batch_size]
        scores[lo : lo + len(m)] = _scores(score(m), len(m))
        done, now = lo + len(m), time.monotonic()
        if say is not None and (now - last >= 10 or done == n_samples):
            last = now
            say(f"LIME: {done}/{n_samples} perturbations · {progress.so_far(t0, done, n_samples)}")

    labels = (1.0 + scores) / 2.0 if positive_probability else scores
    width = float(kernel_width)
    base = LimeBase(kernel_fn=lambda d: np.exp(-(d**2) / width**2), random_state=seed)
    intercept, ranked, r2, local = base.explain_instance_with_data(
        masks.astype(np.float64),
        labels[:, None],
        _cosine_to_ones(masks),
        label=0,
        num_features=n_feat,
        feature_selection="none",
    )
    segments = [
        {"index": int(i), "start_s": bounds[i][0] / sr, "end_s": bounds[i][1] / sr, "weight": float(w)}
        for i, w in ranked
    ]
    return Explanation(
        segments=segments,
        intercept=float(intercept),
        score=float(r2),
        prediction=float(scores[0]),
        local_prediction=float(np.ravel(local)[0]),
        target="p_pos" if positive_probability else "score",
        sample_rate=int(sr),
        n_samples=int(n_samples),
        kernel_width=width,
        seed=int(seed),
    )


def _save_png(fig: Any, out: Path) -> None:
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png"))


def write_explanation(expl: Explanation, wave: np.ndarray, sr: int, out_dir: Path, top: int = 3) -> tuple[Path, Path]:
    """Write ``out_dir/explanation.json`` and ``out_dir/explanation.png``, each atomically.

    The PNG is the log-magnitude (dB) spectrogram with the ``top`` most relevant segments shaded, red
    for a positive weight (towards a higher score) and blue for a negative one.
    """
    from scipy.signal import stft

    if top < 0:
        raise ValueError(f"top must be non-negative, got {top}")
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "explanation.json", out_dir / "explanation.png"

    nperseg = max(16, min(len(x), 2 ** int(round(math.log2(max(sr * 0.032, 16))))))  # ~32 ms windows
    f, t, z = stft(x, fs=sr, nperseg=nperseg, noverlap=nperseg // 2, boundary=None, padded=False)
    db = 20 * np.log10(np.maximum(np.abs(z), 1e-10))  # floor: a silent clip gives a flat image, not -inf
    fig, axes = figure(10, 4)
    ax = axes[0, 0]
    # Grey image so the red/blue spans stand out; an 80 dB range keeps near-empty bins from washing it out.
    img = ax.imshow(db, origin="lower", aspect="auto", cmap="gray_r", vmin=float(db.max()) - 80, vmax=float(db.max()),
                    extent=(0.0, len(x) / sr, float(f[0]), float(f[-1])))
    fig.colorbar(img, ax=ax, label="dB")
    for seg in expl.segments[:top]:
        colour = "tab:red" if seg["weight"] >= 0 else "tab:blue"
        ax.axvspan(seg["start_s"], seg["end_s"], color=colour, alpha=0.3, lw=0)
        ax.text((seg["start_s"] + seg["end_s"]) / 2, float(f[-1]), f"{seg['index']}\n{seg['weight']:+.3g}",
                ha="center", va="top", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    for seg in expl.segments:  # segment borders, so unshaded super-samples are visible too
        ax.axvline(seg["start_s"], color="black", lw=0.5, alpha=0.4)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(f"LIME, top {min(top, len(expl.segments))} super-samples (red +, blue -); "
                 f"prediction {expl.prediction:.3g}, R^2 {expl.score:.3g}")
    write_text_atomic(json_path, expl.to_json())
    _save_png(fig, png_path)
    return json_path, png_path


def analysis_categories(y_true: np.ndarray, y_pred: np.ndarray, epsilon: float = 0.5) -> np.ndarray:
    """The true-vs-predicted category (1-4) of each clip; 0 counts as positive, as when binarising at 0
    (docs/methods/README.md#uar-and-war).

    1: same polarity, |y - y_hat| <= epsilon; 2: y >= 0 > y_hat; 3: y < 0 <= y_hat;
    4: same polarity, |y - y_hat| > epsilon.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but y_pred has {p.size}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("y_true and y_pred must be finite")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon}")
    pos_y, pos_p = y >= 0, p >= 0
    close = np.abs(y - p) <= epsilon
    return np.select([pos_y & ~pos_p, ~pos_y & pos_p, close], [2, 3, 1], default=4)


def analysis_figure(y_true: np.ndarray, y_pred: np.ndarray, epsilon: float = 0.5,
                    title: str | None = None) -> tuple[Any, dict[str, int]]:
    """The thesis's true-vs-predicted plot as a matplotlib Figure, and the category counts.

    Opposite-polarity quadrants are shaded yellow, with reference lines y = x and y = x +- epsilon; points
    are coloured by category. The keys are :data:`CATEGORIES` (categories 1-4 in order) plus ``"total"``.
    """
    cats = analysis_categories(y_true, y_pred, epsilon)
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    counts = {name: int((cats == k).sum()) for k, name in enumerate(CATEGORIES, start=1)}
    counts["total"] = int(cats.size)

    lim = max(1.0, float(np.abs(np.concatenate([y, p])).max(initial=0.0))) * 1.05
    fig, axes = figure(6, 6.8)
    ax = axes[0, 0]
    ax.fill_between([0, lim], -lim, 0, color="yellow", alpha=0.25, lw=0)
    ax.fill_between([-lim, 0], 0, lim, color="yellow", alpha=0.25, lw=0)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    line = np.array([-lim, lim])
    ax.plot(line, line, color="black", lw=1, label="y = x")
    ax.plot(line, line + epsilon, color="black", lw=1, ls="--", label=f"y = x ± {epsilon:g}")
    ax.plot(line, line - epsilon, color="black", lw=1, ls="--")
    colours = ("tab:green", "tab:orange", "tab:purple", "tab:red")
    for k, (name, colour) in enumerate(zip(CATEGORIES, colours, strict=True), start=1):
        sel = cats == k
        ax.scatter(y[sel], p[sel], s=20, color=colour, edgecolors="black", linewidths=0.3,
                   label=f"{k}: {name} ({counts[name]})")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=7)  # outside: no point hidden
    return fig, counts


def analysis_plot(y_true: np.ndarray, y_pred: np.ndarray, out_png: Path, epsilon: float = 0.5) -> dict[str, int]:
    """Write the true-vs-predicted plot (:func:`analysis_figure`) to ``out_png`` atomically; return the
    category counts (:data:`CATEGORIES` in order, plus ``"total"``)."""
    fig, counts = analysis_figure(y_true, y_pred, epsilon)
    _save_png(fig, Path(out_png))
    return counts


def run_predictions(run_dir: Path, split: str = "test", target: str | None = None) -> tuple[pd.DataFrame, str]:
    """A run's labelled predictions on ``split`` (RUN/predictions.csv) and the regression target they are for.

    ``target`` defaults to the first with both ``y_<target>`` and ``pred_<target>`` columns. Rows with no
    label (an unlabelled test split) are dropped; a split with no labelled row is a DataError naming the
    splits that have some.
    """
    import pandas as pd

    path = Path(run_dir) / "predictions.csv"
    require_file(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"not a predictions table: {e}", file=path) from None
    targets = [c[2:] for c in df.columns if c.startswith("y_") and f"pred_{c[2:]}" in df.columns]
    if not targets:
        raise DataError("no regression predictions (y_<target> and pred_<target> columns): the analysis plot is "
                        "for regression runs", file=path)
    if target is None:
        target = targets[0]
    elif target not in targets:
        raise DataError(f"no predictions for target {target!r} (the run has {', '.join(targets)})", file=path)
    if not {"split", "sequence"} <= set(df.columns):
        raise DataError("needs the columns split and sequence", file=path)
    y, pred = f"y_{target}", f"pred_{target}"
    labelled = df[pd.to_numeric(df[y], errors="coerce").notna() & pd.to_numeric(df[pred], errors="coerce").notna()]
    rows = labelled[labelled["split"] == split]
    if rows.empty:
        have = ", ".join(dict.fromkeys(labelled["split"].astype(str))) or "none"
        raise DataError(f"no labelled predictions on split {split!r} (splits with some: {have})", file=path)
    return rows.reset_index(drop=True), target


def _run_name(run_dir: Path) -> str:
    """``group/seedN`` for a reproduce run folder, the folder's name otherwise."""
    run_dir = run_dir.resolve()
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("seed") else run_dir.name


def analysis_run(run_dir: Path, out_dir: Path, split: str = "test", *, target: str | None = None,
                 epsilon: float = 0.5) -> Path:
    """The true-vs-predicted analysis of a finished run: ``out_dir/analysis.png`` and ``out_dir/analysis.json``;
    returns the PNG.

    One point per row of RUN/predictions.csv on ``split`` (one per clip for clip-level runs such as
    ConflictNET's). The JSON holds the split, target, epsilon, the category ``counts`` (as
    :func:`analysis_plot`) and the sequence ids in each category (``clips``), e.g. to pick clips for LIME
    as the thesis did.
    """
    from stew.util.atomic import check_output_folder

    out_dir = Path(out_dir)
    check_output_folder(out_dir, replaceable={"analysis.png", "analysis.json"})
    rows, target = run_predictions(Path(run_dir), split, target)
    y, p = rows[f"y_{target}"].to_numpy(np.float64), rows[f"pred_{target}"].to_numpy(np.float64)
    title = f"{_run_name(Path(run_dir))}: {target} on {split} (n={len(rows)})"
    fig, counts = analysis_figure(y, p, epsilon, title=title)
    cats = analysis_categories(y, p, epsilon)
    seqs = rows["sequence"].astype(str).to_numpy()
    record = {
        "run": str(Path(run_dir)), "split": split, "target": target, "epsilon": float(epsilon), "counts": counts,
        "clips": {name: seqs[cats == k].tolist() for k, name in enumerate(CATEGORIES, start=1)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "analysis.png"
    _save_png(fig, png)
    write_text_atomic(out_dir / "analysis.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    return png


def audio_file_for(data_dir: Path, sequence: str) -> Path | None:
    """The audio file of clip ``sequence`` in an audio folder (labels.csv) or the SSPNet layout, None if absent.

    Matches the readers' ids (stew.data.formats.audio): an audio folder's ``file`` without its suffix, an SSPNet
    clip's file stem. Only the file column is read, so a folder that no longer validates still resolves.
    """
    import pandas as pd

    from stew.data.formats.audio import LABELS, SSPNET_LABELS
    from stew.data.formats.waveform import AUDIO_SUFFIXES

    root = Path(data_dir)
    if (root / LABELS).is_file():
        try:
            files = pd.read_csv(root / LABELS, dtype=str, usecols=["file"])["file"].dropna()
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError):
            return None
        for f in files.str.strip():
            if Path(f).with_suffix("").as_posix() == sequence and (root / f).is_file():
                return root / f
        return None
    if (root / SSPNET_LABELS).is_file():
        audio_dir = root / "audiodata" if (root / "audiodata").is_dir() else root
        return next((f for f in sorted(audio_dir.rglob(f"{sequence}.*"))
                     if f.stem == sequence and f.suffix.lower() in AUDIO_SUFFIXES and f.is_file()), None)
    return None


TARGET_KINDS = ("probability", "score")


def explain_model(model_dir: Path, audio_file: Path, out_dir: Path, *, n_samples: int = 2000, seed: int = 0,
                  top: int = 3, target_kind: str = "probability", device: str | None = None,
                  ) -> tuple[Explanation, Path, Path]:
    """``stew explain``: LIME over a raw-audio model's prediction for one file.

    The clip is read as the model was trained and as ``stew predict`` reads it (sample rate, clip length,
    RMS normalisation, from model.json's ``extractor``), and predicted with the same mask: a clip shorter
    than the model's clip length is zero-padded and the padding masked, so the unperturbed prediction is
    ``stew predict``'s. The super-samples cover the real samples only (padding has no effect to explain).
    Perturbed clips are predicted in batches without renormalising, as the thesis zero-filled the
    normalised input, the convolutions of the unchanged parts computed once (stew.eval.perturb).
    ``target_kind``: ``probability`` explains P(positive) = (1 + y) / 2 (thesis eq. 3.7), ``score`` the
    prediction y itself (weights twice as large, same order). ``device``: where the forward passes run (a
    torch device name; None: a CUDA GPU when torch sees one, else the CPU).
    """
    import torch

    from stew.data.formats.waveform import prepare_clip, read_audio
    from stew.deploy import load_model
    from stew.errors import DataError
    from stew.eval.perturb import segment_predict, waveform_predict
    from stew.models.conflictnet import RawAudioModel
    from stew.util.atomic import check_output_folder

    if target_kind not in TARGET_KINDS:
        raise DataError(f"--target-kind {target_kind!r}: choose {' or '.join(TARGET_KINDS)}")
    check_output_folder(Path(out_dir), replaceable={"explanation.json", "explanation.png"})
    model, meta = load_model(Path(model_dir))
    ext = meta.get("extractor") or {}
    if not isinstance(model, RawAudioModel) or ext.get("set") != "waveform":
        raise DataError("stew explain needs a raw-audio model (--method conflictnet)", file=Path(model_dir))
    sr, samples = int(ext["sample_rate"]), ext.get("clip_samples")
    wave, _ = read_audio(Path(audio_file), sr)
    clip, real = prepare_clip(wave, int(samples) if samples else None)  # cut, normalise, pad: as in training
    wave = clip[:real]  # what LIME perturbs; predict pads it back to the clip length
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    expl = explain_clip(waveform_predict(model, clip, real, dev), wave, sr, n_samples=n_samples, seed=seed,
                        positive_probability=target_kind == "probability", say=progress.say,
                        by_segments=lambda bounds: segment_predict(model, clip, real, bounds, dev))
    json_path, png_path = write_explanation(expl, wave, sr, Path(out_dir), top=top)
    return expl, json_path, png_path
