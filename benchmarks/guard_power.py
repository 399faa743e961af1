"""How often does CM-StEW's negative-transfer guard decide wrongly? False-ship and false-refuse rates of
its old and new decision rules on synthetic RECOLA-like data where the truth is known (BENCHMARKS.md,
"The guard's decision rule").

    python benchmarks/guard_power.py --seeds 8 --workers 2 --out /work/runs/guard-power \
        [--speakers 27 --minutes 1 --labelled 3] [--only A,B,N]

Target arousal: the weak video_geo student taught by audio, the stew recipe's defaults (cross-fitted MLP
teachers, alpha = beta = 0.1, gamma 1 distillation, 5 guard folds capped at the labelled speakers) with the
small RECOLA settings of benchmarks/transfer_payoff.py (d_model 32, at most 8 epochs, one thread per run).
Per seed s: synthetic data ``synth_recola(s, --speakers, --minutes)`` (thirds train / val / test; default 27
speakers x 1 min: 9 training speakers), run seed s.

Scenarios:
- A, "transfer pays": ``--labelled`` training speakers keep their labels (seeded choice, as
  transfer_payoff.py's spk<n> arms), the other training speakers are a ``labelled: false`` folder given as
  ``unlabelled=...`` (BENCHMARKS.md "Making transfer pay": +0.18 to +0.32 test CCC there). A refusal is a
  false refuse.
- B, "transfer does not pay": every training speaker labelled, no unlabelled data (transfer never beat the
  unimodal student there). Shipping transfer is a false ship.
- N, "no difference" (A/A): scenario B's data and the guard's own folds (``stages.guard_folds``), but both
  arms are the unimodal MLP student, trained with run seed s and s + 1000; both rules decide on their
  held-out predictions exactly as the guard would (``stages.compare_arms``; the t-test over fold scores).
  The true gain is zero by construction, so every ship is a false ship: the rules' size at a true null.

Scenarios A and B, per seed, three runs on the same data and seed:
- ``guarded``: ``stew.train(method="cmstew", ...)``, the guard on. The new rule's decision is its
  metrics.json ``recipe.guard`` (pooled held-out predictions, paired block bootstrap, ship when gain > 0 and
  p < 0.1). The old rule (paired t-test over the per-fold held-out scores, two-sided p < 0.1 and mean gain
  > 0) is recomputed from its fold runs ``guard/fold<i>/{transfer,unimodal}/metrics.json``.
- ``transfer``: CM-StEW unguarded (``cmstew.guard_folds: 0``) and ``unimodal``: the MLP student alone; their
  test CCCs are the truth check (the test split is read by no decision).

Every run is its own fresh process; finished runs are read back from their metrics.json, so an interrupted
benchmark resumes. Prints a markdown table and writes ``OUT/summary.json``.
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

from stew.scoring import metrics

# transfer_payoff.py's RECOLA settings (BENCHMARKS.md, the unimodal RECOLA section's synth.yaml).
BASE = {"modality": "video_geo", "target": "arousal", "arch": "mlp", "d_model": 32, "clf_hidden": 64, "lr": 0.002,
        "max_epochs": 8, "patience": 3, "label_delay_s": 2.4, "threads": 1, "progress": False}
TEACHER = "audio"
GUARD_P = 0.1  # cmstew.guard_p's default, for both rules
SCENARIOS = {"A": "transfer pays", "B": "transfer does not pay", "N": "no difference (A/A)"}
ARMS = ("guarded", "transfer", "unimodal")
NULL_SEED = 1000  # scenario N's second arm: the same student, run seed s + 1000


def make_data(seed: int, speakers: int, minutes: float, labelled: int, root: Path) -> dict[str, dict]:
    """The seed's data folders: ``full`` (scenario B), ``spk<n>`` + ``spk<n>-unlabelled`` (scenario A)."""
    from stew.data.formats.native import write_native
    from stew.data.synth.affect import synth_recola

    full, lab, unl = root / "full", root / f"spk{labelled}", root / f"spk{labelled}-unlabelled"
    if not all((p / "manifest.yaml").is_file() for p in (full, lab, unl)):
        ds = synth_recola(seed, speakers, minutes)
        train = ds.groups("train")
        if not 1 <= labelled < len(train):
            raise SystemExit(f"--labelled {labelled}: the data have {len(train)} training speakers")
        keep = set(np.random.default_rng(seed).permutation(train)[:labelled])  # transfer_payoff.py's spk<n>
        for p in (full, lab, unl):
            shutil.rmtree(p, ignore_errors=True)
        write_native(ds, full)
        write_native(ds.replace_sequences(s for s in ds.sequences if s.split != "train" or s.group in keep), lab)
        write_native(ds.replace_sequences(s.without_labels() for s in ds.sequences
                                          if s.split == "train" and s.group not in keep), unl)
    return {"A": {"data": str(lab), "unlabelled": str(unl)}, "B": {"data": str(full), "unlabelled": None}}


def _one(job: tuple[str, str, int, str, str | None, str]) -> dict:
    import stew

    scenario, arm, seed, data, unlabelled, out = job
    if arm == "aa":
        return _null(seed, data, Path(out))
    done = Path(out) / "metrics.json"
    t0 = time.time()
    if not done.is_file():
        shutil.rmtree(out, ignore_errors=True)  # a run killed part-way: start it again
        extra = {"unlabelled": unlabelled} if unlabelled else {}
        if arm == "unimodal":
            stew.train(data, method="unimodal", out=out, seed=seed, **BASE)
        else:
            cm = {"cmstew": {"guard_folds": 0}} if arm == "transfer" else {}
            stew.train(data, method="cmstew", teacher=TEACHER, out=out, seed=seed, **BASE, **extra, **cm)
    r = json.loads(done.read_text())
    row = {"scenario": scenario, "arm": arm, "seed": seed, "test": r["test"]["ccc"], "wall_s": time.time() - t0}
    if arm == "guarded":
        row |= guard_decisions(Path(out), r)
    return row


def _null(seed: int, data: str, out: Path) -> dict:
    """Scenario N: the guard's folds and decision rules, both arms the unimodal student (seeds s, s + 1000)."""
    import pandas as pd

    import stew
    from stew.data.io import load_dataset
    from stew.training import stages
    from stew.training.result import RunResult, finished
    from stew.training.run import run

    t0 = time.time()
    ds = load_dataset(Path(data), feature_set=BASE["target"])  # as run() reads it
    folds = stages.guard_folds(ds, 5, seed, 10)  # the stew recipe's 5 guard folds, capped as the guard does
    if isinstance(folds, str):
        raise SystemExit(folds)
    frames: dict[int, list[pd.DataFrame]] = {seed: [], seed + NULL_SEED: []}
    per: dict[int, list[float]] = {s: [] for s in frames}
    for i, fold_ds in enumerate(folds):
        for s in frames:
            d = out / f"fold{i}" / f"seed{s}"
            if finished(d):
                r = RunResult.read(d)
            else:
                shutil.rmtree(d, ignore_errors=True)
                r = run(stew.train_config(data, "unimodal", out=d, seed=s, **BASE), fold_ds)
            frames[s].append(r.predictions.query("split == 'test'").assign(fold=i))
            per[s].append(float(r["test"][r["selection"]["key"]]))
    a, b = (pd.concat(frames[s], ignore_index=True) for s in frames)
    _, _, new_gain, new_p = stages.compare_arms(a, b, ds, [BASE["target"]], seed)
    boot_sd = _bootstrap_sd(a, b, stages._blocks(a, ds), seed)
    a_s, b_s = per[seed], per[seed + NULL_SEED]
    old_gain, old_p = float(np.mean(a_s) - np.mean(b_s)), float(metrics.paired_ttest(a_s, b_s)[1])
    return {"scenario": "N", "arm": "aa", "seed": seed, "test": math.nan, "wall_s": time.time() - t0,
            "folds": len(folds), "new_ship": bool(new_gain > 0 and new_p < GUARD_P), "new_gain": new_gain,
            "new_p": new_p, "old_ship": bool(old_gain > 0 and old_p < GUARD_P), "old_gain": old_gain, "old_p": old_p,
            "fold_transfer": a_s, "fold_unimodal": b_s, "boot_sd": boot_sd}


def _bootstrap_sd(a, b, blocks: np.ndarray, seed: int, n_boot: int = 300) -> float:
    """The spread of the new rule's resampled gains (its block bootstrap, stages.compare_arms), to set against
    the spread of the null gains across seeds: what the bootstrap sees and what it leaves out (training noise)."""
    t = BASE["target"]
    y, pa, pb = (f[c].to_numpy(np.float64) for f, c in ((a, f"y_{t}"), (a, f"pred_{t}"), (b, f"pred_{t}")))

    def gain(rows: np.ndarray) -> float:
        return float(metrics.ccc(y[rows], pa[rows]) - metrics.ccc(y[rows], pb[rows]))

    uniq, inverse = np.unique(blocks, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    return float(np.std([gain(np.concatenate([members[k] for k in rng.integers(0, uniq.size, uniq.size)]))
                         for _ in range(n_boot)]))


def guard_decisions(out: Path, r: dict) -> dict:
    """The new rule's decision as recorded, and the old rule's recomputed from the guard's fold runs."""
    g = r["recipe"]["guard"]
    folds = sorted((out / "guard").glob("fold*"), key=lambda p: int(p.name[4:]))
    per = {arm: [] for arm in ("transfer", "unimodal")}
    for f in folds:
        for arm in per:
            m = json.loads((f / arm / "metrics.json").read_text())
            per[arm].append(float(m["test"][m["selection"]["key"]]))
    gain = float(np.mean(per["transfer"]) - np.mean(per["unimodal"])) if folds else math.nan
    p = float(metrics.paired_ttest(per["transfer"], per["unimodal"])[1]) if folds else math.nan
    return {"folds": g["folds"], "new_ship": g["shipped"] == "transfer", "new_gain": g.get("mean_gain", math.nan),
            "new_p": g.get("p_value", math.nan), "old_ship": bool(gain > 0 and p < GUARD_P), "old_gain": gain,
            "old_p": p, "fold_transfer": per["transfer"], "fold_unimodal": per["unimodal"]}


def summarise(rows: list[dict]) -> list[dict]:
    by = {(r["scenario"], r["seed"], r["arm"]): r for r in rows}
    out = []
    for sc in SCENARIOS:
        seeds = sorted({s for (x, s, _) in by if x == sc})
        if sc == "N":
            out += [_null_summary([by[sc, s, "aa"] for s in seeds])] if seeds else []
            continue
        seeds = [s for s in seeds if all((sc, s, a) in by for a in ARMS)]
        if not seeds:
            continue
        tr = [by[sc, s, "transfer"]["test"] for s in seeds]
        un = [by[sc, s, "unimodal"]["test"] for s in seeds]
        gains = np.subtract(tr, un)
        guarded = [by[sc, s, "guarded"] for s in seeds]
        new, old = sum(g["new_ship"] for g in guarded), sum(g["old_ship"] for g in guarded)
        n = len(seeds)
        # A (transfer pays): refusing is the error; B (it does not): shipping is.
        new_err, old_err = (n - new, n - old) if sc == "A" else (new, old)
        out.append({
            "scenario": sc, "truth": SCENARIOS[sc], "seeds": n, "folds": sorted({g["folds"] for g in guarded}),
            "unimodal": metrics.format_mean_std(un, 3), "transfer": metrics.format_mean_std(tr, 3),
            "gain": float(gains.mean()), "gain_std": float(gains.std(ddof=1)) if n > 1 else math.nan,
            "gain_p": float(metrics.paired_ttest(tr, un)[1]), "test_wins": int((gains > 0).sum()),
            "new_ships": new, "old_ships": old, "error": "false refuse" if sc == "A" else "false ship",
            "new_error": new_err / n, "old_error": old_err / n,
            "new_p_median": float(np.median([g["new_p"] for g in guarded])),
            "old_p_median": float(np.nanmedian([g["old_p"] for g in guarded])) if any(
                not math.isnan(g["old_p"]) for g in guarded) else math.nan,
            "guarded_test": metrics.format_mean_std([g["test"] for g in guarded], 3),
        })
    return out


def _null_summary(rs: list[dict]) -> dict:
    n = len(rs)
    new, old = sum(r["new_ship"] for r in rs), sum(r["old_ship"] for r in rs)
    # Either arm may come out ahead under the null; a ship is a positive gain with p < 0.1 (one side).
    return {"scenario": "N", "truth": SCENARIOS["N"], "seeds": n, "folds": sorted({r["folds"] for r in rs}),
            "unimodal": "", "transfer": "", "gain": 0.0, "gain_std": math.nan, "gain_p": math.nan, "test_wins": None,
            "new_ships": new, "old_ships": old, "error": "false ship", "new_error": new / n, "old_error": old / n,
            "new_p_median": float(np.median([r["new_p"] for r in rs])),
            "old_p_median": float(np.nanmedian([r["old_p"] for r in rs])), "guarded_test": "",
            # Null gains across seeds (RMS around the true 0) against the bootstrap's within-seed spread.
            "null_gain_rms": float(np.sqrt(np.mean(np.square([r["new_gain"] for r in rs])))),
            "boot_sd_median": float(np.median([r["boot_sd"] for r in rs]))}


def table(summary: list[dict]) -> str:
    lines = ["| scenario (truth) | seeds | guard folds | unimodal test CCC | CM-StEW test CCC | gain (p over seeds) "
             "| test wins | new rule ships | old rule ships | error | new rule | old rule | guarded run's test CCC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        null = s["scenario"] == "N"
        gain = "0 by construction" if null else f"{s['gain']:+.3f} ± {s['gain_std']:.3f} (p = {s['gain_p']:.3g})"
        wins = "" if null else f"{s['test_wins']}/{s['seeds']}"
        lines.append(
            f"| {s['scenario']}: {s['truth']} | {s['seeds']} | {','.join(map(str, s['folds']))} | {s['unimodal']} "
            f"| {s['transfer']} | {gain} | {wins} "
            f"| {s['new_ships']}/{s['seeds']} (median p {s['new_p_median']:.3g}) "
            f"| {s['old_ships']}/{s['seeds']} (median p {s['old_p_median']:.3g}) | {s['error']} "
            f"| **{s['new_error']:.0%}** | **{s['old_error']:.0%}** | {s['guarded_test']} |")
    return "\n".join(lines)


def per_seed(rows: list[dict]) -> str:
    by = {(r["scenario"], r["seed"], r["arm"]): r for r in rows}
    lines = ["| scenario | seed | unimodal | CM-StEW | gain | guard: new gain, p, ships | old: fold gains, p, ships |",
             "|---|---|---|---|---|---|---|"]
    for sc, seed in sorted({(x, s) for (x, s, _) in by}):
        if sc == "N":
            g = by[sc, seed, "aa"]
            fg = ", ".join(f"{a - b:+.3f}" for a, b in zip(g["fold_transfer"], g["fold_unimodal"], strict=True))
            lines.append(f"| N | {seed} | | | 0 | {g['new_gain']:+.3f}, {g['new_p']:.3g}, "
                         f"{'yes' if g['new_ship'] else 'no'} | [{fg}], {g['old_p']:.3g}, "
                         f"{'yes' if g['old_ship'] else 'no'} |")
            continue
        if not all((sc, seed, a) in by for a in ARMS):
            continue
        g, t, u = by[sc, seed, "guarded"], by[sc, seed, "transfer"]["test"], by[sc, seed, "unimodal"]["test"]
        fg = ", ".join(f"{a - b:+.3f}" for a, b in zip(g["fold_transfer"], g["fold_unimodal"], strict=True))
        lines.append(f"| {sc} | {seed} | {u:.3f} | {t:.3f} | {t - u:+.3f} | {g['new_gain']:+.3f}, {g['new_p']:.3g}, "
                     f"{'yes' if g['new_ship'] else 'no'} | [{fg}], {g['old_p']:.3g}, "
                     f"{'yes' if g['old_ship'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/work/runs/guard-power"))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--speakers", type=int, default=27, help="synthetic speakers (thirds train / val / test)")
    ap.add_argument("--minutes", type=float, default=1.0, help="minutes per speaker")
    ap.add_argument("--labelled", type=int, default=3, help="scenario A: training speakers that keep their labels")
    ap.add_argument("--only", default="A,B,N", help="scenarios to run (A, B, N)")
    a = ap.parse_args()
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    tag = f"recola{a.speakers}x{a.minutes:g}min-spk{a.labelled}"
    t0 = time.time()
    folders = {s: make_data(s, a.speakers, a.minutes, a.labelled, a.out / tag / "data" / f"seed{s}") for s in seeds}
    print(f"data ready ({time.time() - t0:.0f}s)", flush=True)
    # Guarded runs first: they are the longest, so the pool ends on short ones.
    only = a.only.split(",")
    jobs = [(sc, arm, s, folders[s][sc]["data"], folders[s][sc]["unlabelled"],
             str(a.out / tag / sc / f"seed{s}" / arm))
            for arm in ARMS for s in seeds for sc in only if sc != "N"]
    jobs += [("N", "aa", s, folders[s]["B"]["data"], None, str(a.out / tag / "N" / f"seed{s}")) for s in seeds
             if "N" in only]
    rows = []
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for i, r in enumerate(pool.map(_one, jobs)):
            rows.append(r)
            extra = (f" · guard new {'ship' if r['new_ship'] else 'refuse'} (p {r['new_p']:.3g}), old "
                     f"{'ship' if r['old_ship'] else 'refuse'} (p {r['old_p']:.3g})") if "new_ship" in r else ""
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:.0f}s] {r['scenario']} seed{r['seed']} {r['arm']}: "
                  f"test CCC {r['test']:.3f} ({r['wall_s']:.0f}s){extra}", flush=True)
    summary = summarise(rows)
    (a.out / tag / "summary.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    print(f"\n{tag}, seeds {seeds.start}-{seeds.stop - 1}, {time.time() - t0:.0f}s\n")
    print(table(summary))
    for x in summary:
        if x["scenario"] == "N":
            print(f"\nN: pooled held-out gains of two identical students spread {x['null_gain_rms']:.3f} (RMS over "
                  f"seeds); the block bootstrap's spread within a seed: median {x['boot_sd_median']:.3f}")
    print()
    print(per_seed(rows))


if __name__ == "__main__":
    main()
