"""DCCA loss benchmark: speed on one thread and gradient stability on degenerate batches.

Compares ``stew.objectives.dcca_loss`` (Cholesky whitening, float64 covariances, singular values with a
closed-form backward) with the straightforward recipe (symmetric inverse square roots by ``eigh``, T, sum
of the singular values as square roots of the eigenvalues of T^T T), run in float32 (the input dtype) and
in float64 (the precision of the public DeepCCA code).

    PYTHONPATH=src python benchmarks/bench_dcca.py [--rounds 15] [--reps 4]

Prints the machine, then a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from stew.objectives import dcca_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eigh_dcca_loss(h_s: torch.Tensor, h_w: torch.Tensor, dtype: torch.dtype, r1: float = 1e-3, r2: float = 1e-3):
    """The straightforward implementation, computed in ``dtype``."""
    a, b = h_s.to(dtype), h_w.to(dtype)
    n = a.shape[0]
    a, b = a - a.mean(0), b - b.mean(0)
    sigma_s = a.T @ a / (n - 1) + r1 * torch.eye(a.shape[1], dtype=dtype)
    sigma_w = b.T @ b / (n - 1) + r2 * torch.eye(b.shape[1], dtype=dtype)
    sigma_sw = a.T @ b / (n - 1)

    def inv_sqrt(m: torch.Tensor) -> torch.Tensor:
        lam, vec = torch.linalg.eigh(m)
        return (vec * lam.clamp_min(1e-12).rsqrt()) @ vec.T

    t = inv_sqrt(sigma_s) @ sigma_sw @ inv_sqrt(sigma_w)
    corr = torch.linalg.eigvalsh(t.T @ t).clamp_min(1e-12).sqrt().sum()
    return -corr.to(h_s.dtype)


def reference_loss(h_s: np.ndarray, h_w: np.ndarray, r1: float = 1e-3, r2: float = 1e-3) -> float:
    """float64 numpy: the spec's formula with exact symmetric inverse square roots and an SVD."""
    a, b = h_s - h_s.mean(0), h_w - h_w.mean(0)
    n = a.shape[0]

    def inv_sqrt(m: np.ndarray) -> np.ndarray:
        lam, vec = np.linalg.eigh(m)
        return (vec / np.sqrt(lam)) @ vec.T

    w_s = inv_sqrt(a.T @ a / (n - 1) + r1 * np.eye(a.shape[1]))
    w_w = inv_sqrt(b.T @ b / (n - 1) + r2 * np.eye(b.shape[1]))
    return -float(np.linalg.svd(w_s @ (a.T @ b / (n - 1)) @ w_w, compute_uv=False).sum())


IMPLEMENTATIONS: dict[str, Loss] = {
    "stew `dcca_loss` (Cholesky + SVD values, closed-form backward)": lambda a, b: dcca_loss(a, b),
    "eigh recipe, float32": lambda a, b: eigh_dcca_loss(a, b, torch.float32),
    "eigh recipe, float64": lambda a, b: eigh_dcca_loss(a, b, torch.float64),
}
PRECISION = {
    "stew `dcca_loss` (Cholesky + SVD values, closed-form backward)": "float64 covariances and decompositions; "
    "n x d backward products in float32",
    "eigh recipe, float32": "float32 throughout",
    "eigh recipe, float64": "float64 throughout",
}


def views(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 views sharing a 30-d latent factor, plus noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 30, generator=g)
    h_s = z @ torch.randn(30, d, generator=g) + torch.randn(n, d, generator=g)
    h_w = z @ torch.randn(30, d, generator=g) + torch.randn(n, d, generator=g)
    return h_s, h_w


def degenerate_batches(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """32 rows, latent 128 (so n < d); every other batch has half of its columns duplicated."""
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(count):
        h_s, h_w = rng.standard_normal((32, 128)), rng.standard_normal((32, 128))
        if i % 2 == 0:
            src, dst = rng.integers(0, 128, size=64), rng.choice(128, 64, replace=False)
            h_s[:, dst], h_w[:, dst] = h_s[:, src], h_w[:, src]
        batches.append((h_s.astype(np.float32), h_w.astype(np.float32)))
    return batches


def time_fwd_bwd(
    impls: dict[str, Loss], n: int, d: int, rounds: int, reps: int, frozen_s: bool = False
) -> dict[str, float]:
    """Median ms per forward+backward; implementations are interleaved so that load drifts hit all alike.

    ``frozen_s``: only the weaker view needs a gradient (CM-StEW stage 2, where S_E is frozen).
    """
    h_s, h_w = views(n, d, seed=0)
    samples: dict[str, list[float]] = {name: [] for name in impls}

    def step(fn: Loss) -> float:
        a, b = h_s.clone().requires_grad_(not frozen_s), h_w.clone().requires_grad_(True)
        start = time.perf_counter()
        fn(a, b).backward()
        return time.perf_counter() - start

    for fn in impls.values():  # warm-up
        step(fn)
        step(fn)
    for _ in range(rounds):
        for name, fn in impls.items():
            samples[name].extend(step(fn) for _ in range(reps))
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def stability(impls: dict[str, Loss], batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[int, float]]:
    """Per implementation: number of batches with a non-finite loss or gradient, and max relative value error."""
    refs = [reference_loss(h_s.astype(np.float64), h_w.astype(np.float64)) for h_s, h_w in batches]
    out = {}
    for name, fn in impls.items():
        bad, worst = 0, 0.0
        for (h_s, h_w), ref in zip(batches, refs, strict=True):
            a = torch.from_numpy(h_s).requires_grad_(True)
            b = torch.from_numpy(h_w).requires_grad_(True)
            loss = fn(a, b)
            loss.backward()
            finite = all(bool(torch.isfinite(t).all()) for t in (loss, a.grad, b.grad))
            bad += not finite
            if torch.isfinite(loss):
                worst = max(worst, abs(loss.item() - ref) / abs(ref))
        out[name] = (bad, worst)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--dims", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # numpy's BLAS too (reference values)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        times = time_fwd_bwd(IMPLEMENTATIONS, args.rows, args.dims, args.rounds, args.reps)
        frozen = time_fwd_bwd(IMPLEMENTATIONS, args.rows, args.dims, args.rounds, args.reps, frozen_s=True)
        stable = stability(IMPLEMENTATIONS, degenerate_batches(args.batches))

    ours = next(iter(IMPLEMENTATIONS))
    print(f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; 1-minute load average at start {load:.2f}")
    print(f"- torch {torch.__version__}, numpy {np.__version__}, torch threads: {torch.get_num_threads()}")
    print(f"- timing: {args.rows} x {args.dims} float32 views, forward + backward, median of "
          f"{args.rounds * args.reps} runs, implementations interleaved; 'both' = both views need gradients "
          "(SEW), 'h_s frozen' = only the weaker view does (CM-StEW stage 2)")
    print(f"- stability: {args.batches} batches of 32 x 128 float32 (n < d), every other one with 64 duplicated "
          "columns; value error relative to a float64 numpy reference (eigh inverse square roots + SVD)")
    print()
    print("| implementation | precision | fwd+bwd, both (ms) | time / stew time | fwd+bwd, h_s frozen (ms) "
          "| time / stew time | non-finite gradients | max rel. value error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in IMPLEMENTATIONS:
        bad, worst = stable[name]
        print(f"| {name} | {PRECISION[name]} | {times[name]:.2f} | {times[name] / times[ours]:.2f}x "
              f"| {frozen[name]:.2f} | {frozen[name] / frozen[ours]:.2f}x | {bad} / {args.batches} | {worst:.1e} |")


if __name__ == "__main__":
    main()
