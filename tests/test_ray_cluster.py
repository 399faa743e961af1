"""``stew reproduce --engine ray`` on a two-node Ray cluster on loopback, one node killed mid-protocol and
then the driver: nothing is lost or run twice, the resumed protocol finishes, and a re-run skips every run.

The cluster is two ``ray start --block`` processes (a head and a worker node, one CPU each), each in a
session of its own: killing every process of the worker node's session is a node dying (its raylet and
its workers at once). Teardown kills both sessions by their ids (``ray stop`` would stop every Ray
process on the machine, other tests' included) and removes the temp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from stew.data.formats.native import write_native
from tests.conftest import tiny_utterances
from tests.test_reproduce import N_RUNS, TINY, _row_count

pytest.importorskip("ray")

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",  # loopback only; a joining node would need the head's token otherwise
    "RAY_USAGE_STATS_ENABLED": "0",
    # A dead node noticed in about 2 s instead of 15-30 s (the GCS's health checks of the raylets).
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}


def _free_port() -> int:
    """A port no one listens on, outside the range Ray gives its workers (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


def _session(sid: int) -> list[int]:
    """Every process of the session ``sid`` (what ``ray start --block`` and its children form)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:  # exited meanwhile
                pass
    return pids


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _running_task(sid: int) -> bool:
    """Whether a Ray worker of this session is executing a run now (Ray titles it ``ray::<function>``)."""
    for pid in _session(sid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::_call"):
            return True
    return False


def _alive_nodes(address: str) -> int:
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    return int(res.stdout.strip() or 0)


@pytest.fixture
def cluster():
    # Short: Ray's unix sockets live under it, and their paths must stay under 108 characters.
    temp = Path(tempfile.mkdtemp(prefix="stew-ray-", dir="/tmp"))
    port = _free_port()
    common = ["--num-cpus=1", "--block", "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}",
              f"--metrics-export-port={_free_port()}"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
             f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}", *common],
            stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True))  # noqa: SIM115
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [RAY, "start", f"--address={address}", *common],
            stdout=open(temp / "node.log", "w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True))  # noqa: SIM115
        while time.time() < deadline and _alive_nodes(address) < 2:
            time.sleep(1)
        assert _alive_nodes(address) == 2, (temp / "node.log").read_text()[-2000:]
        yield address, procs[0].pid, procs[1].pid
    finally:
        for p in procs:  # the sessions' ids are the `ray start` processes' pids
            _kill_session(p.pid)
            p.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_node_and_a_killed_driver_lose_no_run_and_run_none_twice(cluster, tmp_path):
    """Kill the worker node while it trains a run, then the driver itself; resume; nothing is lost or
    recorded twice, every recorded folder is finished, and a last invocation trains nothing."""
    address, _head, node = cluster
    data = write_native(tiny_utterances(), tmp_path / "utt")
    raw = json.loads(json.dumps(TINY))
    raw["base"].update(max_epochs=60, patience=60)  # runs of a few seconds: the kills land inside the protocol
    proto = tmp_path / "tiny.yaml"
    proto.write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    cmd = [sys.executable, "-c", "from stew.cli import main; main()", "reproduce", str(proto), "--data", str(data),
           "--out", str(out), "--engine", "ray", "--address", address, "--threads", "1"]
    logs = [tmp_path / "driver1.log", tmp_path / "driver2.log"]
    t0 = time.time()
    with open(logs[0], "w") as f:
        driver = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        # The worker node dies while it trains a run, once the protocol is under way (a run recorded).
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None and not (_row_count(out) >= 1 and _running_task(node)):
            time.sleep(0.1)
        assert driver.poll() is None, f"the protocol ended before the node was killed:\n{logs[0].read_text()[-3000:]}"
        at_node_kill = _row_count(out)
        _kill_session(node)
        t_node = time.time() - t0
        # The head node alone goes on (the lost run retried there); then the driver dies too.
        while time.time() < deadline and driver.poll() is None and _row_count(out) < at_node_kill + 2:
            time.sleep(0.1)
        assert driver.poll() is None, f"the protocol ended before the driver was killed:\n{logs[0].read_text()[-3000:]}"
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = _store(out)
    assert at_node_kill < at_node_kill + 2 <= len(before) < N_RUNS, (at_node_kill, len(before))
    # The run lost with the node was retried on the head node, not reported failed.
    assert not re.search(r"^failed ", logs[0].read_text(), flags=re.MULTILINE), logs[0].read_text()[-3000:]
    # Resume: the recorded runs are skipped, untouched; the others finish.
    with open(logs[1], "w") as f:
        resumed = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, timeout=300)
    wall = time.time() - t0
    assert resumed.returncode == 0, logs[1].read_text()[-3000:]
    assert f"{N_RUNS}/{N_RUNS} runs done ({N_RUNS - len(before)} trained now, {len(before)} already finished)" \
        in logs[1].read_text(), logs[1].read_text()[-3000:]
    after = _store(out)
    assert len(after) == N_RUNS and all(after[k] == row for k, row in before.items()), (before, after)
    assert json.loads((out / "reproduce.json").read_text())["failed"] == {}, logs[1].read_text()[-3000:]
    # No run announced twice; the resumed driver trained exactly the runs the killed one had not recorded
    # (the killed one may have recorded a run and died before its progress line).
    first, second = (re.findall(r"^tiny: \d+/\d+ runs done \(([^)]+)\)", log.read_text(), flags=re.MULTILINE)
                     for log in logs)
    assert len(first + second) == len(set(first + second)), first + second
    recorded_first = {row[1] for row in before.values()}
    assert set(first) <= recorded_first and set(second) == {row[1] for row in after.values()} - recorded_first, \
        (first, second, recorded_first)
    for *_, run_dir in after.values():  # every recorded run's folder is finished
        assert (out / run_dir / "metrics.json").is_file() and (out / run_dir / "model" / "model.json").is_file()
    # Once more: nothing to train.
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=180)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"{N_RUNS}/{N_RUNS} runs done (0 trained now, {N_RUNS} already finished)" in again.stdout, again.stdout
    print(f"worker node killed at {t_node:.1f}s ({at_node_kill}/{N_RUNS} runs recorded), the driver at "
          f"{len(before)}/{N_RUNS}; resumed and finished at {wall:.1f}s")


def _store(out: Path) -> dict[str, tuple]:
    with sqlite3.connect(out / "store.sqlite") as db:
        rows = {r[0]: r for r in db.execute("SELECT key, name, finished_at, metrics, run_dir FROM runs")}
    db.close()
    return rows
