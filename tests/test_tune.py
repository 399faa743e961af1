"""stew tune: search spaces, apply_params, SQLite studies end to end, CLI errors, and a two-worker study
on a real local PostgreSQL server."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from stew.config import TrainConfig
from stew.errors import DataError
from stew.experiments.tune import SPACES, apply_params, best_params, open_study, search_space, trial_base, tune
from tests.conftest import FAST
from tests.test_cli import invoke, one_line_error

QUICK = {**FAST, "max_epochs": 2, "patience": 2}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Trials set 1 thread per process; leave the pytest worker as it was."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cfg_for(data: Path, **kw) -> TrainConfig:
    return TrainConfig.model_validate({**QUICK, "data": data, "modality": "b", **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Search spaces and apply_params


def test_search_space_per_method():
    cm = search_space("cmstew")
    assert {k: d.path for k, d in cm.items()} == {
        "alpha": "cmstew.alpha", "beta": "cmstew.beta", "dropout": "dropout", "lr": "lr"}
    assert (cm["alpha"].kind, cm["alpha"].low, cm["alpha"].high) == ("log", 1e-3, 1.0)
    assert cm["dropout"].choices == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    sew = search_space("sew")
    assert [d.path for d in sew.values()] == ["sew.alpha", "sew.beta", "sew.gamma", "lr"]
    assert sew["gamma"].kind == "categorical" and sew["gamma"].choices == (1e-3, 1e-2, 0.1, 1.0, 10.0)
    assert [d.path for d in search_space("emobed").values()] == ["emobed.alpha", "emobed.beta", "dropout", "lr"]
    assert list(search_space("joint")) == ["alpha", "dropout", "lr"]
    assert list(search_space("triplet")) == ["beta", "dropout", "lr"]
    assert list(search_space("unimodal")) == ["dropout", "lr"]
    assert list(search_space("cermtl")) == ["lr"]
    # --params picks and orders a subset; ablations drop the weights they switch off.
    assert list(search_space("cmstew", ["dropout", " alpha", "alpha"])) == ["dropout", "alpha"]
    assert list(search_space("cmstew", ablation="-LFA")) == ["beta", "dropout", "lr"]
    assert list(search_space("sew", ablation="-(CCA&SD1)")) == ["beta", "lr"]


@pytest.mark.parametrize(("method", "params", "ablation", "msg"), [
    ("nope", None, None, "unknown method 'nope'"),
    ("cmstew", ["alpha", "zeta"], None, "unknown parameter 'zeta'"),
    ("sew", ["dropout"], None, "unknown parameter 'dropout'"),
    ("cmstew", ["", " "], None, "names no parameter"),
    ("cmstew", ["alpha"], "-LFA", "fixed to 0 by --ablation -LFA"),
    ("sew", None, "-XYZ", "unknown sew ablation"),
])
def test_search_space_errors(method, params, ablation, msg):
    with pytest.raises(DataError, match=msg.replace("(", r"\(")):
        search_space(method, params, ablation=ablation)


def test_every_dimension_sets_its_config_field(tmp_path):
    base = cfg_for(tmp_path)
    for method, space in SPACES.items():
        for dim in space.values():
            value = dim.choices[-1] if dim.kind == "categorical" else dim.high
            cfg = apply_params(base, {dim.path: value})
            obj = cfg
            for part in dim.path.split("."):
                obj = getattr(obj, part)
            assert obj == value, (method, dim.path)


def test_apply_params_nested_paths_and_validation(tmp_path):
    base = cfg_for(tmp_path, method="cmstew", teacher="a")
    cfg = apply_params(base, {"cmstew.alpha": 0.01, "sew.gamma": 10.0, "dropout": 0.6, "lr": 3e-4})
    assert (cfg.cmstew.alpha, cfg.sew.gamma, cfg.dropout, cfg.lr) == (0.01, 10.0, 0.6, 3e-4)
    assert cfg.cmstew.beta_grid == base.cmstew.beta_grid and cfg.modality == "b"  # the rest is kept
    assert base.cmstew.alpha is None and base.dropout == 0.3  # a copy
    for bad in ({"cmstew.zeta": 1}, {"nope.alpha": 1}, {"dropout.x": 1}, {"learning_rate": 1}):
        with pytest.raises(DataError, match="unknown parameter path"):
            apply_params(base, bad)
    with pytest.raises(DataError, match="invalid value for 'lr'"):
        apply_params(base, {"lr": "fast"})
    with pytest.raises(DataError, match="invalid value for 'emobed.triplet_form'"):
        apply_params(base, {"emobed.triplet_form": "cube"})


def test_trial_base_fixes_cmstew_weights_and_threads(tmp_path):
    grid = trial_base(cfg_for(tmp_path, method="cmstew", teacher="a"))
    assert (grid.cmstew.alpha, grid.cmstew.beta, grid.threads, grid.progress) == (1.0, 1.0, 1, False)
    given = trial_base(cfg_for(tmp_path, method="cmstew", teacher="a", cmstew={"beta": 0.1}, threads=2, progress=True))
    assert (given.cmstew.alpha, given.cmstew.beta, given.threads, given.progress) == (1.0, 0.1, 2, True)


# --------------------------------------------------------------------------------------------------
# SQLite studies


def test_sqlite_study_end_to_end(frames_dir, tmp_path):
    out = tmp_path / "tune"
    cfg = cfg_for(frames_dir, method="cmstew", teacher="a", max_epochs=1)
    s = tune(cfg, study="cm", out=out, trials=2, params=["alpha", "beta"], seed=3)
    assert s["n_trials"] == 2 and s["metric"] == "ccc" and set(s["best_params"]) == {"cmstew.alpha", "cmstew.beta"}
    assert json.loads((out / "best.json").read_text()) == s
    assert not list(out.glob(".best.json.*"))  # the atomic write left no temp file
    storage = f"sqlite:///{out.resolve() / 'tune.sqlite'}"
    assert best_params(storage, "cm") == s["best_params"]
    values = []
    for n in range(2):
        m = json.loads((out / "trials" / "cm" / f"trial{n}" / "metrics.json").read_text())
        assert "grid" not in m["selection"]  # one candidate per trial: alpha and beta were fixed
        assert m["method"]["stage1_run"].endswith(next((out / "trials" / "cm").glob("stage1-*")).name)
        assert m["config"]["threads"] == 1
        values.append(m["val"][m["selection"]["key"]])  # the objective is the validation metric
    trials = optuna.load_study(study_name="cm", storage=storage).trials
    assert [t.value for t in trials] == pytest.approx(values)
    assert s["best_value"] == pytest.approx(max(values))
    assert all(t.params["cmstew.alpha"] == json.loads(
        (out / "trials" / "cm" / f"trial{t.number}" / "metrics.json").read_text())["method"]["alpha"] for t in trials)
    # A second call continues the same study.
    assert tune(cfg, study="cm", out=out, trials=1, params=["alpha", "beta"], seed=4)["n_trials"] == 3
    assert (out / "trials" / "cm" / "trial2" / "metrics.json").is_file()


def test_same_seed_same_study(frames_dir, tmp_path):
    cfg = cfg_for(frames_dir, method="unimodal", max_epochs=1)
    runs = [tune(cfg, study="u", out=tmp_path / f"t{i}", trials=2, seed=7) for i in range(2)]
    assert runs[0]["best_params"] == runs[1]["best_params"]
    assert runs[0]["best_value"] == runs[1]["best_value"]
    other = tune(cfg, study="u", out=tmp_path / "t2", trials=2, seed=8)
    assert other["best_params"] != runs[0]["best_params"]


def test_ablation_still_applies(frames_dir, tmp_path):
    cfg = cfg_for(frames_dir, method="cmstew", teacher="a", ablation="-Decoder", max_epochs=1)
    s = tune(cfg, study="abl", out=tmp_path / "t", trials=1, params=["alpha"])
    m = json.loads((tmp_path / "t" / "trials" / "abl" / "trial0" / "metrics.json").read_text())
    assert m["method"]["beta"] == 0.0 and m["method"]["alpha"] == s["best_params"]["cmstew.alpha"]
    # beta was not searched: the trial fixed it (open in the config -> 1.0, then -Decoder zeroes it), and
    # best_params says so, so that applying them cannot reopen run()'s validation grid.
    assert s["best_params"]["cmstew.beta"] == 1.0
    assert apply_params(cfg, s["best_params"]).cmstew.beta == 1.0
    # A worker searching other parameters is refused by the study.
    with pytest.raises(DataError, match="different run: params"):
        tune(cfg, study="abl", out=tmp_path / "t", trials=1, params=["dropout"])


def test_open_study_loads_when_another_worker_created_it(tmp_path, monkeypatch):
    from stew.experiments.tune import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.sqlite'}")
    describe = {"method": "cmstew", "modality": "b"}
    open_study(storage, "race", 0, describe)
    # The other worker's create_study raced ours: it raises DuplicatedStudyError, and we load.
    def duplicated(**kw):
        raise optuna.exceptions.DuplicatedStudyError

    monkeypatch.setattr(optuna, "create_study", duplicated)
    assert open_study(storage, "race", 1, describe).study_name == "race"
    with pytest.raises(DataError, match="different run: method 'cmstew'"):
        open_study(storage, "race", 1, {"method": "sew", "modality": "b"})


def test_best_params_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with pytest.raises(DataError, match="no such storage file"):  # a lookup creates no file
        best_params(url, "nope")
    assert not (tmp_path / "s.sqlite").exists()
    optuna.create_study(storage=url, study_name="empty", direction="maximize")
    with pytest.raises(DataError, match="no study 'nope'"):
        best_params(url, "nope")
    with pytest.raises(DataError, match="no completed trial"):
        best_params(url, "empty")


def test_stepped_float_params_come_back_clean():
    from optuna.distributions import FloatDistribution

    from stew.experiments.tune import study_summary

    study = optuna.create_study(study_name="emb", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"emobed.alpha": 0.30000000000000004}, value=0.5,
        distributions={"emobed.alpha": FloatDistribution(0.0, 2.0, step=0.1)}))
    assert study_summary(study)["best_params"] == {"emobed.alpha": 0.3}


def test_open_storage_retries_when_another_worker_creates_the_tables(tmp_path, monkeypatch):
    """Two workers on an empty PostgreSQL database: the loser of CREATE TABLE gets a UniqueViolation."""
    import sqlalchemy.exc

    from stew.experiments import tune as tune_mod

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return real(*args, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(tune_mod.time, "sleep", lambda s: None)
    assert isinstance(tune_mod.open_storage(f"sqlite:///{tmp_path / 's.sqlite'}"), real) and len(calls) == 2


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_tune_sqlite(frames_dir, tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump({**QUICK, "max_epochs": 1}))
    res = invoke("tune", "--data", frames_dir, "--method", "sew", "--modality", "b", "--teacher", "a", "--config", c,
                 "--params", "gamma,lr", "--trials", 2, "--study", "sw", "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    best = json.loads((tmp_path / "t" / "best.json").read_text())
    assert best["n_trials"] == 2 and set(best["best_params"]) == {"sew.gamma", "lr"}
    assert best["best_params"]["sew.gamma"] in (1e-3, 1e-2, 0.1, 1.0, 10.0)
    assert "completed trials" in res.output and "sew.gamma" in res.output and (tmp_path / "t" / "tune.sqlite").is_file()


@pytest.mark.parametrize(("args", "msg"), [
    (["--method", "nope"], "invalid config key 'method'"),
    (["--method", "cmstew", "--params", "alpha,zeta"], "unknown parameter 'zeta'"),
    (["--method", "cmstew", "--storage", "not-a-url"], "not an SQLAlchemy URL"),
    (["--method", "cmstew", "--storage", "nodb://x"], "cannot open storage nodb://x"),
    (["--method", "cmstew", "--storage", "postgresql+psycopg://stew:secret@127.0.0.1:{port}/db"],
     "cannot open storage postgresql+psycopg://stew:***@127.0.0.1"),
    (["--method", "cmstew", "--study", "../up"], "--study '../up'"),
    (["--method", "cmstew", "--trials", "0"], "--trials must be at least 1"),
    (["--method", "cmstew", "--modality", "zz"], "unknown modality 'zz'"),
])
def test_cli_tune_bad_input(frames_dir, tmp_path, args, msg):
    args = [a.format(port=free_port()) for a in args]
    res = invoke("tune", "--data", frames_dir, "--modality", "b", "--teacher", "a", "--trials", 1, "--study", "s",
                 "--out", tmp_path / "t", *args)
    line = one_line_error(res)
    assert msg in line and "secret" not in line
    assert not (tmp_path / "t" / "trials").exists()


# --------------------------------------------------------------------------------------------------
# A real PostgreSQL server and two workers sharing one study


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    return next((Path(d) for d in reversed(dirs) if (Path(d) / "initdb").is_file()), None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth); as root it runs as the 'postgres' user."""
    import psycopg

    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").is_file():
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin)")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="stew-pg-")  # not under tmp_path: the postgres user must reach it
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        try:
            shutil.chown(root, user="postgres")
        except (LookupError, PermissionError):
            pytest.skip("running as root and there is no 'postgres' system user for initdb")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)

    res = pg(str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
             "--no-sync")
    assert res.returncode == 0, res.stdout + res.stderr
    started = False
    try:
        for _ in range(3):  # another process may take the free port first
            port = free_port()
            opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
            res = pg(str(bindir / "pg_ctl"), "-D", data, "-o", opts, "-l", log, "-w", "-t", "30", "start")
            if res.returncode == 0:
                started = True
                break
        assert started, res.stdout + res.stderr + (Path(log).read_text() if os.path.exists(log) else "")
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE stew")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/stew"
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def stew_command() -> list[str]:
    """The installed console script, as a user would run it on each machine."""
    script = Path(sys.executable).parent / "stew"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from stew.cli import app; app()"]


def test_two_workers_share_a_postgresql_study(postgres_url, frames_dir, tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump({**QUICK, "max_epochs": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    t0 = time.time()
    for w in range(2):  # as on two machines: own --out and own sampler seed, one storage and study
        cmd = [*stew_command(), "tune", "--data", str(frames_dir), "--method", "cmstew", "--modality", "b",
               "--teacher", "a", "--config", str(c), "--params", "alpha,beta", "--trials", "2", "--study", "shared",
               "--storage", postgres_url, "--seed", str(w), "--out", str(tmp_path / f"worker{w}")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for p, o in zip(procs, outputs, strict=True):
        assert p.returncode == 0, o
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and sorted(t.number for t in done) == [0, 1, 2, 3]
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2  # both workers contributed
    params = best_params(postgres_url, "shared")
    assert set(params) == {"cmstew.alpha", "cmstew.beta"}
    assert study.best_value == max(t.value for t in done)
    for t in done:  # every trial's run folder is on its worker's --out
        assert Path(t.user_attrs["run_dir"], "metrics.json").is_file()
    last = max((json.loads((tmp_path / f"worker{w}" / "best.json").read_text()) for w in range(2)),
               key=lambda b: b["n_trials"])
    assert last["n_trials"] == 4 and last["best_params"] == params and "postgresql+psycopg" in last["storage"]
    cfg = apply_params(cfg_for(frames_dir, method="cmstew", teacher="a"), params)
    assert (cfg.cmstew.alpha, cfg.cmstew.beta) == (params["cmstew.alpha"], params["cmstew.beta"])
    assert time.time() - t0 < 120
