"""Linear baselines against the deep unimodal architectures (issue 19; results in BENCHMARKS.md).

mosi: grouped K-fold CV over the CMU-MOSI training videos. In fold i the i-th chunk of videos is the
held-out test; 10 videos carved from the others (by the run seed) are the validation that chooses
epochs / the regularisation. So every reported number is on videos no choice was made on.
Folds are fixed (seed 0); seeds vary the carve and the initialisation. Per seed the fold scores are
pooled into one mean; the table shows mean +- std of that over seeds.

    python benchmarks/linear_baselines.py mosi --data ../shared/data/cmu-mosi-utterance \\
        --seeds 5 --workers 2 --out runs/bench-linear-mosi

recola: synthetic RECOLA-like data (the default `stew data synth --kind recola`, 27 speakers x 5 min,
true label delay 2.4 s): the linear model per target and modality, the offset it found against the
generator's delay, and its fit time.

    python benchmarks/linear_baselines.py recola --out runs/bench-linear-recola

Finished runs are read back from their metrics.json, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from stew.config import TrainConfig
from stew.data import splits
from stew.data.dataset import Dataset
from stew.data.io import load_dataset
from stew.scoring import metrics

MOSI_BASE = {"val_groups": 10, "lr": 1e-4, "batch_size": 32, "max_epochs": 150, "patience": 20}  # mosi-cmstew


def held_out_folds(ds: Dataset, k: int) -> list[Dataset]:
    """Fold i: chunk i of the training videos becomes ``test``; validation is carved later from the rest.
    The folds are fixed (seed 0) for every benchmark that compares with these runs."""
    return splits.held_out_folds(ds, k, seed=0)


def _one(job: tuple[dict, int, int]) -> dict:
    """Train fold ``fold`` of ``k`` with one config in a worker, or read its finished metrics.json back."""
    from stew.training.run import run

    raw, fold, k = job
    cfg = TrainConfig.model_validate(raw)
    done = Path(cfg.out) / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    ds = held_out_folds(load_dataset(cfg.data), k)[fold]
    r = run(cfg, ds)
    return {k: v for k, v in r.items() if not k.startswith("_")}


def mosi(args: argparse.Namespace) -> None:
    archs, mods = args.archs.split(","), args.modalities.split(",")
    jobs, keys = [], []
    for m in mods:
        for arch in archs:
            for s in range(args.seeds):
                for f in range(args.folds):
                    out = args.out / m / arch / f"seed{s}" / f"fold{f}"
                    method = "linear" if arch == "linear" else "unimodal"
                    raw = {**MOSI_BASE, "data": str(args.data), "method": method, "modality": m, "seed": s,
                           "out": str(out), "progress": False, "threads": 1,
                           **({} if arch == "linear" else {"arch": arch})}
                    jobs.append((raw, f, args.folds))
                    keys.append((m, arch, s, f))
    # Seed by seed (a stopped benchmark leaves whole seeds), long jobs first within a seed.
    order = sorted(range(len(jobs)), key=lambda i: (keys[i][2], keys[i][1] == "linear", keys[i][1] == "classifier"))
    t0 = time.time()
    results: dict = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for n, (i, r) in enumerate(zip(order, pool.map(_one, [jobs[i] for i in order]), strict=True), 1):
            results[keys[i]] = r
            print(f"[{n}/{len(jobs)} {time.time() - t0:.0f}s] {keys[i]} test f1w {r['test']['f1_weighted']:.1f}",
                  flush=True)
    print(f"\nwall {time.time() - t0:.0f} s; grouped {args.folds}-fold CV, held-out fold = test, "
          f"mean +- std over {args.seeds} seeds of the fold mean\n")
    print("| modality | " + " | ".join(f"{a} F1w | {a} acc" for a in archs) + " |")
    print("|---|" + "---|---|" * len(archs))
    table = {}
    for m in mods:
        cells = []
        for a in archs:
            for key in ("f1_weighted", "acc"):
                per_seed = [np.mean([results[(m, a, s, f)]["test"][key] for f in range(args.folds)])
                            for s in range(args.seeds)]
                table[f"{m}/{a}/{key}"] = per_seed
                cells.append(metrics.format_mean_std(per_seed, 1))
        fit = np.mean([results[(m, a, s, f)]["wall_s"] for a in archs[:1] for s in range(args.seeds)
                       for f in range(args.folds)])
        print(f"| {m} | " + " | ".join(cells) + f" |  ({archs[0]} mean run time {fit:.1f} s)")
    if "linear" in archs:
        for m in mods:
            for a in archs:
                if a != "linear":
                    t, p = metrics.paired_ttest(table[f"{m}/linear/f1_weighted"], table[f"{m}/{a}/f1_weighted"])
                    print(f"{m}: linear vs {a}, F1w paired t-test over seeds p = {p:.3f}")
    (args.out / "summary.json").write_text(json.dumps(table, indent=2))


def recola(args: argparse.Namespace) -> None:
    from stew.data.formats.native import write_native
    from stew.data.synth.affect import synth_recola
    from stew.training.run import run

    data = args.out / "data"
    if not (data / "manifest.yaml").is_file():
        write_native(synth_recola(0), data)
    ds = load_dataset(data)
    true_delay = ds.meta.get("label_delay_s")
    print(f"synthetic RECOLA (seed 0, 27 speakers x 5 min); generator's label delay {true_delay} s\n")
    print("| model | target | modality | val CCC | test CCC | offset found (s) | strength | fit wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for t in ds.targets:
            for m in ds.modalities:
                cfg = TrainConfig(data=data, method="linear", modality=m, target=t, progress=False, threads=1,
                                  linear={"model": model}, out=args.out / model / t / m)
                done = cfg.out / "metrics.json"
                r = json.loads(done.read_text()) if done.is_file() else run(cfg, ds)
                print(f"| {model} | {t} | {m} | {r['val']['ccc']:.3f} | {r['test']['ccc']:.3f} | "
                      f"{r['method']['offset_s']:g} | {r['method']['strength']:g} | {r['wall_s']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("mosi")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--seeds", type=int, default=5)
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--archs", default="linear,classifier,bigru,bigru-te")
    a.add_argument("--modalities", default="text,audio,video")
    b = sub.add_parser("recola")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--models", default="ridge,svr")
    args = ap.parse_args()
    mosi(args) if args.cmd == "mosi" else recola(args)


if __name__ == "__main__":
    main()
