"""Resident memory after each of several runs in one process (BENCHMARKS.md, issue 13's memory note).

    python benchmarks/memory_runs.py --data runs/synth-recola27 [--hold]

``--hold`` keeps each run's result (model and prepared data included) while the next one trains, as a
caller that collects results would; without it the result is dropped first.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

from stew.config import TrainConfig
from stew.training.run import run

SETTINGS = {"arch": "mlp", "d_model": 32, "clf_hidden": 64, "lr": 2e-3, "max_epochs": 2, "patience": 2,
            "label_delay_s": 2.4, "threads": 1, "progress": False, "overwrite": True}


def resident_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="stew-memory-"))
    result = None
    for i in range(a.runs):
        if not a.hold:
            result = None
            gc.collect()
        t0 = time.time()
        result = run(TrainConfig(data=a.data, method="unimodal", modality="audio", target="arousal", seed=i,
                                 out=out / f"r{i}", **SETTINGS))
        gc.collect()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"run {i + 1}: resident {resident_gb():.2f} GB, peak {peak:.2f} GB, {time.time() - t0:.0f} s", flush=True)
    del result


if __name__ == "__main__":
    main()
