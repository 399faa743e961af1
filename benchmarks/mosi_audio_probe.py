"""Does any feature normalisation make the CMU-MOSI audio features predictive of sentiment?

Usage: python benchmarks/mosi_audio_probe.py [--data ../shared/data/cmu-mosi-utterance] [--modality audio]

A logistic-regression probe, cross-validated over whole training videos (5 grouped folds), on the
utterance features after four normalisations: global z-scores (what stew does), global z-scores
clipped to +-5, a quantile map to a normal distribution, and z-scores within each video (speaker
normalisation: every MOSI video is one speaker). Prints accuracy and weighted F1 in %.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, QuantileTransformer, StandardScaler

from stew.data.io import load_dataset


def per_group_z(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    z = np.empty_like(x)
    for g in np.unique(groups):
        m = groups == g
        sd = x[m].std(0)
        z[m] = (x[m] - x[m].mean(0)) / np.where(sd > 1e-8, sd, 1.0)
    return z


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/cmu-mosi-utterance"))
    ap.add_argument("--modality", default="audio")
    ap.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the probe")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    seqs = [s for s in ds.sequences if s.split == "train"]
    x = np.concatenate([s.features[a.modality] for s in seqs]).astype(np.float64)
    y = np.concatenate([s.targets[:, 0] for s in seqs]).astype(int)
    groups = np.concatenate([[s.group] * len(s) for s in seqs])
    clip = FunctionTransformer(lambda z: np.clip(z, -5, 5))
    variants = {
        "global z-scores (stew's default)": (x, [StandardScaler()]),
        "global z-scores clipped to +-5": (x, [StandardScaler(), clip]),
        "quantile map to a normal": (x, [QuantileTransformer(output_distribution="normal", n_quantiles=200)]),
        "z-scores within each video": (per_group_z(x, groups), [StandardScaler()]),
    }
    print(f"{a.modality}: {len(y)} utterances, {len(np.unique(groups))} videos, {y.mean():.1%} positive")
    for name, (xv, steps) in variants.items():
        probe = make_pipeline(*steps, LogisticRegression(C=a.C, max_iter=2000))
        p = cross_val_predict(probe, xv, y, groups=groups, cv=GroupKFold(5))
        acc, f1w = 100 * accuracy_score(y, p), 100 * f1_score(y, p, average="weighted")
        print(f"{name:34s} acc {acc:5.1f}  f1_weighted {f1w:5.1f}")


if __name__ == "__main__":
    main()
