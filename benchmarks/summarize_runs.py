"""Summarise finished runs: mean ± std over seeds of chosen metrics, grouped by folder.

Usage: python benchmarks/summarize_runs.py RUNS_DIR [--metrics acc f1_weighted] [--split val]

Every ``metrics.json`` under RUNS_DIR whose path ends in ``.../seedN/metrics.json`` is one seed of the
group named by the path between RUNS_DIR and ``seedN``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from stew.scoring.metrics import format_mean_std


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--metrics", nargs="+", default=["acc", "f1_weighted"])
    ap.add_argument("--split", default="val")
    ap.add_argument("--digits", type=int, default=1)
    a = ap.parse_args()
    groups: dict[str, list[dict]] = defaultdict(list)
    for f in sorted(a.runs.rglob("metrics.json")):
        if f.parent.name.startswith("seed") and "grid" not in f.parts and "teacher" not in f.parts:
            groups[str(f.parent.parent.relative_to(a.runs))].append(json.loads(f.read_text())[a.split])
    print("| run | seeds | " + " | ".join(f"{a.split} {m}" for m in a.metrics) + " |")
    print("|---|---|" + "---|" * len(a.metrics))
    for g, rows in groups.items():
        cells = [format_mean_std([r[m] for r in rows], a.digits) for m in a.metrics]
        print(f"| {g} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
