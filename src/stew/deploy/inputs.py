"""What a deployed model reads from a dataset, shared by both engines and without torch.

The torch engine (:mod:`stew.deploy.model`) and the ONNX Runtime engine (:mod:`stew.deploy.runtime`,
:mod:`stew.deploy.predict`) pick the same inputs and refuse the same data with the same one-line
DataError: a single-modality model's modality (an early-fused one rebuilt from its parts) with its
dimension checked; a fusion model's modalities, those the data lack made absent, its label level checked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from stew.data.dataset import Dataset
from stew.data.io import load_dataset
from stew.errors import DataError
from stew.models.specs import FusedSpec, RawAudioSpec, StudentSpec


def input_modalities(spec: StudentSpec | FusedSpec | RawAudioSpec, meta: dict) -> list[str]:
    """The modalities a model reads, in its order: a fusion model's inputs, else its one modality."""
    return list(meta["dims"]) if isinstance(spec, FusedSpec) else [meta["modality"]]


def model_inputs(spec: StudentSpec | FusedSpec | RawAudioSpec, meta: dict, data: Path | Dataset
                 ) -> tuple[Dataset, dict | None]:
    """The dataset ``data`` (a folder is loaded) as the model described by ``spec`` and ``meta`` reads it,
    and, for a fusion model, the modalities each sequence really had (else None). Errors name the folder."""
    where = None if isinstance(data, Dataset) else data
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    if isinstance(spec, FusedSpec):
        check_label_level(spec, ds, where)
        return with_absent_modalities(ds, meta["dims"], where)
    return select_input(meta, ds, where), None


def select_input(meta: dict, ds: Dataset, where: Path | None) -> Dataset:
    """The dataset with the single-modality model's input modality (an early-fused one rebuilt from its
    parts), its dimension checked."""
    m = meta["modality"]
    if m not in ds.modalities:  # an early-fused model: rebuild its input from the parts
        inputs = meta["inputs"]
        missing = [p for p in inputs if p not in ds.modalities]
        if missing:
            raise DataError(
                f"the model needs modality {', '.join(map(repr, missing))}; the data has {list(ds.modalities)}",
                file=where,
            )
        ds = ds.fuse(inputs)
    if ds.modalities[m] != meta["dim"]:
        raise DataError(
            f"dimension mismatch for {m!r}: the data has {ds.modalities[m]} features, the model expects {meta['dim']}",
            file=where,
        )
    return ds


def check_label_level(spec: FusedSpec, ds: Dataset, where: Path | None) -> None:
    """A fusion model predicts per sequence or per step; the data must be labelled the same way."""
    if spec.fusion.pool_time != (ds.label_level == "sequence"):
        want = "one label per sequence" if spec.fusion.pool_time else "one label per step"
        raise DataError(f"the model predicts {want}; these data have label_level {ds.label_level!r}", file=where)


def with_absent_modalities(ds: Dataset, dims: dict[str, int], where: Path | None) -> tuple[Dataset, dict]:
    """A fusion model's inputs from whatever subset of them the data hold; the others become absent
    (one masked step of zeros per sequence, or masked steps on the labels' grid). Returns the dataset
    and, per sequence, the modalities it really had."""
    have = [m for m in dims if m in ds.modalities]
    if not have:
        raise DataError(f"the model reads {list(dims)}; the data have none of them ({list(ds.modalities)})", file=where)
    for m in have:
        if ds.modalities[m] != dims[m]:
            raise DataError(f"dimension mismatch for {m!r}: the data has {ds.modalities[m]} features, the model "
                            f"expects {dims[m]}", file=where)
    seqs, used = [], {}
    for s in ds.sequences:
        n = 1 if ds.label_level == "sequence" else len(s)
        features = {m: s.features[m] if m in have else np.zeros((n, d), np.float32) for m, d in dims.items()}
        masks = {m: s.masks[m] if m in have else np.zeros(n, bool) for m in dims}
        seqs.append(replace(s, features=features, masks=masks))
        used[s.id] = [m for m in dims if bool(masks[m].any())]
    return replace(ds, modalities=dict(dims), sequences=seqs), used
