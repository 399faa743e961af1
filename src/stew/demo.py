"""``stew demo``: the point of stew in a few minutes on 2 CPU cores.

1. synthesise RECOLA-like data (smaller than the default synth: fewer, shorter recordings);
2. rank the modalities per target with unimodal Bi-GRU + TE + Classifier models;
3. train the weakest modality of the target with the clearest gap with CM-StEW, taught by the strongest;
4. print unimodal vs CM-StEW, then export the weaker model and predict with it alone.

Demo settings trade the paper's sizes for speed (narrower GRUs, a larger learning rate, few epochs,
fixed alpha and beta instead of the validation grid); they are listed in ``DEMO`` and printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stew import metrics
from stew.config import CMStEWConfig, TrainConfig
from stew.data.native import is_native, write_native
from stew.data.synthetic import synth_recola
from stew.progress import Runs

DATA = {"n_speakers": 9, "minutes": 1.0}
SEEDS = [0, 1]
DEMO = {
    "gru_units": 32, "gru_layers": 1, "d_model": 32, "ffn": 64, "clf_hidden": 64, "lr": 2e-3,
    "max_epochs": 6, "patience": 3, "batch_size": 32, "progress": False, "threads": 2,
    "label_delay_s": 2.4,  # the synthetic raters' mean reaction delay (Dataset.meta["label_delay_s"])
}


def run_demo(out: Path, seed: int, console: Console) -> None:
    from stew.deploy import export, predict_dataset
    from stew.rank import rank_modalities, render_ranking
    from stew.training import run

    t0 = time.time()
    data = out / "data"
    if not is_native(data):
        write_native(synth_recola(seed, **DATA), data)
    console.print(f"[bold]1. Synthetic RECOLA-like data[/bold] -> {data} ({DATA})")
    console.print(f"   demo settings: {DEMO}")
    # Running the demo again replaces its own earlier runs (stew train would refuse a non-empty folder).
    # [issue 13, open] The demo still runs the paper recipe on synthetic data: the stew recipe's evidence
    # so far is MOSI's (docs/transfer.md).
    base = TrainConfig(data=data, overwrite=True, recipe="paper", **DEMO)

    console.print("[bold]2. Ranking the modalities[/bold] (unimodal Bi-GRU + TE + Classifier, validation CCC): "
                  "every target x modality x seed")
    ranked = rank_modalities(base, SEEDS, out / "rank", console)
    render_ranking(ranked, console)

    def gap(t: str) -> float:
        r = ranked.ranking(t)
        return float(np.mean(ranked.val[t][r[0]]) - np.mean(ranked.val[t][r[-1]]))

    target = max(ranked.val, key=gap)
    strong, weak = ranked.ranking(target)[0], ranked.ranking(target)[-1]
    console.print(
        f"[bold]3. CM-StEW[/bold] for {target}: weakest {weak!r} taught by strongest {strong!r} "
        f"(validation gap {gap(target):.3f})"
    )
    cms = CMStEWConfig(alpha=0.1, beta=0.1)
    transfer = []
    # Runs done / left and time left, as a bar on a terminal and one line per run elsewhere (the demo
    # turns the per-epoch bars off, so this is all that shows while it trains).
    with Runs(console, "CM-StEW runs", len(SEEDS)) as bar:
        for s in SEEDS:
            bar.describe(f"{target} / {weak} (+{strong}) / seed {s}")
            # Stage 1 reuses the ranking's teacher run: same data, carve and seed.
            teacher = cms.model_copy(update={"teacher_run": out / "rank" / target / strong / f"seed{s}"})
            cfg = base.model_copy(update={
                "method": "cmstew", "modality": weak, "teacher": strong, "target": target, "seed": s,
                "cmstew": teacher, "out": out / "cmstew" / f"seed{s}",
            })
            transfer.append(run(cfg)["val"])
            bar.advance(f"val {ranked.metric} {transfer[-1][ranked.metric]:.3f}")
    key = ranked.metric
    uni = ranked.val[target][weak]
    tr = [r[key] for r in transfer]
    table = Table(title=f"{target}: weaker modality {weak!r}, validation {key} (mean ± std over seeds {SEEDS})")
    for col in ("model", key, "deploys with"):
        table.add_column(col)
    table.add_row(f"unimodal {weak}", metrics.format_mean_std(uni, 3), weak)
    table.add_row(f"CM-StEW {weak} (+{strong})", metrics.format_mean_std(tr, 3), weak)
    table.add_row(f"teacher {strong}", metrics.format_mean_std(ranked.val[target][strong], 3), strong)
    console.print(table)

    console.print("[bold]4. Export and predict[/bold] with the weaker modality alone")
    model = export(out / "cmstew" / f"seed{SEEDS[0]}", out / "model")
    t1 = time.time()
    preds = predict_dataset(model, data, out / "predictions.csv")
    console.print(
        f"   exported {model} (safetensors + JSON); predicted {len(preds)} steps in {time.time() - t1:.2f}s "
        f"-> {out / 'predictions.csv'}"
    )
    console.print(f"demo finished in {time.time() - t0:.0f}s")
