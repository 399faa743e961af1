"""``stew demo``: the point of stew in a couple of minutes on 2 CPU cores.

Train with every modality, deploy with one, and ship transfer only where it pays. The demo plays the
case where the evidence says transfer pays (BENCHMARKS.md, "Making transfer pay" and "The guard's
decision rule"): a few annotated speakers and many recordings nobody annotated.

1. synthesise RECOLA-like data: of the training speakers, ``LABELLED`` keep their annotations; the
   others' recordings are written as a ``labelled: false`` folder (recordings without labels);
2. rank the modalities per target on the annotated speakers, with the unimodal per-step MLP student;
3. train the weakest modality of the target with the clearest gap the way a user would, ``stew train
   --method cmstew --unlabelled DIR`` with the stew recipe: cross-fitted teachers on the strongest
   modality, a distillation term on the unlabelled recordings, and the negative-transfer guard, which
   compares CM-StEW with the same student trained alone on held-out speakers and ships the winner;
4. print what the guard measured, unimodal vs what shipped on the test speakers (read once per run), and
   where transfer does not pay (the measured cases, from BENCHMARKS.md);
5. export the shipped model and predict with the weaker modality alone on recordings without labels.

Demo settings trade the benchmarks' sizes for speed (1-minute recordings, a small student, one seed);
they are listed in ``DATA`` and ``DEMO`` and printed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from stew.config import TrainConfig
from stew.data.dataset import Dataset
from stew.data.formats.native import is_native, write_native
from stew.data.io import load_dataset
from stew.data.synth.affect import synth_recola
from stew.deploy import export, predict_dataset
from stew.experiments.rank import rank_modalities, render_ranking
from stew.scoring import metrics
from stew.training.run import run
from stew.util.progress import Runs

DATA = {"n_speakers": 27, "minutes": 1.0}  # 9 training, 9 validation and 9 test speakers
LABELLED = 3  # annotated training speakers; the other training speakers' recordings have no labels
SEEDS = [0]
DEMO = {
    "arch": "mlp", "d_model": 32, "clf_hidden": 64, "lr": 2e-3, "max_epochs": 8, "patience": 3,
    "batch_size": 32, "progress": False, "threads": 2,
    "label_delay_s": 2.4,  # the synthetic raters' mean reaction delay (Dataset.meta["label_delay_s"])
}
# Where transfer does not pay, as measured (BENCHMARKS.md): printed beside what the demo measures.
NOT_PAYING = [
    "every training speaker annotated, no unlabelled recordings (synthetic RECOLA, 8 seeds): CM-StEW "
    "-0.027 test CCC against the student alone; the guard shipped the student every time "
    "(\"The guard's decision rule\")",
    "CMU-MOSI's unseen videos, text teaching audio or video (5 seeds, two rounds): no transfer recipe "
    "beat the best unimodal student (the paper's: video 58.5 vs 57.4, p 0.68; audio 49.2 vs 51.0, p 0.54); "
    "the guard ships the unimodal Bi-GRU in 10 of 10 runs (\"CMU-MOSI on unseen videos\")",
]


def split_annotations(ds: Dataset, labelled: int, seed: int) -> tuple[Dataset, Dataset]:
    """The data with only ``labelled`` training speakers (a seeded choice), and the other training
    speakers' recordings without labels."""
    speakers = ds.groups("train")
    keep = {speakers[i] for i in np.random.default_rng(seed).permutation(len(speakers))[:labelled]}
    few = ds.replace_sequences(s for s in ds.sequences if s.split != "train" or s.group in keep)
    rest = ds.replace_sequences(
        s.without_labels() for s in ds.sequences if s.split == "train" and s.group not in keep
    )
    return few, rest


def run_demo(out: Path, seed: int, console: Console) -> None:
    t0 = time.time()
    data, unlabelled = out / "data", out / "unlabelled"
    if not (is_native(data) and is_native(unlabelled)):
        full = synth_recola(seed, **DATA)
        labelled = min(LABELLED, len(full.groups("train")) - 1)
        few, rest = split_annotations(full, labelled, seed)
        for folder in (data, unlabelled):  # the demo's own, left half-written by an interruption
            shutil.rmtree(folder, ignore_errors=True)
        write_native(few, data)
        write_native(rest, unlabelled)
    few = load_dataset(data)
    console.print(f"[bold]1. Synthetic RECOLA-like data[/bold] ({DATA}): {len(few.groups('train'))} annotated "
                  f"training speakers -> {data}; the other training speakers' recordings, without labels -> "
                  f"{unlabelled}")
    console.print(f"   demo settings: {DEMO}")
    # Running the demo again replaces its own earlier runs (stew train would refuse a non-empty folder).
    base = TrainConfig(data=data, overwrite=True, **DEMO)

    console.print("[bold]2. Ranking the modalities[/bold] on the annotated speakers (unimodal per-step MLP "
                  "student, validation CCC): every target x modality x seed")
    ranked = rank_modalities(base, SEEDS, out / "rank", console)
    render_ranking(ranked, console)

    def gap(t: str) -> float:
        r = ranked.ranking(t)
        return float(np.mean(ranked.val[t][r[0]]) - np.mean(ranked.val[t][r[-1]]))

    target = max(ranked.val, key=gap)
    strong, weak = ranked.ranking(target)[0], ranked.ranking(target)[-1]
    console.print(
        f"[bold]3. CM-StEW[/bold] for {target}: weakest {weak!r} taught by strongest {strong!r} "
        f"(validation gap {gap(target):.3f}) with the unlabelled recordings, the stew recipe with its guard; "
        f"per seed the same as\n   stew train --data {data} --method cmstew --modality {weak} --teacher {strong} "
        f"--target {target} --unlabelled {unlabelled}"
    )
    shipped = []
    # Runs done / left and time left, as a bar on a terminal and one line per run elsewhere (the demo
    # turns the per-epoch bars off, so this is all that shows while it trains).
    with Runs(console, "CM-StEW runs (guard, teachers, final fit)", len(SEEDS)) as bar:
        for s in SEEDS:
            bar.describe(f"{target} / {weak} (+{strong}) / seed {s}")
            cfg = base.model_copy(update={
                "method": "cmstew", "modality": weak, "teacher": strong, "target": target, "seed": s,
                "unlabelled": unlabelled, "out": out / "cmstew" / f"seed{s}",
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
    table.add_row(f"unimodal {weak} (annotated speakers only)",
                  metrics.format_mean_std(ranked.test[target][weak], 3),
                  metrics.format_mean_std(ranked.val[target][weak], 3), weak)
    what = "+".join(sorted({r["recipe"]["guard"]["shipped"] for r in shipped}))
    table.add_row(f"stew train --method cmstew (+{strong}, unlabelled), shipped: {what}",
                  metrics.format_mean_std([r["test"][key] for r in shipped], 3),
                  metrics.format_mean_std([r["val"][key] for r in shipped], 3), weak)
    table.add_row(f"teacher {strong}", metrics.format_mean_std(ranked.test[target][strong], 3),
                  metrics.format_mean_std(ranked.val[target][strong], 3), strong)
    console.print(table)
    console.print("   Where transfer does not pay (measured, BENCHMARKS.md):")
    for line in NOT_PAYING:
        console.print(f"   - {line}")

    console.print(f"[bold]4. Export and predict[/bold] with {weak!r} alone, on recordings without labels")
    model = export(out / "cmstew" / f"seed{SEEDS[0]}", out / "model")
    new = out / "new-recordings"
    if not is_native(new):  # the test speakers' weaker modality, labels removed (labelled: false)
        test = few.select_modalities([weak])
        write_native(test.replace_sequences(s.without_labels() for s in test.split("test")), new)
    t1 = time.time()
    preds = predict_dataset(model, new, out / "predictions.csv")
    console.print(
        f"   exported {model} (safetensors + JSON + ONNX); predicted {len(preds)} steps of {new} in "
        f"{time.time() - t1:.2f}s -> {out / 'predictions.csv'}"
    )
    console.print(f"demo finished in {time.time() - t0:.0f}s")
