"""Time per training epoch of ConflictNET on full-length SSPNet-sized clips (issue 16; BENCHMARKS.md).

Random 30 s clips at 8 kHz (240,000 samples), batch 32, the method's own loss (1 - PCC) and Adam,
forward + backward + step on CPU with --threads threads. One epoch of the SSPNet training partition
(793 clips, INTERSPEECH 2013 split) is 25 batches; all 1,430 clips would be 45.

    python benchmarks/conflictnet_epoch.py --threads 2 [--batches 2] [--ablation conflictnet] [--device cuda]

--device cuda times the same batches on a GPU (issue 26), synchronising before each clock read.
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    dev = args.device
    torch.set_num_threads(args.threads)
    spec = RawAudioSpec(modality="audio", targets=["conflict"],
                        net=ConflictNetSpec(ablation=args.ablation, samples=args.samples))
    method = ConflictNetMethod(spec).to(dev)
    opt = torch.optim.Adam(method.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, args.samples, 1, device=dev)
    batch = {"x": {"audio": x}, "present": {"audio": torch.ones(x.shape[:2], dtype=torch.bool, device=dev)},
             "y": torch.rand(args.batch_size, 1, 1, device=dev) * 2 - 1,
             "mask": torch.ones(args.batch_size, 1, dtype=torch.bool, device=dev)}
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    times = []
    for i in range(args.batches + 1):
        sync()
        t0 = time.perf_counter()
        loss, _ = method.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i:  # the first batch pays one-off allocation costs
            times.append(time.perf_counter() - t0)
    b = sum(times) / len(times)
    print(f"{dev}, {args.ablation}, {args.samples} samples, batch {args.batch_size}, {args.threads} threads: "
          f"{b:.1f} s / batch; "
          f"epoch of 793 clips (SSPNet train) {b * math.ceil(793 / args.batch_size) / 60:.1f} min, "
          f"of 1,430 clips {b * math.ceil(1430 / args.batch_size) / 60:.1f} min")


if __name__ == "__main__":
    main()
