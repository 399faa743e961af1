"""Tables report the split that did not choose them: test where the data labels it, validation otherwise.

Selection (early stopping, CM-StEW's alpha/beta grid) reads validation only, so permuting the test
labels of a MOSI-layout dataset changes nothing but the test scores; the tables' headline (best, p)
is test when every run has test scores and validation, said so in the title, when the data has none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from stew.cli import app
from stew.data.dataset import Dataset
from stew.experiments import results
from stew.experiments.plan import select
from stew.experiments.protocols import available, load_protocol, parse_protocol
from stew.experiments.rank import RankResult, render_ranking
from stew.experiments.reproduce import reproduce
from stew.experiments.store import RunStore
from stew.experiments.transfer import PairResult, render_transfer
from stew.scoring import metrics
from tests.conftest import FAST, tiny_utterances

# -- the tables, on made-up store rows (no training) -----------------------------------------------

TABLE = {
    "name": "headline", "title": "headline protocol", "seeds": 3,
    "groups": {"unimodal-{modality}": {"matrix": {"modality": ["text", "audio"]}, "set": {"method": "unimodal"}}},
    "tables": [{
        "title": "Transfer, accuracy (%)", "metrics": ["acc"], "baseline": "unimodal-audio",
        "rows": [{"label": "base", "group": "unimodal-audio", "paper": {"acc": 61.0}},
                 {"label": "other", "group": "unimodal-text", "paper": {"acc": 64.0}}],
    }],
}
# Validation says text is far better; test says audio is: the headline decides which is best, and p.
VAL = {"unimodal-audio": [50.0, 51.0, 52.0], "unimodal-text": [70.0, 73.0, 71.0]}
TEST = {"unimodal-audio": [80.0, 82.0, 81.0], "unimodal-text": [60.0, 60.5, 62.0]}


def _collected(with_test: bool) -> dict:
    return {g: {s: {"key": f"{g}{s}", "metrics": {"val": {"acc": VAL[g][s]},
                                                  "test": {"acc": TEST[g][s]} if with_test else {}}}
                for s in range(3)} for g in VAL}


def _table(with_test: bool, **spec) -> results.TableResult:
    raw = json.loads(json.dumps(TABLE))
    raw["tables"][0].update(spec)
    [t] = results.tables(parse_protocol(yaml.safe_dump(raw)), _collected(with_test))
    return t


def _printed(t: results.TableResult) -> str:
    console = Console(width=400, record=True, color_system=None)
    results.render([t], console)
    return console.export_text()


def _header_row(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if "acc (" in ln)
    return [c.strip() for c in line.replace("┃", "│").split("│") if c.strip()]


def test_headline_is_test_when_the_data_labels_it():
    t = _table(with_test=True)
    assert t.split == "test" and t.splits == ["test", "val"]
    assert "on test" in t.title and "validation beside" in t.title
    (_, [base]), (_, [other]) = t.rows
    assert other.values["acc"] == TEST["unimodal-text"] and other.by_split["val"]["acc"] == VAL["unimodal-text"]
    # Best and p on test, not on the validation numbers that chose the models.
    assert base.best["acc"] and not other.best["acc"]
    assert other.p["acc"] == pytest.approx(metrics.paired_ttest(TEST["unimodal-text"], TEST["unimodal-audio"])[1])
    assert other.p["acc"] != pytest.approx(metrics.paired_ttest(VAL["unimodal-text"], VAL["unimodal-audio"])[1])
    # The paper (on test, the default) stands beside our test number; validation comes after it.
    text = _printed(t)
    assert _header_row(text) == ["acc (test)", "paper (test)", "acc (validation)"]
    assert "headline: test" in text and "on test" in text.splitlines()[0]


def test_headline_is_validation_without_test_labels_and_says_so():
    t = _table(with_test=False)
    assert t.split == "val" and t.splits == ["val"]
    assert "no labelled test split" in t.title and "not comparable" in t.title
    (_, [base]), (_, [other]) = t.rows
    assert other.best["acc"] and not base.best["acc"]
    assert other.p["acc"] == pytest.approx(metrics.paired_ttest(VAL["unimodal-text"], VAL["unimodal-audio"])[1])
    text = _printed(t)
    assert _header_row(text) == ["acc (validation)", "paper (test)"]
    assert "(test)" not in text.replace("paper (test)", "")


def test_paper_beside_its_own_split_and_the_val_name():
    # RECOLA: the paper reports dev, which is stew's val split (named "dev" in the protocol).
    raw = json.loads(json.dumps(TABLE))
    raw["val_name"] = "dev"
    raw["tables"][0]["paper_split"] = "val"
    p = parse_protocol(yaml.safe_dump(raw))
    [with_test] = results.tables(p, _collected(True))
    [without] = results.tables(p, _collected(False))
    assert _header_row(_printed(with_test)) == ["acc (test)", "acc (dev)", "paper (dev)"]
    assert _header_row(_printed(without)) == ["acc (dev)", "paper (dev)"]
    assert "on test (dev beside" in with_test.title
    assert "on dev only" in without.title and "not comparable" not in without.title
    # A table may pin its split; then the title does not claim the data lacks test labels.
    pinned = _table(with_test=True, split="val")
    assert pinned.split == "val" and "no labelled" not in pinned.title and "on validation" in pinned.title


def test_mixed_store_is_not_headlined_on_test():
    collected = _collected(True)
    collected["unimodal-text"][2]["metrics"]["test"] = {}
    [t] = results.tables(parse_protocol(yaml.safe_dump(TABLE)), collected)
    assert t.split == "val"


def test_shipped_protocols_say_which_split_each_table_reports():
    for name in available():
        p = load_protocol(name)
        assert any("tables report" in d.lower() for d in p.departures), name
        for t in p.tables:
            # The split comes from the data, so titles must not hard-code it.
            assert "validation" not in t.title.lower() and "dev ccc" not in t.title.lower(), (name, t.title)
            assert t.split == "auto"
    assert {t.paper_split for t in load_protocol("mosi-cmstew").tables} == {"test"}
    for name in ("recola-cmstew", "recola-sew"):
        p = load_protocol(name)
        assert p.val_name == "dev" and {t.paper_split for t in p.tables} == {"val"}


def test_grid_selection_reads_validation_only():
    rows = [{"key": "a", "metrics": {"selection": {"key": "acc"}, "val": {"acc": 70.0}, "test": {"acc": 50.0}}},
            {"key": "b", "metrics": {"selection": {"key": "acc"}, "val": {"acc": 60.0}, "test": {"acc": 90.0}}}]
    assert select(rows)["key"] == "a"


def test_transfer_and_rank_name_their_split():
    with_test = PairResult("label", "audio", "text", [50.0, 52.0, 51.0], [55.0, 56.0, 58.0], 0.1, 1.0,
                           unimodal_test=[60.0, 61.0, 60.5], transfer_test=[59.0, 60.0, 58.0])
    assert with_test.split == "test"
    assert with_test.p_value == pytest.approx(metrics.paired_ttest([59.0, 60.0, 58.0], [60.0, 61.0, 60.5])[1])
    without = PairResult("label", "audio", "text", [50.0, 52.0, 51.0], [55.0, 56.0, 58.0], 0.1, 1.0)
    assert without.split == "val"
    assert without.p_value == pytest.approx(metrics.paired_ttest([55.0, 56.0, 58.0], [50.0, 52.0, 51.0])[1])
    for pair, expect, absent in ((with_test, "on test", "no labelled"), (without, "no labelled test split", "(test)")):
        console = Console(width=400, record=True, color_system=None)
        render_transfer([pair], "acc", console)
        text = " ".join(console.export_text().split())  # titles wrap
        assert expect in text and absent not in text
    ranked = RankResult("acc", val={"label": {"text": [70.0], "audio": [50.0]}}, test={"label": {}})
    console = Console(width=400, record=True, color_system=None)
    render_ranking(ranked, console)
    assert "no labelled test split" in " ".join(console.export_text().split())
    assert ranked.to_json()["ranked_on"] == "val"


# -- a MOSI-layout dataset: selection never reads test ------------------------------------------------

def write_mosi_layout(ds: Dataset, root: Path, *, test: str = "labelled") -> Path:
    """``ds`` in the CMU-MOSI utterance release layout. ``test``: labelled, permuted (the test labels
    shuffled across utterances and swapped, features unchanged) or absent (train files only)."""
    root.mkdir(parents=True)
    for split in ("train", "test"):
        seqs = [s for s in ds.sequences if s.split == split]
        if split == "test" and test == "absent":
            continue
        ids = [u for s in seqs for u in s.step_ids]
        labels = np.concatenate([s.targets[:, 0] for s in seqs]).astype(int).tolist()
        if split == "test" and test == "permuted":
            # Shuffled across utterances and the classes swapped: shuffling alone keeps the class counts,
            # so a model that predicts one class everywhere would score the same.
            labels = [1 - v for v in np.random.default_rng(7).permutation(labels).tolist()]
        (root / f"{split}_ids.csv").write_text("utterance_id\n" + "".join(f"{u}\n" for u in ids))
        for m in ds.modalities:
            x = np.concatenate([s.features[m] for s in seqs])
            rows = [[*row.tolist(), int(lab)] for row, lab in zip(x, labels, strict=True)]
            lines = [",".join(f'"{v!r}"' for v in r) for r in rows]
            (root / f"{m}_{split}0.csv").write_text("\n".join(lines) + "\n")
    return root


MOSI_TINY = {
    "name": "mosi-headline", "title": "tiny MOSI-layout protocol", "seeds": 1,
    "base": {**FAST, "max_epochs": 3, "patience": 3, "cmstew": {"decoder_units": 8}},
    "departures": ["Tables report test when the data labels it, else validation."],
    "groups": {
        "unimodal-text": {"set": {"method": "unimodal", "modality": "text"}},
        "cmstew-audio": {"set": {"method": "cmstew", "modality": "audio", "teacher": "text",
                                 "cmstew": {"alpha_grid": [0.01, 1.0], "beta_grid": [1.0]}},
                         "teacher_run": "unimodal-text"},
    },
    "tables": [{"title": "CM-StEW on audio (+text), accuracy and weighted F1 (%)", "metrics": ["acc", "f1_weighted"],
                "rows": [{"label": "text", "group": "unimodal-text", "paper": {"acc": 80.3}},
                         {"label": "CM-StEW(+text)", "group": "cmstew-audio", "paper": {"acc": 64.8}}]}],
}


@pytest.fixture(scope="module")
def mosi_runs(tmp_path_factory) -> dict[str, Path]:
    """The tiny protocol reproduced on three MOSI-layout copies of one dataset."""
    root = tmp_path_factory.mktemp("headline")
    proto = root / "p.yaml"
    proto.write_text(yaml.safe_dump(MOSI_TINY))
    ds = tiny_utterances()
    outs = {}
    for variant in ("labelled", "permuted", "absent"):
        data = write_mosi_layout(ds, root / f"mosi-{variant}", test=variant)
        outs[variant] = root / f"out-{variant}"
        summary = reproduce(load_protocol(proto), data, outs[variant], workers=1, threads=1)
        assert not summary["failed"] and summary["done"] == summary["runs"] == 3, summary
        shutil.rmtree(data)
    return outs


def _runs(out: Path) -> dict[str, dict]:
    with RunStore(out / "store.sqlite") as store:
        return {r["name"]: r for r in store.runs()}


def test_permuted_test_labels_change_no_choice(mosi_runs):
    full, perm, none = (_runs(mosi_runs[v]) for v in ("labelled", "permuted", "absent"))
    assert set(full) == set(perm) == set(none) == {
        "unimodal-text/seed0", "cmstew-audio/seed0/alpha0.01_beta1", "cmstew-audio/seed0/alpha1_beta1"}
    for name in full:
        a, b, c = full[name]["metrics"], perm[name]["metrics"], none[name]["metrics"]
        # Same best epoch, same validation scores: training and selection never saw test.
        assert a["selection"] == b["selection"] == c["selection"], name
        assert a["val"] == b["val"] == c["val"], name
        assert a["test"] and b["test"] and c["test"] == {}
    # The permutation took effect (else the check above proves nothing).
    assert any(full[n]["metrics"]["test"] != perm[n]["metrics"]["test"] for n in full)
    # The grid's choice (alpha, beta) is the same on all three.
    chosen = []
    for out in mosi_runs.values():
        proto, store = results.load(out)
        with store:
            row = results.collect(store)["cmstew-audio"][0]
        chosen.append((row["name"], row["config"]["cmstew"]["alpha"], row["config"]["cmstew"]["beta"]))
    assert len(set(chosen)) == 1


def test_mosi_tables_headline_test_or_validation(mosi_runs, tmp_path):
    for variant, split in (("labelled", "test"), ("permuted", "test"), ("absent", "val")):
        proto, store = results.load(mosi_runs[variant])
        with store:
            collected = results.collect(store)
        [t] = results.tables(proto, collected)
        assert t.split == split
        _, (_, [cm]) = t.rows
        assert cm.values["acc"] == [collected["cmstew-audio"][0]["metrics"][split]["acc"]]
        assert cm.by_split["val"]["acc"] == [collected["cmstew-audio"][0]["metrics"]["val"]["acc"]]
        dest = tmp_path / f"{variant}.html"
        res = CliRunner().invoke(app, ["report", str(mosi_runs[variant]), "--out", str(dest)])
        assert res.exit_code == 0, res.output
        html = dest.read_text()
        assert f"data-split='{split}'" in html
        if split == "test":
            assert "on test (validation beside" in html and "acc (test)" in html and "paper (test)" in html
        else:
            assert "on validation only: the data has no labelled test split" in html
            assert "acc (test)" not in html
