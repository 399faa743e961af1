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
from stew.data.io import data_fingerprint, load_dataset
from stew.data.leakage import warning_line
from stew.errors import DataError
from stew.scoring import metrics
from stew.training.resolve import choose_validation
from stew.training.run import run
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


def rank_modalities(base: TrainConfig, seeds: list[int], out: Path | None, console: Console) -> RankResult:
    """Rank with ``base.method``: ``unimodal`` (the deep baseline) or ``linear`` (seconds per modality)."""
    if base.method not in ("unimodal", "linear"):
        raise DataError(f"modalities are ranked by --method unimodal or linear, not {base.method}")
    first = load_dataset(base.data, feature_set=base.feature_set or base.target)
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
    # Loaded once per target: AVEC RECOLA keeps a separate feature set per target.
    data = {t: first if (base.feature_set or t) == (base.feature_set or base.target) else
            load_dataset(base.data, feature_set=base.feature_set or t) for t in targets}
    jobs = [(t, m, s) for t in targets for m in modalities for s in seeds]
    res: RankResult | None = None
    # Runs done / total, time elapsed and time left (a line per run off a terminal): a 5-seed ranking
    # of deep models takes minutes.
    with Runs(console, "ranking modalities", len(jobs)) as bar:
        for t, m, s in jobs:
            bar.describe(f"{t or 'label'} / {m} / seed {s}")
            cfg = base.model_copy(update={
                "method": base.method, "modality": m, "target": t, "seed": s, "progress": False,
                "out": (out / (t or "label") / m / f"seed{s}") if out else None,
            })
            r = run(cfg, data[t])
            key = metrics.selection_metric(r.bundle.task, r.bundle.targets)
            res = res or RankResult(metric=key, leakage=verdict.to_json(),
                                    validation={"val_from": base.val_from, "val_groups": base.val_groups})
            tk = t or "label"
            res.val.setdefault(tk, {}).setdefault(m, []).append(r["val"][key])
            if r["test"]:
                res.test.setdefault(tk, {}).setdefault(m, []).append(r["test"][key])
            bar.advance(f"val {key} {r['val'][key]:.3f}")
    assert res is not None
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
