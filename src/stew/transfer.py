"""``stew transfer``: rank the modalities, then teach every clearly weaker modality with a stronger one.

For each target, a pair (stronger, weaker) is run when the stronger modality's mean validation score
beats the weaker one's by at least ``gap``. CM-StEW's alpha and beta are selected on validation with
the first seed (the grid), then fixed for the other seeds. The ranking's unimodal runs serve as the
stage-1 teachers and as the unimodal baseline, so both arms share data, carve and seeds, and the
p-value is a paired t-test over seeds.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stew import metrics
from stew.config import TrainConfig
from stew.rank import RankResult, rank_modalities, render_ranking
from stew.training import run

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

    @property
    def p_value(self) -> float:
        return metrics.paired_ttest(self.transfer, self.unimodal)[1]


def clear_pairs(ranked: RankResult, target: str, gap: float) -> list[tuple[str, str]]:
    """(stronger, weaker) pairs whose mean validation gap is at least ``gap``."""
    mean = {m: float(np.mean(v)) for m, v in ranked.val[target].items()}
    order = ranked.ranking(target)
    return [(s, w) for i, s in enumerate(order) for w in order[i + 1 :] if mean[s] - mean[w] >= gap]


def run_over_seeds(config_for_seed: Callable[[int], TrainConfig], seeds: list[int], reuse: bool = False) -> list[dict]:
    """Run one configuration over seeds; each result is ``run``'s dict (or its ``metrics.json``).

    A CM-StEW grid (alpha, beta) is searched on the first seed's validation only, and the chosen values
    are fixed for the other seeds. With ``reuse``, a run whose ``metrics.json`` exists is read back
    instead of trained again, so an interrupted benchmark resumes.
    """
    results: list[dict] = []
    for s in seeds:
        cfg = config_for_seed(s)
        if cfg.method == "cmstew" and results:
            first = results[0]["method"]
            cfg = cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(
                update={"alpha": first["alpha"], "beta": first["beta"]})})
        done = cfg.out / "metrics.json" if cfg.out is not None else None
        results.append(json.loads(done.read_text()) if reuse and done and done.exists() else run(cfg))
    return results


def transfer(
    base: TrainConfig, seeds: list[int], out: Path | None, console: Console, gap: float | None = None
) -> list[PairResult]:
    work = out or Path(tempfile.mkdtemp(prefix="stew-transfer-"))
    ranked = rank_modalities(base, seeds, work / "rank", console)
    render_ranking(ranked, console)
    gap = DEFAULT_GAP.get(ranked.metric, 0.05) if gap is None else gap
    console.print(f"transfer pairs: stronger beats weaker by >= {gap:g} validation {ranked.metric}")
    results = []
    for target in ranked.val:
        for strong, weak in clear_pairs(ranked, target, gap):
            def config(s: int, weak: str = weak, strong: str = strong, target: str = target) -> TrainConfig:
                return base.model_copy(update={
                    "method": "cmstew", "modality": weak, "teacher": strong, "seed": s, "progress": False,
                    "target": None if target == "label" else target,
                    "out": work / "cmstew" / target / f"{weak}+{strong}" / f"seed{s}",
                    "cmstew": base.cmstew.model_copy(
                        update={"teacher_run": work / "rank" / target / strong / f"seed{s}"}),
                })

            runs = run_over_seeds(config, seeds)
            scores = [r["val"][ranked.metric] for r in runs]
            chosen = {"alpha": runs[0]["method"]["alpha"], "beta": runs[0]["method"]["beta"]}
            results.append(PairResult(target, weak, strong, ranked.val[target][weak], scores, **chosen))
    render_transfer(results, ranked.metric, console)
    if out is not None:
        rows = [{**r.__dict__, "p_value": r.p_value} for r in results]
        (out / "transfer.json").write_text(json.dumps(rows, indent=2))
    return results


def render_transfer(results: list[PairResult], metric: str, console: Console) -> None:
    table = Table(title=f"Weaker unimodal vs CM-StEW, validation {metric} (mean ± std over seeds)")
    for col in ("target", "weaker (+stronger)", "unimodal", "CM-StEW", "delta", "paired t-test p", "alpha, beta"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.target, f"{r.weak} (+{r.strong})", metrics.format_mean_std(r.unimodal, 3),
            metrics.format_mean_std(r.transfer, 3), f"{np.mean(r.transfer) - np.mean(r.unimodal):+.3f}",
            f"{r.p_value:.3f}", f"{r.alpha:g}, {r.beta:g}",
        )
    console.print(table)
