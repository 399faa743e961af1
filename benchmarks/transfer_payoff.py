"""Does transfer pay on CMU-MOSI? Issue 13's directions against the unimodal student (BENCHMARKS.md).

    python benchmarks/transfer_payoff.py --data ../shared/data/cmu-mosi-utterance --seeds 5 --workers 2 \\
        --out runs/bench-transfer-mosi [--only unimodal,crossfit] [--weak video,audio]

Protocol: issue 19's (benchmarks/linear_baselines.py): the 62 training videos in 5 grouped folds (fold
seed 0); in fold i chunk i is the held-out **test**, 10 videos carved from the rest by the run seed are
the validation that picks the epoch. Every score is on videos no choice was made on. Per seed the five
fold scores are averaged; tables give mean +- std over seeds and a paired t-test over seeds.

Variants (configs/mosi.yaml's optimisation: Adam 1e-4, batch 32, patience 60):
- unimodal: the per-step MLP student (stew's default student) on its own labels;
- single: CM-StEW, that student, one MLP teacher on the whole training split (the paper's stage 1);
- crossfit: the same with 5 cross-fitted teachers (direction 1);
- crossfit-noT: cross-fitted, alignment only (beta 0);
- two-teachers: cross-fitted, text and the other weak modality as teachers (direction 4);
- paper: the paper recipe (Bi-GRU + TE student and teacher, the protocol's alpha/beta);
- unimodal-bigru-te: the paper's student alone (the paper recipe's own baseline);
- lc<f>-unimodal / lc<f>-crossfit: only a fraction f of the training videos keeps its labels (after the
  validation carve); the rest are unlabelled pairs (direction 3);
- <arm>+<knob><value>...: the arm with the student's capacity changed (direction 5): ``d`` d_model,
  ``do`` the head's dropout, ``wd`` Adam's weight decay, e.g. ``unimodal+wd0.001``, ``crossfit+d32+do0.5``;
  or CM-StEW's weights: ``a`` alpha, ``b`` beta, ``g`` gamma (the distillation term on unlabelled steps),
  e.g. ``spk1-crossfit+a1+b1``. A variant of a transfer arm is compared with the unimodal arm of the same
  capacity (the CM-StEW weights dropped).
recola: synthetic RECOLA-like data (`stew data synth --kind recola --seed 0 --speakers 9 --minutes 5`:
3 train, 3 validation, 3 test recordings), each target's weaker modality taught by its stronger one
(arousal: video_geo +audio; valence: audio +video_geo), seeds 0-4, test CCC read once per run after
validation chose the epoch. The learning curves label only the first fraction f of every training
recording (continuous annotation of part of each session); the rest are unlabelled steps. The speakers
curve (``--only spk1-unimodal,spk1-crossfit,spk3-unimodal,spk3-crossfit`` on a 27-speaker set) keeps the
labels of n training speakers and gives the others as unlabelled recordings.

    python benchmarks/transfer_payoff.py --dataset recola --data runs/synth-recola9 --seeds 5 --workers 2 \
        --out runs/bench-transfer-recola

Finished runs are read back from their metrics.json, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from linear_baselines import held_out_folds

from stew.config import load_config
from stew.scoring import metrics

FRACTIONS = (0.1, 0.25, 0.5)
OTHER = {"audio": "video", "video": "audio"}
PAPER_AB = {"audio": (0.01, 1.0), "video": (0.1, 0.01)}  # the mosi-cmstew protocol's values


CAPACITY = {"wd": ("weight_decay", float), "do": ("clf_dropout", float), "d": ("d_model", int),
            "a": ("alpha", float), "b": ("beta", float), "g": ("gamma", float)}
CMSTEW_KNOBS = ("alpha", "beta", "gamma")


def capacity(suffix: list[str]) -> dict:
    """``["d32", "wd0.001"]`` -> ``{"d_model": 32, "weight_decay": 0.001}`` (longest knob name first)."""
    out = {}
    for part in suffix:
        knob = next(k for k in sorted(CAPACITY, key=len, reverse=True) if part.startswith(k))
        key, cast = CAPACITY[knob]
        out[key] = cast(part[len(knob):])
    return out


def _with(spec: dict, knobs: dict) -> dict:
    cm = {k: v for k, v in knobs.items() if k in CMSTEW_KNOBS}
    spec = {**spec, **{k: v for k, v in knobs.items() if k not in CMSTEW_KNOBS}}
    if cm:
        spec["cmstew"] = {**spec["cmstew"], **cm}
    return spec


def variant_config(name: str, weak: str) -> dict:
    name, *suffix = name.split("+")
    if suffix:
        return _with(variant_config(name, weak), capacity(suffix))
    base = {"modality": weak, "arch": "mlp"}
    name = name.replace("spk", "lc")  # the speakers curve's arms are the learning curve's
    cm = {"method": "cmstew", "teacher": "text", **base}
    fixed = {"alpha": 0.1, "beta": 0.1, "guard_folds": 0}
    if name == "unimodal-bigru-te":  # the paper recipe's own baseline: its student trained alone
        return {"method": "unimodal", "modality": weak, "arch": "bigru-te"}
    if name == "unimodal" or name.endswith("-unimodal"):
        return {"method": "unimodal", **base}
    if name == "single":
        return {**cm, "cmstew": {**fixed, "teacher_folds": 1}}
    if name in ("crossfit",) or name.endswith("-crossfit"):
        return {**cm, "cmstew": {**fixed, "teacher_folds": 5}}
    if name == "crossfit-noT":
        return {**cm, "cmstew": {**fixed, "beta": 0.0, "teacher_folds": 5}}
    if name == "two-teachers":
        return {**cm, "teacher": f"text,{OTHER[weak]}", "cmstew": {**fixed, "teacher_folds": 5}}
    if name == "paper":
        a, b = PAPER_AB[weak]
        return {"method": "cmstew", "teacher": "text", "modality": weak, "recipe": "paper",
                "cmstew": {"alpha": a, "beta": b, "decoder_units": 100}}
    raise ValueError(name)


RECOLA_PAIRS = {"arousal": ("video_geo", "audio"), "valence": ("audio", "video_geo")}
# synth.yaml of the unimodal RECOLA section (BENCHMARKS.md), with the stew recipe's per-step student.
RECOLA_BASE = {"d_model": 32, "clf_hidden": 64, "lr": 0.002, "max_epochs": 8, "patience": 3,
               "label_delay_s": 2.4, "threads": 1, "progress": False}


def _one_recola(job: tuple[str, str, int, str, str]) -> dict:
    from stew.config import TrainConfig
    from stew.data.io import load_dataset
    from stew.training.run import run

    name, target, seed, data, out = job
    weak, strong = RECOLA_PAIRS[target]
    done = Path(out) / "metrics.json"
    if done.is_file():
        r = json.loads(done.read_text())
    else:
        shutil.rmtree(out, ignore_errors=True)
        spec = variant_config(name, weak)
        if spec.get("teacher"):
            spec["teacher"] = spec["teacher"].replace("text", strong)
        cfg = TrainConfig(**{**RECOLA_BASE, **spec, "data": data, "target": target, "seed": seed, "out": out})
        ds = load_dataset(cfg.data)
        if name.startswith("spk"):  # spk<n>-<arm>: n training speakers keep their labels, the others none
            from stew.data.dataset import UNLABELLED

            n = int(name[3:].split("-")[0])
            keep = set(np.random.default_rng(seed).permutation(ds.groups("train"))[:n])
            ds = ds.replace_sequences(s if s.split != "train" or s.group in keep else s.with_split(UNLABELLED)
                                      for s in ds.sequences)
        elif name.startswith("lc"):
            frac = float(name[2:].split("-")[0])
            col = ds.targets.index(target)
            for s in ds.split("train"):
                s.targets[int(frac * len(s)):, col] = np.nan  # only the first fraction is annotated
        r = run(cfg, ds)
    return {"name": name, "weak": target, "seed": seed, "fold": 0, "f1w": r["test"]["ccc"],
            "acc": r["val"]["ccc"], "wall_s": r["wall_s"]}


def _one(job: tuple[str, str, int, int, str, str]) -> dict:
    from stew.data.dataset import UNLABELLED
    from stew.data.io import load_dataset
    from stew.data.splits import carve_validation
    from stew.training.run import run

    name, weak, seed, fold, data, out = job
    done = Path(out) / "metrics.json"
    if done.is_file():
        r = json.loads(done.read_text())
    else:
        shutil.rmtree(out, ignore_errors=True)  # a run killed part-way: start it again
        cfg = load_config(Path("configs/mosi.yaml"), {
            **variant_config(name, weak), "data": data, "seed": seed, "out": out, "progress": False})
        ds = carve_validation(held_out_folds(load_dataset(cfg.data), 5)[fold], cfg.val_groups, seed)
        if name.startswith("lc"):
            frac = float(name[2:].split("-")[0])
            groups = ds.groups("train")
            keep = set(np.random.default_rng(seed).permutation(groups)[: max(1, math.ceil(frac * len(groups)))])
            ds = ds.replace_sequences(s if s.split != "train" or s.group in keep else s.with_split(UNLABELLED)
                                      for s in ds.sequences)
        r = run(cfg, ds)
    return {"name": name, "weak": weak, "seed": seed, "fold": fold, "f1w": r["test"]["f1_weighted"],
            "acc": r["test"]["acc"], "wall_s": r["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/cmu-mosi-utterance")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-transfer-mosi"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--weak", default="video,audio")
    ap.add_argument("--only", default=None, help="comma-separated variants (default: all but paper)")
    ap.add_argument("--dataset", choices=["mosi", "recola"], default="mosi")
    ap.add_argument("--tag", default="", help="suffix of the summary file (keeps earlier summaries)")
    a = ap.parse_args()
    lc = [f"lc{f:g}-{arm}" for f in FRACTIONS for arm in ("unimodal", "crossfit")]
    if a.dataset == "recola":
        names = a.only.split(",") if a.only else ["unimodal", "single", "crossfit", *lc]
        jobs = [(n, t, s, a.data, str(a.out / t / n / f"seed{s}"))
                for t in RECOLA_PAIRS for n in names for s in range(a.seeds)]
        one = _one_recola
    else:
        names = a.only.split(",") if a.only else ["unimodal", "single", "crossfit", "crossfit-noT", "two-teachers",
                                                  *lc]
        jobs = [(n, w, s, f, a.data, str(a.out / w / n / f"seed{s}" / f"fold{f}"))
                for w in a.weak.split(",") for n in names for s in range(a.seeds) for f in range(5)]
        one = _one
    t0 = time.time()
    rows = []
    # A fresh process per run: a long-lived worker that reloads the 27-speaker set for every run grew past
    # 20 GB (heap fragmentation; one run peaks at about 5 GB) and was killed by the kernel.
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for i, r in enumerate(pool.map(one, jobs)):
            rows.append(r)
            # MOSI: test weighted F1 (%); recola: test CCC (the "f1w" field of a recola row is its test CCC).
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:.0f}s] {r['weak']} {r['name']} seed{r['seed']} "
                  f"fold{r['fold']}: test {r['f1w']:.3f} ({r['wall_s']:.0f}s)", flush=True)
    summary = summarise(rows)
    name = "summary-" + ("recola" if a.dataset == "recola" else a.weak.replace(",", "-")) + (
        f"-{a.tag}" if a.tag else "") + ".json"
    (a.out / name).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    for line in summary:
        print(line["weak"], line["name"], line["f1w"], f"gain {line['gain']:+.3f} p {line['p']:.3f}",
              f"run {line['wall_s']:.1f}s")


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant: the per-seed fold mean, mean +- std over seeds, and a paired t-test vs its unimodal."""
    by: dict[tuple[str, str], dict[int, list[float]]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by.setdefault((r["weak"], r["name"]), {}).setdefault(r["seed"], []).append(r["f1w"])
        wall.setdefault((r["weak"], r["name"]), []).append(r["wall_s"])
    out = []
    for (weak, name), seeds in by.items():
        per_seed = [float(np.mean(seeds[s])) for s in sorted(seeds)]
        arm, *suffix = name.split("+")
        base = name.split("-")[0] + "-unimodal" if name.startswith(("lc", "spk")) else "unimodal"
        if suffix and arm != "unimodal":  # a capacity variant of transfer against the same-capacity unimodal
            base = "+".join([base, *(x for x in suffix if not capacity([x]).keys() & set(CMSTEW_KNOBS))])
        ref = by.get((weak, base))
        ref_seed = [float(np.mean(ref[s])) for s in sorted(seeds)] if ref and set(ref) >= set(seeds) else None
        gain = float(np.mean(per_seed) - np.mean(ref_seed)) if ref_seed else float("nan")
        p = metrics.paired_ttest(per_seed, ref_seed)[1] if ref_seed and name != base else float("nan")
        out.append({"weak": weak, "name": name, "f1w": metrics.format_mean_std(per_seed, 3), "per_seed": per_seed,
                    "gain": gain, "p": float(p), "wall_s": float(np.median(wall[weak, name]))})
    return out


if __name__ == "__main__":
    main()
