"""Peak memory of ``Standardizer.fit`` on the training split of one IEMOCAP AMH fold (issue 28; BENCHMARKS.md,
"Standardizer memory at IEMOCAP size").

The inputs have the real release's shapes and lengths: 5,990 training utterances (7,487 minus a fold's
held-out 20 %, spec §1.2), durations log-normal with median 3.7 s as in stew.data.synth.iemocap, audio
120-d MFCC+deltas at 100 Hz (at most 1,000 frames), video 2048-d ResNet at 3 Hz (at most 32), text
300-d GloVe (1 + Poisson(2.5 s) tokens, at most 128), every step present, float32. A few NaN values mark
missing parts, as an early-fused modality has. Each measurement runs in a fresh subprocess:
``tracemalloc``'s peak over the fit (numpy reports its buffers to it), and the growth of the process's
peak resident set (ru_maxrss) during the fit. ``--impl legacy`` measures the fit stew used before issue 28
(every training frame concatenated in float64, then numpy's nanmean/nanstd); ``stew`` measures
``stew.data.windows.Standardizer.fit`` as it is now.

    python benchmarks/memory_standardizer.py [--impl stew legacy] [--utterances 5990] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np

TRAIN_UTTERANCES = 5990
SHAPES = {"audio": (100.0, 1000, 120), "video": (3.0, 32, 2048)}  # rate (Hz), max steps, dims
TEXT = (128, 300)


def iemocap_sized(n: int, seed: int = 0) -> list:
    """``n`` training Sequences with the release's shapes and lengths (see the module doc)."""
    from stew.data.dataset import Sequence

    rng = np.random.default_rng(seed)
    dur = np.clip(np.exp(rng.normal(1.3, 0.55, n)), 0.6, 30.0)
    seqs = []
    for i in range(n):
        feats = {}
        for m, (rate, t_max, d) in SHAPES.items():
            t = int(min(t_max, max(1, round(dur[i] * rate))))
            feats[m] = rng.standard_normal((t, d), dtype=np.float32)
        feats["text"] = rng.standard_normal((int(min(TEXT[0], 1 + rng.poisson(2.5 * dur[i]))), TEXT[1]),
                                            dtype=np.float32)
        feats["audio"][0, :3] = np.nan  # a missing part of a fused input: skipped by the fit
        seqs.append(Sequence(id=str(i), group=str(i), split="train", features=feats,
                             masks={m: np.ones(len(x), bool) for m, x in feats.items()},
                             targets=np.zeros((1, 1), np.float32), step_ids=[str(i)]))
    return seqs


def legacy_fit(seqs: list, modalities: list[str]) -> tuple[dict, dict]:
    """The fit before issue 28: all present frames in one float64 array, then nanmean and nanstd."""
    mean, std = {}, {}
    for m in modalities:
        x = np.concatenate([s.features[m][s.masks[m]] for s in seqs]).astype(np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mu, sd = np.nanmean(x, 0), np.nanstd(x, 0)
        mean[m], std[m] = np.nan_to_num(mu).astype(np.float32), np.nan_to_num(sd).astype(np.float32)
    return mean, std


def measure(impl: str, n: int) -> dict:
    """One fit in this process: its tracemalloc peak and the growth of the peak resident set (GB)."""
    from stew.data.windows import Standardizer

    seqs = iemocap_sized(n)
    mods = ["audio", "video", "text"]
    data_gb = sum(x.nbytes for s in seqs for x in s.features.values()) / 1e9
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    tracemalloc.start()
    t0 = time.perf_counter()
    if impl == "legacy":
        mean, std = legacy_fit(seqs, mods)
    else:
        sc = Standardizer.fit(seqs, mods)
        mean, std = sc.mean, sc.std
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    frames = {m: sum(len(s.features[m]) for s in seqs) for m in mods}
    return {"impl": impl, "utterances": n, "frames": frames, "data_gb": round(data_gb, 3),
            "fit_peak_gb": round(peak / 1e9, 3), "maxrss_growth_gb": round(rss1 - rss0, 3), "wall_s": round(wall, 1),
            "audio_mean_0_5": [round(float(v), 6) for v in mean["audio"][:5]],
            "audio_std_0_5": [round(float(v), 6) for v in std["audio"][:5]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", nargs="+", choices=["stew", "legacy"], default=["stew", "legacy"])
    ap.add_argument("--utterances", type=int, default=TRAIN_UTTERANCES)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of --utterances (a smaller machine)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    n = max(1, round(a.utterances * a.scale))
    if a.child:
        print(json.dumps(measure(a.child, n)))
        return
    for impl in a.impl:
        out = subprocess.run([sys.executable, __file__, "--child", impl, "--utterances", str(n)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
