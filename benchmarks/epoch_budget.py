"""What a smaller epoch budget (patience, max_epochs) would save and cost, from finished runs' logs.

Usage: python benchmarks/epoch_budget.py RUN_DIR [RUN_DIR ...]  (e.g. runs/profile-mosi/seed*/*, as written
       by ``profile_mosi.py --out runs/profile-mosi/seedS --seed S``; rows are grouped by the folder name)
       [--patience 10,20,30,40,60] [--max-epochs 100,150,400]

Each run folder's ``logs/metrics.csv`` holds the validation score of every epoch. Training does not
depend on patience or max_epochs until it stops, so a run with patience P0 contains, exactly, the
trajectory of any run with patience P <= P0 and max_epochs <= its own: replaying early stopping
(stop once ``epoch - best_epoch >= P``, best = strictly greater score) on the logged scores gives the
epochs it would run and the validation score it would select. Validation only; the test split is
never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def val_scores(run_dir: Path) -> list[float]:
    logs = sorted((run_dir / "logs").glob("**/metrics.csv"))
    df = pd.concat([pd.read_csv(p) for p in logs])
    return df.dropna(subset=["val_score"]).groupby("epoch")["val_score"].last().sort_index().tolist()


def replay(scores: list[float], patience: int, max_epochs: int) -> tuple[int, float]:
    """(epochs run, selected validation score) of early stopping on ``scores``."""
    best, best_epoch = -float("inf"), -1
    for e, s in enumerate(scores[:max_epochs]):
        if s > best:
            best, best_epoch = s, e
        if e - best_epoch >= patience:
            return e + 1, best
    return min(len(scores), max_epochs), best


def longest_wait(scores: list[float]) -> int:
    """The most epochs between two successive improvements: any patience above it loses nothing."""
    best, last, wait = -float("inf"), 0, 0
    for e, s in enumerate(scores):
        if s > best:
            best, wait, last = s, max(wait, e - last), e
    return wait


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--patience", default="10,20,30,40,60")
    ap.add_argument("--max-epochs", default="100,150,400")
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        if not (run / "metrics.json").is_file():
            print(f"skipped (not finished): {run}")
            continue
        scores = val_scores(run)
        full_epochs, full = replay(scores, 10**9, 10**9)
        best_epoch = scores.index(full)
        print(f"{run}: {full_epochs} epochs, best epoch {best_epoch} (val {full:.2f}), "
              f"longest wait between improvements {longest_wait(scores)} epochs")
        for p in map(int, a.patience.split(",")):
            for m in map(int, a.max_epochs.split(",")):
                epochs, sel = replay(scores, p, m)
                rows.append({"run": str(run), "kind": run.name, "patience": p, "max_epochs": m, "epochs": epochs,
                             "epochs_full": full_epochs, "val": sel, "val_full": full, "val_loss": full - sel})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.groupby(["kind", "patience", "max_epochs"]).agg(
        runs=("run", "size"), epochs_mean=("epochs", "mean"), epochs_full_mean=("epochs_full", "mean"),
        val_loss_mean=("val_loss", "mean"), val_loss_max=("val_loss", "max"),
        runs_losing=("val_loss", lambda v: int((v > 0).sum())),
    ).round(2).to_string())


if __name__ == "__main__":
    main()
