"""stew's in-memory data model.

A :class:`Dataset` is a list of :class:`Sequence` objects. A sequence is one recording (RECOLA: 7,500
frames of 40 ms), one video of utterances (CMU-MOSI), one utterance (IEMOCAP) or one audio clip.
Every sequence carries, per modality, a ``[T_m, d_m]`` float32 feature array and a ``[T_m]`` boolean
mask that is False where the modality is missing at that step (face not found, utterance without
audio). Targets are ``[T, n_targets]`` float32; for classification the single target column holds
the class index.

Two label levels (``Dataset.label_level``):

- ``"step"``: one label per step, and every modality on the labels' step grid (``T_m == T``): RECOLA
  frames, MOSI utterances. Methods that pair steps across modalities (SEW, CM-StEW, EmoBed, CER-MTL)
  need this.
- ``"sequence"``: one label per sequence (``T == 1``) and each modality on its own clock and length
  (IEMOCAP: 1,000 MFCC frames, 32 video frames, 128 tokens; a clip's waveform or feature frames).
  A modality absent from a sequence is one masked step of zeros, never a zero-length array.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from stew.errors import DataError

Task = Literal["regression", "binary", "multiclass"]
LabelLevel = Literal["step", "sequence"]
SPLITS = ("train", "val", "test")
# Training sequences without labels (CM-StEW's --unlabelled pairs): never carved into validation or
# folds, never scored; their targets are NaN.
UNLABELLED = "unlabelled"


@dataclass
class Sequence:
    """One recording, video, utterance or clip: per-modality features and masks, targets, step ids
    (one id per label row)."""

    id: str
    group: str
    split: str
    features: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    targets: np.ndarray
    step_ids: list[str]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def with_split(self, split: str) -> Sequence:
        return replace(self, split=split)

    def without_labels(self) -> Sequence:
        """The same recording with every label NaN (unlabelled pairs, a ``labelled: false`` folder)."""
        return replace(self, targets=np.full_like(self.targets, np.nan))

    def length(self, modality: str) -> int:
        """Steps of ``modality`` in this sequence (its own clock on sequence-level data)."""
        return int(self.features[modality].shape[0])


@dataclass
class Dataset:
    """A set of sequences that share modalities, targets and task."""

    name: str
    task: Task
    targets: list[str]
    modalities: dict[str, int]
    sequences: list[Sequence]
    n_classes: int | None = None
    label_range: tuple[float, float] | None = None
    step_rate_hz: float | None = None
    meta: dict = field(default_factory=dict)
    label_level: LabelLevel = "step"

    def split(self, name: str) -> list[Sequence]:
        return [s for s in self.sequences if s.split == name]

    def splits(self) -> dict[str, int]:
        return {sp: n for sp in SPLITS if (n := sum(s.split == sp for s in self.sequences))}

    def groups(self, split: str) -> list[str]:
        return sorted({s.group for s in self.sequences if s.split == split})

    def n_steps(self, split: str | None = None) -> int:
        return sum(len(s) for s in self.sequences if split is None or s.split == split)

    @property
    def labelled(self) -> bool:
        """Some label outside the unlabelled split (False for a ``labelled: false`` folder)."""
        return any(not np.isnan(s.targets).all() for s in self.sequences if s.split != UNLABELLED)

    @property
    def aligned(self) -> bool:
        """Every modality on the labels' step grid in every sequence (always so for step-level data)."""
        return all(s.length(m) == len(s) for s in self.sequences for m in self.modalities)

    def require_aligned(self, what: str) -> None:
        """A one-line DataError when ``what`` (a method) needs the modalities on one step grid."""
        for s in self.sequences:
            lengths = {m: s.length(m) for m in self.modalities}
            if any(n != len(s) for n in lengths.values()):
                shown = ", ".join(f"{m} {n}" for m, n in lengths.items())
                raise DataError(
                    f"{what} needs each modality on the labels' steps, but dataset {self.name!r} is not aligned "
                    f"(sequence {s.id!r}: {len(s)} label rows; steps {shown})"
                )

    def digest(self) -> str:
        """SHA-256 of what a fit reads: the description, and every sequence's split, features, masks,
        targets and step ids (in memory: a subset, a fusion or added unlabelled pairs digest differently)."""
        h = hashlib.sha256(json.dumps(
            [self.name, self.task, self.targets, self.modalities, self.n_classes, self.label_range,
             self.step_rate_hz, self.label_level, self.meta], default=str, sort_keys=True).encode())
        for s in sorted(self.sequences, key=lambda s: s.id):
            h.update(json.dumps([s.id, s.group, s.split, s.step_ids]).encode())
            arrays = [a for m in sorted(s.features) for a in (s.features[m], s.masks[m])] + [s.targets]
            for a in arrays:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.data)
        return h.hexdigest()

    def replace_sequences(self, sequences: Iterable[Sequence]) -> Dataset:
        return replace(self, sequences=list(sequences))

    def select_modalities(self, names: Iterable[str]) -> Dataset:
        names = list(names)
        seqs = [
            replace(s, features={m: s.features[m] for m in names}, masks={m: s.masks[m] for m in names})
            for s in self.sequences
        ]
        return replace(self, modalities={m: self.modalities[m] for m in names}, sequences=seqs)

    def fuse(self, names: list[str]) -> Dataset:
        """Add the early fusion of ``names`` as one modality named ``"+".join(names)``.

        Features are concatenated; the fused step is present where any part is. A missing part is
        NaN here and becomes its training mean at standardisation (0 after z-scoring), so one absent
        face does not hide the voice at that step.
        """
        unknown = [m for m in names if m not in self.modalities]
        if unknown or len(names) < 2:
            raise ValueError(f"cannot fuse {names}: the data has {list(self.modalities)}")
        if not self.select_modalities(names).aligned:
            raise ValueError(f"cannot fuse {names}: their steps are not aligned (each has its own length)")
        name = "+".join(names)
        seqs = []
        for s in self.sequences:
            parts = [np.where(s.masks[m][:, None], s.features[m], np.nan).astype(np.float32) for m in names]
            present = np.logical_or.reduce([s.masks[m] for m in names])
            seqs.append(replace(s, features={**s.features, name: np.concatenate(parts, 1)},
                                masks={**s.masks, name: present}))
        dims = {**self.modalities, name: sum(self.modalities[m] for m in names)}
        return replace(self, modalities=dims, sequences=seqs)

    @property
    def n_outputs(self) -> int:
        """Width of the model output: one per regression target, 1 for binary, C for multiclass."""
        if self.task == "multiclass":
            assert self.n_classes is not None
            return self.n_classes
        return len(self.targets) if self.task == "regression" else 1

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.sequences)


def modality_subsets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, the full set first, then by size (largest first), in modality order."""
    return [c for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]
