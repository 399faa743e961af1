"""``stew transfer``: rank the modalities, then teach every clearly weaker modality with a stronger one.

For each target, a pair (stronger, weaker) is run when the stronger modality's mean validation score
beats the weaker one's by at least ``gap``. The ranking's unimodal runs are the unimodal baseline, so
both arms share data, carve and seeds, and the p-value is a paired t-test over seeds. With the stew
recipe (default) the ranking uses the recipe's student architecture and every CM-StEW run cross-fits
its own teachers and applies the guard (its "CM-StEW" score is what the guard shipped); with
``--recipe paper`` the ranking's runs are also the stage-1 teachers, and alpha and beta are selected on
validation with the first seed (the grid), then fixed for the other seeds.

Every choice reads validation only. The table's headline (and its p-value) is test where the data
labels a test split, read once after the choices, with validation beside it; else validation, said so.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stew.config import TrainConfig
from stew.errors import DataError
from stew.experiments.engines import LocalEngine, RayEngine, run_configs
from stew.experiments.rank import RankResult, rank_modalities, render_ranking
from stew.experiments.workers import dataset
from stew.methods.cmstew import recipe_arch
from stew.scoring import metrics
from stew.training.fitcache import FITS
from stew.training.run import run
from stew.util.atomic import write_text_atomic
from stew.util.progress import Runs

DEFAULT_GAP = {"ccc": 0.05, "ccc_mean": 0.05, "f1_weighted": 5.0, "acc": 5.0}


@dataclass
class PairResult:
    target: str
    weak: str
    strong: str
    unimodal: list[float]
    transfer: list[float]
    alpha: float
    beta: float
    # Per-seed test scores; empty when the data has no labelled test split.
    unimodal_test: list[float] = field(default_factory=list)
    transfer_test: list[float] = field(default_factory=list)
    # The floor: the linear model on the weaker modality, per seed (same carves), validation and test.
    linear: list[float] = field(default_factory=list)
    linear_test: list[float] = field(default_factory=list)
    # Per seed, what the stew recipe's guard shipped ("transfer" or "unimodal"; the paper recipe: transfer).
    shipped: list[str] = field(default_factory=list)
    # The pair's modalities the leakage probe flagged (their training features look fitted on the labels).
    flagged: list[str] = field(default_factory=list)

    @property
    def split(self) -> str:
        """The headline split: test when every seed of both arms has a test score, else val."""
        n = len(self.unimodal)
        return "test" if n and len(self.unimodal_test) == n and len(self.transfer_test) == len(self.transfer) else "val"

    def scores(self, split: str | None = None) -> tuple[list[float], list[float]]:
        """(unimodal, transfer) per seed on ``split`` (default the headline)."""
        if (split or self.split) == "test":
            return self.unimodal_test, self.transfer_test
        return self.unimodal, self.transfer

    def floor(self, split: str | None = None) -> list[float]:
        """The linear floor per seed on ``split`` (default the headline)."""
        return self.linear_test if (split or self.split) == "test" else self.linear

    @property
    def p_value(self) -> float:
        """Paired t-test over seeds on the headline split (validation chose the pair, epochs and grid)."""
        uni, tr = self.scores()
        return metrics.paired_ttest(tr, uni)[1]


def clear_pairs(ranked: RankResult, target: str, gap: float) -> list[tuple[str, str]]:
    """(stronger, weaker) pairs whose mean validation gap is at least ``gap``."""
    mean = {m: float(np.mean(v)) for m, v in ranked.val[target].items()}
    order = ranked.ranking(target)
    return [(s, w) for i, s in enumerate(order) for w in order[i + 1 :] if mean[s] - mean[w] >= gap]


def run_over_seeds(
    config_for_seed: Callable[[int], TrainConfig], seeds: list[int], reuse: bool = False,
    done: Callable[[], None] | None = None,
) -> list[dict]:
    """Run one configuration over seeds; each result is ``run``'s dict (or its ``metrics.json``).

    A CM-StEW grid (alpha, beta) is searched on the first seed's validation only, and the chosen values
    are fixed for the other seeds. With ``reuse``, a run whose ``metrics.json`` exists is read back
    instead of trained again, so an interrupted benchmark resumes.
    """
    results: list[dict] = []
    for s in seeds:
        cfg = config_for_seed(s)
        if results:
            cfg = fix_grid(cfg, results[0])
        finished = cfg.out / "metrics.json" if cfg.out is not None else None
        # Only the public record is kept: every run's model and prepared data would pile up in memory.
        results.append(json.loads(finished.read_text()) if reuse and finished and finished.exists()
                       else run(cfg).metrics)
        if done is not None:
            done()
    return results


def fix_grid(cfg: TrainConfig, first: dict) -> TrainConfig:
    """A later seed's CM-StEW configuration with the alpha and beta the first seed's run chose on validation."""
    if cfg.method != "cmstew":
        return cfg
    # From the config, not the method record: the stew recipe's guard may have shipped unimodal.
    chosen = first["config"]["cmstew"]
    return cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(
        update={"alpha": chosen["alpha"], "beta": chosen["beta"]})})


def _test_scores(runs: list[dict], metric: str) -> list[float]:
    """``metric`` on test per run; none where the data has no labelled test split."""
    return [r["test"][metric] for r in runs if metric in (r.get("test") or {})]


def transfer(
    base: TrainConfig, seeds: list[int], out: Path | None, console: Console, gap: float | None = None,
    engine: LocalEngine | RayEngine | None = None,
) -> list[PairResult]:
    """Rank, then run every clear pair; the runs execute on ``engine`` (default: one after another here).

    The runs of all pairs go to the engine together, in two waves: every linear floor and every pair's
    first seed (which searches CM-StEW's grid), then the other seeds with the chosen alpha and beta.
    """
    engine = engine or LocalEngine()
    if out is None and engine.kind == "ray":
        raise DataError("--engine ray needs --out: a folder every node of the cluster sees (the runs' folders)")
    work = out or Path(tempfile.mkdtemp(prefix="stew-transfer-"))
    stew_recipe = base.recipe == "stew"
    if stew_recipe and "arch" not in base.model_fields_set:
        # The ranking's unimodal runs are the comparison arm: the same architecture as the recipe's student.
        data = dataset(str(base.data), base.feature_set or base.target, base.fold)  # cached: rank reuses it
        base = base.model_copy(update={"arch": recipe_arch(data)})
    with engine:
        ranked = rank_modalities(base, seeds, work / "rank", console, engine)
        # Every CM-StEW run validates where the ranking's unimodal runs did: the comparison is on the same groups.
        base = base.model_copy(update={**(ranked.validation or {}), "flagged": (ranked.leakage or {}).get("flagged")})
        if base.fit_cache is None:  # the stew recipe's cross-fitted teachers of a stronger modality train once per seed
            base = base.model_copy(update={"fit_cache": work / FITS})
        render_ranking(ranked, console)
        gap = DEFAULT_GAP.get(ranked.metric, 0.05) if gap is None else gap
        console.print(f"transfer pairs: stronger beats weaker by >= {gap:g} validation {ranked.metric}")
        pairs = [(target, strong, weak) for target in ranked.val for strong, weak in clear_pairs(ranked, target, gap)]
        floors = list(dict.fromkeys((target, weak) for target, _, weak in pairs))

        def floor_cfg(target: str, weak: str, s: int) -> TrainConfig:
            # The floor a transfer must clear: the linear model on the weaker modality, same seeds and carves.
            return base.model_copy(update={
                "method": "linear", "modality": weak, "teacher": None, "seed": s, "progress": False,
                "target": None if target == "label" else target, "out": work / "linear" / target / weak / f"seed{s}",
            })

        def pair_cfg(target: str, strong: str, weak: str, s: int) -> TrainConfig:
            return base.model_copy(update={
                "method": "cmstew", "modality": weak, "teacher": strong, "seed": s, "progress": False,
                "target": None if target == "label" else target,
                "out": work / "cmstew" / target / f"{weak}+{strong}" / f"seed{s}",
                # The paper recipe's teacher is the ranking's run; the stew recipe cross-fits its own.
                "cmstew": base.cmstew if stew_recipe else base.cmstew.model_copy(
                    update={"teacher_run": work / "rank" / target / strong / f"seed{s}"}),
            })

        with Runs(console, "transfer runs", (len(pairs) + len(floors)) * len(seeds)) as bar:
            def tick(name: str, _r: dict) -> None:
                bar.label = name
                bar.advance()

            # Wave 1: the floors and each pair's first seed (it also searches the alpha/beta grid: the longest).
            wave1 = [(f"{t}: linear floor on {w} / seed {s}", floor_cfg(t, w, s)) for t, w in floors for s in seeds]
            wave1 += [(f"{t}: CM-StEW {w} (+{st}) / seed {seeds[0]}", pair_cfg(t, st, w, seeds[0]))
                      for t, st, w in pairs]
            done1 = run_configs(engine, wave1, tick)
            floor_runs = {fw: done1[i * len(seeds):(i + 1) * len(seeds)] for i, fw in enumerate(floors)}
            first = dict(zip(pairs, done1[len(floors) * len(seeds):], strict=True))
            # Wave 2: the other seeds, with the alpha and beta the first seed chose on validation.
            wave2 = [(f"{t}: CM-StEW {w} (+{st}) / seed {s}", fix_grid(pair_cfg(t, st, w, s), first[t, st, w]))
                     for t, st, w in pairs for s in seeds[1:]]
            done2 = iter(run_configs(engine, wave2, tick))
    results = []
    for target, strong, weak in pairs:
        runs = [first[target, strong, weak], *(next(done2) for _ in seeds[1:])]
        floor = floor_runs[target, weak]
        scores = [r["val"][ranked.metric] for r in runs]
        chosen = {"alpha": runs[0]["config"]["cmstew"]["alpha"], "beta": runs[0]["config"]["cmstew"]["beta"]}
        results.append(PairResult(
            target, weak, strong, ranked.val[target][weak], scores, **chosen,
            unimodal_test=ranked.test[target].get(weak, []), transfer_test=_test_scores(runs, ranked.metric),
            linear=[r["val"][ranked.metric] for r in floor], linear_test=_test_scores(floor, ranked.metric),
            shipped=[r.get("recipe", {}).get("guard", {}).get("shipped", "transfer") for r in runs],
            flagged=[m for m in (weak, strong) if m in base.flagged],
        ))
    render_transfer(results, ranked.metric, console)
    if out is not None:
        # "unimodal"/"transfer" are validation scores, "*_test" test scores; p_value is on "split".
        rows = [{**r.__dict__, "split": r.split, "p_value": r.p_value} for r in results]
        write_text_atomic(out / "transfer.json", json.dumps(rows, indent=2))
    return results


def render_transfer(results: list[PairResult], metric: str, console: Console) -> None:
    # One headline for the table: test only when every pair has it, so rows are never on mixed splits.
    split = "test" if results and all(r.split == "test" for r in results) else "val"
    if split == "test":
        where = "on test (validation beside: it chose the pairs, epochs and alpha/beta)"
    else:
        where = "on validation only: the data has no labelled test split (validation also chose the models)"
    table = Table(title=f"Weaker unimodal vs CM-StEW, {metric} {where}; mean ± std over seeds")
    name = "test" if split == "test" else "val"
    heads = [f"unimodal ({name})", f"CM-StEW ({name})", "delta", f"paired t-test p ({name})",
             f"linear floor ({name})", "CM-StEW - linear (p)"]
    if split == "test":
        heads += ["unimodal (val)", "CM-StEW (val)"]
    for col in ("target", "weaker (+stronger)", *heads, "alpha, beta", "guard shipped"):
        table.add_column(col)
    for r in results:
        uni, tr = r.scores(split)
        p = metrics.paired_ttest(tr, uni)[1]
        lin = r.floor(split)
        p_lin = metrics.paired_ttest(tr, lin)[1] if len(lin) == len(tr) else float("nan")
        cells = [metrics.format_mean_std(uni, 3), metrics.format_mean_std(tr, 3),
                 f"{np.mean(tr) - np.mean(uni):+.3f}", f"{p:.3f}",
                 metrics.format_mean_std(lin, 3) if lin else "-",
                 f"{np.mean(tr) - np.mean(lin):+.3f} ({p_lin:.3f})" if lin else "-"]
        if split == "test":
            cells += [metrics.format_mean_std(r.unimodal, 3), metrics.format_mean_std(r.transfer, 3)]
        # The stew recipe's guard may ship the unimodal student for a seed: CM-StEW's column is what shipped.
        shipped = f"transfer {r.shipped.count('transfer')}/{len(r.shipped)}" if r.shipped else "-"
        table.add_row(r.target, f"{r.weak} (+{r.strong})", *cells, f"{r.alpha:g}, {r.beta:g}", shipped)
    console.print(table)
