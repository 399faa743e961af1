"""``stew demo``: the point of stew in a few minutes on 2 CPU cores.

Train with every modality, deploy with one, and ship transfer only where it pays:

1. synthesise RECOLA-like data (smaller than the default synth: fewer, shorter recordings);
2. rank the modalities per target with the unimodal per-step MLP student (stew's default student);
3. train the weakest modality of the target with the clearest gap the way a user would, ``stew train
   --method cmstew`` with the stew recipe: cross-fitted teachers on the strongest modality and the
   negative-transfer guard, which compares CM-StEW with the same student trained alone on grouped folds of
   the training speakers and ships the winner;
4. print what the guard measured, and unimodal vs what shipped on the test speakers (read once per run);
5. export the shipped model and predict with the weaker modality alone on recordings without labels (the
   test speakers' weaker modality, written as a ``labelled: false`` folder).

Every training speaker here is labelled, and from labelled data alone transfer has not beaten the student
trained alone on any set BENCHMARKS.md measures ("Making transfer pay"), so expect the guard to ship the
unimodal model; the demo says what it measured. (Transfer pays with few labelled speakers and many
unlabelled recordings: ``--unlabelled``, docs/transfer.md.)
Demo settings trade the benchmarks' sizes for speed (shorter recordings, a small student, two seeds); they
are listed in ``DATA`` and ``DEMO`` and printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stew.config import TrainConfig
from stew.data.formats.native import is_native, write_native
from stew.data.io import load_dataset
from stew.data.synth.affect import synth_recola
from stew.deploy import export, predict_dataset
from stew.experiments.rank import rank_modalities, render_ranking
from stew.scoring import metrics
from stew.training.run import run
from stew.util.progress import Runs

DATA = {"n_speakers": 12, "minutes": 2.0}  # 4 training, 4 validation and 4 test speakers
SEEDS = [0, 1]
DEMO = {
    "arch": "mlp", "d_model": 32, "clf_hidden": 64, "lr": 2e-3, "max_epochs": 8, "patience": 3,
    "batch_size": 32, "progress": False, "threads": 2,
    "label_delay_s": 2.4,  # the synthetic raters' mean reaction delay (Dataset.meta["label_delay_s"])
}


def run_demo(out: Path, seed: int, console: Console) -> None:
    t0 = time.time()
    data = out / "data"
    if not is_native(data):
        write_native(synth_recola(seed, **DATA), data)
    console.print(f"[bold]1. Synthetic RECOLA-like data[/bold] -> {data} ({DATA})")
    console.print(f"   demo settings: {DEMO}")
    # Running the demo again replaces its own earlier runs (stew train would refuse a non-empty folder).
    base = TrainConfig(data=data, overwrite=True, **DEMO)

    console.print("[bold]2. Ranking the modalities[/bold] (unimodal per-step MLP student, validation CCC): "
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
        f"(validation gap {gap(target):.3f}), the stew recipe with its guard; per seed the same as\n"
        f"   stew train --data {data} --method cmstew --modality {weak} --teacher {strong} --target {target}"
    )
    shipped = []
    # Runs done / left and time left, as a bar on a terminal and one line per run elsewhere (the demo
    # turns the per-epoch bars off, so this is all that shows while it trains).
    with Runs(console, "CM-StEW runs (guard, teachers, final fit)", len(SEEDS)) as bar:
        for s in SEEDS:
            bar.describe(f"{target} / {weak} (+{strong}) / seed {s}")
            cfg = base.model_copy(update={
                "method": "cmstew", "modality": weak, "teacher": strong, "target": target, "seed": s,
                "out": out / "cmstew" / f"seed{s}",
            })
            shipped.append(run(cfg))
            guard = shipped[-1]["recipe"]["guard"]
            bar.advance(f"shipped {guard['shipped']}, test ccc {shipped[-1]['test']['ccc']:.3f}")
    for s, r in zip(SEEDS, shipped, strict=True):
        console.print(f"   seed {s}: {r['recipe']['guard']['reason']}")

    key = ranked.metric
    table = Table(title=f"{target}: weaker modality {weak!r}, test {key} (mean ± std over seeds {SEEDS}); "
                        "validation chose the epochs, the guard chose what ships")
    for col in ("model", f"test {key}", f"val {key}", "deploys with"):
        table.add_column(col)
    table.add_row(f"unimodal {weak}", metrics.format_mean_std(ranked.test[target][weak], 3),
                  metrics.format_mean_std(ranked.val[target][weak], 3), weak)
    what = "+".join(sorted({r["recipe"]["guard"]["shipped"] for r in shipped}))
    table.add_row(f"stew train --method cmstew (+{strong}), shipped: {what}",
                  metrics.format_mean_std([r["test"][key] for r in shipped], 3),
                  metrics.format_mean_std([r["val"][key] for r in shipped], 3), weak)
    table.add_row(f"teacher {strong}", metrics.format_mean_std(ranked.test[target][strong], 3),
                  metrics.format_mean_std(ranked.val[target][strong], 3), strong)
    console.print(table)

    console.print(f"[bold]4. Export and predict[/bold] with {weak!r} alone, on recordings without labels")
    model = export(out / "cmstew" / f"seed{SEEDS[0]}", out / "model")
    new = out / "new-recordings"
    if not is_native(new):  # the test speakers' weaker modality, labels removed (labelled: false)

        test = load_dataset(data).select_modalities([weak])
        write_native(test.replace_sequences(s.without_labels() for s in test.split("test")), new)
    t1 = time.time()
    preds = predict_dataset(model, new, out / "predictions.csv")
    console.print(
        f"   exported {model} (safetensors + JSON + ONNX); predicted {len(preds)} steps of {new} in "
        f"{time.time() - t1:.2f}s -> {out / 'predictions.csv'}"
    )
    console.print(f"demo finished in {time.time() - t0:.0f}s")
