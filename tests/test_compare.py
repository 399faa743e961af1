"""stew compare: the two-proportion z-test, run-for-run and set-against-set tests, and the CLI form."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from stew.cli import app
from stew.errors import DataError
from stew.eval.compare import compare, load_run
from stew.scoring import metrics
from tests.conftest import FAST
from tests.test_cli import one_line_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_run(path, val: dict, test: dict | None = None, seed: int | None = 0):
    """A run folder holding only a metrics.json, as the trainer writes it."""
    path.mkdir(parents=True)
    cfg = {"seed": seed, "method": "unimodal", "modality": "audio"}
    (path / "metrics.json").write_text(json.dumps({"val": val, "test": test or {}, "config": cfg,
                                                   "method": {"name": "unimodal"}}))
    return path


def reg(c: float, n: int = 500, **extra) -> dict:
    return {"ccc": c, "pcc": c + 0.05, "ccc_seq": c - 0.01, "n": n, **extra}


def clf(acc: float, n: int = 200, f1: float | None = None) -> dict:
    return {"acc": acc, "f1_weighted": acc - 1 if f1 is None else f1, "f1_macro": acc - 2, "recall_mean": acc - 3,
            "n": n}


# --------------------------------------------------------------------------------------------------
# metrics.two_proportion_ztest


def test_two_proportion_ztest_worked_example():
    # 0.80 of 200 against 0.70 of 200: pooled p = 0.75, se = sqrt(0.75 * 0.25 * (2/200)).
    z, p = metrics.two_proportion_ztest(0.80, 200, 0.70, 200)
    se = math.sqrt(0.75 * 0.25 * (1 / 200 + 1 / 200))
    assert z == pytest.approx(0.10 / se, rel=1e-12)
    assert z == pytest.approx(2.3094, abs=1e-4)
    assert p == pytest.approx(2 * stats.norm.sf(0.10 / se), rel=1e-12)
    assert metrics.two_proportion_ztest(0.80, 200, 0.70, 200, "greater")[1] == pytest.approx(p / 2)
    assert metrics.two_proportion_ztest(0.80, 200, 0.70, 200, "one")[1] == pytest.approx(p / 2)
    assert metrics.two_proportion_ztest(0.80, 200, 0.70, 200, "less")[1] == pytest.approx(1 - p / 2)
    assert "two_proportion_ztest" in metrics.__all__


@pytest.mark.parametrize("a1,n1,a2,n2", [(0.62, 150, 0.55, 90), (0.3, 40, 0.45, 300), (0.5, 10, 0.5, 12)])
def test_two_proportion_ztest_matches_reference(a1, n1, a2, n2):
    z, p = metrics.two_proportion_ztest(a1, n1, a2, n2)
    try:
        from statsmodels.stats.proportion import proportions_ztest
    except ImportError:
        pooled = (a1 * n1 + a2 * n2) / (n1 + n2)
        z_ref = (a1 - a2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p_ref = 2 * stats.norm.sf(abs(z_ref))
    else:  # pragma: no cover - statsmodels is not a dependency
        z_ref, p_ref = proportions_ztest([a1 * n1, a2 * n2], [n1, n2])
    assert z == pytest.approx(z_ref, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-9)


def test_two_proportion_ztest_undefined_and_bad_input():
    assert all(math.isnan(v) for v in metrics.two_proportion_ztest(0.5, 0, 0.6, 10))
    assert all(math.isnan(v) for v in metrics.two_proportion_ztest(1.0, 10, 1.0, 20))
    assert all(math.isnan(v) for v in metrics.two_proportion_ztest(0.0, 10, 0.0, 20))
    with pytest.raises(ValueError):
        metrics.two_proportion_ztest(80.0, 10, 0.5, 10)
    with pytest.raises(ValueError):
        metrics.two_proportion_ztest(0.8, 10, 0.5, 10, tail="both")


# --------------------------------------------------------------------------------------------------
# compare()


def test_pairs_fisher_matches_metrics(tmp_path):
    a = [make_run(tmp_path / "a0", reg(0.5), reg(0.60, 800), 0), make_run(tmp_path / "a1", reg(0.5), reg(0.40, 700), 1)]
    b = [make_run(tmp_path / "b0", reg(0.5), reg(0.50, 900), 0), make_run(tmp_path / "b1", reg(0.5), reg(0.45, 600), 1)]
    res = compare(a, b)
    assert res["split"] == "test" and res["task"] == "regression" and res["keys"] == ["ccc"]
    assert [(r["run_a"], r["run_b"]) for r in res["pairs"]] == [(str(a[0]), str(b[0])), (str(a[1]), str(b[1]))]
    r0, r1 = res["pairs"]
    assert (r0["z"], r0["p"]) == pytest.approx(metrics.fisher_r_to_z(0.60, 800, 0.50, 900))
    assert (r1["z"], r1["p"]) == pytest.approx(metrics.fisher_r_to_z(0.40, 700, 0.45, 600))
    # r0: p = .003; r1 (0.40 vs 0.45): p = .27, so no side is named.
    assert r0["direction"] == "A > B" and r1["direction"] == "no significant difference"
    assert (r0["value_a"], r0["value_b"], r0["key"]) == (0.60, 0.50, "ccc")
    one = compare(a, b, tail="greater")["pairs"][0]
    assert one["p"] == pytest.approx(metrics.fisher_r_to_z(0.60, 800, 0.50, 900, "greater")[1])


def test_multi_target_keys(tmp_path):
    def block(x, y):
        return {"ccc_arousal": x, "pcc_arousal": x, "ccc_seq_arousal": x, "ccc_valence": y, "pcc_valence": y,
                "ccc_seq_valence": y, "ccc_mean": (x + y) / 2, "n": 300}

    a = make_run(tmp_path / "a", block(0.7, 0.3))
    b = make_run(tmp_path / "b", block(0.6, 0.3))
    res = compare([a], [b])
    assert res["keys"] == ["ccc_arousal", "ccc_valence"]
    assert [r["key"] for r in res["pairs"]] == ["ccc_arousal", "ccc_valence"]
    assert [r["direction"] for r in res["pairs"]] == ["A > B", "="]
    assert res["pairs"][0]["z"] == pytest.approx(metrics.fisher_r_to_z(0.7, 300, 0.6, 300)[0])
    assert res["sets"] == []  # one run a side: no t-test
    assert [r["key"] for r in compare([a], [b], metric="ccc_mean")["pairs"]] == ["ccc_mean"]


def test_pairs_classification_ztest_on_acc(tmp_path):
    a = make_run(tmp_path / "a", clf(50.0), clf(80.0, 200))
    b = make_run(tmp_path / "b", clf(50.0), clf(70.0, 250))
    res = compare([a], [b])
    assert res["task"] == "classification" and res["keys"] == ["acc"]
    (row,) = res["pairs"]
    assert (row["z"], row["p"]) == pytest.approx(metrics.two_proportion_ztest(0.80, 200, 0.70, 250))
    assert row["key"] == "acc" and row["direction"] == "A > B"
    # --metric picks the t-test's metric; the run-for-run z-test stays on accuracy.
    res = compare([a], [b], metric="f1_weighted")
    assert [r["key"] for r in res["pairs"]] == ["acc"] and res["keys"] == ["f1_weighted"]


def test_paired_when_same_seeds_in_order_else_welch(tmp_path):
    va, vb = [0.61, 0.55, 0.58], [0.50, 0.52, 0.49]
    a = [make_run(tmp_path / f"a{s}", reg(v), None, s) for s, v in enumerate(va)]
    b = [make_run(tmp_path / f"b{s}", reg(v), None, s) for s, v in enumerate(vb)]
    (row,) = compare(a, b)["sets"]
    # Two-tailed p = .086 over three seeds: not significant; one-tailed (A > B) p = .043 is.
    assert row["test"] == "paired t" and row["direction"] == "no significant difference"
    assert compare(a, b, tail="greater")["sets"][0]["direction"] == "A > B"
    assert (row["t"], row["p"]) == pytest.approx(metrics.paired_ttest(va, vb))
    assert (row["mean_a"], row["std_a"]) == pytest.approx(metrics.mean_std(va))
    assert (row["mean_b"], row["std_b"]) == pytest.approx(metrics.mean_std(vb))

    # Same seeds, other order: Welch; runs are still paired run for run in the order given.
    res = compare(a, b[::-1])
    (row,) = res["sets"]
    assert row["test"] == "Welch t"
    assert (row["t"], row["p"]) == pytest.approx(metrics.unpaired_ttest(va, vb[::-1]))
    assert [r["run_b"] for r in res["pairs"]] == [str(p) for p in b[::-1]]

    # Different lengths: Welch, no run-for-run rows.
    res = compare(a, b[:2])
    assert res["pairs"] == [] and res["sets"][0]["test"] == "Welch t"
    assert res["sets"][0]["t"] == pytest.approx(metrics.unpaired_ttest(va, vb[:2])[0])

    # One-tailed p from the two-tailed t-test.
    t, p2 = metrics.paired_ttest(va, vb)
    assert compare(a, b, tail="greater")["sets"][0]["p"] == pytest.approx(p2 / 2)
    assert compare(a, b, tail="less")["sets"][0]["p"] == pytest.approx(1 - p2 / 2)
    assert compare(b, a, tail="less")["sets"][0]["direction"] == "A < B"


def test_missing_seed_is_welch(tmp_path):
    a = [make_run(tmp_path / f"a{s}", reg(0.5 + s / 10), None, None) for s in range(2)]
    b = [make_run(tmp_path / f"b{s}", reg(0.4 + s / 20), None, None) for s in range(2)]
    assert compare(a, b)["sets"][0]["test"] == "Welch t"


def test_default_split_falls_back_to_val(tmp_path):
    a = make_run(tmp_path / "a", reg(0.6, 400), reg(0.5))
    b = make_run(tmp_path / "b", reg(0.5, 400), None)  # no test split: "test": {}
    res = compare([a], [b])
    assert res["split"] == "val"
    assert res["pairs"][0]["z"] == pytest.approx(metrics.fisher_r_to_z(0.6, 400, 0.5, 400)[0])
    with pytest.raises(DataError, match="no test metrics"):
        compare([a], [b], split="test")
    with pytest.raises(DataError, match="--split"):
        compare([a], [b], split="dev")


def test_mismatches_and_bad_folders(tmp_path):
    r = make_run(tmp_path / "r", reg(0.5))
    c = make_run(tmp_path / "c", clf(60.0))
    with pytest.raises(DataError, match="differ in task"):
        compare([r], [c])
    m = make_run(tmp_path / "m", {"ccc_arousal": 0.3, "ccc_valence": 0.2, "ccc_mean": 0.25, "n": 9})
    with pytest.raises(DataError, match="differ in targets"):
        compare([r], [m])
    with pytest.raises(DataError, match="no val metric 'f1_weighted'"):
        compare([r], [r], metric="f1_weighted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not a finished stew run \(no metrics.json\)") as e:
        load_run(tmp_path / "empty")
    assert e.value.file == str(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_run(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_literal_vs_form_and_json_out(tmp_path):
    a = [make_run(tmp_path / f"a{s}", clf(50.0), clf(80.0 - s, 200), s) for s in range(2)]
    b = [make_run(tmp_path / f"b{s}", clf(50.0), clf(70.0 + 2 * s, 200), s) for s in range(2)]
    out = tmp_path / "sub" / "cmp.json"
    res = invoke("compare", a[0], a[1], "--vs", b[0], b[1], "--out", out)
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["split"] == "test" and got["tail"] == "two"
    assert [(r["run_a"], r["run_b"]) for r in got["pairs"]] == [(str(a[0]), str(b[0])), (str(a[1]), str(b[1]))]
    assert got["pairs"][0]["z"] == pytest.approx(metrics.two_proportion_ztest(0.80, 200, 0.70, 200)[0])
    assert got["sets"][0]["test"] == "paired t"
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    assert "paired t-test" in res.output and "two-proportion" in res.output

    # Repeated --vs, --vs=, and options anywhere give the same comparison.
    out2 = tmp_path / "cmp2.json"
    res = invoke("compare", "--tail", "two", a[0], a[1], "--vs", b[0], "--vs=" + str(b[1]), "--out", out2)
    assert res.exit_code == 0, res.output
    assert json.loads(out2.read_text()) == got

    res = invoke("compare", a[0], a[1], "--vs", b[0], b[1], "--tail", "greater", "--split", "val")
    assert res.exit_code == 0, res.output


def test_cli_nan_is_null_in_json(tmp_path):
    a = [make_run(tmp_path / f"a{s}", reg(0.5), None, s) for s in range(2)]
    out = tmp_path / "same.json"
    res = invoke("compare", *a, "--vs", *a, "--out", out)
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["sets"][0]
    assert row["t"] is None and row["p"] is None and row["direction"] == "="


def test_cli_errors_are_one_line(tmp_path):
    r = make_run(tmp_path / "r", reg(0.5))
    c = make_run(tmp_path / "c", clf(60.0))
    assert "differ in task" in one_line_error(invoke("compare", r, "--vs", c))
    assert "--vs" in one_line_error(invoke("compare", r, c))
    assert "before --vs" in one_line_error(invoke("compare", "--vs", c))
    assert "--bogus" in one_line_error(invoke("compare", r, "--bogus", "--vs", c))
    assert "no metrics.json" in one_line_error(invoke("compare", r, "--vs", tmp_path))
    out = tmp_path / "x.json"
    one_line_error(invoke("compare", r, "--vs", c, "--out", out))
    assert not out.exists()


def test_cli_real_run(frames_dir, tmp_path):
    """One tiny real training run, compared with a hand-made run of the same task."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**FAST, "max_epochs": 1}))
    real = tmp_path / "real"
    res = invoke("train", "--data", frames_dir, "--modality", "a", "--config", cfg, "--out", real)
    assert res.exit_code == 0, res.output
    m = json.loads((real / "metrics.json").read_text())
    fake = make_run(tmp_path / "fake", reg(0.1, m["val"]["n"]), reg(0.1, m["test"]["n"]))
    out = tmp_path / "cmp.json"
    res = invoke("compare", real, "--vs", fake, "--out", out)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())["pairs"]
    assert row["key"] == "ccc"
    assert row["z"] == pytest.approx(metrics.fisher_r_to_z(m["test"]["ccc"], m["test"]["n"], 0.1, m["test"]["n"])[0])
