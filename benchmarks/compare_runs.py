"""Per-seed table of one metric for several run groups, each against a baseline with a paired t-test.

Usage: python benchmarks/compare_runs.py BASELINE_DIR OTHER_DIR... [--metric f1_weighted] [--split val]

Each DIR holds ``seedN/metrics.json`` folders (a ``stew rank`` modality folder, or one method variant).
Seeds are paired by N, so the arms share the validation carve and the initialisation seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stew.scoring.metrics import format_mean_std, paired_ttest


def scores(d: Path, metric: str, split: str) -> dict[int, float]:
    out = {}
    for f in sorted(d.glob("seed*/metrics.json")):
        out[int(f.parent.name.removeprefix("seed"))] = json.loads(f.read_text())[split][metric]
    if not out:
        raise SystemExit(f"error: no seed*/metrics.json under {d}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline", type=Path)
    ap.add_argument("others", type=Path, nargs="+")
    ap.add_argument("--metric", default="f1_weighted")
    ap.add_argument("--split", default="val")
    ap.add_argument("--digits", type=int, default=1)
    a = ap.parse_args()
    base = scores(a.baseline, a.metric, a.split)
    seeds = sorted(base)
    print(f"| {a.split} {a.metric} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | paired t | p |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for i, d in enumerate([a.baseline, *a.others]):
        v = scores(d, a.metric, a.split)
        if sorted(v) != seeds:
            raise SystemExit(f"error: {d} has seeds {sorted(v)}, the baseline {seeds}")
        row = [v[s] for s in seeds]
        t, p = paired_ttest(row, [base[s] for s in seeds]) if i else (float("nan"), float("nan"))
        cells = [f"{x:.{a.digits}f}" for x in row]
        print(f"| {d} | " + " | ".join(cells) + f" | {format_mean_std(row, a.digits)} | {t:.2f} | {p:.2f} |")


if __name__ == "__main__":
    main()
