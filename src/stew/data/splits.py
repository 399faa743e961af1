"""Validation carve-outs and grouped cross-validation, always by whole groups (speaker or video)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from stew.data.dataset import UNLABELLED, Dataset
from stew.errors import DataError


def _train_groups(ds: Dataset, seed: int) -> list[str]:
    groups = ds.groups("train")
    if not groups:
        raise DataError(f"dataset {ds.name!r} has no training split")
    return [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]


def carve_validation(ds: Dataset, n_groups: int, seed: int, source: str = "train") -> Dataset:
    """Move ``n_groups`` whole groups of ``source`` (train, or a labelled test split) to a new ``val``
    split, deterministically for ``seed``; from test, the other test groups stay the test split.

    A dataset that already has a validation split is returned unchanged.
    """
    if ds.split("val"):
        return ds
    if source == "test":
        groups = ds.groups("test")
        groups = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
        if n_groups < 1 or n_groups >= len(groups):
            raise DataError(f"cannot take {n_groups} validation groups from {len(groups)} test groups "
                            "(at least one must stay for test)")
        val = set(groups[:n_groups])
        return ds.replace_sequences(
            s.with_split("val") if s.split == "test" and s.group in val else s for s in ds.sequences
        )
    groups = _train_groups(ds, seed)
    if n_groups < 1 or n_groups >= len(groups):
        raise DataError(f"cannot carve {n_groups} validation groups from {len(groups)} training groups")
    val = set(groups[:n_groups])
    return ds.replace_sequences(
        s.with_split("val") if s.split == "train" and s.group in val else s for s in ds.sequences
    )


def grouped_folds(ds: Dataset, k: int, seed: int) -> list[Dataset]:
    """K datasets for grouped K-fold CV over the training groups (fold i validates on chunk i).

    An existing validation split is merged back into train first, so every training group is
    validated on exactly once. The test split is untouched.
    """
    merged = ds.replace_sequences(s.with_split("train") if s.split == "val" else s for s in ds.sequences)
    groups = _train_groups(merged, seed)
    if k < 2 or k > len(groups):
        raise DataError(f"--cv {k} needs between 2 and {len(groups)} folds")
    chunks = np.array_split(np.array(groups, dtype=object), k)
    folds = []
    for chunk in chunks:
        val = set(chunk.tolist())
        folds.append(
            merged.replace_sequences(
                s.with_split("val") if s.split == "train" and s.group in val else s for s in merged.sequences
            )
        )
    return folds


def held_out_folds(ds: Dataset, k: int, seed: int) -> list[Dataset]:
    """Grouped K-fold over the training groups with fold i's chunk as ``test``: CV whose scores are on
    groups no choice was made on. The data's own test split is left out (it is read once, elsewhere);
    a validation split the data define stays every fold's validation, otherwise each fold's run carves
    its own from the remaining groups."""
    # Held-out chunks come from "train" only; an existing "val" waits aside under another name.
    base = ds.replace_sequences(s.with_split("_val") if s.split == "val" else s
                                for s in ds.sequences if s.split != "test")
    return [
        f.replace_sequences(s.with_split({"val": "test", "_val": "val"}.get(s.split, s.split)) for s in f.sequences)
        for f in grouped_folds(base, k, seed)
    ]


def add_unlabelled(ds: Dataset, extra: Dataset, modalities: list[str], where: Path) -> Dataset:
    """``ds`` plus every sequence of ``extra`` as an unlabelled training pair (its labels are ignored)."""
    for m in modalities:
        if m not in extra.modalities:
            raise DataError(f"--unlabelled data lack modality {m!r} (they have {list(extra.modalities)})", file=where)
        if extra.modalities[m] != ds.modalities[m]:
            raise DataError(f"--unlabelled {m} features are {extra.modalities[m]}-d, the training data's "
                            f"{ds.modalities[m]}-d", file=where)
    if extra.label_level != ds.label_level or (extra.step_rate_hz or 0) != (ds.step_rate_hz or 0):
        raise DataError("--unlabelled data must have the training data's step rate and label level", file=where)
    extra = extra.select_modalities(modalities)
    own = {s.group for s in ds.sequences}
    n_targets = len(ds.targets)
    unlabelled = []
    for s in extra.sequences:
        group = f"unlabelled/{s.group}" if s.group in own else s.group  # never merged with a labelled group
        features = {**{m: np.zeros((len(s), d), np.float32) for m, d in ds.modalities.items()}, **s.features}
        masks = {**{m: np.zeros(len(s), bool) for m in ds.modalities}, **s.masks}
        unlabelled.append(replace(s, id=f"unlabelled/{s.id}", group=group, split=UNLABELLED, features=features,
                                  masks=masks, targets=np.full((len(s), n_targets), np.nan, np.float32)))
    if not unlabelled:
        raise DataError("--unlabelled data hold no sequences", file=where)
    return ds.replace_sequences([*ds.sequences, *unlabelled])
