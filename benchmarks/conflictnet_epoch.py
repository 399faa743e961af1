"""Time per training epoch of ConflictNET on full-length SSPNet-sized clips (issue 16; BENCHMARKS.md).

Random 30 s clips at 8 kHz (240,000 samples), batch 32, the method's own loss (1 - PCC) and Adam,
forward + backward + step on CPU with --threads threads. One epoch of the SSPNet training partition
(793 clips, INTERSPEECH 2013 split) is 25 batches; all 1,430 clips would be 45.

    python benchmarks/conflictnet_epoch.py --threads 2 [--batches 2] [--ablation conflictnet]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from stew.methods.conflictnet import ConflictNetMethod
from stew.models.conflictnet import ConflictNetSpec, RawAudioSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=240_000)
    ap.add_argument("--ablation", default="conflictnet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = RawAudioSpec(modality="audio", targets=["conflict"],
                        net=ConflictNetSpec(ablation=args.ablation, samples=args.samples))
    method = ConflictNetMethod(spec)
    opt = torch.optim.Adam(method.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, args.samples, 1)
    batch = {"x": {"audio": x}, "present": {"audio": torch.ones(x.shape[:2], dtype=torch.bool)},
             "y": torch.rand(args.batch_size, 1, 1) * 2 - 1, "mask": torch.ones(args.batch_size, 1, dtype=torch.bool)}
    times = []
    for i in range(args.batches + 1):
        t0 = time.perf_counter()
        loss, _ = method.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first batch pays one-off allocation costs
            times.append(time.perf_counter() - t0)
    b = sum(times) / len(times)
    print(f"{args.ablation}, {args.samples} samples, batch {args.batch_size}, {args.threads} threads: "
          f"{b:.1f} s / batch; "
          f"epoch of 793 clips (SSPNet train) {b * math.ceil(793 / args.batch_size) / 60:.1f} min, "
          f"of 1,430 clips {b * math.ceil(1430 / args.batch_size) / 60:.1f} min")


if __name__ == "__main__":
    main()
