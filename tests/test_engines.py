"""Where runs execute (stew.experiments.engines): a local Ray instance gives the local engine's table, Ray
tasks are retried when their worker dies, and bad engine options are one line, exit 2, nothing written.

The two-node cluster with a node killed mid-protocol: tests/test_ray_cluster.py (slow)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.errors import DataError
from stew.experiments.engines import LocalEngine, RayEngine, open_engine
from stew.experiments.rank import rank_modalities
from tests.conftest import FAST
from tests.test_cli import one_line_error

ray = pytest.importorskip("ray")

# A small synthetic-quick: 5 runs, with a dependency (the -LFA run waits for its teacher).
ONLY = ["--only", "unimodal-audio-bigru", "--only", "linear-*", "--only", "cmstew-video_geo--LFA"]
N_ONLY = 5


def _reproduce(out: Path, *extra: str) -> tuple[object, float]:
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["reproduce", "synthetic-quick", "--seeds", "1", *ONLY, "--threads", "1",
                                   "--out", str(out), "--format", "csv", *extra])
    return res, time.perf_counter() - t0


def _metrics(out: Path) -> dict[str, tuple]:
    with sqlite3.connect(out / "store.sqlite") as db:
        rows = db.execute("SELECT name, metrics FROM runs").fetchall()
    db.close()
    return {name: (json.loads(m)["val"], json.loads(m)["test"]) for name, m in rows}


def test_ray_engine_gives_the_local_table(tmp_path):
    """``--engine ray`` (a local Ray instance, started and stopped by the command) trains the same runs to
    the same numbers as ``--engine local``: the same table, bit for bit, and the same store."""
    was_on = ray.is_initialized()  # another test's session in this process (pytest-xdist), used as it is
    local, t_local = _reproduce(tmp_path / "local", "--workers", "1")
    assert local.exit_code == 0, local.output
    data = tmp_path / "local" / "data"  # the synthetic data once: both engines read the same folder
    on_ray, t_ray = _reproduce(tmp_path / "ray", "--engine", "ray", "--data", str(data))
    assert on_ray.exit_code == 0, on_ray.output
    print(f"wall time, {N_ONLY} runs of synthetic-quick: local engine {t_local:.1f}s (synthetic data included), "
          f"local Ray instance {t_ray:.1f}s")
    assert ray.is_initialized() == was_on  # the command's own instance is shut down
    assert on_ray.stdout == local.stdout and "Bi-GRU + Classifier (n=1)" in on_ray.stdout
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")
    assert len(_metrics(tmp_path / "ray")) == N_ONLY
    summary = json.loads((tmp_path / "ray" / "reproduce.json").read_text())
    assert summary["engine"] == "ray" and "local Ray instance" in summary["ran_on"] and not summary["failed"]
    # A second invocation on Ray skips every finished run.
    again, _ = _reproduce(tmp_path / "ray", "--engine", "ray", "--data", str(data))
    assert again.exit_code == 0 and f"{N_ONLY}/{N_ONLY} runs done (0 trained now" in again.output


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the engine-level tests (an engine leaves a session it did not start open)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_rank_on_ray_matches_local(ray_session, utt_dir, tmp_path):
    base = TrainConfig(data=utt_dir, method="linear", threads=1, **FAST)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    local = rank_modalities(base, [0, 1], tmp_path / "local", quiet)
    eng, sent = RayEngine(threads=1), []
    submit = eng.submit
    eng.submit = lambda fn, *a, **kw: sent.append(a) or submit(fn, *a, **kw)  # type: ignore[method-assign]
    with eng:
        on_ray = rank_modalities(base, [0, 1], tmp_path / "ray", quiet, eng)
    assert len(sent) == 4  # 2 modalities x 2 seeds, each a Ray task
    assert on_ray.to_json() == local.to_json()
    assert ray.is_initialized()  # the fixture's session is the fixture's to close


def test_tune_workers_as_ray_tasks_share_one_study(ray_session, frames_dir, tmp_path):
    """``stew tune --engine ray --workers 2``: two tune workers as Ray tasks, one SQLite study, the trials
    split between them; best.json holds the whole study."""
    from stew.experiments.tune import tune_on

    cfg = TrainConfig(data=frames_dir, method="sew", modality="b", teacher="a", **{**FAST, "max_epochs": 1})
    summary = tune_on(RayEngine(threads=1), cfg, study="sw", out=tmp_path / "t", trials=3, workers=2,
                      params=["gamma", "lr"])
    assert summary["n_trials"] == 3 and len(summary["workers"]) == 2  # two Ray worker processes
    best = json.loads((tmp_path / "t" / "best.json").read_text())
    assert best["n_trials"] == 3 and set(best["best_params"]) == {"sew.gamma", "lr"}
    assert len(list((tmp_path / "t" / "trials" / "sw").glob("trial*"))) == 3
    with pytest.raises(DataError, match="--study '../up'"):
        tune_on(RayEngine(threads=1), cfg, study="../up", out=tmp_path / "u", trials=2, workers=2)
    assert not (tmp_path / "u").exists()


def test_a_dead_worker_is_retried_then_the_run_fails(ray_session, tmp_path):
    """A task whose worker process dies is run again (``max_retries``); past the retries its future fails
    with one line, and the driver (reproduce's loop) records nothing for it."""
    def die_once(marker: str) -> str:
        if not os.path.exists(marker):
            Path(marker).write_text("died")
            os._exit(1)
        return "second try"

    def die_always(log: str) -> str:
        with open(log, "a") as f:
            f.write("try\n")
        os._exit(1)

    with RayEngine(threads=1, retries=1) as eng:
        assert eng.submit(die_once, str(tmp_path / "marker")).result(timeout=120) == "second try"
        lost = eng.submit(die_always, str(tmp_path / "tries"))
        with pytest.raises(RuntimeError, match="after 2 tries") as e:
            lost.result(timeout=120)
    assert "\n" not in str(e.value)
    assert (tmp_path / "tries").read_text().count("try") == 2


def test_a_run_error_comes_back_as_itself(ray_session):
    """An exception the run raises is not retried and reaches the driver as its own type (a DataError
    stays the one-line error of the CLI), as with local processes."""
    def bad(_: int) -> None:
        raise DataError("bad input in the run")

    with RayEngine(threads=1) as eng:
        with pytest.raises(DataError, match="^bad input in the run$"):
            eng.submit(bad, 0).result(timeout=120)


def test_more_threads_than_any_node_has_is_refused(ray_session):
    with pytest.raises(DataError, match="--threads 64: no node of the Ray cluster has that many CPUs"):
        with RayEngine(threads=64):
            pass


# -- bad input: one line, exit 2, nothing written -------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


COMMANDS = {
    "reproduce": lambda data, out: ["reproduce", "synthetic-quick", "--out", str(out)],
    "rank": lambda data, out: ["rank", "--data", str(data), "--out", str(out)],
    "transfer": lambda data, out: ["transfer", "--data", str(data), "--out", str(out)],
    "tune": lambda data, out: ["tune", "--study", "s", "--data", str(data), "--method", "unimodal",
                               "--modality", "audio", "--out", str(out)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", ["address-without-ray", "unreachable", "ray-not-installed"])
def test_bad_engine_options(command, case, utt_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = COMMANDS[command](utt_dir, out)
    if case == "address-without-ray":
        args += ["--address", "127.0.0.1:6379"]
        expect = "--address needs --engine ray"
    elif case == "unreachable":
        args += ["--engine", "ray", "--address", f"127.0.0.1:{_closed_port()}"]
        expect = "no Ray cluster reachable there"
    else:
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
        args += ["--engine", "ray"]
        expect = "--engine ray needs Ray, which is not installed: pip install 'stew[cluster]'"
    t0 = time.perf_counter()
    line = one_line_error(CliRunner().invoke(app, args))
    assert expect in line
    assert time.perf_counter() - t0 < 30  # an unreachable cluster is not waited on for minutes
    assert not out.exists()


def test_transfer_on_ray_needs_a_shared_out(utt_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(CliRunner().invoke(app, ["transfer", "--data", str(utt_dir), "--engine", "ray"]))
    assert "--engine ray needs --out" in line
    assert [p.name for p in tmp_path.iterdir()] == ["utt"]  # no run folder here


def test_engine_choice_and_workers():
    with pytest.raises(DataError, match="choose local or ray"):
        open_engine("spark")
    assert isinstance(open_engine(), LocalEngine) and open_engine(workers=3).capacity == 3
    assert open_engine(workers=2).threads >= 1  # cores // workers
    eng = open_engine("ray", threads=2)
    assert isinstance(eng, RayEngine) and eng.capacity is None and eng.threads == 2


def test_ray_is_imported_only_for_the_ray_engine():
    """`stew --help`, the torch-free predict and every local command never load Ray."""
    import subprocess

    code = ("import sys, stew.cli, stew.experiments.reproduce, stew.experiments.transfer, stew.experiments.tune; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
