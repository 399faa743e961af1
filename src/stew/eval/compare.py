"""Significance of the difference between two sets of finished runs (``stew compare``,
docs/methods/README.md#significance).

Two kinds of test, both on one partition (``split``) of each run's ``metrics.json``:

- **run for run** (``pairs``, when both sets have as many runs; ``A_i`` against ``B_i``): regression,
  Fisher's r-to-z test per CCC key, CCC taken as the correlation and ``n`` as the partition's step
  count; classification, the pooled two-proportion z-test on the accuracy. These are the tests of
  the papers. Caveat: the steps of one recording are autocorrelated (frame-level labels at 40 ms
  steps barely change from one step to the next), so for frame-level data ``n`` overstates the
  number of independent samples by far and the Fisher test's p is too small.
- **set against set** (``sets``, when each set has at least 2 runs): a t-test over the runs' scores,
  paired when both sets hold the same seeds in the same order, Welch's otherwise. Each run is one
  sample, so the autocorrelation of steps does not inflate this evidence; with few seeds it is
  merely weak.

Every row's ``direction`` reads ``"A > B"`` or ``"A < B"`` only where the test finds the difference
significant (p < ``alpha``, .05 by default, the papers' threshold); otherwise it reads ``"no significant
difference"`` (``"="`` where the two values are equal). A bare ``A < B`` beside p = 0.76 would read as
a finding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table

from stew.errors import DataError
from stew.scoring import metrics
from stew.util.atomic import write_text_atomic

TAILS = ("two", "greater", "less", "one")
ALPHA = 0.05  # significance level of every row's direction (the papers' threshold)
NOT_SIGNIFICANT = "no significant difference"
SPLITS = ("val", "test")


def load_run(path: str | Path) -> dict:
    """Read and check a finished run folder's ``metrics.json`` (needs a non-empty ``val`` block)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("run folder not found", file=path)
    f = path / "metrics.json"
    if not f.is_file():
        raise DataError("not a finished stew run (no metrics.json)", file=path)
    try:
        run = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"unreadable metrics.json ({e})", file=f) from None
    if not isinstance(run, dict) or not isinstance(run.get("val"), dict) or not run["val"]:
        raise DataError("metrics.json has no 'val' metrics", file=f)
    for split in SPLITS:
        if not isinstance(run.get(split, {}), dict):
            raise DataError(f"metrics.json: '{split}' is not an object", file=f)
    return run


def task_kind(block: dict) -> str:
    """``"regression"`` or ``"classification"`` from a partition's metric keys."""
    if "ccc" in block or any(k.startswith("ccc_") for k in block):
        return "regression"
    if "acc" in block:
        return "classification"
    raise ValueError(f"neither CCC nor accuracy among the metrics {sorted(block)}")


def ccc_keys(block: dict) -> list[str]:
    """The per-target CCC keys: ``["ccc"]`` (one target) or ``ccc_<t>`` without ``ccc_mean``, ``ccc_seq*``."""
    if "ccc" in block:
        return ["ccc"]
    return sorted(k for k in block if k.startswith("ccc_") and k != "ccc_mean" and not k.startswith("ccc_seq"))


def _direction(a: float, b: float, p: float, alpha: float) -> str:
    """Which side is better, said only where the test backs it (p < alpha)."""
    if a == b:
        return "="
    if math.isnan(p) or p >= alpha:
        return NOT_SIGNIFICANT
    return "A > B" if a > b else "A < B"


def _one_tailed(t: float, p_two: float, tail: str) -> float:
    """Turn a two-tailed p of a symmetric statistic ``t`` into ``tail``'s p."""
    if tail == "two" or math.isnan(p_two):
        return p_two
    upper = t > 0 if tail in ("greater", "one") else t < 0
    return p_two / 2.0 if upper else 1.0 - p_two / 2.0


def _seed(run: dict) -> Any:
    cfg = run.get("config")
    return cfg.get("seed") if isinstance(cfg, dict) else None


def compare(
    runs_a: list[Path],
    runs_b: list[Path],
    split: str | None = None,
    metric: str | None = None,
    tail: str = "two",
    alpha: float = ALPHA,
) -> dict:
    """Test the runs ``runs_a`` against ``runs_b``; see the module docstring for the tests.

    ``split``: ``"val"`` or ``"test"``; default test when every run has test metrics, else val.
    ``metric``: one key or several, comma-separated; default every per-target ``ccc`` key
    (regression) or ``acc`` (classification). For classification the run-for-run z-test is always
    on ``acc``; ``metric`` picks what the t-test over runs compares. ``tail``: ``"two"``,
    ``"greater"`` (A > B) or ``"less"``. ``alpha``: the level below which a row names a direction.
    Returns ``{"split", "tail", "alpha", "task", "keys", "pairs", "sets"}``.
    """
    if not runs_a or not runs_b:
        raise DataError("need at least one run on each side of --vs")
    if tail not in TAILS:
        raise DataError(f"--tail must be two, greater or less, not {tail!r}")
    paths_a, paths_b = [Path(p) for p in runs_a], [Path(p) for p in runs_b]
    loaded = {p: load_run(p) for p in paths_a + paths_b}
    every = paths_a + paths_b

    if split is None:
        split = "test" if all(loaded[p].get("test") for p in every) else "val"
    elif split not in SPLITS:
        raise DataError(f"--split must be val or test, not {split!r}")
    blocks: dict[Path, dict] = {}
    for p in every:
        block = loaded[p].get(split) or {}
        if not block:
            raise DataError(f"no {split} metrics in this run", file=p)
        blocks[p] = block

    kinds = {}
    for p in every:
        try:
            kinds[p] = task_kind(blocks[p])
        except ValueError as e:
            raise DataError(str(e), file=p / "metrics.json") from None
    first = every[0]
    for p in every[1:]:
        if kinds[p] != kinds[first]:
            raise DataError(f"runs differ in task: {first} is {kinds[first]}, {p} is {kinds[p]}")
    kind = kinds[first]
    targets = ccc_keys(blocks[first]) if kind == "regression" else ["acc"]
    if kind == "regression":
        for p in every[1:]:
            theirs = ccc_keys(blocks[p])
            if theirs != targets:
                raise DataError(
                    f"runs differ in targets: {first} has {', '.join(targets)}, {p} has {', '.join(theirs)}"
                )

    if metric:
        keys = [k.strip() for k in metric.split(",") if k.strip()]
    else:
        keys = targets
    pair_keys = keys if kind == "regression" else ["acc"]
    for k in dict.fromkeys(keys + pair_keys):
        for p in every:
            v = blocks[p].get(k)
            if k == "n" or isinstance(v, bool) or not isinstance(v, int | float):
                have = ", ".join(x for x in blocks[p] if x != "n")
                raise DataError(f"no {split} metric {k!r} in this run (have {have})", file=p)
    for p in every:
        n = blocks[p].get("n")
        if isinstance(n, bool) or not isinstance(n, int):
            raise DataError(f"no step count 'n' in the {split} metrics", file=p / "metrics.json")

    ztail = cast(metrics.Tail, tail)
    pairs = []
    if len(paths_a) == len(paths_b):
        for pa, pb in zip(paths_a, paths_b, strict=True):
            ba, bb = blocks[pa], blocks[pb]
            for k in pair_keys:
                va, vb = float(ba[k]), float(bb[k])
                na, nb = int(ba["n"]), int(bb["n"])
                if kind == "regression":
                    z, p = metrics.fisher_r_to_z(va, na, vb, nb, ztail)
                else:
                    z, p = metrics.two_proportion_ztest(va / 100.0, na, vb / 100.0, nb, ztail)
                pairs.append({
                    "run_a": str(pa), "run_b": str(pb), "key": k, "value_a": va, "value_b": vb,
                    "n_a": na, "n_b": nb, "test": "Fisher z" if kind == "regression" else "2-prop z",
                    "z": z, "p": p, "direction": _direction(va, vb, p, alpha),
                })

    sets = []
    if len(paths_a) >= 2 and len(paths_b) >= 2:
        seeds_a, seeds_b = [_seed(loaded[p]) for p in paths_a], [_seed(loaded[p]) for p in paths_b]
        paired = len(paths_a) == len(paths_b) and None not in seeds_a and seeds_a == seeds_b
        for k in keys:
            xa = [float(blocks[p][k]) for p in paths_a]
            xb = [float(blocks[p][k]) for p in paths_b]
            t, p2 = metrics.paired_ttest(xa, xb) if paired else metrics.unpaired_ttest(xa, xb)
            p = _one_tailed(t, p2, tail)
            (ma, sa), (mb, sb) = metrics.mean_std(xa), metrics.mean_std(xb)
            sets.append({
                "key": k, "mean_a": ma, "std_a": sa, "mean_b": mb, "std_b": sb,
                "n_a": len(xa), "n_b": len(xb), "test": "paired t" if paired else "Welch t",
                "seeds_a": seeds_a, "seeds_b": seeds_b,
                "t": t, "p": p, "direction": _direction(ma, mb, p, alpha),
            })

    return {"split": split, "tail": tail, "alpha": alpha, "task": kind, "keys": keys, "pairs": pairs, "sets": sets}


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _p(p: float) -> str:
    """p with 3 decimals (or in e-notation below .001); a ``*`` marks p < .05, the papers' threshold."""
    if math.isnan(p):
        return "n/a"
    return (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}") + ("*" if p < ALPHA else " ")


def render(result: dict, console: Console) -> None:
    """Print the run-for-run and the set-against-set tables."""
    regression = result["task"] == "regression"
    digits = 3 if regression else 1
    tail = {"two": "two-tailed", "greater": "one-tailed, A > B", "one": "one-tailed, A > B",
            "less": "one-tailed, A < B"}[result["tail"]]
    if result["pairs"]:
        test = "Fisher r-to-z" if regression else "two-proportion z-test on acc"
        table = Table(title=f"Run for run: {test}, {result['split']}, {tail}", caption="* p < .05")
        for col in ("run A", "run B", "metric", "A", "B", "z", "p", "A vs B"):
            table.add_column(col, justify="right" if col in ("A", "B", "z", "p") else "left", overflow="fold")
        for r in result["pairs"]:
            table.add_row(r["run_a"], r["run_b"], r["key"], _num(r["value_a"], digits), _num(r["value_b"], digits),
                          _num(r["z"], 2), _p(r["p"]), r["direction"])
        console.print(table)
    if result["sets"]:
        first = result["sets"][0]
        table = Table(title=f"Set against set: {first['test']}-test over runs, {result['split']}, {tail}",
                      caption="mean ± std over runs; * p < .05")
        for col in ("metric", f"A ({first['n_a']} runs)", f"B ({first['n_b']} runs)", "t", "p", "A vs B"):
            table.add_column(col, justify="right" if col in ("t", "p") else "left")
        for r in result["sets"]:
            table.add_row(
                r["key"],
                f"{_num(r['mean_a'], digits)} ± {_num(r['std_a'], digits)}",
                f"{_num(r['mean_b'], digits)} ± {_num(r['std_b'], digits)}",
                _num(r["t"], 2), _p(r["p"]), r["direction"],
            )
        console.print(table)
    if not result["pairs"] and not result["sets"]:
        console.print("nothing to test: give as many runs on each side, or at least 2 on each side")
    if regression and result["pairs"]:
        console.print("[dim]note: steps of one recording are autocorrelated, so the Fisher test's n overstates "
                      "the evidence for frame-level data; the t-test over seeds does not share that problem.[/dim]")


def to_json(result: dict) -> str:
    """``result`` as strict JSON (NaN becomes null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(result), indent=2, allow_nan=False)


def write_json(result: dict, out: Path) -> None:
    """Write ``result`` to ``out`` atomically (a temporary sibling, then a rename)."""
    write_text_atomic(out, to_json(result) + "\n")
