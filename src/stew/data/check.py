"""``stew data check``: a dataset summary plus a linear leakage probe.

The summary counts sequences and steps per split, the all-zero and masked-out step rates of every
modality, and the label balance (classification) or range (regression).

The leakage probe asks how well a *linear* model predicts the labels from each modality alone,
cross-validated over whole training groups. Released features are sometimes the penultimate layer
of a network trained on the very same labels (CMU-MOSI's text and visual features are: a grouped
logistic probe reaches ~98 % and ~91 % accuracy on the train videos, against ~51 % for the
unsupervised openSMILE audio). Then any validation split carved from train is optimistic, and a
teacher trained on train is nearly label-perfect. The probe warns when the within-train score is
near-perfect, or when it is far above the score of the same probe fitted on train and tested on the
test split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from stew.data.dataset import SPLITS, Dataset
from stew.scoring import metrics

LEAK_HINT = "features may come from a model trained on these labels; validation carved from train will be optimistic"


@dataclass
class ProbeSettings:
    """Thresholds and limits of the leakage probe."""

    # Accuracy at or above which a within-train grouped probe counts as near-perfect. Set below
    # MOSI's visual score (~0.90-0.91 depending on fold assignment) so that it warns with margin,
    # and far above its audio score (~0.51) and any honest affect-recognition accuracy.
    near_perfect_acc: float = 0.85
    near_perfect_ccc: float = 0.90
    # Warn when the within-train score exceeds the train-to-test score by more than this
    # (absolute: accuracy as a fraction, or CCC).
    max_gap: float = 0.15
    # Long frame-level data is subsampled (uniformly over steps, fixed by the seed) to keep the
    # probe to seconds; every group keeps roughly its share of steps, so the grouped folds hold.
    max_train_steps: int = 20_000
    max_test_steps: int = 20_000


@dataclass
class SplitSummary:
    split: str
    sequences: int
    groups: int
    steps: int


@dataclass
class ModalitySummary:
    name: str
    dim: int
    zero_rate: float  # fraction of steps whose features are all exactly zero
    missing_rate: float  # fraction of steps whose mask is False
    zero_value_rate: float  # fraction of all values that are exactly zero (sparse features, e.g. ReLU outputs)


@dataclass
class ClassCount:
    split: str
    label: int
    count: int
    pct: float


@dataclass
class TargetStats:
    split: str
    target: str
    min: float
    max: float
    mean: float
    std: float


@dataclass
class ProbeResult:
    """One linear probe: a modality (and, for regression, one target)."""

    modality: str
    target: str | None
    metric: str  # "acc" (fraction, classification) or "ccc" (regression)
    folds: int
    train_steps: int
    train_groups: int
    within_train: float  # grouped K-fold score over the training groups (pooled out-of-fold predictions)
    train_to_test: float | None = None  # fitted on all train, scored on test; None without a test split
    test_steps: int = 0
    subsampled_from: int | None = None  # training steps before subsampling, when it happened
    test_subsampled_from: int | None = None  # test steps before subsampling, when it happened
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.modality if self.target is None else f"{self.modality}/{self.target}"


@dataclass
class CheckReport:
    name: str
    task: str
    unit: str  # "utterances" or "frames"
    splits: list[SplitSummary]
    modalities: list[ModalitySummary]
    classes: list[ClassCount]
    target_stats: list[TargetStats]
    probes: list[ProbeResult]
    settings: ProbeSettings
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [w for p in self.probes for w in p.warnings]


# --------------------------------------------------------------------------------------------------
# Summary


def _summaries(ds: Dataset) -> tuple[list[SplitSummary], list[ModalitySummary]]:
    splits = [
        SplitSummary(sp, n, len(ds.groups(sp)), ds.n_steps(sp)) for sp, n in ds.splits().items()
    ]
    total = ds.n_steps()
    mods = []
    for m, dim in ds.modalities.items():
        zero = sum(int(np.sum(~np.any(s.features[m] != 0, axis=1))) for s in ds)
        missing = sum(int(np.sum(~s.masks[m])) for s in ds)
        zero_values = sum(int(np.sum(s.features[m] == 0)) for s in ds)
        mods.append(
            ModalitySummary(
                m, dim,
                zero / total if total else 0.0,
                missing / total if total else 0.0,
                zero_values / (total * dim) if total and dim else 0.0,
            )
        )
    return splits, mods


def _labels(ds: Dataset) -> tuple[list[ClassCount], list[TargetStats]]:
    classes: list[ClassCount] = []
    stats: list[TargetStats] = []
    for sp in ds.splits():
        seqs = ds.split(sp)
        y = np.concatenate([s.targets for s in seqs]).reshape(-1, len(ds.targets)).astype(np.float64)
        if ds.task == "regression":
            for j, t in enumerate(ds.targets):
                v = y[:, j][np.isfinite(y[:, j])]
                if v.size:
                    stats.append(TargetStats(sp, t, float(v.min()), float(v.max()), float(v.mean()), float(v.std())))
        else:
            lab = y[:, 0].astype(int)
            n_classes = ds.n_classes or int(lab.max()) + 1
            counts = np.bincount(lab, minlength=n_classes)
            classes += [
                ClassCount(sp, c, int(k), 100.0 * k / lab.size) for c, k in enumerate(counts)
            ]
    return classes, stats


# --------------------------------------------------------------------------------------------------
# Leakage probe


def _model(task: str) -> Pipeline:
    # Standardise first: released features mix scales, and both models are regularised.
    if task == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _fit_predict(task: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    if task != "regression" and np.unique(y_tr).size < 2:
        # A fold whose training part has one class: the only sensible linear prediction is that class.
        return np.full(len(x_te), y_tr[0])
    with warnings.catch_warnings():
        # An under-converged probe is still a fair diagnostic; don't flood the console.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pred = _model(task).fit(x_tr, y_tr).predict(x_te)
    # Ridge may return [N] for a one-column target; keep regression predictions [N, n_targets].
    return pred.reshape(len(x_te), -1) if task == "regression" else pred


def _steps(ds: Dataset, split: str, m: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets and group labels of the steps of ``split`` where ``m`` is present (one row per
    sequence, its present steps averaged, when labels are per sequence)."""
    xs, ys, gs = [], [], []
    for s in ds.split(split):
        if ds.label_level == "sequence":
            # One label per clip or utterance: the probe reads the mean of the modality's present steps
            # (a raw waveform's mean says nothing, but the probe is only a diagnostic).
            present = s.masks[m]
            if not present.any() or not np.all(np.isfinite(s.targets)):
                continue
            xs.append(s.features[m][present].mean(0, keepdims=True))
            ys.append(s.targets)
            gs.append(np.full(1, s.group, dtype=object))
            continue
        keep = s.masks[m] & np.all(np.isfinite(s.targets), axis=1)
        xs.append(s.features[m][keep])
        ys.append(s.targets[keep])
        gs.append(np.full(int(keep.sum()), s.group, dtype=object))
    if not xs:
        k = len(ds.targets)
        return np.zeros((0, ds.modalities[m])), np.zeros((0, k)), np.zeros(0, dtype=object)
    return (
        np.concatenate(xs).astype(np.float64),
        np.concatenate(ys).astype(np.float64),
        np.concatenate(gs),
    )


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray | None:
    return None if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def _score(task: str, y: np.ndarray, pred: np.ndarray) -> list[float]:
    """Accuracy (one value) or CCC per target column."""
    if task == "regression":
        return [metrics.ccc(y[:, j], pred[:, j]) for j in range(y.shape[1])]
    return [metrics.accuracy(y[:, 0].astype(int), pred.astype(int))]


def _fmt(metric: str, v: float) -> str:
    return f"{100 * v:.1f} %" if metric == "acc" else f"{v:.3f}"


def probe_modality(
    ds: Dataset, m: str, folds: int, seed: int, cfg: ProbeSettings, notes: list[str]
) -> list[ProbeResult]:
    x, y, g = _steps(ds, "train", m)
    n_groups = len(set(g.tolist()))
    if n_groups < 2:
        notes.append(f"{m}: leakage probe skipped: {n_groups} training group(s) with this modality")
        return []
    # Each modality gets its own generator so that its subsample does not depend on the others.
    rng = np.random.default_rng([seed, list(ds.modalities).index(m)])
    sub = _subsample(len(x), cfg.max_train_steps, rng)
    n_before = len(x)
    if sub is not None:
        x, y, g = x[sub], y[sub], g[sub]
    k = min(folds, n_groups)
    y_fit = y if ds.task == "regression" else y[:, 0].astype(int)
    oof = np.zeros((len(x), y.shape[1])) if ds.task == "regression" else np.zeros(len(x))
    for tr, te in GroupKFold(n_splits=k).split(x, y_fit, groups=g):
        oof[te] = _fit_predict(ds.task, x[tr], y_fit[tr], x[te])
    within = _score(ds.task, y, oof)

    test: list[float | None] = [None] * len(within)
    x_te, y_te, _ = _steps(ds, "test", m)
    n_test_before = len(x_te)
    sub_te = None
    if len(x_te):
        sub_te = _subsample(len(x_te), cfg.max_test_steps, rng)
        if sub_te is not None:
            x_te, y_te = x_te[sub_te], y_te[sub_te]
        test = list(_score(ds.task, y_te, _fit_predict(ds.task, x, y_fit, x_te)))

    metric = "ccc" if ds.task == "regression" else "acc"
    near = cfg.near_perfect_ccc if metric == "ccc" else cfg.near_perfect_acc
    targets: list[str | None] = list(ds.targets) if ds.task == "regression" else [None]
    out = []
    for t, w, te_score in zip(targets, within, test, strict=True):
        r = ProbeResult(
            modality=m, target=t, metric=metric, folds=k, train_steps=len(x), train_groups=n_groups,
            within_train=w, train_to_test=te_score, test_steps=len(x_te),
            subsampled_from=n_before if sub is not None else None,
            test_subsampled_from=n_test_before if sub_te is not None else None,
        )
        if w >= near:
            r.warnings.append(
                f"{r.label}: within-train grouped {metric} {_fmt(metric, w)} >= {_fmt(metric, near)}: {LEAK_HINT}"
            )
        if te_score is not None and w - te_score > cfg.max_gap:
            r.warnings.append(
                f"{r.label}: within-train grouped {metric} {_fmt(metric, w)} is far above train-to-test "
                f"{_fmt(metric, te_score)} (gap > {cfg.max_gap:g}): {LEAK_HINT}"
            )
        out.append(r)
    return out


def check_dataset(
    ds: Dataset, *, folds: int = 5, seed: int = 0, settings: ProbeSettings | None = None
) -> CheckReport:
    """Summarise ``ds`` and run the leakage probe on every modality (and regression target).

    The probe is a standardised linear model (logistic regression, scored by accuracy; ridge,
    scored by CCC) cross-validated with ``GroupKFold(folds)`` over the training groups, and, when
    a test split exists, fitted on all of train and scored on test. ``seed`` fixes the subsample
    of long frame-level data.
    """
    cfg = settings or ProbeSettings()
    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    splits, mods = _summaries(ds)
    classes, stats = _labels(ds)
    notes: list[str] = []
    probes: list[ProbeResult] = []
    if not ds.split("train"):
        notes.append("no training split: leakage probe skipped")
    elif not ds.labelled:
        notes.append("no labels (labelled: false): leakage probe skipped")
    else:
        for m in ds.modalities:
            probes += probe_modality(ds, m, folds, seed, cfg, notes)
    for p in probes:
        if p.target not in (None, ds.targets[0]):
            continue  # one note per modality
        if p.subsampled_from is not None:
            notes.append(
                f"{p.modality}: probe used {p.train_steps:,} of {p.subsampled_from:,} training steps "
                f"(random subsample, seed {seed})"
            )
        if p.test_subsampled_from is not None:
            notes.append(
                f"{p.modality}: probe scored {p.test_steps:,} of {p.test_subsampled_from:,} test steps "
                f"(random subsample, seed {seed})"
            )
    unit = "utterances" if ds.step_rate_hz is None else "frames"
    return CheckReport(ds.name, ds.task, unit, splits, mods, classes, stats, probes, cfg, notes)


# --------------------------------------------------------------------------------------------------
# Rendering


def render_report(report: CheckReport, console: Console) -> None:
    """Print ``report`` as rich tables, then its notes and warnings."""
    t = Table(title=f"{escape(report.name)}: {report.task}, steps are {report.unit}")
    for col in ("split", "sequences", "groups", report.unit):
        t.add_column(col, justify="left" if col == "split" else "right")
    for s in report.splits:
        t.add_row(s.split, f"{s.sequences:,}", f"{s.groups:,}", f"{s.steps:,}")
    console.print(t)

    t = Table(title="Modalities")
    for col in ("modality", "dim", "all-zero steps", "masked-out steps", "zero values"):
        t.add_column(col, justify="left" if col == "modality" else "right")
    for m in report.modalities:
        t.add_row(
            escape(m.name), str(m.dim), f"{100 * m.zero_rate:.1f} %", f"{100 * m.missing_rate:.1f} %",
            f"{100 * m.zero_value_rate:.1f} %",
        )
    console.print(t)

    if report.classes:
        labels = sorted({c.label for c in report.classes})
        t = Table(title="Label balance (count, % of the split)")
        t.add_column("split")
        for c in labels:
            t.add_column(f"class {c}", justify="right")
        for sp in [s for s in SPLITS if any(c.split == s for c in report.classes)]:
            row = {c.label: f"{c.count:,} ({c.pct:.1f} %)" for c in report.classes if c.split == sp}
            t.add_row(sp, *(row.get(c, "0") for c in labels))
        console.print(t)
    if report.target_stats:
        t = Table(title="Label range")
        for col in ("split", "target", "min", "max", "mean", "std"):
            t.add_column(col, justify="left" if col in ("split", "target") else "right")
        for s in report.target_stats:
            t.add_row(s.split, escape(s.target), *(f"{v:.3f}" for v in (s.min, s.max, s.mean, s.std)))
        console.print(t)

    if report.probes:
        cfg = report.settings
        t = Table(
            title="Leakage probe: standardised linear model per modality "
            f"(grouped {report.probes[0].folds}-fold CV over training groups; warn at acc >= "
            f"{100 * cfg.near_perfect_acc:.0f} %, CCC >= {cfg.near_perfect_ccc:.2f}, gap > {cfg.max_gap:g})"
        )
        for col in ("probe", "metric", "train steps", "groups", "within train", "train → test", ""):
            t.add_column(col, justify="left" if col in ("probe", "metric", "") else "right")
        for p in report.probes:
            t.add_row(
                escape(p.label), p.metric, f"{p.train_steps:,}", str(p.train_groups),
                _fmt(p.metric, p.within_train),
                "-" if p.train_to_test is None else _fmt(p.metric, p.train_to_test),
                "[bold yellow]WARN[/]" if p.warnings else "ok",
            )
        console.print(t)
        if all(p.train_to_test is None for p in report.probes):
            # What a probe inside train can and cannot show (docs/formats.md, "Label-fitted features").
            console.print("[dim]note: without a labelled test split the probe can only compare with its "
                          "within-train threshold: it flags features that are near-perfect inside train (label-"
                          "fitted ones, but also a genuinely strong modality) and misses label-fitted features "
                          "that are not near-perfect; a labelled test split lets it compare train with unseen "
                          "groups[/]")
    for n in report.notes:
        console.print(f"[dim]note: {escape(n)}[/]")
    for w in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}")
