"""Modality ranking: train every modality's unimodal model over seeds and order them on validation.

The ranking (never the test scores) decides which modality teaches which in ``stew transfer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stew.config import TrainConfig
from stew.data.io import data_fingerprint
from stew.data.leakage import warning_line
from stew.errors import DataError
from stew.experiments.engines import LocalEngine, RayEngine, run_configs
from stew.experiments.workers import dataset
from stew.scoring import metrics
from stew.training.resolve import choose_validation
from stew.util.atomic import write_text_atomic
from stew.util.progress import Runs


@dataclass
class RankResult:
    """Per target: modality -> per-seed validation and test scores of the selection metric."""

    metric: str
    val: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    test: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    leakage: dict | None = None  # the leakage probe's verdict on the modalities (stew.data.leakage)
    validation: dict | None = None  # where validation came from: {"val_from": ..., "val_groups": ...}

    def ranking(self, target: str) -> list[str]:
        v = self.val[target]
        return sorted(v, key=lambda m: -sum(v[m]) / len(v[m]))

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "leakage": self.leakage,
            "validation": self.validation,
            # The ranking (and every choice downstream) reads "val"; "test" is reported only, and is
            # empty where the data has no labelled test split.
            "ranked_on": "val",
            "targets": {
                t: {"ranking": self.ranking(t), "val": self.val[t], "test": self.test[t]} for t in self.val
            },
        }


def rank_modalities(base: TrainConfig, seeds: list[int], out: Path | None, console: Console,
                    engine: LocalEngine | RayEngine | None = None) -> RankResult:
    """Rank with ``base.method``: ``unimodal`` (the deep baseline) or ``linear`` (seconds per modality).

    The runs execute on ``engine`` (default: one after another in this process; stew.experiments.engines).
    """
    if base.method not in ("unimodal", "linear"):
        raise DataError(f"modalities are ranked by --method unimodal or linear, not {base.method}")
    with engine or LocalEngine() as eng:  # started (a cluster reached) before the data are read
        return _rank(base, seeds, out, console, eng)


def _rank(base: TrainConfig, seeds: list[int], out: Path | None, console: Console,
          eng: LocalEngine | RayEngine) -> RankResult:
    first = dataset(str(base.data), base.feature_set or base.target, base.fold)  # runs in this process reuse it
    targets: list[str | None] = [base.target] if base.target else list(first.targets)
    if first.task != "regression":
        targets = [None]
    modalities = list(first.modalities)
    # One validation source for every modality, so that they are ranked on the same groups: from test
    # where any of them looks fitted on its own training labels (and the data labels a test split).
    base, verdict = choose_validation(base, first, modalities, data_fingerprint(base.data))
    warning = warning_line(verdict, modalities)
    if warning:
        console.print(warning, markup=False, highlight=False)
    jobs = [(t, m, s) for t in targets for m in modalities for s in seeds]
    runs = [(f"{t or 'label'} / {m} / seed {s}", base.model_copy(update={
        "method": base.method, "modality": m, "target": t, "seed": s, "progress": False,
        "out": (out / (t or "label") / m / f"seed{s}") if out else None,
    })) for t, m, s in jobs]
    res = RankResult(metric="", leakage=verdict.to_json(),
                     validation={"val_from": base.val_from, "val_groups": base.val_groups})

    def key_of(r: dict, t: str | None) -> str:
        # The run's own selection record; a --cv summary has none (same rule as stew.experiments.tune).
        return r.get("selection", {}).get("key") or metrics.selection_metric(first.task, [t] if t else first.targets)

    # Runs done / total, time elapsed and time left (a line per run off a terminal): a 5-seed ranking
    # of deep models takes minutes.
    with Runs(console, "ranking modalities", len(jobs)) as bar:
        if eng.capacity == 1:
            bar.describe(runs[0][0])

        def done(name: str, r: dict) -> None:
            i = next(k for k, (n, _) in enumerate(runs) if n == name)
            t = jobs[i][0]
            bar.label = name
            bar.advance(f"val {key_of(r, t)} {r['val'][key_of(r, t)]:.3f}")
            if eng.capacity == 1 and i + 1 < len(runs):
                bar.describe(runs[i + 1][0])

        results = run_configs(eng, runs, done)
    for (t, m, _), r in zip(jobs, results, strict=True):
        key = key_of(r, t)
        res.metric = res.metric or key
        tk = t or "label"
        res.val.setdefault(tk, {}).setdefault(m, []).append(r["val"][key])
        if r["test"]:
            res.test.setdefault(tk, {}).setdefault(m, []).append(r["test"][key])
    for t in res.val:
        res.test.setdefault(t, {})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "rank.json", json.dumps(res.to_json(), indent=2))
    return res


def render_ranking(res: RankResult, console: Console, digits: int = 3) -> None:
    for t in res.val:
        # Say when test is missing, so a "-" column is not read as a failed run.
        untested = "" if any(res.test[t].values()) else "; test: the data has no labelled test split"
        table = Table(title=f"Modality ranking ({t}): {res.metric}, mean ± std over seeds; ranked on validation"
                            f"{untested}")
        for col in ("rank", "modality", f"val {res.metric}", f"test {res.metric}", "seeds"):
            table.add_column(col)
        for i, m in enumerate(res.ranking(t), 1):
            test = res.test[t].get(m)
            table.add_row(
                str(i), m, metrics.format_mean_std(res.val[t][m], digits),
                metrics.format_mean_std(test, digits) if test else "-", str(len(res.val[t][m])),
            )
        console.print(table)
