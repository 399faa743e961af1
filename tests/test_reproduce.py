"""stew reproduce: shipped protocols, the run store, dependencies, resumption and the tables."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.data.formats.native import write_native
from stew.data.formats.recola import write_recola_layout
from stew.data.io import data_fingerprint
from stew.data.synth.affect import synth_recola
from stew.errors import DataError
from stew.experiments import results
from stew.experiments.plan import Plan, select_groups
from stew.experiments.protocols import available, load_protocol, parse_protocol
from stew.experiments.reproduce import parse_overrides, reproduce
from stew.experiments.store import RunStore, run_key
from stew.experiments.workers import execute, threads_per_worker
from stew.methods.cmstew import apply_recipe
from tests.conftest import FAST, kill_training_after, tiny_utterances
from tests.test_cli import one_line_error

TINY = {
    "name": "tiny",
    "title": "tiny protocol",
    "seeds": 2,
    "base": {**FAST, "max_epochs": 2, "cmstew": {"decoder_units": 8}},
    "departures": ["tiny"],
    "groups": {
        "unimodal-{modality}": {"matrix": {"modality": ["text", "audio"]}, "set": {"method": "unimodal"}},
        "cmstew-audio-{ablation}": {
            "matrix": {"ablation": [None, "-LFA"]},
            "set": {"method": "cmstew", "modality": "audio", "teacher": "text",
                    "cmstew": {"alpha_grid": [0.1, 1.0], "beta_grid": [1.0]}},
            "teacher_run": "unimodal-text",
        },
    },
    "tables": [{
        "title": "transfer", "metrics": ["f1_weighted", "acc"], "baseline": "unimodal-audio",
        "rows": [
            {"label": "unimodal", "group": "unimodal-audio", "paper": {"f1_weighted": 60.0}},
            {"label": "CM-StEW", "group": "cmstew-audio-full", "paper": {"f1_weighted": 64.3}},
            {"label": "-LFA", "group": "cmstew-audio--LFA"},
            {"label": "literature", "paper": {"acc": 50.0}},
        ],
    }],
}
N_RUNS = 2 + 2 + 3 + 2  # unimodal text and audio; CM-StEW full: 2 grid points on seed 0, then seed 1; -LFA


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    data = write_native(tiny_utterances(), root / "utt")
    proto = root / "tiny.yaml"
    proto.write_text(yaml.safe_dump(TINY))
    return root, data, proto


@pytest.fixture(scope="module")
def finished(tiny_setup):
    """One complete reproduce of the tiny protocol (shared by the tests that only read it)."""
    root, data, proto = tiny_setup
    out = root / "out"
    summary = reproduce(load_protocol(proto), data, out, workers=1, threads=1)
    return out, summary


# -- protocols ------------------------------------------------------------------------------------

def test_shipped_protocols_load_and_configure_every_group(tmp_path):
    assert {"mosi-cmstew", "recola-sew", "recola-cmstew", "synthetic-quick"} <= set(available())
    for name in available():
        p = load_protocol(name)
        assert p.departures, f"{name} must state where it departs from the paper"
        for g in p.group_names():
            cfg = p.config(g, tmp_path, 0, tmp_path / g)
            assert cfg.method in g.split("-")[0]  # group names start with their method
        for t in p.tables:
            assert t.cells(), t.title


def test_mosi_protocol_has_the_paper_rows():
    p = load_protocol("mosi-cmstew")
    names = p.group_names()
    for m in ("text", "audio", "video"):
        for arch in ("classifier", "bigru", "bigru-te"):
            assert f"unimodal-{m}-{arch}" in names
    for m in ("audio", "video"):
        assert {f"cmstew-{m}-full", f"cmstew-{m}--LFA", f"cmstew-{m}--Decoder", f"emobed-{m}"} <= set(names)
    cfg = p.config("cmstew-video--LFA", Path("/d"), 3, Path("/o"))
    # Validation from a third of the test videos: the release's text and video are fitted on the train labels.
    assert (cfg.method, cfg.teacher, cfg.ablation, cfg.seed, cfg.lr, cfg.val_from, cfg.val_groups) == (
        "cmstew", "text", "-LFA", 3, 1e-4, "test", None)
    assert all(spec.teacher_run == "unimodal-text-bigru-te" for g, (_, spec) in p.expand_groups().items()
               if g.startswith("cmstew") and not g.endswith("-stew"))
    stew = p.config("cmstew-audio-stew", Path("/d"), 0, Path("/o"))
    assert stew.recipe == "stew" and p.expand_groups()["cmstew-audio-stew"][1].teacher_run is None
    table4 = p.tables[1]
    full = next(r for r in table4.rows if r.group == "cmstew-{col}-full")
    assert table4.paper_value(full, table4.columns[1], "f1_weighted") == 64.3  # Acoustic, thesis Table 5.6


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["tables"][0]["rows"].append({"label": "x", "group": "nope"}), "unknown group 'nope'"),
    (lambda p: p["groups"]["unimodal-{modality}"]["set"].update(bogus=1), "bogus"),
    (lambda p: p["groups"]["cmstew-audio-{ablation}"].update(teacher_run="nope"), "teacher_run"),
    (lambda p: p.update(extra=1), "extra"),
])
def test_bad_protocols_fail_with_one_message(tmp_path, mutate, message):
    raw = json.loads(json.dumps(TINY))
    mutate(raw)
    with pytest.raises(DataError, match=message):
        p = parse_protocol(yaml.safe_dump(raw))
        for g in p.group_names():
            p.config(g, tmp_path, 0, tmp_path)


def test_unknown_protocol_and_list():
    with pytest.raises(DataError, match="unknown protocol"):
        load_protocol("nope")
    res = CliRunner().invoke(app, ["reproduce", "--list"])
    assert res.exit_code == 0
    for name in available():
        assert name in res.output


def test_only_keeps_teachers():
    groups = load_protocol("mosi-cmstew").expand_groups()
    kept = select_groups(groups, ["cmstew-audio-full"])
    assert list(kept) == ["unimodal-text-bigru-te", "cmstew-audio-full"]
    with pytest.raises(DataError, match="matches no group"):
        select_groups(groups, ["zzz*"])


def test_parse_overrides():
    assert parse_overrides(["max_epochs=5", "cmstew.alpha=0.1", "arch=bigru"]) == {
        "max_epochs": 5, "cmstew": {"alpha": 0.1}, "arch": "bigru"}
    with pytest.raises(DataError, match="KEY=VALUE"):
        parse_overrides(["max_epochs"])


def test_threads_never_oversubscribe():
    n = len(os.sched_getaffinity(0))
    for w in (1, 2, 3, 8):
        assert threads_per_worker(w) * min(w, n) <= max(n, w)
        assert threads_per_worker(w) >= 1


def test_default_workers_one_per_core_fewer_where_memory_is_short(tmp_path, monkeypatch):
    from stew.experiments import workers

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "features.npy", "wb") as f:
        f.truncate(2**30)  # a sparse 1 GiB file: a worker needs 1 + 3 x 1 = 4 GiB
    monkeypatch.setattr(workers, "cores", lambda: 8)
    monkeypatch.setattr(workers, "available_memory", lambda: 64 * 2**30)
    assert workers.default_workers(data) == (8, "")
    monkeypatch.setattr(workers, "available_memory", lambda: 10 * 2**30)
    n, why = workers.default_workers(data)
    assert n == 2 and why.startswith("--workers 2 of 8 cores: each run may take 4.0 GB and 10.0 GB is free")
    assert workers.default_workers(None) == (8, "")  # 1 GiB each without data
    monkeypatch.setattr(workers, "available_memory", lambda: 2**20)
    assert workers.default_workers(data)[0] == 1  # never none
    monkeypatch.setattr(workers, "available_memory", lambda: None)  # not Linux: the cores
    assert workers.default_workers(data) == (8, "")
    assert workers.available_memory() is None or workers.available_memory() > 0


def test_rank_says_when_memory_caps_its_workers(utt_dir, tmp_path, monkeypatch):
    from stew.experiments import workers

    monkeypatch.setattr(workers, "cores", lambda: 4)
    monkeypatch.setattr(workers, "available_memory", lambda: 2**20)  # room for one: the runs stay in this process
    res = CliRunner().invoke(app, ["rank", "--data", str(utt_dir), "--method", "linear", "--seeds", "1",
                                   "--out", str(tmp_path / "rank")])
    assert res.exit_code == 0, res.output
    assert "--workers 1 of 4 cores" in res.output and (tmp_path / "rank" / "rank.json").is_file()


# -- the run store --------------------------------------------------------------------------------

def test_run_key_is_deterministic_and_covers_what_matters():
    cfg = {"method": "cmstew", "seed": 0, "out": "/a", "threads": 1, "progress": False, "data": "/x",
           "cmstew": {"alpha": 0.1, "teacher_run": "/t1"}}
    k = run_key(cfg, "fp")
    assert k == run_key({**cfg, "out": "/b", "threads": 4, "data": "/y",
                         "cmstew": {"alpha": 0.1, "teacher_run": "/t2"}}, "fp")
    assert k != run_key({**cfg, "seed": 1}, "fp")
    assert k != run_key(cfg, "other-data")
    assert k != run_key(cfg, "fp", teacher_key="t")
    assert k != run_key({**cfg, "cmstew": {"alpha": 1.0, "teacher_run": "/t1"}}, "fp")


def test_data_fingerprint_follows_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.csv").write_text("1,2\n")
    a = data_fingerprint(tmp_path / "d")
    (tmp_path / "d" / ".hidden").write_text("ignored")
    assert data_fingerprint(tmp_path / "d") == a
    (tmp_path / "d" / "f.csv").write_text("1,3\n")
    assert data_fingerprint(tmp_path / "d") != a
    with pytest.raises(DataError):
        data_fingerprint(tmp_path / "missing")


def test_store_rejects_a_non_database(tmp_path):
    (tmp_path / "store.sqlite").write_text("not a database" * 100)
    with pytest.raises(DataError, match="not a stew run store"):
        RunStore(tmp_path / "store.sqlite").runs()


# -- running a protocol ---------------------------------------------------------------------------

def test_reproduce_runs_everything_once(finished, tiny_setup):
    out, summary = finished
    assert summary["runs"] == N_RUNS and summary["done"] == N_RUNS and summary["trained"] == N_RUNS
    assert not summary["failed"]
    with RunStore(out / "store.sqlite") as store:
        rows = store.runs()
        assert len(rows) == N_RUNS == len({r["key"] for r in rows})
        for r in rows:
            d = store.run_dir(r)
            assert (d / "metrics.json").is_file() and (d / "predictions.csv").is_file()
            assert (d / "latents.npz").is_file() and (d / "model" / "model.json").is_file()
    # A second invocation trains nothing.
    root, data, proto = tiny_setup
    again = reproduce(load_protocol(proto), data, out, workers=1, threads=1)
    assert again["trained"] == 0 and again["skipped"] == N_RUNS


def test_grid_on_first_seed_fixes_the_other_seeds(finished):
    out, _ = finished
    with RunStore(out / "store.sqlite") as store:
        rows = {r["name"]: r for r in store.runs()}
    cands = [rows[f"cmstew-audio-full/seed0/alpha{a}_beta1"] for a in ("0.1", "1")]
    best = max(cands, key=lambda r: r["metrics"]["val"]["f1_weighted"])
    seed1 = rows["cmstew-audio-full/seed1"]["config"]["cmstew"]
    assert (seed1["alpha"], seed1["beta"]) == (best["config"]["cmstew"]["alpha"], best["config"]["cmstew"]["beta"])
    # The teacher of each CM-StEW run is the text run of the same seed.
    for s in (0, 1):
        lfa = rows[f"cmstew-audio--LFA/seed{s}"]
        assert Path(lfa["config"]["cmstew"]["teacher_run"]) == (out / rows[f"unimodal-text/seed{s}"]["run_dir"])
        assert lfa["config"]["cmstew"]["alpha"] == 0.0


def test_tables_from_the_store(finished, tiny_setup):
    out, _ = finished
    proto, store = results.load(out)
    with store:
        collected = results.collect(store)
        [t] = results.tables(proto, collected)
    (_, [uni]), (_, [cm]), (_, [lfa]), (_, [lit]) = t.rows
    assert uni.seeds == cm.seeds == [0, 1]
    assert uni.p == {} and set(cm.p) == {"f1_weighted", "acc"}
    assert cm.paper["f1_weighted"] == 64.3 and lit.group is None and lit.paper["acc"] == 50.0
    for m in ("f1_weighted", "acc"):
        means = [c.mean(m) for c in (uni, cm, lfa)]
        assert [c.best[m] for c in (uni, cm, lfa)] == [x == max(means) for x in means]
    # The CLI prints the same tables.
    root, data, proto_path = tiny_setup
    res = CliRunner().invoke(app, ["reproduce", str(proto_path), "--data", str(data), "--out", str(out),
                                   "--workers", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "transfer" in res.output and f"{N_RUNS}/{N_RUNS} runs done (0 trained now" in res.output


def test_changed_settings_make_new_runs(finished, tiny_setup, tmp_path):
    root, data, proto = tiny_setup
    out = tmp_path / "o"
    p = load_protocol(proto)
    with RunStore(out / "store.sqlite") as store:
        a = Plan(p, data, out, [0, 1], store).ready()
        b = Plan(p, data, out, [0, 1], store, overrides={"max_epochs": 3}).ready()
    assert {j.name for j in a} == {j.name for j in b}
    assert not {j.key for j in a} & {j.key for j in b}


def test_execute_resumes_from_the_checkpoint(tiny_setup, tmp_path, monkeypatch):
    """A run killed mid-training continues from last.ckpt, and its checkpoints go once it has finished; a
    folder of another run is cleared first."""
    from stew.config import TrainConfig

    _, data, _ = tiny_setup
    r = tmp_path / "r"
    cfg = TrainConfig(data=data, modality="audio", out=r, **{**FAST, "max_epochs": 3, "patience": 5})
    revive = kill_training_after(monkeypatch, epoch=1)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        execute(cfg.model_dump_json(), "k1")
    assert (r / "checkpoints" / "last.ckpt").is_file() and not (r / "metrics.json").exists()
    revive()
    resumed = execute(cfg.model_dump_json(), "k1")
    assert resumed["metrics"]["selection"]["epochs_run"] == 3
    resumed_log = pd.read_csv(r / "logs" / "resumed-0" / "metrics.csv")
    assert sorted(resumed_log["epoch"].dropna().unique()) == [1, 2]  # epoch 0 was checkpointed
    assert not (r / "checkpoints").exists()  # finished: a sweep never resumes it
    fresh = execute(cfg.model_dump_json(), "k2")  # another key: nothing is reused
    assert not list((r / "logs").glob("resumed-*"))
    assert fresh["metrics"]["selection"]["epochs_run"] == 3


def test_a_finished_runs_checkpoints_go_but_not_those_of_another_run_below_it(tmp_path):
    from stew.experiments.workers import JOB_FILE, drop_checkpoints

    run = tmp_path / "run"
    own = [run / "checkpoints", run / "teacher" / "text" / "fold0" / "checkpoints", run / "guard" / "a" / "checkpoints"]
    other = run / "cand" / "checkpoints"  # a grid candidate of the sweep, maybe still training
    for d in (*own, other):
        d.mkdir(parents=True)
        (d / "last.ckpt").write_bytes(b"x")
    (run / "cand" / JOB_FILE).write_text("{}")
    drop_checkpoints(run)
    assert not any(d.exists() for d in own) and (other / "last.ckpt").is_file()


def test_missing_modality_fails_before_training(tiny_setup, tmp_path):
    _, data, _ = tiny_setup
    res = CliRunner().invoke(app, ["reproduce", "mosi-cmstew", "--data", str(data), "--out", str(tmp_path / "o")])
    line = one_line_error(res)
    assert "needs modality 'video'" in line and "CMU-MOSI" in line
    assert not (tmp_path / "o" / "runs").exists()


def test_kill_and_resume_redoes_no_finished_run(tiny_setup, tmp_path):
    """SIGKILL the whole process group after some runs finished; the next invocation completes the rest."""
    _, data, _ = tiny_setup
    # Runs long enough (20 epochs) that the kill lands mid-protocol on an idle machine too: with 2-epoch
    # runs, all 9 could finish between two polls.
    raw = json.loads(json.dumps(TINY))
    raw["base"].update(max_epochs=20, patience=20)
    proto = tmp_path / "slower.yaml"
    proto.write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    cmd = [sys.executable, "-c", "from stew.cli import main; main()", "reproduce", str(proto),
           "--data", str(data), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        before: list[tuple] = []
        while time.time() < deadline and len(before) < 3:
            time.sleep(0.1)
            if (out / "store.sqlite").is_file():
                try:
                    with sqlite3.connect(out / "store.sqlite") as db:
                        before = db.execute("SELECT key, finished_at, metrics FROM runs").fetchall()
                except sqlite3.OperationalError:
                    before = []
        assert proc.poll() is None, f"the protocol ended (exit {proc.returncode}) before it could be killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(out / "store.sqlite") as db:
        killed = db.execute("SELECT key, finished_at, metrics FROM runs").fetchall()
    assert 3 <= len(killed) < N_RUNS
    summary = reproduce(load_protocol(proto), data, out, workers=1, threads=1)
    assert summary["skipped"] == len(killed) and summary["trained"] == N_RUNS - len(killed)
    with sqlite3.connect(out / "store.sqlite") as db:
        after = {r[0]: r for r in db.execute("SELECT key, finished_at, metrics FROM runs")}
    assert len(after) == N_RUNS
    for row in killed:  # untouched: same time stamp and metrics
        assert after[row[0]] == row


# -- the RECOLA protocols on synthetic data in the AVEC 2016 layout -------------------------------

@pytest.fixture(scope="module")
def avec_dir(tmp_path_factory):
    ds = synth_recola(0, n_speakers=3, minutes=0.5)
    return write_recola_layout(ds, tmp_path_factory.mktemp("avec") / "recola")


SMALL = ["--set", "max_epochs=1", "--set", "gru_units=8", "--set", "d_model=8", "--set", "ffn=16",
         "--set", "clf_hidden=16", "--set", "emobed.units=8", "--set", "sew.latent=8", "--seeds", "1",
         "--workers", "1", "--threads", "1"]


def test_recola_sew_protocol_on_avec_layout(avec_dir, tmp_path):
    res = CliRunner().invoke(app, ["reproduce", "recola-sew", "--data", str(avec_dir), "--out", str(tmp_path / "o"),
                                   "--only", "sew-valence-audio+video_geo-*", "--only", "unimodal-valence-audio",
                                   "--set", "sew.k=4", *SMALL])
    assert res.exit_code == 0, res.output
    proto, store = results.load(tmp_path / "o")
    with store:
        collected = results.collect(store)
    assert len(collected) == 5 + 1
    ablation = {r.label: cells for r, cells in results.tables(proto, collected)[1].rows}
    case = [c.key for c in proto.tables[1].columns].index("valence-audio+video_geo")
    assert ablation["- CCA"][case].seeds == [0] and ablation["- CCA"][case].paper["ccc"] == 0.496
    assert ablation["SEW (full)"][0].seeds == []  # arousal cases were not run


def test_recola_cmstew_protocol_on_avec_layout(avec_dir, tmp_path):
    res = CliRunner().invoke(app, [
        "reproduce", "recola-cmstew", "--data", str(avec_dir), "--out", str(tmp_path / "o"),
        "--only", "cmstew-arousal-video_geo+audio-*", "--set", "cmstew.alpha_grid=[0.1]",
        "--set", "cmstew.beta_grid=[1.0]", "--set", "cmstew.decoder_units=8", *SMALL])
    assert res.exit_code == 0, res.output
    with RunStore(tmp_path / "o" / "store.sqlite") as store:
        names = sorted(r["name"] for r in store.runs())
    assert names == ["cmstew-arousal-video_geo+audio--Decoder/seed0", "cmstew-arousal-video_geo+audio--LFA/seed0",
                     "cmstew-arousal-video_geo+audio-full/seed0", "unimodal-arousal-audio-bigru-te/seed0"]


def test_tuned_values_come_from_a_study(tiny_setup, tmp_path):
    """A group naming a study takes its best trial's values (here alpha and beta: no grid is run)."""
    from stew.config import TrainConfig
    from stew.experiments.tune import best_params, tune

    _, data, _ = tiny_setup
    base = {**TINY["base"], "threads": 1}
    cfg = TrainConfig(data=data, method="cmstew", modality="audio", teacher="text", out=tmp_path / "t", **base)
    tune(cfg, study="tiny-cm", out=tmp_path / "tune", trials=2, params=["alpha", "beta"])
    storage = f"sqlite:///{tmp_path / 'tune' / 'tune.sqlite'}"
    best = best_params(storage, "tiny-cm")
    raw = json.loads(json.dumps(TINY))
    raw["groups"]["cmstew-audio-{ablation}"]["tuned"] = {"study": "tiny-cm"}
    out = tmp_path / "o"
    summary = reproduce(parse_protocol(yaml.safe_dump(raw)), data, out, seeds=1, workers=1, threads=1,
                        tuned_storage=storage, only=["cmstew-audio-full"])
    assert summary["done"] == summary["runs"] == 2  # the teacher and one CM-StEW run, no grid
    with RunStore(out / "store.sqlite") as store:
        row = next(r for r in store.runs() if r["group"] == "cmstew-audio-full")
    assert row["config"]["cmstew"]["alpha"] == best["cmstew.alpha"]
    assert row["config"]["cmstew"]["beta"] == best["cmstew.beta"]


@pytest.mark.slow
def test_repeated_random_kills_lose_no_finished_run(tiny_setup, tmp_path):
    """SIGKILL ``stew reproduce`` at random moments, again and again, resuming each time.

    After every kill: each earlier row is still there, unchanged (no finished run lost or redone), and
    every row's run folder is complete (no row for an unfinished run). Finally a resume trains exactly
    the runs no row records.
    """
    import random

    _, data, _ = tiny_setup
    raw = json.loads(json.dumps(TINY))
    raw["base"].update(max_epochs=60, patience=60)  # about a second a run: kills land between and within runs
    proto = tmp_path / "slower.yaml"
    proto.write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    cmd = [sys.executable, "-c", "from stew.cli import main; main()", "reproduce", str(proto),
           "--data", str(data), "--out", str(out), "--workers", "2"]
    rng = random.Random(14)
    rows: dict[str, tuple] = {}
    kills = 0
    t_start = time.time()
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # Start-up (imports) takes seconds and a run about one: wait until this invocation has finished a
        # run of its own, then kill after a random delay, so each kill lands somewhere in the training.
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and _row_count(out) <= len(rows):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if not (out / "store.sqlite").is_file():
            continue
        with sqlite3.connect(out / "store.sqlite") as db:
            now = {r[0]: r for r in db.execute("SELECT key, finished_at, metrics, run_dir FROM runs")}
        db.close()
        assert all(now.get(k) == r for k, r in rows.items()), "a finished run was lost or redone"
        for r in now.values():
            assert (out / r[3] / "metrics.json").is_file() and (out / r[3] / "model" / "model.json").is_file()
        rows = now
        print(f"kill {kills}: {len(rows)} rows at {time.time() - t_start:.1f}s")
        if len(rows) == N_RUNS:
            break
    assert kills >= 3, f"only {kills} kills landed before the protocol finished"
    summary = reproduce(load_protocol(proto), data, out, workers=1, threads=1)
    assert summary["skipped"] == len(rows) and summary["trained"] == N_RUNS - len(rows)
    with sqlite3.connect(out / "store.sqlite") as db:
        after = {r[0]: r for r in db.execute("SELECT key, finished_at, metrics, run_dir FROM runs")}
    db.close()
    assert len(after) == N_RUNS and all(after[k] == r for k, r in rows.items())
    print(f"kills={kills} rows_before_final_resume={len(rows)} runs={N_RUNS} lost=0")


def _row_count(out: Path) -> int:
    if not (out / "store.sqlite").is_file():
        return 0
    try:
        with sqlite3.connect(out / "store.sqlite") as db:
            n = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        db.close()
        return n
    except sqlite3.OperationalError:  # the schema is not written yet
        return 0


def test_workers_receive_only_the_fields_the_protocol_set():
    """A recipe fills what the user left open (the stew recipe's per-step MLP student): a worker must not
    see every default as set by the protocol."""
    from stew.experiments.plan import Job
    from stew.experiments.workers import submit

    cfg = load_protocol("mosi-cmstew").config("cmstew-audio-stew", Path("/d"), 0, Path("/o"))
    sent = []

    class Pool:
        def submit(self, fn, cfg_json, key, missing, **device_hint):  # the engine's accelerator hint
            sent.append(TrainConfig.model_validate_json(cfg_json))

    submit(Pool(), Job("n", "cmstew-audio-stew", 0, None, cfg, "k"))
    assert sent == [cfg] and "arch" not in sent[0].model_fields_set
    mosi_like = types.SimpleNamespace(step_rate_hz=None)  # utterance-level data: the recipe's Bi-GRU student
    assert apply_recipe(sent[0], mosi_like).arch == "bigru"
