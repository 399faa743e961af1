"""stew.data.check: dataset summary and the linear leakage probe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from stew.data.check import LEAK_HINT, CheckReport, ProbeSettings, check_dataset, render_report
from stew.data.dataset import Dataset, Sequence

MOSI = Path(__file__).resolve().parents[2] / "shared/data/cmu-mosi-utterance"

# (labels [T, k], rng) -> features [T, d]
FeatureFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def random_features(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(len(y), 8))


def label_copy(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Every column is the label plus a little noise, among unrelated columns: a "leaky" embedding.
    return np.concatenate([y + 0.05 * rng.normal(size=y.shape), rng.normal(size=(len(y), 8 - y.shape[1]))], axis=1)


def make_dataset(
    task: str = "binary",
    *,
    n_groups: dict[str, int] | None = None,
    steps: int = 20,
    features: dict[str, dict[str, FeatureFn]] | None = None,
    targets: tuple[str, ...] = ("label",),
    step_rate_hz: float | None = None,
    seed: int = 0,
) -> Dataset:
    """One sequence per group; ``features[split][modality]`` builds each modality from the labels."""
    rng = np.random.default_rng(seed)
    n_groups = n_groups or {"train": 20}
    features = features or {sp: {"a": random_features} for sp in n_groups}
    mods = list(next(iter(features.values())))
    seqs, dims = [], {}
    for sp, n in n_groups.items():
        for i in range(n):
            if task == "regression":
                y = rng.normal(size=(steps, len(targets)))
            else:
                y = rng.integers(0, 3 if task == "multiclass" else 2, size=(steps, 1)).astype(np.float64)
            feats = {m: features[sp][m](y, rng).astype(np.float32) for m in mods}
            dims = {m: f.shape[1] for m, f in feats.items()}
            seqs.append(Sequence(
                id=f"{sp}{i}", group=f"g{sp}{i}", split=sp, features=feats,
                masks={m: np.ones(steps, bool) for m in mods}, targets=y.astype(np.float32),
                step_ids=[f"{sp}{i}_{t}" for t in range(steps)],
            ))
    return Dataset(
        name="toy", task=task, targets=list(targets), modalities=dims, sequences=seqs,  # type: ignore[arg-type]
        n_classes=3 if task == "multiclass" else (2 if task == "binary" else None), step_rate_hz=step_rate_hz,
    )


def probe(report: CheckReport, modality: str, target: str | None = None):
    (p,) = [p for p in report.probes if p.modality == modality and p.target == target]
    return p


# --------------------------------------------------------------------------------------------------
# Summary


def test_summary_numbers() -> None:
    ds = make_dataset("binary", n_groups={"train": 4, "test": 2}, steps=10)
    s0 = ds.sequences[0]
    s0.features["a"][:3] = 0.0  # 3 all-zero steps out of 60
    s0.features["a"][3, :4] = 0.0  # a partly-zero step is not an all-zero step
    s0.masks["a"][:5] = False
    report = check_dataset(ds, folds=2)
    assert report.unit == "utterances"
    assert [(s.split, s.sequences, s.groups, s.steps) for s in report.splits] == [
        ("train", 4, 4, 40), ("test", 2, 2, 20),
    ]
    (m,) = report.modalities
    assert (m.name, m.dim) == ("a", 8)
    assert m.zero_rate == pytest.approx(3 / 60)
    assert m.missing_rate == pytest.approx(5 / 60)
    assert m.zero_value_rate == pytest.approx((3 * 8 + 4) / (60 * 8))
    for sp in ("train", "test"):
        y = np.concatenate([s.targets[:, 0] for s in ds.split(sp)]).astype(int)
        counts = {c.label: (c.count, c.pct) for c in report.classes if c.split == sp}
        assert counts == {k: (int(np.sum(y == k)), pytest.approx(100 * np.mean(y == k))) for k in (0, 1)}
    assert report.target_stats == []
    # The probe only sees the 35 present training steps of modality a.
    assert probe(report, "a").train_steps == 35
    assert probe(report, "a").test_steps == 20


def test_summary_regression_frames() -> None:
    ds = make_dataset(
        "regression", targets=("arousal", "valence"), n_groups={"train": 3}, steps=50, step_rate_hz=25.0
    )
    report = check_dataset(ds, folds=3)
    assert report.unit == "frames"
    assert report.classes == []
    y = np.concatenate([s.targets for s in ds])
    stats = {s.target: s for s in report.target_stats}
    assert set(stats) == {"arousal", "valence"}
    for j, t in enumerate(("arousal", "valence")):
        assert (stats[t].min, stats[t].max) == (pytest.approx(y[:, j].min()), pytest.approx(y[:, j].max()))
        assert stats[t].mean == pytest.approx(y[:, j].mean(), abs=1e-6)
        assert stats[t].std == pytest.approx(y[:, j].std(), abs=1e-6)
    assert {(p.modality, p.target, p.metric) for p in report.probes} == {
        ("a", "arousal", "ccc"), ("a", "valence", "ccc"),
    }


# --------------------------------------------------------------------------------------------------
# Leakage probe


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_probe_warns_on_label_copy_not_on_random(task: str) -> None:
    ds = make_dataset(task, features={"train": {"leaky": label_copy, "noise": random_features}})
    report = check_dataset(ds)
    target = None if task != "regression" else "label"
    leaky, noise = probe(report, "leaky", target), probe(report, "noise", target)
    assert leaky.within_train > 0.95
    assert leaky.warnings and LEAK_HINT in leaky.warnings[0]
    assert noise.within_train < 0.7
    assert noise.warnings == []
    assert report.warnings == leaky.warnings
    assert leaky.folds == 5 and leaky.train_groups == 20 and leaky.train_to_test is None


def test_probe_regression_targets_are_probed_separately() -> None:
    def leak_arousal_only(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return label_copy(y[:, :1], rng)

    ds = make_dataset("regression", targets=("arousal", "valence"), features={"train": {"a": leak_arousal_only}})
    report = check_dataset(ds)
    assert probe(report, "a", "arousal").warnings
    assert not probe(report, "a", "valence").warnings


def test_probe_warns_on_train_test_gap() -> None:
    def weak_leak(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # The training features carry the label (about 80 % accuracy, below the near-perfect
        # threshold); the test features of the same "extractor" do not.
        return np.concatenate([y + 0.6 * rng.normal(size=y.shape), rng.normal(size=(len(y), 7))], axis=1)

    ds = make_dataset(
        "binary", n_groups={"train": 20, "test": 10},
        features={"train": {"a": weak_leak}, "test": {"a": random_features}},
        steps=30,
    )
    report = check_dataset(ds)
    p = probe(report, "a")
    assert 0.7 < p.within_train < report.settings.near_perfect_acc
    assert p.train_to_test is not None and p.train_to_test < 0.6
    assert len(p.warnings) == 1 and "far above train-to-test" in p.warnings[0]
    # The gap is configurable.
    relaxed = check_dataset(ds, settings=ProbeSettings(max_gap=0.5))
    assert probe(relaxed, "a").warnings == []


def test_probe_no_gap_warning_when_test_agrees() -> None:
    ds = make_dataset(
        "binary", n_groups={"train": 10, "test": 5},
        features={"train": {"a": label_copy}, "test": {"a": label_copy}},
    )
    p = probe(check_dataset(ds), "a")
    assert p.train_to_test is not None and p.train_to_test > 0.95
    assert len(p.warnings) == 1 and "far above" not in p.warnings[0]


def test_probe_subsamples_long_data_deterministically() -> None:
    ds = make_dataset("regression", n_groups={"train": 6}, steps=400, step_rate_hz=25.0,
                      features={"train": {"a": label_copy}})
    cfg = ProbeSettings(max_train_steps=600)
    a, b = check_dataset(ds, seed=1, settings=cfg), check_dataset(ds, seed=1, settings=cfg)
    c = check_dataset(ds, seed=2, settings=cfg)
    pa = probe(a, "a", "label")
    assert (pa.train_steps, pa.subsampled_from, pa.train_groups) == (600, 2400, 6)
    assert any("600 of 2,400" in n for n in a.notes)
    assert pa.within_train == probe(b, "a", "label").within_train
    assert pa.within_train != probe(c, "a", "label").within_train
    assert probe(check_dataset(ds), "a", "label").subsampled_from is None
    # The test split is capped the same way.
    ds = make_dataset("binary", n_groups={"train": 4, "test": 4}, steps=100)
    pt = probe(check_dataset(ds, settings=ProbeSettings(max_test_steps=150)), "a")
    assert (pt.test_steps, pt.test_subsampled_from, pt.subsampled_from) == (150, 400, None)


def test_probe_needs_two_training_groups() -> None:
    report = check_dataset(make_dataset("binary", n_groups={"train": 1}))
    assert report.probes == [] and any("skipped" in n for n in report.notes)
    # Fewer groups than folds: the probe uses one fold per group.
    assert probe(check_dataset(make_dataset("binary", n_groups={"train": 3})), "a").folds == 3
    with pytest.raises(ValueError):
        check_dataset(make_dataset("binary"), folds=1)


def test_render_report() -> None:
    ds = make_dataset("binary", n_groups={"train": 10, "test": 4}, features={
        "train": {"leaky": label_copy, "noise": random_features},
        "test": {"leaky": random_features, "noise": random_features},
    })
    console = Console(record=True, width=200)
    render_report(check_dataset(ds), console)
    text = console.export_text()
    for needle in ("toy", "utterances", "Modalities", "class 1", "Leakage probe", "WARN", "leaky", LEAK_HINT):
        assert needle in text
    reg = make_dataset("regression", n_groups={"train": 3}, step_rate_hz=25.0)
    console = Console(record=True, width=200)
    render_report(check_dataset(reg, folds=3), console)
    text = console.export_text()
    assert "Label range" in text and "frames" in text and "WARN" not in text


# --------------------------------------------------------------------------------------------------
# Real CMU-MOSI (train split only)


def _load_mosi() -> Dataset:
    try:
        from stew.data import load_dataset

        return load_dataset(MOSI)
    except ImportError:  # a reader load_dataset imports is not there yet; the MOSI one suffices
        from stew.data.formats.mosi import read_mosi

        return read_mosi(MOSI)


@pytest.mark.mosi
@pytest.mark.skipif(not MOSI.is_dir(), reason="CMU-MOSI utterance features not present")
def test_probe_on_real_mosi() -> None:
    report = check_dataset(_load_mosi())
    acc = {p.modality: p.within_train for p in report.probes}
    # README: text ~98 %, visual ~91 %, audio ~51 % within-train grouped accuracy.
    assert acc["text"] > 0.95 and acc["video"] > 0.88 and acc["audio"] < 0.6
    warned = {p.modality for p in report.probes if p.warnings}
    assert warned == {"text", "video"}
    splits = {s.split: (s.sequences, s.steps) for s in report.splits}
    assert splits == {"train": (62, 1447), "test": (15, 375)}
