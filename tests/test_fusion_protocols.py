"""Fusion protocols (issue 15): folds in protocols, missing-modality evaluation inside reproduce, the
missing-modality tables (console and heat map), and the shipped iemocap-fusion and mosi-fusion."""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources

import pytest
import yaml

from stew.config import TrainConfig
from stew.data.synth.iemocap import write_synthetic_iemocap
from stew.errors import DataError
from stew.eval.missing import missing_file
from stew.experiments.protocols import load_protocol, parse_imputation, parse_protocol
from stew.experiments.reproduce import check_data, reproduce, synthesize
from stew.experiments.store import RunStore
from stew.report import write_report
from tests.test_cli import invoke

IEMOCAP = yaml.safe_load(resources.files("stew.experiments.protocols").joinpath("iemocap-fusion.yaml").read_text())
TINY_MODEL = ["fusion.gru_units=4", "fusion.heads=2", "fusion.clf_hidden=8"]


def reduced(**changes) -> dict:
    """iemocap-fusion cut to 4 groups, 2 folds x 2 seeds, 2 epochs, and its Table 4.4 (plus a KNN column)."""
    keep = ["fusion-intra-T", "fusion-intra-TV", "fusion-intra-TVA", "fusion-cross-TVA"]
    raw = json.loads(json.dumps(IEMOCAP))
    table = raw["missing_tables"][0]
    table["columns"].append({"label": "Intra KNN K=5", "group": "fusion-intra-TVA", "impute": "knn5"})
    raw.update(name="tiny-fusion", folds=2, seeds=2, synthetic={"kind": "iemocap", "utterances": 50},
               groups={g: raw["groups"][g] for g in keep}, missing_tables=[table],
               tables=[{"title": "T+V+A", "metrics": ["recall_mean", "acc"], "rows": [
                   {"label": "cross", "group": "fusion-cross-TVA"},
                   {"label": "intra", "group": "fusion-intra-TVA", "baseline": "fusion-cross-TVA"}]}])
    raw["groups"]["fusion-intra-TVA"] = {"missing": ["zero-input", "zero", "knn5"]}
    raw["base"]["max_epochs"] = 2
    raw.update(changes)
    return raw


# -- the protocol schema --------------------------------------------------------------------------

def test_folds_expand_to_seeds_times_folds_runs(tmp_path):
    p = parse_protocol(yaml.safe_dump(reduced(folds=5, seeds=3)))
    assert p.run_seeds() == list(range(15)) and p.run_seeds(1) == list(range(5))
    for r in p.run_seeds():
        cfg = p.config("fusion-intra-TVA", tmp_path, r, tmp_path / "o")
        assert (cfg.seed, cfg.fold) == (r, r % 5 + 1)  # folds cycle fastest: any prefix of seeds is balanced
    without = parse_protocol(yaml.safe_dump(reduced(folds=None)))
    assert without.run_seeds() == [0, 1] and without.config("fusion-intra-T", tmp_path, 1, tmp_path).fold is None
    with pytest.raises(DataError, match="sets the fold of each run"):
        p.config("fusion-intra-T", tmp_path, 0, tmp_path, {"fold": 2})


def _group(raw: dict, name: str) -> dict:
    return raw["groups"][name]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: _group(r, "fusion-intra-TVA").update(missing=["mean"]), "missing"),
    (lambda r: _group(r, "fusion-intra-TVA").update(missing=["knn0"]), "missing"),
    (lambda r: _group(r, "fusion-intra-TVA").update(missing=["zero", "zero"]), "twice"),
    (lambda r: _group(r, "fusion-cross-TVA").update(missing=["knn10"]), "needs fusion.kind intra"),
    (lambda r: _group(r, "fusion-intra-T").update(missing=["zero"], set={"method": "unimodal"}),
     "needs method fusion"),
    (lambda r: r["missing_tables"][0]["columns"].append(
        {"label": "x", "group": "fusion-cross-TVA", "impute": "knn5"}), "has no missing entry 'knn5'"),
    (lambda r: r["missing_tables"][0]["columns"].append(
        {"label": "x", "group": "nope-{initials}", "impute": "orig"}), "no subset"),
    (lambda r: r["missing_tables"][0]["columns"][0]["paper"].update(XY={"acc": 1}), "paper subset 'XY'"),
    (lambda r: r["tables"][0]["rows"][1].update(baseline="nope"), "unknown baseline 'nope'"),
    (lambda r: r.update(folds=6), "folds"),
])
def test_bad_fusion_protocols_fail_with_one_message(mutate, message):
    raw = reduced()
    mutate(raw)
    with pytest.raises(DataError, match=message):
        parse_protocol(yaml.safe_dump(raw))


def test_shipped_fusion_protocols_build_every_group(tmp_path):
    from stew.data.io import load_dataset
    from stew.methods import build_method
    from stew.training.resolve import make_bundle, resolve

    iem = load_protocol("iemocap-fusion")
    assert (iem.folds, iem.seeds, len(iem.group_names()), len(iem.run_seeds())) == (5, 10, 28, 50)
    assert iem.base["method"] == "fusion" and iem.synthetic.kind == "iemocap"
    table41 = iem.tables[0]
    intra = next(r for r in table41.rows if r.group == "fusion-intra-TVA")
    assert (intra.baseline, intra.paper) == ("fusion-cross-TVA", {"recall_mean": 58.7, "acc": 64.2})
    assert len(iem.tables[2].rows) == 13  # Table 4.3: the 12 pair sets and the full cross model
    for mt in iem.missing_tables:
        assert len(mt.subsets()) == 7
    t44 = iem.missing_tables[0]
    assert t44.paper_value(t44.columns[0], ("video", "audio"), "recall_mean") == 41.3
    # Every group's configuration builds, and so does its model (pairs, modalities) on IEMOCAP-shaped data.
    data = write_synthetic_iemocap(tmp_path / "iem", utterances=50)
    ds = load_dataset(data, fold=2)
    bundles = {}  # one per modality set: the groups differ in the model only
    for g in iem.group_names():
        cfg = resolve(iem.config(g, data, 1, tmp_path / g), ds)
        assert cfg.fold == 2 and cfg.method == "fusion"
        mods = tuple(cfg.fusion.modalities)
        bundle = bundles.setdefault(mods, make_bundle(cfg, ds, list(mods)))
        build_method(cfg, bundle, tmp_path / g)
    mosi = load_protocol("mosi-fusion")
    assert mosi.folds is None and mosi.synthetic is None
    for g in mosi.group_names():
        cfg = mosi.config(g, tmp_path, 0, tmp_path / g)
        assert cfg.method in g.split("-")[0]
    orig = {c.group for c in mosi.missing_tables[0].columns if c.impute == "orig"}
    assert orig == {"fusion-intra-{initials}", "unimodal-{subset}-bigru-te"}
    with pytest.raises(DataError, match="needs --data"):
        synthesize(mosi, tmp_path / "m", None)


def test_folds_need_data_with_folds(tmp_path):
    from stew.data.formats.native import write_native
    from tests.conftest import tiny_clips

    data = write_native(tiny_clips(), tmp_path / "clips")
    with pytest.raises(DataError, match="runs 5 folds, but the data has no folds"):
        check_data(load_protocol("iemocap-fusion"), data)


# -- a reduced iemocap-fusion end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def fusion_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-proto")
    proto = root / "tiny-fusion.yaml"
    proto.write_text(yaml.safe_dump(reduced()))
    out = root / "out"
    sets = [a for s in TINY_MODEL for a in ("--set", s)]
    res = invoke("reproduce", proto, "--out", out, "--workers", 1, "--threads", 1, *sets, "--format", "json")
    assert res.exit_code == 0, res.output
    return proto, out, [json.loads(line) for line in res.stdout.splitlines()]


def test_runs_cover_seeds_times_folds_with_missing_files(fusion_out):
    _, out, _ = fusion_out
    with RunStore(out / "store.sqlite", readonly=True) as store:
        rows = store.runs()
    assert len(rows) == 4 * 2 * 2
    for row in rows:
        assert row["config"]["fold"] == row["seed"] % 2 + 1 and row["config"]["seed"] == row["seed"]
        run_dir = out / row["run_dir"]
        expected = {"fusion-intra-TVA": ["zero-input", "zero", "knn5"],
                    "fusion-cross-TVA": ["zero-input", "zero"]}.get(row["group"], [])
        assert sorted(row["metrics"].get("missing", {})) == sorted(expected)
        for entry in expected:
            f = run_dir / missing_file(*parse_imputation(entry))
            assert f.is_file() and json.loads(f.read_text()) == row["metrics"]["missing"][entry]
            assert len(row["metrics"]["missing"][entry]) == 7


def test_missing_table_in_the_console(fusion_out):
    _, _, tables = fusion_out
    assert [t["title"].split(" — ")[0] for t in tables] == ["T+V+A", IEMOCAP["missing_tables"][0]["title"]]
    missing = tables[1]
    assert len(missing["rows"]) == 7
    marks = [(r["text"], r["video"], r["audio"]) for r in missing["rows"]]
    assert marks == [("●", "●", "●"), ("●", "●", "○"), ("●", "○", "●"), ("○", "●", "●"),
                     ("●", "○", "○"), ("○", "●", "○"), ("○", "○", "●")]
    cols = missing["columns"]
    zero = next(c for c in cols if c.startswith("Intra (zero input) acc"))
    masked = next(c for c in cols if c.startswith("Intra (masked) acc"))
    # The thesis's zero input and stew's mask are two definitions: some subset scores differently.
    assert [r[zero] for r in missing["rows"][1:]] != [r[masked] for r in missing["rows"][1:]]
    orig = next(c for c in cols if c.startswith("Cross-orig acc"))
    assert all(re.fullmatch(r"\d+\.\d ± \d+\.\d", r[zero]) for r in missing["rows"])  # 4 runs each
    # Only the full set's cross model is in the reduced protocol: the pairs' cross models are N.A.
    assert missing["rows"][0][orig] != "N.A." and [r[orig] for r in missing["rows"][1:]] == ["N.A."] * 6
    # The full set's "orig" cell is the tri-modal model's own score, as is its zero-filled cell.
    orig_intra = next(c for c in cols if c.startswith("Intra-orig acc"))
    assert missing["rows"][0][zero] == missing["rows"][0][orig_intra]
    assert "p " in tables[0]["rows"][1][next(c for c in tables[0]["columns"] if c.startswith("acc (test)"))]


def test_report_draws_the_heat_map(fusion_out, tmp_path):
    _, out, _ = fusion_out
    html = write_report(out, tmp_path / "r.html").read_text()
    section = html[html.index("<section id='missing'>"):]
    section = section[:section.index("</section>")]
    assert section.count("<img") == 1 and "missing-modality heat map" in section
    assert section.count("<tr class='subset'") == 7 and "N.A." in section
    assert "seeds × 2 folds" in html
    regenerate = html[html.index("id='regenerate'"):]
    command = regenerate[regenerate.index("<pre>"):regenerate.index("</pre>")]
    assert "stew reproduce" in command and "--seeds" not in command  # 4 runs: the protocol's 2 seeds x 2 folds


def test_resume_keeps_missing_files_and_adds_new_entries(fusion_out, tmp_path):
    proto, out, _ = fusion_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    p = load_protocol(proto)
    overrides = {"fusion": {"gru_units": 4, "heads": 2, "clf_hidden": 8}}
    zero_files = sorted(copy.glob("runs/*/seed*/missing-zero.json"))
    stamps = [f.stat().st_mtime_ns for f in zero_files]
    again = reproduce(p, None, copy, workers=1, threads=1, overrides=overrides)
    assert (again["trained"], again["skipped"]) == (0, 16)
    assert [f.stat().st_mtime_ns for f in zero_files] == stamps
    # A new entry for a finished group: only its scoring runs, the trained model and old files stay.
    raw = yaml.safe_load(proto.read_text())
    raw["groups"]["fusion-intra-TVA"]["missing"].append("knn10")
    more = reproduce(parse_protocol(yaml.safe_dump(raw)), None, copy, workers=1, threads=1, overrides=overrides)
    assert more["trained"] == 4 and not more["failed"]
    assert len(list(copy.glob("runs/fusion-intra-TVA/seed*/missing-knn-k10.json"))) == 4
    assert [f.stat().st_mtime_ns for f in zero_files] == stamps
    with RunStore(copy / "store.sqlite", readonly=True) as store:
        intra = [r for r in store.runs() if r["group"] == "fusion-intra-TVA"]
    assert all(set(r["metrics"]["missing"]) == {"zero-input", "zero", "knn5", "knn10"} for r in intra)
    assert TrainConfig.model_validate(intra[0]["config"]).fusion.gru_units == 4
