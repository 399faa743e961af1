"""Packed Bi-GRU against a padded one that reverses each sequence for the backward direction.

Usage: python benchmarks/gru_packing.py [--data ../shared/data/cmu-mosi-utterance] [--repeats 30]

Both compute the same function on the valid steps (checked: the largest difference is printed). The
padded version runs every direction over the full padded length T, so padding after the valid steps
cannot reach them; the backward direction reads each sequence reversed within its own length. This is
the alternative to ``pack_padded_sequence`` that stew's ``BiGRU`` could use; it is measured on a MOSI
training batch (26 videos drawn from the real lengths, 2 layers x 100 units, 100-d input, one thread),
forward plus backward.
"""

from __future__ import annotations

import argparse
import collections
import csv
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call


def video_lengths(data: Path) -> list[int]:
    with open(data / "train_ids.csv", newline="") as f:
        ids = [r["utterance_id"] for r in csv.DictReader(f)]
    return list(collections.Counter(i.rsplit("_", 1)[0] for i in ids).values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/cmu-mosi-utterance"))
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    all_lengths = torch.tensor(video_lengths(a.data))
    lengths = all_lengths[torch.randperm(len(all_lengths))[:26]]
    b, t, d, h = len(lengths), int(lengths.max()), 100, 100
    x = torch.randn(b, t, d)
    mask = torch.arange(t)[None] < lengths[:, None]
    gru = nn.GRU(d, h, num_layers=2, batch_first=True, bidirectional=True)
    shells = [nn.GRU(d, h, batch_first=True), nn.GRU(2 * h, h, batch_first=True)]
    steps = torch.arange(t)[None]
    reverse = torch.where(mask, lengths[:, None] - 1 - steps, steps)  # reverse within each valid prefix

    def flip(z: torch.Tensor) -> torch.Tensor:
        return z.gather(1, reverse[:, :, None].expand(-1, -1, z.shape[-1]))

    def packed(z: torch.Tensor) -> torch.Tensor:
        p = nn.utils.rnn.pack_padded_sequence(z, lengths, batch_first=True, enforce_sorted=False)
        return nn.utils.rnn.pad_packed_sequence(gru(p)[0], batch_first=True, total_length=t)[0]

    def padded(z: torch.Tensor) -> torch.Tensor:
        for layer, shell in enumerate(shells):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            fwd = {f"{n}_l0": getattr(gru, f"{n}_l{layer}") for n in names}
            bwd = {f"{n}_l0": getattr(gru, f"{n}_l{layer}_reverse") for n in names}
            z = torch.cat([functional_call(shell, fwd, (z,))[0], flip(functional_call(shell, bwd, (flip(z),))[0])], -1)
        return z * mask[..., None]

    diff = (packed(x) - padded(x))[mask].abs().max().item()
    print(f"batch {b} videos, T = {t}, {int(mask.sum())} valid steps ({1 - mask.float().mean():.0%} padding); "
          f"max |packed - padded| on valid steps {diff:.1e}")
    for fn in (packed, padded, packed, padded):  # twice each: the first pass warms up
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            fn(x).pow(2).sum().backward()
        print(f"{fn.__name__:7s} forward + backward {(time.perf_counter() - t0) / a.repeats * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
