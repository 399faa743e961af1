"""Scoring a trained method on whole recordings: the selection metric, stitched predictions, metrics,
the ``predictions.csv`` frame and the validation latents ``stew report`` projects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stew.data.bundle import Bundle
from stew.data.preprocess import PreparedSequence, predict_windows
from stew.methods.base import Method
from stew.models.student import LatentProbe
from stew.scoring import metrics


def selection_key(method: Method, bundle: Bundle) -> str:
    """The validation metric that picks epochs: the task's, with the method's correlation where its paper
    names one (ConflictNET: ``pcc``, or ``pcc_mean`` over several targets)."""
    if method.selection is not None:
        return metrics.selection_metric(bundle.task, bundle.targets, method.selection)
    return metrics.selection_metric(bundle.task, bundle.targets)


def predict_sequences(method: Method, seqs: list[PreparedSequence], bundle: Bundle) -> list[np.ndarray]:
    return predict_windows(method, seqs, bundle.eval_win, bundle.k_delay)


def score(preds: list[np.ndarray], seqs: list[PreparedSequence], bundle: Bundle) -> dict[str, float]:
    cols = bundle.target_cols
    y = np.concatenate([s.source.targets[:, cols] for s in seqs])
    # Per-sequence CCC needs several steps per sequence; with one label per sequence there is none.
    ids = np.concatenate([[i] * len(s.y) for i, s in enumerate(seqs)]) if bundle.ds.label_level == "step" else None
    return metrics.task_metrics(bundle.task, bundle.targets, y, np.concatenate(preds), sequence_ids=ids)


def predictions_frame(
    split: str, preds: list[np.ndarray], seqs: list[PreparedSequence], bundle: Bundle,
    raw: list[np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per step; with post-processing, ``pred_<t>`` is post-processed and ``raw_<t>`` is not."""
    cols = bundle.target_cols
    rows = []
    for k, (p, s) in enumerate(zip(preds, seqs, strict=True)):
        src = s.source
        df = pd.DataFrame({
            "split": split, "sequence": src.id, "group": src.group, "step": np.arange(len(src)),
            "step_id": src.step_ids,
        })
        y = src.targets[:, cols]
        if bundle.task == "regression":
            for j, t in enumerate(bundle.targets):
                df[f"y_{t}"], df[f"pred_{t}"] = y[:, j], p[:, j]
                if raw is not None:
                    df[f"raw_{t}"] = raw[k][:, j]
        elif bundle.task == "binary":
            df["y"], df["prob"], df["pred"] = y[:, 0].astype(int), p[:, 0], (p[:, 0] >= 0.5).astype(int)
        else:
            df["y"], df["pred"] = y[:, 0].astype(int), p.argmax(1)
            for c in range(p.shape[1]):
                df[f"prob_{c}"] = p[:, c]
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------------------------------


LATENT_STEPS = 2000  # validation steps kept in latents.npz: enough for the report's 2-D projection


def validation_latents(method: Method, bundle: Bundle, max_steps: int = LATENT_STEPS) -> dict[str, np.ndarray]:
    """The student encoder's latents on at most ``max_steps`` evenly spaced validation steps where its
    modality is present, with the first target: what ``stew report`` projects to 2-D."""
    seqs = bundle.val
    student = method.student
    z = np.concatenate(predict_windows(LatentProbe(student), seqs, bundle.eval_win, bundle.k_delay))
    # A fusion or raw-audio model's latent is present where any of its inputs is.
    modalities = getattr(student.spec, "modalities", None) or [student.spec.modality]
    if bundle.ds.label_level == "sequence":
        present = np.array([any(bool(s.present[m].any()) for m in modalities) for s in seqs])
    else:
        present = np.logical_or.reduce([np.concatenate([s.present[m].numpy() for s in seqs]) for m in modalities])
    y = np.concatenate([s.source.targets[:, bundle.target_cols[0]] for s in seqs])
    step = np.concatenate([np.arange(len(s.y)) for s in seqs])
    seq = np.concatenate([[i] * len(s.y) for i, s in enumerate(seqs)])
    # One grid over all steps, then the present ones: runs of other modalities on the same carve pick
    # the same steps, so the report can pair weaker and stronger latents step for step.
    grid = np.unique(np.linspace(0, len(present) - 1, min(max_steps, len(present))).astype(int))
    keep = grid[present[grid].astype(bool)]
    return {"latent": z[keep].astype(np.float32), "y": y[keep].astype(np.float32), "sequence": seq[keep],
            "step": step[keep]}
