"""Time the representative MOSI runs of `stew reproduce mosi-cmstew`: epochs, seconds per epoch, total.

Usage: python benchmarks/profile_mosi.py --out runs/profile-mosi [--seed 0] [--runs text,video,cmstew-video]
       [--profile]   (also writes a cProfile of each run's `fit` to OUT/<run>.prof and prints the top 25)

Runs, each with `configs/mosi.yaml` (one thread) and the given seed:
- ``text``, ``video``, ``audio``: unimodal Bi-GRU + TE + Classifier;
- ``cmstew-video``, ``cmstew-audio``: CM-StEW (+text) with alpha = 0.01, beta = 1, the teacher being this
  script's ``text`` run (run it first, or in the same call).
``fit`` is the training loop (every epoch's validation included); ``total`` is all of ``run`` (data
loading, fitting, final evaluation, writing the run folder). Each run also prints its validation
weighted F1 and a hash of its metrics, to check that a pure-overhead change leaves results unchanged.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import time
from pathlib import Path

from stew.config import TrainConfig, load_config
from stew.training import loop
from stew.training import run as training


def config(name: str, seed: int, out: Path, base: Path) -> TrainConfig:
    if name.startswith("cmstew-"):
        cfg = load_config(base, {
            "method": "cmstew", "modality": name.removeprefix("cmstew-"), "teacher": "text", "seed": seed,
            "out": out / name,
        })
        return cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={
            "alpha": 0.01, "beta": 1.0, "teacher_run": out / "text"})})
    return load_config(base, {"method": "unimodal", "arch": "bigru-te", "modality": name, "seed": seed,
                              "out": out / name})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="text,video,cmstew-video")
    ap.add_argument("--config", type=Path, default=Path("configs/mosi.yaml"))
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()

    fit_s: list[float] = []
    real_fit = loop.fit

    def timed_fit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t = time.perf_counter()
        try:
            return real_fit(*args, **kwargs)
        finally:
            fit_s.append(time.perf_counter() - t)

    training.fit = timed_fit  # type: ignore[assignment]  # run.py's name for the loop's fit
    for name in a.runs.split(","):
        cfg = config(name, a.seed, a.out, a.config)
        fit_s.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        prof = cProfile.Profile() if a.profile else None
        if prof:
            prof.enable()
        r = training.run(cfg)
        if prof:
            prof.disable()
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        epochs = r["selection"]["epochs_run"]
        digest = hashlib.sha1(json.dumps({"val": r["val"], "sel": r["selection"]}, sort_keys=True).encode())
        print(f"{name:14s} seed {a.seed}  epochs {epochs:4d} (best {r['selection']['best_epoch']:3d})  "
              f"fit {fit_s[-1]:6.1f} s  {1000 * fit_s[-1] / epochs:6.1f} ms/epoch  "
              f"total {total:6.1f} s (CPU {cpu:5.1f} s)  "
              f"val F1w {r['val'].get('f1_weighted', float('nan')):.2f}  metrics {digest.hexdigest()[:10]}",
              flush=True)
        if prof:
            prof.dump_stats(a.out / f"{name}.prof")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
