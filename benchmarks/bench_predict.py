"""Latency of ``stew predict`` for one 5-minute, 88-d audio recording at 25 Hz (7,500 frames).

Usage: python benchmarks/bench_predict.py [--threads 1] [--repeats 20] [--work /tmp/stew-bench-predict]

A CM-StEW audio student at the default (paper) sizes is trained for one epoch on synthetic RECOLA-like
data (its accuracy is irrelevant here), exported, and run on a folder holding a single recording with
the audio modality only. Reported:

- the ``stew predict`` command end to end (a fresh process: Python start-up, imports, loading the
  safetensors model and the data, inference, writing the CSV), median of a few runs;
- in-process ``predict_dataset`` (load model + data, standardise, infer, stitch), median of ``--repeats``;
- the model's forward pass alone over the recording's 3-second evaluation windows.
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

import torch

from stew.config import TrainConfig
from stew.data.native import write_native
from stew.data.synthetic import synth_recola
from stew.deploy import export, load_model, predict_dataset
from stew.training import run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/stew-bench-predict"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)

    ds = synth_recola(seed=0, n_speakers=9, minutes=5.0)
    train_dir = write_native(ds, a.work / "train-data")
    run(TrainConfig(data=train_dir, modality="video_geo", target="arousal", max_epochs=1,
                    threads=a.threads, progress=False, out=a.work / "teacher"))
    cfg = TrainConfig(data=train_dir, method="cmstew", modality="audio", teacher="video_geo", target="arousal",
                      max_epochs=1, threads=a.threads, progress=False, out=a.work / "student")
    cfg = cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={
        "alpha": 0.1, "beta": 0.1, "teacher_run": a.work / "teacher"})})
    run(cfg)
    model_dir = export(a.work / "student", a.work / "model")

    # One test recording, audio only: what a deployment sees.
    rec = next(s for s in ds.sequences if s.split == "test")
    rec = dataclasses.replace(rec, features={"audio": rec.features["audio"]}, masks={"audio": rec.masks["audio"]})
    one = dataclasses.replace(ds, sequences=[rec], modalities={"audio": ds.modalities["audio"]})
    data_dir = write_native(one, a.work / "one-recording")
    n_frames, dim = rec.features["audio"].shape

    model, meta = load_model(model_dir)
    n_params = sum(p.numel() for p in model.parameters())

    cli = []
    env_threads = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    stew = str(Path(sys.executable).with_name("stew"))
    for i in range(5):
        t0 = time.perf_counter()
        subprocess.run([stew, "predict", str(model_dir), "--data", str(data_dir), "--out",
                        str(a.work / f"p{i}.csv")], check=True, capture_output=True,
                       env={**os.environ, **env_threads})
        cli.append(time.perf_counter() - t0)

    inproc = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        predict_dataset(model_dir, data_dir)
        inproc.append(time.perf_counter() - t0)

    w = meta["window_steps"]
    x = torch.as_tensor(rec.features["audio"][: (n_frames // w) * w]).reshape(-1, w, dim)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    fwd = []
    with torch.inference_mode():
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            model(x, mask)
            fwd.append(time.perf_counter() - t0)

    ms = lambda v: f"{1e3 * statistics.median(v):.1f} ms"  # noqa: E731
    print(f"recording: {n_frames} frames x {dim} features at 25 Hz ({n_frames / 25 / 60:.1f} min); "
          f"student {n_params:,} parameters; threads {a.threads}")
    print(f"stew predict (new process, end to end, median of {len(cli)}): {ms(cli)}")
    print(f"predict_dataset in-process (median of {a.repeats}): {ms(inproc)}")
    print(f"forward pass only, {x.shape[0]} windows of {w} frames (median of {a.repeats}): {ms(fwd)}")


if __name__ == "__main__":
    main()
