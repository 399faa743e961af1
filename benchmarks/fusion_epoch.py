"""Time per training epoch of the tri-modal fusion models at IEMOCAP size (issue 15; BENCHMARKS.md).

Random inputs of the real shapes (text 128 x 300, video 32 x 2048, audio 1000 x 120; all steps
real, the worst case), batch 32, Adam, forward + backward + step, on CPU with --threads threads. One
epoch is the training partition of an AMH fold: 7,487 utterances minus the 20 % held-out block, i.e.
about 5,990 (spec §1.2), so 188 batches.

    python benchmarks/fusion_epoch.py --threads 2 [--batches 5] [--device cuda]

--device cuda times the same batches on a GPU (issue 26: CPU vs GPU epoch time), synchronising before
each clock read so the time is the GPU's work, not the launch.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from stew.models.fusion import FusionModel, FusionSpec

SHAPES = {"text": (128, 300), "video": (32, 2048), "audio": (1000, 120)}
STEP_CONV = {"audio": (1000, 500), "video": (32, 25)}
TRAIN_UTTERANCES = 5990


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batches(kind: str, batches: int, batch_size: int, device: str = "cpu") -> float:
    spec = FusionSpec(modalities={m: d for m, (_, d) in SHAPES.items()}, step_conv=STEP_CONV, fusion=kind,
                      input_dropout={"text": 0.25}, n_out=7)
    model = FusionModel(spec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = {m: torch.randn(batch_size, t, d, device=device) for m, (t, d) in SHAPES.items()}
    masks = {m: torch.ones(batch_size, t, dtype=torch.bool, device=device) for m, (t, _) in SHAPES.items()}
    y = torch.randint(0, 7, (batch_size,), device=device)
    times = []
    for i in range(batches + 1):
        _sync(device)
        t0 = time.perf_counter()
        out = model(x, masks)[:, 0]
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i:  # the first batch pays one-off allocation costs
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = math.ceil(TRAIN_UTTERANCES / args.batch_size)
    print(f"{args.device}, {args.threads} threads, batch {args.batch_size}, {n} batches per epoch "
          f"({TRAIN_UTTERANCES} utterances)")
    print("| model | s / batch | s / epoch | s / epoch with ModDrop (4x data) |")
    print("|---|---|---|---|")
    for kind in ("intra", "cross"):
        b = time_batches(kind, args.batches, args.batch_size, args.device)
        print(f"| {kind} | {b:.2f} | {b * n:.0f} | {4 * b * n:.0f} |", flush=True)


if __name__ == "__main__":
    main()
