"""CM-StEW on CMU-MOSI: weaker audio/video taught by text, with the -LFA and -Decoder ablations.

Usage: python benchmarks/mosi_cmstew.py --weak audio --teachers runs/mosi-bigru-te/label/text --out runs/mosi-cmstew
       [--ablations=full,-LFA,-Decoder] [--seeds 5]

The stage-1 teachers are the unimodal text runs of ``stew rank`` (same config, carve and seed).
alpha and beta are selected on validation with seed 0 from the grid, then fixed for the other seeds,
as ``stew transfer`` does. Summarise with ``benchmarks/summarize_runs.py runs/mosi-cmstew``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stew.config import TrainConfig, load_config
from stew.experiments.transfer import run_over_seeds

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
        def config(s: int, ablation: str | None = ablation) -> TrainConfig:
            cfg = load_config(a.config, {
                "method": "cmstew", "modality": a.weak, "teacher": "text", "seed": s, "ablation": ablation,
                "out": a.out / a.weak / (ablation or "full") / f"seed{s}",
            })
            return cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={
                "teacher_run": a.teachers / f"seed{s}", "alpha_grid": GRID, "beta_grid": GRID})})

        for s, r in enumerate(run_over_seeds(config, list(range(a.seeds)), reuse=True)):
            print(a.weak, ablation or "full", s, r["method"]["alpha"], r["method"]["beta"],
                  {k: round(v, 1) for k, v in r["val"].items()}, f"{r['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
