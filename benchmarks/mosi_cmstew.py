"""CM-StEW on CMU-MOSI: weaker audio/video taught by text, with the -LFA and -Decoder ablations.

Usage: python benchmarks/mosi_cmstew.py --weak audio --teachers runs/mosi-bigru-te/label/text --out runs/mosi-cmstew
       [--ablations=full,-LFA,-Decoder] [--seeds 5]

The stage-1 teachers are the unimodal text runs of ``stew rank`` (same config, carve and seed).
alpha and beta are selected on validation with seed 0 from the grid, then fixed for the other seeds,
as ``stew transfer`` does. Summarise with ``benchmarks/summarize_runs.py runs/mosi-cmstew``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stew.config import load_config
from stew.training import run

GRID = [0.01, 0.1, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weak", required=True)
    ap.add_argument("--teachers", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path("configs/mosi.yaml"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ablations", default="full,-LFA,-Decoder", help="comma-separated; write --ablations=-LFA")
    a = ap.parse_args()
    for ablation in [None if x == "full" else x for x in a.ablations.split(",")]:
        chosen: dict = {}
        for s in range(a.seeds):
            done = a.out / a.weak / (ablation or "full") / f"seed{s}" / "metrics.json"
            if done.exists():  # finished earlier: the benchmark resumes
                r = json.loads(done.read_text())
                chosen = chosen or {"alpha": r["method"]["alpha"], "beta": r["method"]["beta"]}
                continue
            cfg = load_config(a.config, {
                "method": "cmstew", "modality": a.weak, "teacher": "text", "seed": s, "ablation": ablation,
                "out": a.out / a.weak / (ablation or "full") / f"seed{s}",
            })
            cms = cfg.cmstew.model_copy(update={
                "teacher_run": a.teachers / f"seed{s}", "alpha_grid": GRID, "beta_grid": GRID, **chosen,
            })
            t0 = time.time()
            r = run(cfg.model_copy(update={"cmstew": cms}))
            chosen = chosen or {"alpha": r["method"]["alpha"], "beta": r["method"]["beta"]}
            print(a.weak, ablation, s, chosen, {k: round(v, 1) for k, v in r["val"].items()},
                  f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
