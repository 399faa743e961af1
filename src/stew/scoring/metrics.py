"""Evaluation measures and significance tests (docs/methods/README.md#metrics).

Every function takes numpy arrays (or anything ``np.asarray`` accepts) and returns python floats.
The implementations are deliberately plain: each is cross-checked in ``tests/test_metrics.py``
against torchmetrics, scikit-learn or scipy.

Conventions:

- Correlations (:func:`ccc`, :func:`pcc`) return ``0.0``, not NaN, when either input is constant:
  a constant prediction carries no information about the ranking, and a NaN would poison the
  model selection that maximises these scores.
- Classification measures return fractions in ``[0, 1]``; :func:`task_metrics` reports them in %.
- The thesis (ch. 4) calls overall accuracy "UWA" and mean per-class recall "WA", the
  reverse of common SER usage. This module offers them only as :func:`accuracy` (thesis UWA) and
  :func:`mean_class_recall` (thesis WA) so that no name can be read two ways.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

Tail = Literal["two", "greater", "less", "one"]

__all__ = [
    "accuracy",
    "binary_accuracy",
    "ccc",
    "ccc_per_sequence",
    "f1_macro",
    "f1_weighted",
    "fisher_r_to_z",
    "format_mean_std",
    "mean_class_recall",
    "mean_std",
    "paired_ttest",
    "pcc",
    "range_map",
    "selection_metric",
    "sign_accuracy",
    "task_metrics",
    "two_proportion_ztest",
    "uar",
    "unpaired_ttest",
    "war",
]


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flatten two inputs to float64 vectors of the same, non-zero length."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    if t.size == 0:
        raise ValueError("empty input")
    return t, p


def _labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    if t.size == 0:
        raise ValueError("empty input")
    return t, p


# --------------------------------------------------------------------------------------------------
# Regression


def ccc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation coefficient over all values (docs/methods/README.md#ccc).

    ``2·s_xy / (s_x² + s_y² + (μ_x − μ_y)²)`` with population (1/N) moments. Computed on the
    concatenation of all steps of a partition, this is the AVEC convention; see
    :func:`ccc_per_sequence` for the mean over recordings. torchmetrics uses 1/(N−1) moments,
    which differs by O(1/N) when the means differ. Returns 0.0 when both inputs are constant and
    equal (0/0); a constant input otherwise gives 0.0 naturally (zero covariance).
    """
    t, p = _pair(y_true, y_pred)
    mt, mp = t.mean(), p.mean()
    cov = np.mean((t - mt) * (p - mp))
    denom = t.var() + p.var() + (mt - mp) ** 2
    if denom <= 0.0:
        return 0.0
    return float(2.0 * cov / denom)


def pcc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson correlation (docs/methods/README.md#pcc). Returns 0.0 when either input is constant."""
    t, p = _pair(y_true, y_pred)
    dt, dp = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(np.dot(dt, dt)) * float(np.dot(dp, dp)))
    if denom == 0.0:
        return 0.0
    # Rounding can push |r| a hair above 1 for (anti-)identical inputs.
    return float(np.clip(np.dot(dt, dp) / denom, -1.0, 1.0))


def ccc_per_sequence(y_true_list: Sequence[ArrayLike], y_pred_list: Sequence[ArrayLike]) -> float:
    """Mean over recordings of the per-recording :func:`ccc` (every recording weighs the same).

    The thesis does not say whether its CCC is per recording or concatenated; the
    concatenated :func:`ccc` is the AVEC convention and the headline number. A recording whose
    labels and predictions are both constant contributes 0.0.
    """
    if len(y_true_list) != len(y_pred_list):
        raise ValueError(f"{len(y_true_list)} label sequences but {len(y_pred_list)} prediction sequences")
    if not y_true_list:
        raise ValueError("no sequences")
    return float(np.mean([ccc(t, p) for t, p in zip(y_true_list, y_pred_list, strict=True)]))


def sign_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Binary accuracy of a regression: the fraction of steps whose prediction falls on the label's side.

    The classes of the SEW paper's tables: negative = ``[-1, 0]``, positive = ``(0, 1]``, so a value of
    exactly 0 is *negative*. This differs on purpose from :func:`war`/:func:`uar` (the SSPNet convention,
    docs/methods/README.md#uar-and-war), where 0 is the positive class; :func:`task_metrics` reports it as
    ``acc_sign``.
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t > 0.0) == (p > 0.0)))


def range_map(pred: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``pred * scale + shift`` taking each column's ``[min(pred), max(pred)]`` onto ``[lo, hi]``,
    the training labels' range (ConflictNET's rescaling, docs/methods/conflictnet.md#evaluation).

    ``pred`` is ``[N]`` or ``[N, k]``, ``lo``/``hi`` scalars or ``[k]``; returns ``(scale, shift)``, each
    ``[k]``. A constant column has no range to map: scale 1, and it goes to the midpoint ``(lo + hi) / 2``.
    PCC is unchanged by the map (the scale is positive).
    """
    p = np.asarray(pred, dtype=np.float64)
    p = p.reshape(len(p), -1)
    pmin, pmax = p.min(0), p.max(0)
    lo = np.broadcast_to(np.asarray(lo, np.float64), pmin.shape)
    hi = np.broadcast_to(np.asarray(hi, np.float64), pmin.shape)
    spread = pmax > pmin
    scale = np.where(spread, (hi - lo) / np.where(spread, pmax - pmin, 1.0), 1.0)
    shift = np.where(spread, lo - pmin * scale, (lo + hi) / 2.0 - pmin)
    return scale, shift


# --------------------------------------------------------------------------------------------------
# Classification


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Overall accuracy: the fraction of correct labels. The thesis calls this "UWA"
    (docs/methods/README.md#accuracy-and-mean-class-recall)."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p))


def binary_accuracy(y_true: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> float:
    """Accuracy of probabilities ``p`` thresholded at ``threshold`` (``p >= threshold`` is class 1)."""
    t, prob = _pair(y_true, p)
    return accuracy(t.astype(int), (prob >= threshold).astype(int))


def mean_class_recall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class recall (balanced accuracy). The thesis calls this "WA"
    (docs/methods/README.md#accuracy-and-mean-class-recall).

    Averaged over the classes present in ``y_true`` (as scikit-learn's balanced accuracy).
    """
    t, p = _labels(y_true, y_pred)
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def _f1_per_class(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and support over the union of labels seen in either input.

    F1 is 0 where precision + recall is 0 or undefined (scikit-learn's ``zero_division=0``).
    """
    classes = np.union1d(t, p)
    f1 = np.zeros(len(classes))
    support = np.zeros(len(classes))
    for i, c in enumerate(classes):
        tp = np.sum((p == c) & (t == c))
        n_pred, n_true = np.sum(p == c), np.sum(t == c)
        support[i] = n_true
        # 2PR/(P+R) simplifies to 2TP/(n_pred + n_true), defined whenever the class appears at all.
        f1[i] = 2.0 * tp / (n_pred + n_true) if tp > 0 else 0.0
    return f1, support


def f1_weighted(y_true: ArrayLike, y_pred_labels: ArrayLike) -> float:
    """Support-weighted mean of per-class F1 (docs/methods/README.md#weighted-f1; scikit-learn
    ``average='weighted'``)."""
    f1, support = _f1_per_class(*_labels(y_true, y_pred_labels))
    return float(np.sum(f1 * support) / np.sum(support))


def f1_macro(y_true: ArrayLike, y_pred_labels: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over the labels seen in either input (``average='macro'``)."""
    f1, _ = _f1_per_class(*_labels(y_true, y_pred_labels))
    return float(np.mean(f1))


def _signs(y_true: ArrayLike, y_pred: ArrayLike, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    t, p = _pair(y_true, y_pred)
    return (t >= threshold).astype(int), (p >= threshold).astype(int)


def uar(y_true: ArrayLike, y_pred: ArrayLike, threshold: float = 0.0) -> float:
    """Unweighted average recall of real-valued scores binarised at ``threshold``
    (docs/methods/README.md#uar-and-war).

    Both labels and predictions are binarised: ``>= threshold`` is the positive ("high") class.
    If ``y_true`` holds only one class, that class's recall is returned.
    """
    return mean_class_recall(*_signs(y_true, y_pred, threshold))


def war(y_true: ArrayLike, y_pred: ArrayLike, threshold: float = 0.0) -> float:
    """Weighted average recall, i.e. overall accuracy after binarising at ``threshold``
    (docs/methods/README.md#uar-and-war)."""
    return accuracy(*_signs(y_true, y_pred, threshold))


# --------------------------------------------------------------------------------------------------
# Significance


def _normal_p(z: float, tail: Tail) -> float:
    """p-value of a standard-normal statistic ``z`` for ``tail`` (see :func:`fisher_r_to_z`)."""
    if tail == "two":
        return float(2.0 * stats.norm.sf(abs(z)))
    if tail in ("greater", "one"):
        return float(stats.norm.sf(z))
    if tail == "less":
        return float(stats.norm.cdf(z))
    raise ValueError(f"tail must be 'two', 'greater', 'less' or 'one', not {tail!r}")


def fisher_r_to_z(r1: float, n1: int, r2: float, n2: int, tail: Tail = "two") -> tuple[float, float]:
    """z-test of two correlations from independent samples via Fisher's r-to-z (docs/methods/README.md#significance).

    ``z = (atanh r1 − atanh r2) / sqrt(1/(n1−3) + 1/(n2−3))``. ``tail``: ``"two"`` (r1 ≠ r2),
    ``"greater"`` (r1 > r2; ``"one"`` is an alias, the one-tailed test of the papers) or
    ``"less"``. Correlations of ±1 are clipped just inside the interval so that z stays finite.
    Returns ``(nan, nan)`` when a sample has 3 or fewer pairs (the variance 1/(n−3) is undefined).
    """
    if n1 <= 3 or n2 <= 3:
        return math.nan, math.nan
    eps = 1e-12
    z1 = math.atanh(min(max(r1, -1 + eps), 1 - eps))
    z2 = math.atanh(min(max(r2, -1 + eps), 1 - eps))
    z = (z1 - z2) / math.sqrt(1.0 / (n1 - 3) + 1.0 / (n2 - 3))
    return float(z), _normal_p(z, tail)


def _vector(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def paired_ttest(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-tailed paired t-test of ``a − b`` (e.g. two methods over the same seeds and folds).

    Returns ``(t, p)``; ``(nan, nan)`` when undefined: fewer than 2 pairs or zero variance of the
    differences (scipy returns ±inf and p = 0 in the latter case when the mean difference is not 0).
    """
    x, y = _vector(a), _vector(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    d = x - y
    n = d.size
    if n < 2:
        return math.nan, math.nan
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return math.nan, math.nan
    t = float(np.mean(d)) / (sd / math.sqrt(n))
    return t, float(2.0 * stats.t.sf(abs(t), n - 1))


def unpaired_ttest(a: ArrayLike, b: ArrayLike, equal_var: bool = False) -> tuple[float, float]:
    """Two-tailed independent t-test: Welch's by default, Student's with ``equal_var=True``.

    Returns ``(t, p)``; ``(nan, nan)`` when undefined: a sample with fewer than 2 values, or a
    standard error of 0 (both samples constant).
    """
    x, y = _vector(a), _vector(b)
    nx, ny = x.size, y.size
    if nx < 2 or ny < 2:
        return math.nan, math.nan
    vx, vy = float(np.var(x, ddof=1)), float(np.var(y, ddof=1))
    if equal_var:
        pooled = ((nx - 1) * vx + (ny - 1) * vy) / (nx + ny - 2)
        se2 = pooled * (1.0 / nx + 1.0 / ny)
        df = float(nx + ny - 2)
    else:
        se2 = vx / nx + vy / ny
        # Welch-Satterthwaite degrees of freedom.
        df = se2**2 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1)) if se2 > 0 else math.nan
    if se2 == 0.0:
        return math.nan, math.nan
    t = (float(np.mean(x)) - float(np.mean(y))) / math.sqrt(se2)
    return t, float(2.0 * stats.t.sf(abs(t), df))


# --------------------------------------------------------------------------------------------------
# Summaries over seeds


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    v = _vector(values)
    if v.size == 0:
        raise ValueError("mean_std of no values")
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std


def format_mean_std(values: ArrayLike, digits: int = 1) -> str:
    """``"80.1 ± 1.2"``: :func:`mean_std` with ``digits`` decimals, for result tables."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# The trainer's entry points


def paired_bootstrap(
    score: Callable[[np.ndarray], float], blocks: ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """How sure a gain is: ``score(rows)`` is model A's metric minus model B's on the rows given (both
    scored on the same rows); rows are resampled with replacement in whole ``blocks`` (a block id per
    row: a stretch of a recording, an utterance), so neighbouring steps that move together are drawn
    together.

    Returns ``(gain, p)``: the gain on all rows, and the share of resamples where A does not beat B (a
    one-sided bootstrap p-value; 1.0 when the gain itself is not positive).
    """
    ids = np.asarray(blocks)
    gain = float(score(np.arange(ids.size)))
    if not gain > 0:
        return gain, 1.0
    uniq, inverse = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(inverse == b) for b in range(uniq.size)]
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(n_boot):
        pick = rng.integers(0, uniq.size, uniq.size)
        worse += not score(np.concatenate([members[b] for b in pick])) > 0
    return gain, (worse + 1) / (n_boot + 1)


def selection_metric(task: str, targets: Sequence[str], correlation: Literal["ccc", "pcc"] = "ccc") -> str:
    """The :func:`task_metrics` key that model selection maximises on validation.

    Regression: ``ccc`` (one target) or ``ccc_mean`` (several), or with ``correlation="pcc"`` (a method
    whose paper selects on PCC: ConflictNET) ``pcc`` or ``pcc_mean``; binary: ``f1_weighted``;
    multiclass: ``acc`` (overall accuracy, the thesis's "UWA").
    """
    if task == "regression":
        return correlation if len(targets) == 1 else f"{correlation}_mean"
    if task == "binary":
        return "f1_weighted"
    if task == "multiclass":
        return "acc"
    raise ValueError(f"unknown task {task!r}")


def task_metrics(
    task: str,
    targets: Sequence[str],
    y_true: ArrayLike,
    y_pred: ArrayLike,
    sequence_ids: ArrayLike | None = None,
) -> dict[str, float]:
    """All metrics of one partition, keyed by a fixed public contract.

    ``y_true`` is ``[N, n_targets]`` (the class index for classification); ``y_pred`` is the
    activated model output: binary, a probability ``[N]`` or ``[N, 1]`` (class 1 if ``>= 0.5``);
    multiclass, probabilities or logits ``[N, C]`` (argmax); regression, ``[N, n_targets]``.

    Keys, always with ``n`` (the number of steps):

    - binary: ``acc``, ``f1_weighted``, ``f1_macro``, ``recall_mean`` (all in %);
    - multiclass: ``acc``, ``f1_macro``, ``recall_mean`` (in %);
    - regression, one target: ``ccc``, ``pcc``, ``acc_sign`` (:func:`sign_accuracy` in %, the binary
      accuracy of the SEW tables), ``uar`` and ``war`` (:func:`uar`, :func:`war` at 0 in %, the SSPNet
      conflict tables) and, given ``sequence_ids``, ``ccc_seq`` (the mean per-sequence CCC); several
      targets: ``ccc_<t>``, ``pcc_<t>``, ``acc_sign_<t>``, ``uar_<t>``, ``war_<t>``, ``ccc_seq_<t>`` per
      target, ``ccc_mean`` and ``pcc_mean`` (the means of ``ccc_<t>`` and ``pcc_<t>``).
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    n = yt.shape[0] if yt.ndim else 0
    if n == 0:
        raise ValueError("task_metrics needs at least one step")
    if yp.shape[0] != n:
        raise ValueError(f"y_true has {n} steps, y_pred {yp.shape[0]}")
    out: dict[str, float] = {}

    if task in ("binary", "multiclass"):
        labels = yt.reshape(n, -1)[:, 0].astype(int)
        if task == "binary":
            pred = (yp.reshape(n, -1)[:, 0] >= 0.5).astype(int)
        else:
            if yp.ndim != 2:
                raise ValueError(f"multiclass y_pred must be [N, C], got shape {yp.shape}")
            pred = yp.argmax(axis=1)
        out["acc"] = 100.0 * accuracy(labels, pred)
        if task == "binary":
            out["f1_weighted"] = 100.0 * f1_weighted(labels, pred)
        out["f1_macro"] = 100.0 * f1_macro(labels, pred)
        out["recall_mean"] = 100.0 * mean_class_recall(labels, pred)
    elif task == "regression":
        k = len(targets)
        yt, yp = yt.reshape(n, -1), yp.reshape(n, -1)
        if yt.shape[1] != k or yp.shape[1] != k:
            raise ValueError(f"{k} targets, but y_true is {yt.shape} and y_pred {yp.shape}")
        seq_index = None
        if sequence_ids is not None:
            ids = np.asarray(sequence_ids).ravel()
            if ids.size != n:
                raise ValueError(f"{ids.size} sequence ids for {n} steps")
            _, seq_index = np.unique(ids, return_inverse=True)
        for j, name in enumerate(targets):
            suffix = "" if k == 1 else f"_{name}"
            out[f"ccc{suffix}"] = ccc(yt[:, j], yp[:, j])
            out[f"pcc{suffix}"] = pcc(yt[:, j], yp[:, j])
            out[f"acc_sign{suffix}"] = 100.0 * sign_accuracy(yt[:, j], yp[:, j])
            out[f"uar{suffix}"] = 100.0 * uar(yt[:, j], yp[:, j])
            out[f"war{suffix}"] = 100.0 * war(yt[:, j], yp[:, j])
            if seq_index is not None:
                parts = [seq_index == s for s in range(seq_index.max() + 1)]
                out[f"ccc_seq{suffix}"] = ccc_per_sequence(
                    [yt[m, j] for m in parts], [yp[m, j] for m in parts]
                )
        if k > 1:
            out["ccc_mean"] = float(np.mean([out[f"ccc_{t}"] for t in targets]))
            out["pcc_mean"] = float(np.mean([out[f"pcc_{t}"] for t in targets]))
    else:
        raise ValueError(f"unknown task {task!r}")
    out["n"] = n
    return out


# --------------------------------------------------------------------------------------------------
# Significance of two accuracies


def two_proportion_ztest(acc1: float, n1: int, acc2: float, n2: int, tail: Tail = "two") -> tuple[float, float]:
    """z-test of two accuracies from independent samples, pooled variance (docs/methods/README.md#significance).

    ``acc1``, ``acc2`` are fractions in ``[0, 1]`` of ``n1``, ``n2`` trials.
    ``z = (acc1 − acc2) / sqrt(p̂(1 − p̂)(1/n1 + 1/n2))`` with the pooled ``p̂ = (acc1·n1 + acc2·n2) / (n1 + n2)``
    (statsmodels' ``proportions_ztest``). ``tail`` as in :func:`fisher_r_to_z`; the papers' test is
    one-tailed. Returns ``(nan, nan)`` when a sample is empty or the pooled variance is 0 (both
    accuracies 0 or both 1).
    """
    if tail not in ("two", "greater", "less", "one"):
        raise ValueError(f"tail must be 'two', 'greater', 'less' or 'one', not {tail!r}")
    for a in (acc1, acc2):
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"accuracies must be fractions in [0, 1], got {a!r}")
    if n1 < 1 or n2 < 1:
        return math.nan, math.nan
    pooled = (acc1 * n1 + acc2 * n2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        return math.nan, math.nan
    z = (acc1 - acc2) / math.sqrt(var)
    return float(z), _normal_p(z, tail)

