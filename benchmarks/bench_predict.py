"""Latency of ``stew predict`` for one 5-minute, 88-d audio recording at 25 Hz (7,500 frames): torch vs ONNX Runtime.

Usage: python benchmarks/bench_predict.py [--threads 1] [--repeats 20] [--work /tmp/stew-bench-predict]
                                          [--reuse] [--profile]

A CM-StEW audio student at the default (paper) sizes is trained for one epoch on synthetic RECOLA-like
data (its accuracy is irrelevant here; --reuse keeps an earlier run in --work), exported with both
model.safetensors and model.onnx, and run on a folder holding a single recording with the audio
modality only. Each figure is measured for both engines in the same run, on ``--threads`` threads:

- the ``stew predict`` command end to end (a fresh process: Python start-up, imports, loading the
  model and the data, inference, writing the CSV), median of 5 runs per engine;
- in-process ``predict_dataset`` (load model + data, standardise, infer, stitch), median of ``--repeats``;
- the forward pass alone over the recording's 3-second evaluation windows (one batch of 100).

--profile adds ONNX Runtime's per-operator times for the forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stew.config import TrainConfig
from stew.data.formats.native import write_native
from stew.data.synth.affect import synth_recola
from stew.deploy import OnnxModel, export, load_model, predict_dataset
from stew.training.run import run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/stew-bench-predict"))
    ap.add_argument("--reuse", action="store_true", help="keep the trained student already in --work")
    ap.add_argument("--profile", action="store_true", help="ONNX Runtime per-operator times")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = synth_recola(seed=0, n_speakers=9, minutes=5.0)
    if not (a.reuse and (a.work / "student" / "model" / "model.json").is_file()):
        shutil.rmtree(a.work, ignore_errors=True)
        a.work.mkdir(parents=True)
        train_dir = write_native(ds, a.work / "train-data")
        run(TrainConfig(data=train_dir, modality="video_geo", target="arousal", max_epochs=1,
                        threads=a.threads, progress=False, out=a.work / "teacher"))
        # The paper recipe's Bi-GRU + TE student: the model the latency goal names (the stew recipe's
        # default MLP student is much cheaper to run).
        cfg = TrainConfig(data=train_dir, method="cmstew", modality="audio", teacher="video_geo", target="arousal",
                          recipe="paper", max_epochs=1, threads=a.threads, progress=False, out=a.work / "student")
        cfg = cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={
            "alpha": 0.1, "beta": 0.1, "teacher_run": a.work / "teacher"})})
        run(cfg)
    t0 = time.perf_counter()
    model_dir = export(a.work / "student", a.work / "model", fmt="both")
    t_export = time.perf_counter() - t0

    # One test recording, audio only: what a deployment sees.
    rec = next(s for s in ds.sequences if s.split == "test")
    rec = dataclasses.replace(rec, features={"audio": rec.features["audio"]}, masks={"audio": rec.masks["audio"]})
    one = dataclasses.replace(ds, sequences=[rec], modalities={"audio": ds.modalities["audio"]})
    shutil.rmtree(a.work / "one-recording", ignore_errors=True)
    data_dir = write_native(one, a.work / "one-recording")
    n_frames, dim = rec.features["audio"].shape

    model, meta = load_model(model_dir)
    onnx_model = OnnxModel(model_dir, threads=a.threads)
    n_params = sum(p.numel() for p in model.parameters())
    engines = ("torch", "onnx")

    cli: dict[str, list[float]] = {e: [] for e in engines}
    env_threads = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    stew = str(Path(sys.executable).with_name("stew"))
    for i in range(5):
        for e in engines:  # interleaved: a busy moment on the machine hits both engines alike
            t0 = time.perf_counter()
            subprocess.run([stew, "predict", str(model_dir), "--data", str(data_dir), "--out",
                            str(a.work / f"p-{e}-{i}.csv"), "--engine", e, "--threads", str(a.threads)],
                           check=True, capture_output=True, env={**os.environ, **env_threads})
            cli[e].append(time.perf_counter() - t0)
    same = pd.read_csv(a.work / "p-torch-0.csv")["pred_arousal"] - pd.read_csv(a.work / "p-onnx-0.csv")["pred_arousal"]

    inproc: dict[str, list[float]] = {e: [] for e in engines}
    for _ in range(a.repeats):
        for e in engines:
            t0 = time.perf_counter()
            predict_dataset(model_dir, data_dir, engine=e, threads=a.threads)
            inproc[e].append(time.perf_counter() - t0)

    w = meta["window_steps"]
    x = torch.as_tensor(rec.features["audio"][: (n_frames // w) * w]).reshape(-1, w, dim)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    xn, mn = x.numpy(), mask.numpy()
    fwd: dict[str, list[float]] = {e: [] for e in engines}
    with torch.inference_mode():
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            model(x, mask)
            fwd["torch"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            onnx_model.run(xn, mn)
            fwd["onnx"].append(time.perf_counter() - t0)

    ms = lambda v: f"{1e3 * statistics.median(v):.1f} ms"  # noqa: E731
    print(f"recording: {n_frames} frames x {dim} features at 25 Hz ({n_frames / 25 / 60:.1f} min); "
          f"student {n_params:,} parameters; threads {a.threads}; export (both formats, parity check) "
          f"{t_export:.1f} s; max |torch - onnx| in the CSV {float(np.abs(same).max()):.1e}")
    print(f"{'':58s} {'torch':>10s} {'onnxruntime':>12s}")
    for what, v in [(f"stew predict (new process, end to end, median of {len(cli['torch'])})", cli),
                    (f"predict_dataset in-process (median of {a.repeats})", inproc),
                    (f"forward pass only, {x.shape[0]} windows of {w} frames (median of {a.repeats})", fwd)]:
        print(f"{what:58s} {ms(v['torch']):>10s} {ms(v['onnx']):>12s}")
    if a.profile:
        profile_onnx(model_dir, xn, mn, a.threads)


def profile_onnx(model_dir: Path, x: np.ndarray, mask: np.ndarray, threads: int, runs: int = 10) -> None:
    """ONNX Runtime's own per-operator profile of the forward pass (mean ms per run, by operator type)."""
    import json

    import onnxruntime as ort

    from stew.deploy.runtime import session_options

    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(model_dir.parent / "ort-profile")  # beside the bench's files, not in the cwd
    session = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"x": x, "mask": mask})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    totals: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + ev["dur"] / 1e3 / runs
    print("ONNX Runtime profile, ms per forward pass by operator type:")
    for op, v in sorted(totals.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {op:22s} {v:6.1f}")


if __name__ == "__main__":
    main()
