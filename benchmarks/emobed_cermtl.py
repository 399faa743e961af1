"""Acceptance figures of the EmoBed / CER-MTL issue: run every job in parallel, then print the tables.

    python benchmarks/emobed_cermtl.py run --part synth-emobed=DIR --part mosi-emobed=MOSI_DIR \
        --part synth-cermtl=DIR --out runs/bench --workers 14
    python benchmarks/emobed_cermtl.py table --out runs/bench

Parts:
- synth-emobed: synthetic RECOLA, the weaker modality of each target (arousal video_geo (+audio),
  valence audio (+video_geo), from the unimodal ranking in BENCHMARKS.md): classic monomodal
  (``--method unimodal --arch gru``, the EmoBed network without the auxiliary terms), joint training,
  crossmodal triplet training and EmoBed, each with ``--postprocess``;
- mosi-emobed: CMU-MOSI audio (+text) and video (+text), classic monomodal and EmoBed;
- synth-cermtl: CER-MTL multimodal (early fusion of all three) and each single modality, with the CCC,
  PCC and MSE losses, multi-task (arousal + valence), plus single-task multimodal CCC runs.

Finished runs (``metrics.json`` present) are skipped, so an interrupted part resumes. Every worker
uses one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

SEEDS = range(5)
SYNTH = {"threads": 1, "progress": False, "label_delay_s": 2.4, "lr": 1e-3, "max_epochs": 10, "patience": 3}
# Weaker (deployed) and auxiliary modality per target, from the synthetic unimodal ranking.
SYNTH_PAIRS = {"arousal": ("video_geo", "audio"), "valence": ("audio", "video_geo")}
SYSTEMS = {
    "classic": {"method": "unimodal", "arch": "gru"},
    "joint": {"method": "joint"},
    "triplet": {"method": "triplet"},
    "emobed": {"method": "emobed"},
}
MOSI = {"threads": 1, "progress": False, "val_groups": 10, "lr": 1e-4, "batch_size": 32, "max_epochs": 200,
        "patience": 40}
CERMTL = {"threads": 1, "progress": False, "label_delay_s": 2.4, "lr": 5e-4, "max_epochs": 10, "patience": 3,
          "method": "cermtl"}
CERMTL_INPUTS = ["all", "audio", "video_app", "video_geo"]


def jobs(part: str, data: Path, out: Path) -> list[dict]:
    root = out / part
    todo = []
    if part == "synth-emobed":
        for target, (weak, aux) in SYNTH_PAIRS.items():
            for name, sys_cfg in SYSTEMS.items():
                for s in SEEDS:
                    todo.append({**SYNTH, **sys_cfg, "data": str(data), "modality": weak, "target": target,
                                 "teacher": None if name == "classic" else aux, "seed": s, "postprocess": True,
                                 "out": str(root / target / name / f"seed{s}")})
    elif part == "mosi-emobed":
        for weak in ("audio", "video"):
            for name in ("classic", "emobed"):
                for s in SEEDS:
                    todo.append({**MOSI, **SYSTEMS[name], "data": str(data), "modality": weak,
                                 "teacher": None if name == "classic" else "text", "seed": s,
                                 "out": str(root / weak / name / f"seed{s}")})
    elif part == "synth-cermtl":
        for inp in CERMTL_INPUTS:
            for loss in ("ccc", "pcc", "mse"):
                for s in SEEDS:
                    todo.append({**CERMTL, "data": str(data), "modality": inp, "loss": loss,
                                 "targets": ["arousal", "valence"], "seed": s,
                                 "out": str(root / inp / loss / "mtl" / f"seed{s}")})
        for target in ("arousal", "valence"):
            for s in SEEDS:
                todo.append({**CERMTL, "data": str(data), "modality": "all", "loss": "ccc", "targets": [target],
                             "seed": s, "out": str(root / "all" / "ccc" / f"stl-{target}" / f"seed{s}")})
    else:
        raise SystemExit(f"unknown part {part!r}")
    return todo


def run_job(cfg: dict) -> tuple[str, float]:
    from stew.config import TrainConfig
    from stew.training.run import run

    t0 = time.time()
    run(TrainConfig.model_validate(cfg))
    return cfg["out"], time.time() - t0


def run_parts(parts: list[tuple[str, Path]], out: Path, workers: int) -> None:
    """All runs of all parts in one pool of ``workers`` processes (longest parts first)."""
    todo = [j for part, data in parts for j in jobs(part, data, out)
            if not (Path(j["out"]) / "metrics.json").is_file()]
    print(f"{len(todo)} runs to do", flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_job, j) for j in todo]
        for i, f in enumerate(as_completed(futures), 1):
            path, secs = f.result()
            print(f"[{i}/{len(todo)}] {path} {secs:.0f}s (elapsed {time.time() - t0:.0f}s)", flush=True)


# --------------------------------------------------------------------------------------------------
# Tables


def _load(folder: Path) -> list[dict]:
    return [json.loads((folder / f"seed{s}" / "metrics.json").read_text()) for s in SEEDS
            if (folder / f"seed{s}" / "metrics.json").is_file()]


def _ms(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _p(a: list[float], b: list[float]) -> str:
    from stew.scoring.metrics import paired_ttest

    if len(a) != len(b) or len(a) < 2:
        return "-"
    p = paired_ttest(a, b)[1]
    return "-" if np.isnan(p) else f"{p:.2f}"


def tables(out: Path) -> None:
    root = out / "synth-emobed"
    if root.is_dir():
        print("\n### EmoBed on synthetic RECOLA (CCC, mean ± std over seeds; p: paired t-test vs classic, val)\n")
        print("| target, weaker (+aux) | system | val CCC | test CCC | p vs classic (val / test) |"
              " val CCC post-processed | test CCC post-processed |")
        print("|---|---|---|---|---|---|---|")
        for target, (weak, aux) in SYNTH_PAIRS.items():
            base = _load(root / target / "classic")
            for name in SYSTEMS:
                runs = _load(root / target / name)
                val, test = [r["val_raw"]["ccc"] for r in runs], [r["test_raw"]["ccc"] for r in runs]
                p_val = _p(val, [r["val_raw"]["ccc"] for r in base])
                p = "" if name == "classic" else f"{p_val} / {_p(test, [r['test_raw']['ccc'] for r in base])}"
                print(f"| {target}, {weak} (+{aux}) | {name} | {_ms(val)} | {_ms(test)} | {p} | "
                      f"{_ms([r['val']['ccc'] for r in runs])} | {_ms([r['test']['ccc'] for r in runs])} |")
        print("\nPost-processing chains chosen on validation (seed 0):")
        for target in SYNTH_PAIRS:
            for name in SYSTEMS:
                runs = _load(root / target / name)
                if runs:
                    pp = runs[0]["postprocess"][target]
                    gains = [r["postprocess"][target]["gain"] for r in runs]
                    print(f"- {target} {name}: gain {_ms(gains)} over seeds; seed 0: median {pp['median_s']} s, "
                          f"shift {pp['shift_s']} s, centre {pp['centre']}, scale {pp['scale']}")
    root = out / "mosi-emobed"
    if root.is_dir():
        print("\n### EmoBed on CMU-MOSI (+text): validation weighted F1 and accuracy in %\n")
        print("| weaker (+aux) | system | val F1w | val acc | p vs classic |")
        print("|---|---|---|---|---|")
        for weak in ("audio", "video"):
            base = [r["val"]["f1_weighted"] for r in _load(root / weak / "classic")]
            for name in ("classic", "emobed"):
                runs = _load(root / weak / name)
                f1 = [r["val"]["f1_weighted"] for r in runs]
                print(f"| {weak} (+text) | {name} | {_ms(f1, 1)} | {_ms([r['val']['acc'] for r in runs], 1)} | "
                      f"{'' if name == 'classic' else _p(f1, base)} |")
    root = out / "synth-cermtl"
    if root.is_dir():
        for split in ("val", "test"):
            print(f"\n### CER-MTL on synthetic RECOLA, {split} CCC arousal / valence (mean ± std over seeds)\n")
            print("| model | CCC loss | PCC loss | MSE loss |")
            print("|---|---|---|---|")
            for inp in CERMTL_INPUTS:
                cells = []
                for loss in ("ccc", "pcc", "mse"):
                    runs = _load(root / inp / loss / "mtl")
                    cells.append(" / ".join(_ms([r[split][f"ccc_{t}"] for r in runs], 2) for t in SYNTH_PAIRS))
                print(f"| {'multimodal' if inp == 'all' else inp} | " + " | ".join(cells) + " |")
            print(f"\nMTL vs STL, multimodal, CCC loss ({split} CCC):\n")
            print("| | arousal | valence |")
            print("|---|---|---|")
            mtl = _load(root / "all" / "ccc" / "mtl")
            print("| MTL | " + " | ".join(_ms([r[split][f"ccc_{t}"] for r in mtl], 3) for t in SYNTH_PAIRS) + " |")
            stl = {t: _load(root / "all" / "ccc" / f"stl-{t}") for t in SYNTH_PAIRS}
            print("| STL | " + " | ".join(_ms([r[split]["ccc"] for r in stl[t]], 3) for t in SYNTH_PAIRS) + " |")
            print("| p (paired t, MTL vs STL) | " + " | ".join(
                _p([r[split][f"ccc_{t}"] for r in mtl], [r[split]["ccc"] for r in stl[t]]) for t in SYNTH_PAIRS
            ) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--part", action="append", default=[], help="PART=DATA_DIR (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    a = ap.parse_args()
    if a.what == "run":
        parts = [(p.split("=", 1)[0], Path(p.split("=", 1)[1]).resolve()) for p in a.part]
        run_parts(parts, a.out.resolve(), a.workers)
    else:
        tables(a.out)


if __name__ == "__main__":
    main()
