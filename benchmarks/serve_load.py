"""A bounded load test of ``stew serve`` on loopback: requests/s, p50/p99 latency, server RSS before and after.

Usage: python benchmarks/serve_load.py [--requests 10000] [--seconds 120] [--clients 4] [--workers 2]
                                       [--work /tmp/stew-serve-load]

Two models at the default (paper) sizes with random weights (latency does not depend on their values),
exported with model.onnx and served by one ``stew serve`` process on 127.0.0.1 (a free port):

- ``video``: a MOSI-sized video student (Bi-GRU 2 layers + transformer, 73-d OpenFace features), one
  request = one video of 20 utterances x 73;
- ``audio``: the RECOLA CM-StEW audio student (88-d eGeMAPS at 25 Hz, 3 s windows), one request = a
  60 s recording, 1,500 x 88.

Per payload, ``--clients`` threads send requests over keep-alive connections until ``--requests`` are
done or ``--seconds`` have passed, whichever comes first; then the server is stopped. The server's
RSS is read from /proc before (after 50 warm-up requests) and after each payload. Nothing leaves
the machine: the server binds 127.0.0.1 and the client talks to it only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from stew.data.windows import Standardizer
from stew.deploy import export
from stew.deploy.model import _write_atomically
from stew.models.specs import EncoderSpec, HeadSpec, StudentSpec
from stew.models.student import SingleModalityModel


def write_model(run_dir: Path, out: Path, spec: StudentSpec, dim: int, window: int | None, rate: float | None) -> Path:
    """A run folder holding ``spec`` with random weights and unit standardisation, exported (both formats)."""
    torch.manual_seed(0)
    model = SingleModalityModel(spec).eval()
    meta = {
        "format": "stew-model/1", "student": json.loads(spec.model_dump_json()), "modality": spec.modality,
        "dim": dim, "dims": None, "task": spec.task, "targets": spec.targets, "n_classes": None,
        "standardizer": Standardizer({spec.modality: np.zeros(dim, np.float32)},
                                     {spec.modality: np.ones(dim, np.float32)}).to_json(),
        "step_rate_hz": rate, "label_delay_steps": 0, "window_steps": window, "inputs": [spec.modality],
        "postprocess": None, "extractor": None, "label_scale": None,
        "provenance": {"method": "bench", "teacher": None, "seed": 0, "data": "random"},
    }
    _write_atomically(run_dir / "model", {k: v.contiguous() for k, v in model.state_dict().items()}, meta)
    return export(run_dir, out)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def load(port: int, path: str, body: bytes, n: int, seconds: float, clients: int) -> tuple[list[float], int, float]:
    """Send up to ``n`` requests from ``clients`` threads within ``seconds``; latencies (s), errors, wall (s)."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    sent = 0
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal sent, errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        # http.client sends headers and body in two writes: without TCP_NODELAY, Nagle holds the body until
        # the server's delayed ACK (40 ms), which would be measured as server latency. curl sets it too.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                if sent >= n or time.perf_counter() > deadline:
                    break
                sent += 1
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                errors += resp.status != 200
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/stew-serve-load"))
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    torch.set_num_threads(1)
    video = StudentSpec(modality="video", task="regression", targets=["sentiment"],
                        encoder=EncoderSpec(kind="bigru-te", d_in=73, gru_layers=2),
                        head=HeadSpec(kind="classifier", d_in=100, n_out=1))
    audio = StudentSpec(modality="audio", task="regression", targets=["arousal"],
                        encoder=EncoderSpec(kind="bigru-te", d_in=88, gru_layers=1),
                        head=HeadSpec(kind="classifier", d_in=100, n_out=1))
    models = {
        "video": write_model(a.work / "run-video", a.work / "video", video, 73, None, None),
        "audio": write_model(a.work / "run-audio", a.work / "audio", audio, 88, 75, 25.0),
    }
    rng = np.random.default_rng(0)
    payloads = {
        "video": json.dumps({"features": rng.normal(size=(20, 73)).round(5).tolist()}).encode(),
        "audio": json.dumps({"features": rng.normal(size=(1500, 88)).round(5).tolist()}).encode(),
    }
    cmd = [sys.executable, "-c", "from stew.cli import app; app()", "serve", *(f"{k}={v}" for k, v in models.items()),
           "--host", "127.0.0.1", "--port", "0", "--workers", str(a.workers), "--threads", "1"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        print(f"stew serve pid {server.pid} on 127.0.0.1:{port}, {a.workers} workers x 1 thread; "
              f"{a.clients} client threads; up to {a.requests} requests or {a.seconds:g} s per payload")
        for name, body in payloads.items():
            path = f"/models/{name}/predict"
            load(port, path, body, 50, 60, 2)  # warm-up: pools, allocator, code paths
            before = rss_mb(server.pid)
            lat, errors, wall = load(port, path, body, a.requests, a.seconds, a.clients)
            after = rss_mb(server.pid)
            q = np.percentile(np.array(lat) * 1e3, [50, 99])
            print(f"{name:5s} ({len(body) / 1e3:,.0f} kB body): {len(lat)} requests in {wall:.1f} s = "
                  f"{len(lat) / wall:.0f} req/s; p50 {q[0]:.1f} ms, p99 {q[1]:.1f} ms, mean "
                  f"{statistics.mean(lat) * 1e3:.1f} ms; errors {errors}; server RSS {before:.0f} -> {after:.0f} MB "
                  f"({after - before:+.1f} MB)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
