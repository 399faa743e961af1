"""Would shipping the average of K fold models beat one model? (issue 13, direction 2; BENCHMARKS.md)

    python benchmarks/ensemble_payoff.py --data ../shared/data/cmu-mosi-utterance --seeds 5 --workers 2 \\
        --out runs/bench-ensemble-mosi [--weak video,audio] [--k 5]

Protocol: transfer_payoff.py's (the 62 training videos in 5 grouped folds, fold seed 0; fold i's chunk is
the held-out test). The single model is that benchmark's ``unimodal`` arm (the stew recipe's per-step MLP
student, ``configs/mosi.yaml``, 10 videos carved by the run seed pick the epoch), read back from
``--single`` when it is there. The ensemble trains K members on the same training videos, member k
picking its epoch on chunk k of a grouped K-fold of them (``stew train --cv``'s folds) and training on
the rest; on the held-out test the members' probabilities are averaged. Paired t-test over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from transfer_payoff import variant_config

from stew.config import load_config
from stew.scoring import metrics


def _member(job: tuple[str, int, int, int, int, str, str]) -> str:
    from stew.data.io import load_dataset
    from stew.data.splits import grouped_folds, held_out_folds
    from stew.training.run import run

    weak, seed, fold, member, k, data, out = job
    if not (Path(out) / "metrics.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(Path("configs/mosi.yaml"), {
            **variant_config("unimodal", weak), "data": data, "seed": seed, "out": out, "progress": False})
        outer = held_out_folds(load_dataset(cfg.data), 5, 0)[fold]
        run(cfg, grouped_folds(outer, k, seed)[member])
    return out


def _f1w(frames: list[pd.DataFrame]) -> float:
    test = [f[f["split"] == "test"].sort_values("step_id").reset_index(drop=True) for f in frames]
    prob = np.mean([t["prob"].to_numpy() for t in test], axis=0)
    return 100 * metrics.f1_weighted(test[0]["y"].to_numpy(), (prob >= 0.5).astype(int))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/cmu-mosi-utterance")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ensemble-mosi"))
    ap.add_argument("--single", type=Path, default=Path("runs/bench-transfer-mosi"),
                    help="transfer_payoff.py's --out, whose unimodal runs are the single models")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--weak", default="video,audio")
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    jobs = [(w, s, f, m, a.k, a.data, str(a.out / w / f"seed{s}" / f"fold{f}" / f"member{m}"))
            for w in a.weak.split(",") for s in range(a.seeds) for f in range(5) for m in range(a.k)]
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for i, _ in enumerate(pool.map(_member, jobs)):
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:.0f}s]", flush=True)
    summary = []
    for w in a.weak.split(","):
        ens, single, wall_e, wall_s = [], [], [], []
        for s in range(a.seeds):
            e_f, s_f = [], []
            for f in range(5):
                members = [a.out / w / f"seed{s}" / f"fold{f}" / f"member{m}" for m in range(a.k)]
                e_f.append(_f1w([pd.read_csv(d / "predictions.csv") for d in members]))
                wall_e.append(sum(json.loads((d / "metrics.json").read_text())["wall_s"] for d in members))
                one = a.single / w / "unimodal" / f"seed{s}" / f"fold{f}"
                s_f.append(_f1w([pd.read_csv(one / "predictions.csv")]))
                wall_s.append(json.loads((one / "metrics.json").read_text())["wall_s"])
            ens.append(float(np.mean(e_f)))
            single.append(float(np.mean(s_f)))
        p = metrics.paired_ttest(ens, single)[1]
        line = {"weak": w, "single": metrics.format_mean_std(single, 1), "ensemble": metrics.format_mean_std(ens, 1),
                "gain": float(np.mean(ens) - np.mean(single)), "p": float(p),
                "wall_single_s": float(np.median(wall_s)), "wall_ensemble_s": float(np.median(wall_e))}
        summary.append(line)
        print(line, flush=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
