"""ConflictNET and its ablations on the synthetic conflict corpus (issue 16; BENCHMARKS.md).

Writes a synthetic corpus (`stew data synth --kind conflict`, --clips clips of --clip-s seconds at
8 kHz) once, then trains every ablation over seeds with the paper's recipe (1 - PCC, Adam 0.01 with
Keras decay 0.6 per update, batch 32, best validation PCC) and reports test PCC, UAR and WAR
(mean +- std over seeds) beside thesis Table 3.1, and whether the thesis's ordering holds.

    python benchmarks/conflict_ablations.py --out runs/bench-conflict --clips 120 --clip-s 6 \\
        --seeds 3 --max-epochs 8 --workers 2

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

from stew.scoring import metrics

ABLATIONS = ["paranet", "+ap", "+attn", "conflictnet", "+gap"]
PAPER = {"paranet": (0.675, 72.4, 75.3), "+ap": (0.781, 79.9, 81.3), "+attn": (0.837, 82.2, 83.4),
         "conflictnet": (0.853, 84.3, 84.3), "+gap": (0.850, 84.5, 84.8)}


def _one(raw: dict) -> dict:
    import torch

    from stew.config import TrainConfig
    from stew.training.run import run

    torch.set_num_threads(raw.pop("_threads"))
    cfg = TrainConfig.model_validate(raw)
    done = Path(cfg.out) / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    r = run(cfg)
    return {k: v for k, v in r.items() if not k.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--clip-s", type=float, default=6.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    args = ap.parse_args()
    from stew.data.synth.conflict import write_synthetic_conflict

    data = args.out / "data"
    if not (data / "labels.csv").is_file():
        write_synthetic_conflict(data, clips=args.clips, clip_s=args.clip_s, seed=0)
    names = args.ablations.split(",")
    jobs = [{"data": str(data), "method": "conflictnet", "ablation": a, "seed": s, "max_epochs": args.max_epochs,
             "progress": False, "overwrite": True, "out": str(args.out / a / f"seed{s}"), "_threads": 1}
            for s in range(args.seeds) for a in names]
    t0 = time.time()
    res = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for job, r in zip(jobs, pool.map(_one, [dict(j) for j in jobs]), strict=True):
            res[(job["ablation"], job["seed"])] = r
            print(f"[{time.time() - t0:.0f}s] {job['ablation']} seed {job['seed']}: test PCC {r['test']['pcc']:.3f} "
                  f"UAR {r['test']['uar']:.1f} WAR {r['test']['war']:.1f} ({r['selection']['epochs_run']} epochs, "
                  f"{r['wall_s']:.0f} s)", flush=True)
    print(f"\n{args.clips} clips x {args.clip_s:g} s at 8 kHz, seeds 0-{args.seeds - 1}, at most {args.max_epochs} "
          f"epochs; test split; mean +- std over seeds; wall {time.time() - t0:.0f} s\n")
    print("| model | PCC | UAR % | WAR % | s / epoch | thesis PCC | thesis UAR | thesis WAR |")
    print("|---|---|---|---|---|---|---|---|")
    means = {}
    for a in names:
        rows = [res[(a, s)] for s in range(args.seeds)]
        cells = [metrics.format_mean_std([r["test"][k] for r in rows], 3 if k == "pcc" else 1)
                 for k in ("pcc", "uar", "war")]
        per_epoch = np.mean([r["wall_s"] / max(1, r["selection"]["epochs_run"]) for r in rows])
        means[a] = np.mean([r["test"]["pcc"] for r in rows])
        p = PAPER[a]
        print(f"| {a} | " + " | ".join(cells) + f" | {per_epoch:.0f} | {p[0]:.3f} | {p[1]:.1f} | {p[2]:.1f} |")
    order = [a for a in ("paranet", "+ap", "+attn", "conflictnet") if a in means]
    holds = all(means[x] < means[y] for x, y in zip(order, order[1:], strict=False))
    verdict = "holds" if holds else "does not hold"
    print(f"\nthesis ordering ParaNET < +AP < +Attn < ConflictNET (test PCC means): {verdict}"
          f" ({' < '.join(f'{a} {means[a]:.3f}' for a in sorted(order, key=means.get))})")
    (args.out / "summary.json").write_text(json.dumps({f"{a}/{s}": res[(a, s)]["test"] for a, s in res}, indent=2))


if __name__ == "__main__":
    main()
