"""stew.metrics, each measure cross-checked against torchmetrics, scikit-learn or scipy."""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
)
from torchmetrics.functional import concordance_corrcoef, pearson_corrcoef

from stew.scoring import metrics

FAST = settings(max_examples=40, deadline=None)
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@st.composite
def paired_vectors(draw: st.DrawFn, min_size: int = 3, max_size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, max_size))
    x = draw(arrays(np.float64, n, elements=finite))
    y = draw(arrays(np.float64, n, elements=finite))
    # Away from (near-)constant inputs, where the references themselves become unstable.
    assume(np.std(x) > 1e-2 and np.std(y) > 1e-2)
    return x, y


labels = st.lists(st.integers(0, 3), min_size=1, max_size=40)


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 40))
    t = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return np.array(t), np.array(p)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _ccc_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Population-moment CCC from torchmetrics' Pearson r: 2·r·σx·σy / (σx² + σy² + Δμ²)."""
    r = float(pearson_corrcoef(_t(y), _t(x)))
    sx, sy = x.std(), y.std()
    return 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


# --------------------------------------------------------------------------------------------------
# Correlations


@FAST
@given(paired_vectors())
def test_ccc_matches_torchmetrics_pearson_form(xy: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = xy
    assert metrics.ccc(x, y) == pytest.approx(_ccc_reference(x, y), abs=1e-9)


@FAST
@given(paired_vectors())
def test_ccc_equals_torchmetrics_when_means_agree(xy: tuple[np.ndarray, np.ndarray]) -> None:
    # torchmetrics uses 1/(N-1) moments; with equal means the factor cancels and the two must agree.
    x, y = xy
    x, y = x - x.mean(), y - y.mean()
    assert metrics.ccc(x, y) == pytest.approx(float(concordance_corrcoef(_t(y), _t(x))), abs=1e-9)


def test_ccc_population_vs_sample_moments() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    y = 0.5 * x + rng.normal(size=20) + 1.0
    ours, tm = metrics.ccc(x, y), float(concordance_corrcoef(_t(y), _t(x)))
    # Small N with a mean offset: the moment conventions visibly differ...
    assert abs(ours - tm) > 1e-3
    x = rng.normal(size=50_000)
    y = 0.5 * x + rng.normal(size=50_000) + 1.0
    # ...and agree for long sequences.
    assert metrics.ccc(x, y) == pytest.approx(float(concordance_corrcoef(_t(y), _t(x))), abs=1e-4)


def test_ccc_penalises_bias_and_scale_pcc_does_not() -> None:
    x = np.linspace(-1, 1, 50)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.ccc(x, -x) == pytest.approx(-1.0)
    assert metrics.pcc(x, 2 * x + 3) == pytest.approx(1.0)
    assert metrics.ccc(x, 2 * x + 3) < 0.5


@FAST
@given(paired_vectors())
def test_pcc_matches_torchmetrics_and_scipy(xy: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = xy
    ours = metrics.pcc(x, y)
    assert ours == pytest.approx(float(pearson_corrcoef(_t(y), _t(x))), abs=1e-9)
    assert ours == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)


@pytest.mark.parametrize("fn", [metrics.ccc, metrics.pcc])
def test_constant_inputs_give_zero_not_nan(fn) -> None:
    x = np.array([0.1, 0.5, -0.3, 0.9])
    c = np.full(4, 0.2)
    for a, b in [(x, c), (c, x), (c, c), (c, c + 1.0)]:
        v = fn(a, b)
        assert isinstance(v, float)
        assert v == 0.0
    # The references give NaN here, which is exactly what stew avoids.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(float(pearson_corrcoef(_t(c), _t(x))))


def test_correlations_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        metrics.ccc([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        metrics.pcc([], [])


def test_ccc_per_sequence_is_mean_of_per_sequence_torchmetrics() -> None:
    rng = np.random.default_rng(1)
    trues = [rng.normal(size=n) for n in (30, 50, 80)]
    preds = [t + rng.normal(scale=s, size=t.size) for t, s in zip(trues, (0.3, 1.0, 3.0), strict=True)]
    # Centre each recording so torchmetrics' sample moments agree with our population moments.
    trues = [t - t.mean() for t in trues]
    preds = [p - p.mean() for p in preds]
    expected = np.mean([float(concordance_corrcoef(_t(p), _t(t))) for t, p in zip(trues, preds, strict=True)])
    assert metrics.ccc_per_sequence(trues, preds) == pytest.approx(expected, abs=1e-9)


def test_ccc_per_sequence_differs_from_concatenated() -> None:
    # Each recording is predicted only up to its mean: per-recording CCC is 0, the concatenation is high.
    trues = [np.array([0.0, 0.1, -0.1]), np.array([5.0, 5.1, 4.9])]
    preds = [np.zeros(3), np.full(3, 5.0)]
    assert metrics.ccc_per_sequence(trues, preds) == 0.0
    assert metrics.ccc(np.concatenate(trues), np.concatenate(preds)) > 0.99
    with pytest.raises(ValueError):
        metrics.ccc_per_sequence(trues, preds[:1])


def test_range_map_is_conflictnets_rescaling() -> None:
    """The map ConflictNET's after_fit stores (methods/conflictnet.py): [min, max] of each column onto [lo, hi]."""
    p = np.array([[-2.0, 1.0], [0.0, 1.0], [6.0, 1.0]])  # column 1 constant
    scale, shift = metrics.range_map(p, [-10.0, 0.0], [10.0, 4.0])
    r = p * scale + shift
    np.testing.assert_allclose(r[:, 0], [-10.0, -5.0, 10.0])
    np.testing.assert_allclose(r[:, 1], [2.0, 2.0, 2.0])  # no range to map: the midpoint, scale 1
    assert scale[1] == 1.0 and metrics.pcc(p[:, 0], r[:, 0]) == pytest.approx(1.0)
    scale, shift = metrics.range_map(np.array([0.5, 0.25, 0.75]), -1.0, 1.0)  # one target, scalar bounds
    np.testing.assert_allclose(np.array([0.5, 0.25, 0.75]) * scale + shift, [0.0, -1.0, 1.0])
    assert scale.shape == shift.shape == (1,)


# --------------------------------------------------------------------------------------------------
# Classification


@FAST
@given(label_pairs())
def test_label_metrics_match_sklearn(tp: tuple[np.ndarray, np.ndarray]) -> None:
    t, p = tp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on zero-division and absent classes
        assert metrics.accuracy(t, p) == pytest.approx(accuracy_score(t, p))
        assert metrics.f1_weighted(t, p) == pytest.approx(f1_score(t, p, average="weighted", zero_division=0))
        assert metrics.f1_macro(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
        assert metrics.mean_class_recall(t, p) == pytest.approx(balanced_accuracy_score(t, p))
        labels_true = np.unique(t)
        assert metrics.mean_class_recall(t, p) == pytest.approx(
            recall_score(t, p, labels=labels_true, average="macro", zero_division=0)
        )


def test_thesis_uwa_wa_mapping() -> None:
    # Spec §0.6: UWA = overall accuracy, WA = mean per-class recall; a poorly recognised rare class
    # pulls WA (mean_class_recall) below UWA (accuracy).
    t = np.array([0] * 8 + [1] * 2)
    p = np.array([0] * 8 + [0, 1])
    assert metrics.accuracy(t, p) == pytest.approx(0.9)
    assert metrics.mean_class_recall(t, p) == pytest.approx(0.75)
    assert not hasattr(metrics, "uwa") and not hasattr(metrics, "wa")


@FAST
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=40))
def test_binary_accuracy_matches_sklearn(rows: list[tuple[int, float]]) -> None:
    t = np.array([r[0] for r in rows])
    prob = np.array([r[1] for r in rows])
    assert metrics.binary_accuracy(t, prob) == pytest.approx(accuracy_score(t, (prob >= 0.5).astype(int)))
    assert metrics.binary_accuracy(t, prob, threshold=0.3) == pytest.approx(
        accuracy_score(t, (prob >= 0.3).astype(int))
    )


def test_binary_accuracy_threshold_is_inclusive() -> None:
    assert metrics.binary_accuracy([1, 0], [0.5, 0.49]) == 1.0


@FAST
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=40))
def test_uar_war_match_sklearn_on_signs(rows: list[tuple[float, float]]) -> None:
    t = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    tb, pb = (t >= 0).astype(int), (p >= 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert metrics.uar(t, p) == pytest.approx(balanced_accuracy_score(tb, pb))
    assert metrics.war(t, p) == pytest.approx(accuracy_score(tb, pb))


def test_uar_zero_counts_as_positive() -> None:
    # >= 0 is "high" (spec §0.7): a prediction of exactly 0 for a high label is correct.
    assert metrics.war([1.0, -1.0], [0.0, -0.1]) == 1.0
    assert metrics.uar([3.0, 2.0, -1.0, -2.0], [1.0, -1.0, -1.0, -1.0]) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------------
# Significance


@FAST
@given(
    arrays(np.float64, st.integers(2, 30), elements=finite),
    st.floats(-5, 5),
    st.floats(0.1, 10),
)
def test_paired_ttest_matches_scipy(a: np.ndarray, shift: float, scale: float) -> None:
    rng = np.random.default_rng(a.size)
    b = a + shift + scale * rng.normal(size=a.size)
    t, p = metrics.paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-6)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


@FAST
@given(
    arrays(np.float64, st.integers(2, 25), elements=finite),
    arrays(np.float64, st.integers(2, 25), elements=finite),
    st.booleans(),
)
def test_unpaired_ttest_matches_scipy(a: np.ndarray, b: np.ndarray, equal_var: bool) -> None:
    assume(np.std(a) > 1e-3 and np.std(b) > 1e-3)
    t, p = metrics.unpaired_ttest(a, b, equal_var=equal_var)
    ref = stats.ttest_ind(a, b, equal_var=equal_var)
    assert t == pytest.approx(ref.statistic, rel=1e-6, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_unpaired_ttest_defaults_to_welch() -> None:
    a = [80.1, 81.0, 79.5, 80.7, 80.2]
    b = [78.0, 83.5, 75.0, 84.0, 79.9, 77.2, 82.8]
    assert metrics.unpaired_ttest(a, b) == pytest.approx(tuple(stats.ttest_ind(a, b, equal_var=False)))
    assert metrics.unpaired_ttest(a, b)[1] != pytest.approx(stats.ttest_ind(a, b).pvalue)


@pytest.mark.parametrize(
    ("fn", "a", "b"),
    [
        (metrics.paired_ttest, [1.0], [2.0]),
        (metrics.paired_ttest, [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]),  # constant differences
        (metrics.unpaired_ttest, [1.0], [2.0, 3.0]),
        (metrics.unpaired_ttest, [1.0, 1.0], [2.0, 2.0]),  # both constant
    ],
)
def test_ttests_nan_when_undefined(fn, a: list[float], b: list[float]) -> None:
    t, p = fn(a, b)
    assert math.isnan(t) and math.isnan(p)


def test_fisher_r_to_z_textbook_value() -> None:
    # z = (atanh .5 − atanh .3) / sqrt(1/47 + 1/47) = 1.1624, two-tailed p = .2451.
    z, p = metrics.fisher_r_to_z(0.5, 50, 0.3, 50)
    assert z == pytest.approx(1.1624, abs=1e-4)
    assert p == pytest.approx(0.2451, abs=1e-4)


def test_fisher_r_to_z_tails_and_symmetry() -> None:
    z, p2 = metrics.fisher_r_to_z(0.7, 100, 0.5, 120)
    _, pg = metrics.fisher_r_to_z(0.7, 100, 0.5, 120, tail="greater")
    _, pl = metrics.fisher_r_to_z(0.7, 100, 0.5, 120, tail="less")
    assert z > 0
    assert pg == pytest.approx(p2 / 2) and pl == pytest.approx(1 - p2 / 2)
    assert metrics.fisher_r_to_z(0.7, 100, 0.5, 120, tail="one")[1] == pg
    zs, ps = metrics.fisher_r_to_z(0.5, 120, 0.7, 100)
    assert zs == pytest.approx(-z) and ps == pytest.approx(p2)
    assert all(math.isnan(v) for v in metrics.fisher_r_to_z(0.5, 3, 0.2, 50))
    assert math.isfinite(metrics.fisher_r_to_z(1.0, 50, 0.2, 50)[0])
    with pytest.raises(ValueError):
        metrics.fisher_r_to_z(0.5, 50, 0.2, 50, tail="both")  # type: ignore[arg-type]


def test_fisher_r_to_z_is_calibrated_under_the_null() -> None:
    # Two independent samples with the same true correlation: z must be ~N(0, 1), so about 5 %
    # of two-tailed p-values fall under .05. The correlations come from scipy.
    rng = np.random.default_rng(0)
    reps, n, rho = 2000, 30, 0.6
    cov = [[1, rho], [rho, 1]]

    def sample_r() -> np.ndarray:
        xy = rng.multivariate_normal([0, 0], cov, size=(reps, n))
        return stats.pearsonr(xy[..., 0], xy[..., 1], axis=1).statistic

    r1, r2 = sample_r(), sample_r()
    zp = np.array([metrics.fisher_r_to_z(a, n, b, n) for a, b in zip(r1, r2, strict=True)])
    assert abs(zp[:, 0].mean()) < 0.08
    assert zp[:, 0].std() == pytest.approx(1.0, abs=0.08)
    assert 0.03 < np.mean(zp[:, 1] < 0.05) < 0.07


# --------------------------------------------------------------------------------------------------
# Summaries


@FAST
@given(arrays(np.float64, st.integers(2, 20), elements=finite))
def test_mean_std_matches_statistics_stdev(v: np.ndarray) -> None:
    m, s = metrics.mean_std(v)
    assert m == pytest.approx(np.mean(v), abs=1e-9)
    assert s == pytest.approx(statistics.stdev(v.tolist()), rel=1e-9, abs=1e-9)


def test_mean_std_single_and_format() -> None:
    assert metrics.mean_std([3.5]) == (3.5, 0.0)
    with pytest.raises(ValueError):
        metrics.mean_std([])
    assert metrics.format_mean_std([79.0, 80.0, 81.2], 1) == "80.1 ± 1.1"
    assert metrics.format_mean_std([0.51234], 3) == "0.512 ± 0.000"


# --------------------------------------------------------------------------------------------------
# task_metrics / selection_metric


def test_task_metrics_binary() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(60, 1))
    prob = np.clip(0.6 * y[:, 0] + rng.uniform(-0.5, 0.5, 60), 0, 1)
    pred = (prob >= 0.5).astype(int)
    for p in (prob, prob[:, None]):
        out = metrics.task_metrics("binary", ["sentiment"], y, p)
        assert set(out) == {"acc", "f1_weighted", "f1_macro", "recall_mean", "n"}
        assert out["n"] == 60
        assert out["acc"] == pytest.approx(100 * accuracy_score(y[:, 0], pred))
        assert out["f1_weighted"] == pytest.approx(100 * f1_score(y[:, 0], pred, average="weighted"))
        assert out["f1_macro"] == pytest.approx(100 * f1_score(y[:, 0], pred, average="macro"))
        assert out["recall_mean"] == pytest.approx(100 * balanced_accuracy_score(y[:, 0], pred))
        assert 0 < out["acc"] <= 100


def test_task_metrics_multiclass_logits_and_probabilities() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=(80, 1)).astype(np.float32)
    logits = rng.normal(size=(80, 4))
    logits[np.arange(80), y[:, 0].astype(int)] += 1.0
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    pred = logits.argmax(1)
    a = metrics.task_metrics("multiclass", ["emotion"], y, logits)
    b = metrics.task_metrics("multiclass", ["emotion"], y, probs)
    assert a == b
    assert set(a) == {"acc", "f1_macro", "recall_mean", "n"}
    assert a["acc"] == pytest.approx(100 * accuracy_score(y[:, 0], pred))
    assert a["f1_macro"] == pytest.approx(100 * f1_score(y[:, 0], pred, average="macro"))
    assert a["recall_mean"] == pytest.approx(100 * balanced_accuracy_score(y[:, 0], pred))


def test_task_metrics_regression_one_target() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=(90, 1))
    p = y + rng.normal(scale=0.5, size=(90, 1))
    ids = np.repeat([0, 1, 2], 30)
    out = metrics.task_metrics("regression", ["arousal"], y, p, sequence_ids=ids)
    assert set(out) == {"ccc", "pcc", "acc_sign", "uar", "war", "ccc_seq", "n"}
    assert out["ccc"] == pytest.approx(_ccc_reference(y[:, 0], p[:, 0]))
    assert out["pcc"] == pytest.approx(stats.pearsonr(y[:, 0], p[:, 0]).statistic)
    expected = np.mean([_ccc_reference(y[ids == s, 0], p[ids == s, 0]) for s in range(3)])
    assert out["ccc_seq"] == pytest.approx(expected)
    assert out["acc_sign"] == pytest.approx(100 * accuracy_score(y[:, 0] > 0, p[:, 0] > 0))
    assert out["war"] == pytest.approx(100 * accuracy_score(y[:, 0] >= 0, p[:, 0] >= 0))
    assert out["uar"] == pytest.approx(100 * balanced_accuracy_score(y[:, 0] >= 0, p[:, 0] >= 0))
    keys = {"ccc", "pcc", "acc_sign", "uar", "war", "n"}
    assert set(metrics.task_metrics("regression", ["arousal"], y, p)) == keys


def test_task_metrics_regression_several_targets() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=(40, 2))
    p = y + rng.normal(scale=[0.2, 2.0], size=(40, 2))
    ids = np.array(["a"] * 15 + ["b"] * 25)
    out = metrics.task_metrics("regression", ["arousal", "valence"], y, p, sequence_ids=ids)
    assert set(out) == {
        "ccc_arousal", "pcc_arousal", "acc_sign_arousal", "uar_arousal", "war_arousal", "ccc_seq_arousal",
        "ccc_valence", "pcc_valence", "acc_sign_valence", "uar_valence", "war_valence", "ccc_seq_valence",
        "ccc_mean", "pcc_mean", "n",
    }
    for j, t in enumerate(("arousal", "valence")):
        assert out[f"acc_sign_{t}"] == pytest.approx(100 * accuracy_score(y[:, j] > 0, p[:, j] > 0))
    assert out["ccc_arousal"] == pytest.approx(_ccc_reference(y[:, 0], p[:, 0]))
    assert out["ccc_valence"] == pytest.approx(_ccc_reference(y[:, 1], p[:, 1]))
    assert out["ccc_arousal"] > out["ccc_valence"]
    assert out["ccc_mean"] == pytest.approx((out["ccc_arousal"] + out["ccc_valence"]) / 2)
    assert out["pcc_mean"] == pytest.approx((out["pcc_arousal"] + out["pcc_valence"]) / 2)


def test_sign_accuracy_puts_zero_in_the_negative_class() -> None:
    """SEW's classes: negative = [-1, 0], positive = (0, 1]; ``war`` (SSPNet, >= 0 positive) differs at 0."""
    assert metrics.sign_accuracy([0.0, 0.0], [-0.5, 0.0]) == 1.0  # 0 and below are one class
    assert metrics.sign_accuracy([0.0], [1e-9]) == 0.0  # anything above 0 is the other
    assert metrics.sign_accuracy([-1.0, 1.0, 0.5, -0.5], [-0.2, 0.3, -0.1, 0.0]) == 0.75
    assert metrics.war([0.0], [-0.5]) == 0.0 and metrics.sign_accuracy([0.0], [-0.5]) == 1.0
    out = metrics.task_metrics("regression", ["valence"], np.array([[0.0], [0.2], [-0.3], [0.9]]),
                               np.array([[-0.1], [0.0], [-0.3], [0.1]]))
    assert out["acc_sign"] == 75.0  # in %, like every accuracy task_metrics reports


@FAST
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=40))
def test_sign_accuracy_matches_sklearn_on_strict_signs(rows: list[tuple[float, float]]) -> None:
    t, p = np.array(rows).T
    assert metrics.sign_accuracy(t, p) == pytest.approx(accuracy_score(t > 0, p > 0))


def test_task_metrics_rejects_mismatches() -> None:
    with pytest.raises(ValueError):
        metrics.task_metrics("regression", ["a", "b"], np.zeros((5, 2)), np.zeros((5, 1)))
    with pytest.raises(ValueError):
        metrics.task_metrics("binary", ["s"], np.zeros((5, 1)), np.zeros(4))
    with pytest.raises(ValueError):
        metrics.task_metrics("ranking", ["s"], np.zeros((5, 1)), np.zeros(5))


def test_selection_metric_is_a_task_metrics_key() -> None:
    cases = {
        ("regression", ("arousal",)): "ccc",
        ("regression", ("arousal", "valence")): "ccc_mean",
        ("binary", ("sentiment",)): "f1_weighted",
        ("multiclass", ("emotion",)): "acc",
    }
    for (task, targets), key in cases.items():
        assert metrics.selection_metric(task, list(targets)) == key
        k = len(targets) if task == "regression" else 1
        y = np.tile(np.array([[0.0], [1.0]]), (5, k))
        pred = np.tile(np.array([[0.1, 0.9], [0.8, 0.2]]), (5, 1)) if task == "multiclass" else y
        assert key in metrics.task_metrics(task, list(targets), y, pred)
    # A method selecting on PCC (ConflictNET): pcc, or pcc_mean over several targets (issue 28).
    for targets, key in ((["conflict"], "pcc"), (["conflict", "dominance"], "pcc_mean")):
        assert metrics.selection_metric("regression", targets, "pcc") == key
        assert key in metrics.task_metrics("regression", targets, np.eye(2)[:, : len(targets)],
                                           np.eye(2)[:, : len(targets)])
    with pytest.raises(ValueError):
        metrics.selection_metric("ranking", ["x"])


def test_sew_tables_report_sign_accuracy_beside_ccc() -> None:
    """Every SEW table shows the binary accuracy next to CCC, and each metric is a key runs write."""
    from stew.experiments.protocols import load_protocol

    keys = metrics.task_metrics("regression", ["arousal"], np.array([[0.1], [-0.2]]), np.array([[0.2], [0.1]]))
    for table in load_protocol("recola-sew").tables:
        assert table.metrics[:2] == ["ccc", "acc_sign"], table.title
        assert set(table.metrics) <= set(keys), table.title
