"""Attention fusion on the CMU-MOSI training videos, with modalities missing (issue 15; BENCHMARKS.md).

Protocol (as benchmarks/linear_baselines.py, so the unimodal rows there are comparable seed for
seed): grouped 5-fold CV over the 62 training videos, fold i's videos are the held-out test, 10
videos carved from the rest (by the run seed) are the validation that picks the epoch. Per seed
the five fold scores are averaged; tables show mean +- std over seeds of that, weighted F1 (%).

Models (every one `stew train --method fusion` with the spec's defaults, one label per utterance):
- ``intra``, ``cross``: tri-modal (text, audio, video);
- ``intra+moddrop``, ``cross+moddrop``: the same trained with ModDrop (each single modality absent);
- ``orig-<subset>``: intra models trained and tested on a subset only (the thesis's "orig" rows).
After training, every tri-modal model is scored with each of the 7 modality subsets present (the
others absent: masked out); intra models also with KNN imputation for K = 5, 10, 100.

    python benchmarks/fusion_mosi.py --data ../shared/data/cmu-mosi-utterance --seeds 5 --workers 2 \\
        --out runs/bench-fusion-mosi [--unimodal runs/bench-linear-mosi/summary.json]

Finished runs are read back from their folders, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_baselines import held_out_folds  # noqa: E402  (the same folds as the unimodal benchmark)

from stew.scoring import metrics  # noqa: E402

MODS = ["text", "audio", "video"]
SUBSETS = ["text+audio+video", "text+audio", "text+video", "audio+video", "text", "audio", "video"]
KEY = "f1_weighted"
KNN = (5, 10, 100)


def models() -> dict[str, dict]:
    out = {
        "intra": {"kind": "intra"},
        "cross": {"kind": "cross"},
        "intra+moddrop": {"kind": "intra", "moddrop": True},
        "cross+moddrop": {"kind": "cross", "moddrop": True},
    }
    for s in SUBSETS[1:]:
        out[f"orig-{s}"] = {"kind": "intra", "modalities": s.split("+")}
    return out


def _canonical(subset: str) -> str:
    """'video+text' -> 'text+video': subsets named in MODS order, whatever the data's order."""
    return "+".join(m for m in MODS if m in subset.split("+"))


def _one(job: tuple[str, dict, int, int, int]) -> dict:
    """Train one fold in a worker (or read it back) and score its modality subsets."""
    from stew.config import TrainConfig
    from stew.data.io import load_dataset
    from stew.eval.missing import score_subsets, write_missing
    from stew.training.run import run

    raw, fold, k = job[1], job[2], job[3]
    cfg = TrainConfig.model_validate(raw)
    out = Path(cfg.out)
    done = out / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    ds = held_out_folds(load_dataset(cfg.data), k)[fold]
    r = run(cfg, ds)
    record = {"test": r["test"], "val": r["val"], "wall_s": r["wall_s"], "missing": {}}
    model, bundle = r.model.student, r.bundle
    if len(model.spec.modalities) == 3:
        imputations = [("zero", None)] + ([("knn", k) for k in KNN] if model.spec.bank_size else [])
        for impute, kk in imputations:
            model.spec = model.spec.model_copy(update={"impute": impute, "k": kk or model.spec.k})
            table = score_subsets(model, bundle)
            write_missing(out, table, impute, kk or 0)
            record["missing"][impute if kk is None else f"knn{kk}"] = {_canonical(s): v["test"][KEY]
                                                                        for s, v in table.items()}
    done.write_text(json.dumps(record))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default=",".join(models()))
    ap.add_argument("--unimodal", type=Path, help="summary.json of benchmarks/linear_baselines.py mosi")
    args = ap.parse_args()
    names = args.models.split(",")
    jobs, keys = [], []
    for s in range(args.seeds):
        for name in names:
            for f in range(args.folds):
                raw = {"data": str(args.data), "method": "fusion", "seed": s, "val_groups": 10, "progress": False,
                       "threads": 1, "overwrite": True, "fusion": models()[name],
                       "out": str(args.out / name / f"seed{s}" / f"fold{f}")}
                jobs.append((name, raw, f, args.folds, s))
                keys.append((name, s, f))
    t0 = time.time()
    res: dict = {}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for n, (key, r) in enumerate(zip(keys, pool.map(_one, jobs), strict=True), 1):
            res[key] = r
            print(f"[{n}/{len(jobs)} {time.time() - t0:.0f}s] {key} test F1w {r['test'][KEY]:.1f}", flush=True)
    seeds, folds = range(args.seeds), range(args.folds)

    def per_seed(name: str, get) -> list[float]:
        return [float(np.mean([get(res[(name, s, f)]) for f in folds])) for s in seeds]

    summary: dict = {}
    for name in names:
        summary[f"{name}/all"] = per_seed(name, lambda r: r["test"][KEY])
        for imp in ("zero", *(f"knn{k}" for k in KNN)):
            if imp in res[(name, 0, 0)]["missing"]:
                for sub in SUBSETS:
                    summary[f"{name}/{imp}/{sub}"] = per_seed(name, lambda r, i=imp, b=sub: r["missing"][i][b])
    wall = np.mean([r["wall_s"] for r in res.values()])
    print(f"\nwall {time.time() - t0:.0f} s ({wall:.1f} s per run); grouped {args.folds}-fold CV, held-out fold = test,"
          f" weighted F1 (%), mean +- std over {args.seeds} seeds of the fold mean\n")
    fmt = lambda v: metrics.format_mean_std(v, 1)  # noqa: E731
    tri = [n for n in names if not n.startswith("orig-")]
    print("| present | " + " | ".join(f"{n} (zero)" for n in tri)
          + " | " + " | ".join(f"intra knn K={k}" for k in KNN) + " | orig (trained on the subset) |")
    print("|---|" + "---|" * (len(tri) + len(KNN) + 1))
    for sub in SUBSETS:
        cells = [fmt(summary[f"{n}/zero/{sub}"]) for n in tri]
        cells += [fmt(summary[f"intra/knn{k}/{sub}"]) if f"intra/knn{k}/{sub}" in summary else "-" for k in KNN]
        orig = "intra" if sub == SUBSETS[0] else f"orig-{sub}"
        cells.append(fmt(summary[f"{orig}/all"]) if f"{orig}/all" in summary else "-")
        print(f"| {sub} | " + " | ".join(cells) + " |")

    def compare(a: str, b: str, what: str) -> None:
        if a in summary and b in summary:
            d = np.array(summary[a]) - np.array(summary[b])
            _, p = metrics.paired_ttest(summary[a], summary[b])
            print(f"- {what}: {d.mean():+.1f} +- {d.std(ddof=1):.1f} F1w points, paired t-test over seeds p = {p:.3f}")

    print()
    compare("intra/all", "cross/all", "intra - cross (all present)")
    compare("intra+moddrop/all", "intra/all", "intra: ModDrop - plain (all present)")
    compare("cross+moddrop/all", "cross/all", "cross: ModDrop - plain (all present)")
    compare("intra+moddrop/zero/audio+video", "orig-audio+video/all", "text missing: intra+ModDrop - audio+video intra")
    compare("intra/zero/audio+video", "orig-audio+video/all", "text missing: plain intra - audio+video intra")
    compare("intra/knn10/audio+video", "orig-audio+video/all", "text missing: intra KNN10 - audio+video intra")
    if args.unimodal and args.unimodal.is_file():
        uni = json.loads(args.unimodal.read_text())
        for ref in ("text/bigru-te/f1_weighted", "text/linear/f1_weighted"):
            if ref in uni:
                summary[f"unimodal:{ref}"] = uni[ref]
                compare("intra/all", f"unimodal:{ref}", f"tri-modal intra - {ref.rsplit('/', 1)[0]} alone")
                compare("cross/all", f"unimodal:{ref}", f"tri-modal cross - {ref.rsplit('/', 1)[0]} alone")
        for ref in ("video/bigru-te/f1_weighted", "video/linear/f1_weighted"):
            if ref in uni:
                summary[f"unimodal:{ref}"] = uni[ref]
                compare("intra+moddrop/zero/audio+video", f"unimodal:{ref}",
                        f"text missing: intra+ModDrop - {ref.rsplit('/', 1)[0]} alone")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
