"""Wall time of `stew explain` on a 30 s clip, and whether a change moved the explanation (issue 26; BENCHMARKS.md).

Builds (or reuses with --model/--clip) a ConflictNET model folder at the protocol's clip size (conflict.yaml's
synthetic corpus: 30 s clips at 8 kHz; 1 epoch on a few clips: the weights do not matter for speed), then times
`stew explain MODEL CLIP --samples 2000` (a fresh process each, as a user runs it) for each --seeds, and
keeps each explanation.json under WORK/results/LABEL-seedS.json.

With --reference LABEL (results of an earlier run in the same WORK, e.g. the code before a change) it prints
the agreement: per seed, the largest |weight difference| between the two codes and whether the ranking of the
segments is the same, next to LIME's own sampling noise (the same code at two seeds).

    python benchmarks/explain_speed.py --work /tmp/explain-bench --label before --seeds 0 1
    # ... change the code ...
    python benchmarks/explain_speed.py --work /tmp/explain-bench --label after --seeds 0 1 --reference before

--interleaved N also times both ways inside one process on N perturbations, alternating, so that the ratio
holds at whatever load the machine has (the whole-network way is the code before issue 26, kept as fallback).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEW = [sys.executable, "-m", "stew"]


def sh(*args: object) -> float:
    """Run a stew command, fail loudly, return its wall time in seconds."""
    t0 = time.perf_counter()
    res = subprocess.run([*STEW, *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"stew {' '.join(map(str, args))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return time.perf_counter() - t0


def build(work: Path, clips: int) -> tuple[Path, Path]:
    """A 1-epoch ConflictNET model on synthetic 30 s clips, exported; returns (model folder, one clip)."""
    data, run, model = work / "data", work / "run", work / "model"
    if not (model / "model.json").is_file():
        for p in (data, run, model):
            shutil.rmtree(p, ignore_errors=True)
        wall = sh("data", "synth", "--kind", "conflict", "--clips", clips, "--clip-s", 30, "--out", data)
        print(f"data synth: {wall:.0f} s")
        wall = sh("train", "--data", data, "--method", "conflictnet", "--max-epochs", 1, "--out", run)
        print(f"train (1 epoch): {wall:.0f} s")
        sh("export", run, "--out", model)
    return model, sorted(data.glob("*.wav"))[0]


def weights(path: Path) -> tuple[np.ndarray, list[int]]:
    """Segment weights in segment order, and the ranking (most relevant first)."""
    segs = json.loads(path.read_text())["segments"]
    w = np.zeros(len(segs))
    for s in segs:
        w[s["index"]] = s["weight"]
    return w, [s["index"] for s in segs]


def interleaved(model_dir: Path, clip_file: Path, samples: int, rounds: int) -> None:
    """Both ways in this process, alternating, at the same load: explain_clip with the whole network per perturbed
    waveform (the code before issue 26) and with the front end computed once (stew.eval.perturb)."""
    import torch

    from stew.data.formats.waveform import prepare_clip, read_audio
    from stew.deploy import load_model
    from stew.eval.explain import explain_clip
    from stew.eval.perturb import segment_predict, waveform_predict

    model, meta = load_model(model_dir)
    ext, cpu = meta["extractor"], torch.device("cpu")
    clip, real = prepare_clip(read_audio(clip_file, int(ext["sample_rate"]))[0], ext.get("clip_samples"))
    slow = waveform_predict(model, clip, real, cpu)
    ways = {"whole network": None, "front end once": lambda b: segment_predict(model, clip, real, b, cpu)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    weights_of: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for way, by_segments in ways.items():
            t0 = time.perf_counter()
            expl = explain_clip(slow, clip[:real], int(ext["sample_rate"]), n_samples=samples, by_segments=by_segments)
            times[way].append(time.perf_counter() - t0)
            weights_of[way] = np.array([s["weight"] for s in sorted(expl.segments, key=lambda s: s["index"])])
    for way, t in times.items():
        print(f"in-process, {samples} perturbations, {way}: {', '.join(f'{x:.1f}' for x in t)} s "
              f"({samples / min(t):.1f} perturbations/s at best; load average {os.getloadavg()[0]:.1f})")
    a, b = weights_of.values()
    print(f"in-process weights, max |dw| {np.abs(a - b).max():.3g} (largest |w| {np.abs(a).max():.3g})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (model, data, results)")
    ap.add_argument("--model", type=Path, help="an exported raw-audio model folder (default: build one in WORK)")
    ap.add_argument("--clip", type=Path, help="the audio file to explain (default: the first clip of WORK/data)")
    ap.add_argument("--clips", type=int, default=12, help="clips of the synthetic corpus when building")
    ap.add_argument("--samples", type=int, default=2000, help="LIME perturbations (stew explain's default)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="LIME seeds to run")
    ap.add_argument("--label", default="run", help="name of this run's results (e.g. before / after)")
    ap.add_argument("--reference", help="label of earlier results in WORK to compare with")
    ap.add_argument("--interleaved", type=int, default=0, metavar="N",
                    help="also time both ways in one process on N perturbations, alternating (3 rounds)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, clip = (args.model, args.clip) if args.model else build(work, args.clips)
    if clip is None:
        sys.exit("--clip is required with --model")
    results = work / "results"
    results.mkdir(exist_ok=True)
    code = subprocess.run([sys.executable, "-c", "import stew; print(stew.__file__)"], capture_output=True,
                          text=True).stdout.strip()
    print(f"stew from {code}; model {model}, clip {clip}, {args.samples} perturbations, {os.cpu_count()} CPUs")
    for seed in args.seeds:
        out = work / f"explain-{args.label}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        load0 = os.getloadavg()[0]
        wall = sh("explain", model, clip, "--out", out, "--samples", args.samples, "--seed", seed)
        load1 = os.getloadavg()[0]
        dest = results / f"{args.label}-seed{seed}.json"
        shutil.copyfile(out / "explanation.json", dest)
        w, rank = weights(dest)
        print(f"{args.label} seed {seed}: {wall:.1f} s wall (load average {load0:.1f} before, {load1:.1f} after); "
              f"ranking {rank}; weights {np.array2string(w, precision=4, max_line_width=200)}")
        (results / f"{args.label}-seed{seed}.time").write_text(f"{wall:.2f} {load0:.2f} {load1:.2f}\n")
    if len(args.seeds) > 1:
        (w0, r0), (w1, r1) = (weights(results / f"{args.label}-seed{s}.json") for s in args.seeds[:2])
        print(f"LIME noise ({args.label}, seed {args.seeds[0]} vs {args.seeds[1]}): max |dw| "
              f"{np.abs(w0 - w1).max():.3g}, same ranking: {r0 == r1}")
    if args.interleaved:
        interleaved(model, clip, args.interleaved, rounds=3)
    if args.reference:
        for seed in args.seeds:
            ref = results / f"{args.reference}-seed{seed}.json"
            if not ref.is_file():
                print(f"no {ref.name}: seed {seed} not compared")
                continue
            (wa, ra), (wb, rb) = weights(ref), weights(results / f"{args.label}-seed{seed}.json")
            pa, pb = (json.loads(p.read_text())["prediction"] for p in (ref, results / f"{args.label}-seed{seed}.json"))
            print(f"{args.reference} vs {args.label}, seed {seed}: max |dw| {np.abs(wa - wb).max():.3g} "
                  f"(largest |w| {np.abs(wa).max():.3g}), same ranking: {ra == rb}, prediction {pa:.7g} vs {pb:.7g}")


if __name__ == "__main__":
    main()
