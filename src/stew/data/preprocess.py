"""Preprocessing fitted on the training split only: standardisation, label delay, windows, stitching.

Frame-level data (``step_rate_hz`` set, e.g. RECOLA at 25 Hz) is cut into training windows (3 s with
a 1 s hop by default) and non-overlapping evaluation windows; evaluation predictions are stitched
back to whole recordings before any metric. Utterance-level data (CMU-MOSI) is not windowed: a
sequence is one video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stew.data.dataset import Sequence
from stew.data.windows import (  # noqa: F401 - re-exported: moved to the torch-free stew.data.windows
    Standardizer,
    delay_steps,
    eval_windows,
    shift_labels,
    steps_for,
    unshift_predictions,
    window_starts,
)


@dataclass
class PreparedSequence:
    """A sequence ready for the model: standardised tensors and delay-shifted targets."""

    source: Sequence
    x: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    y: torch.Tensor


def prepare(
    seqs: list[Sequence], modalities: list[str], target_cols: list[int], scaler: Standardizer, k_delay: int
) -> list[PreparedSequence]:
    out = []
    for s in seqs:
        out.append(
            PreparedSequence(
                source=s,
                x={m: torch.from_numpy(scaler.transform(m, s.features[m], s.masks[m])) for m in modalities},
                present={m: torch.from_numpy(s.masks[m].copy()) for m in modalities},
                y=torch.from_numpy(shift_labels(s.targets[:, target_cols], k_delay).astype(np.float32)),
            )
        )
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Items are (sequence index, start, end) slices of prepared sequences.

    ``context`` = (L, R): inputs also carry the L steps before and R steps after each window (indices
    clamped to the recording, i.e. edge frames repeat), for encoders that look around each step
    (CER-MTL's feature images). Labels and ``mask`` cover the window itself only.
    """

    def __init__(
        self, seqs: list[PreparedSequence], spans: list[tuple[int, int, int]], context: tuple[int, int] = (0, 0)
    ) -> None:
        self.seqs, self.spans, self.context = seqs, spans, context

    @classmethod
    def for_training(
        cls, seqs: list[PreparedSequence], win: int | None, hop: int | None, context: tuple[int, int] = (0, 0)
    ) -> WindowDataset:
        spans = []
        for i, s in enumerate(seqs):
            n = len(s.y)
            spans += [(i, a, min(a + win, n)) for a in window_starts(n, win, hop)] if win else [(i, 0, n)]
        return cls(seqs, spans, context)

    @classmethod
    def for_evaluation(
        cls, seqs: list[PreparedSequence], win: int | None, context: tuple[int, int] = (0, 0)
    ) -> WindowDataset:
        spans = []
        for i, s in enumerate(seqs):
            n = len(s.y)
            spans += [(i, a, b) for a, b in eval_windows(n, win)] if win else [(i, 0, n)]
        return cls(seqs, spans, context)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.spans[i]

    def collate(self, items: list[tuple[int, int, int]]) -> dict:
        """Pad to the longest item; ``mask`` is True on real label steps, False on padding.

        A modality on the labels' step grid is cut to the window; one on its own clock (sequence-level
        data: an utterance's 1,000 MFCC frames beside its 32 video frames) comes whole, padded to the
        longest in the batch, with ``present[m]`` False on its padding.
        """
        t_max = max(b - a for _, a, b in items)
        n = len(items)
        left, right = self.context
        first = self.seqs[items[0][0]]

        def own_clock(s: PreparedSequence, m: str) -> bool:
            return s.x[m].shape[0] != len(s.y)

        steps = {m: max(self.seqs[i].x[m].shape[0] if own_clock(self.seqs[i], m) else b - a for i, a, b in items)
                 for m in first.x}
        x = {m: torch.zeros(n, left + steps[m] + right, v.shape[1]) for m, v in first.x.items()}
        present = {m: torch.zeros(n, steps[m], dtype=torch.bool) for m in first.x}
        y = torch.zeros(n, t_max, first.y.shape[1])
        mask = torch.zeros(n, t_max, dtype=torch.bool)
        for j, (i, a, b) in enumerate(items):
            s, t = self.seqs[i], b - a
            # With context, gather around the window (edge frames repeat); without, a plain slice.
            rows = torch.arange(a - left, b + right).clamp(0, len(s.y) - 1) if left or right else slice(a, b)
            for m in x:
                if own_clock(s, m):
                    k = s.x[m].shape[0]
                    x[m][j, :k], present[m][j, :k] = s.x[m], s.present[m]
                else:
                    x[m][j, : left + t + right] = s.x[m][rows]
                    present[m][j, :t] = s.present[m][a:b]
            y[j, :t] = s.y[a:b]
            mask[j, :t] = True
        return {"x": x, "present": present, "y": y, "mask": mask, "spans": torch.tensor(items)}


def stitch(lengths: list[int], spans: torch.Tensor, outputs: torch.Tensor) -> list[np.ndarray]:
    """Reassemble per-window outputs [N, T, k] into whole sequences (non-overlapping spans)."""
    k = outputs.shape[-1]
    full = [np.full((n, k), np.nan, dtype=np.float32) for n in lengths]
    for (i, a, b), o in zip(spans.tolist(), outputs, strict=True):
        full[i][a:b] = o[: b - a].numpy()
    for i, f in enumerate(full):
        if np.isnan(f).any():
            raise RuntimeError(f"sequence {i}: some steps were never predicted")
    return full


def loader(
    ds: WindowDataset, batch_size: int, shuffle: bool, seed: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """Batches of ``ds``; the shuffle draws from its own CPU generator, so the order is one per seed on every
    device. ``pin_memory`` (for a GPU): page-locked batches copy to the device asynchronously."""
    g = torch.Generator().manual_seed(seed)
    # No worker processes: the sequences are in memory and a batch is a few tensor copies, cheaper than a
    # worker's start-up (a fresh process importing torch) and the pickling of every batch it hands back.
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate, generator=g, num_workers=0,
        pin_memory=pin_memory,
    )


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live (the CPU for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch`` (nested dicts of tensors, as :meth:`WindowDataset.collate` makes them) on ``device``."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def context_of(model: torch.nn.Module) -> tuple[int, int]:
    """The input context (before, after) a model's deployable student reads around each step."""
    student = getattr(model, "student", model)
    return getattr(student, "context", (0, 0))


@torch.inference_mode()  # cheaper than no_grad: outputs leave as numpy, never reach autograd
def predict_windows(
    model: torch.nn.Module, seqs: list[PreparedSequence], win: int | None, k_delay: int, batch_size: int = 64
) -> list[np.ndarray]:
    """Activated outputs of ``model.predict(batch)`` per whole sequence, on the original label time axis.

    Evaluation windows do not overlap, so stitching is concatenation; the label delay is undone last.
    """
    if not seqs:
        return []
    was_training = model.training
    model.eval()
    wds = WindowDataset.for_evaluation(seqs, win, context_of(model))
    device = device_of(model)  # the batches follow the model; the outputs come back to the CPU
    spans, outs = [], []
    for batch in loader(wds, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        spans.append(batch["spans"])
        outs.append(model.predict(to_device(batch, device)).float().cpu())
    model.train(was_training)
    t_max = max(o.shape[1] for o in outs)
    outs = [torch.nn.functional.pad(o, (0, 0, 0, t_max - o.shape[1])) for o in outs]
    full = stitch([len(s.y) for s in seqs], torch.cat(spans), torch.cat(outs))
    return [unshift_predictions(p, k_delay) for p in full]
