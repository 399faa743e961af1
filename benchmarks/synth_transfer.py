"""SEW (all ablations) and CM-StEW for the weaker modality of each target on synthetic RECOLA-like data.

Usage:
    stew data synth --kind recola --seed 0 --speakers 9 --minutes 5 --out runs/synth-recola9
    stew rank --config synth.yaml --seeds 5 --out runs/synth-rank
    python benchmarks/synth_transfer.py --what sew --config synth-sew.yaml --rank runs/synth-rank --out runs/synth-sew
    python benchmarks/synth_transfer.py --what cmstew --config synth.yaml --rank runs/synth-rank --out runs/synth-cmstew
    python benchmarks/summarize_runs.py runs/synth-sew --metrics ccc ccc_seq --digits 3

For each target the weakest modality of ``rank.json`` is taught by the strongest. CM-StEW reuses the rank's
unimodal run of the stronger modality (same seed) as its frozen stage 1, and selects alpha and beta on
validation with seed 0 from the grid, then keeps them for the other seeds, as ``stew transfer`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stew.config import TrainConfig, load_config
from stew.experiments.transfer import run_over_seeds

SEW_VARIANTS = (None, "-SD2", "-CCA", "-SD1", "-(CCA&SD1)")
GRID = [0.01, 0.1, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=["sew", "cmstew"], required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--rank", type=Path, required=True, help="output folder of `stew rank`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--targets", nargs="+", default=None)
    a = ap.parse_args()
    ranking = json.loads((a.rank / "rank.json").read_text())["targets"]
    for target in a.targets or list(ranking):
        strong, weak = ranking[target]["ranking"][0], ranking[target]["ranking"][-1]
        variants = SEW_VARIANTS if a.what == "sew" else (None,)
        for variant in variants:
            def config(s: int, target: str = target, weak: str = weak, strong: str = strong,
                       variant: str | None = variant) -> TrainConfig:
                cfg = load_config(a.config, {
                    "method": a.what, "modality": weak, "teacher": strong, "target": target, "seed": s,
                    "ablation": variant, "out": a.out / target / f"{weak}+{strong}" / (variant or "full") / f"seed{s}",
                })
                return cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(update={
                    "teacher_run": a.rank / target / strong / f"seed{s}", "alpha_grid": GRID, "beta_grid": GRID})})

            for s, r in enumerate(run_over_seeds(config, list(range(a.seeds)), reuse=True)):
                weights = {k: r["method"][k] for k in ("alpha", "beta", "gamma") if k in r["method"]}
                print(target, f"{weak}+{strong}", variant or "full", s, weights,
                      f"val ccc {r['val']['ccc']:.3f}", f"{r['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
