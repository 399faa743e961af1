"""Which modalities' training features look fitted on their own labels: the leakage probe's verdict,
acted on by every command that trains (docs/formats.md, "Label-fitted features").

Some feature releases were produced by networks trained on the training labels (CMU-MOSI's text and
visual features): a linear probe then scores near-perfectly by grouped CV inside train, far above what
the same features reach on unseen groups. Validation carved from train, grouped CV and the
negative-transfer guard's folds measure memorised features there. The verdict is the probe of
:mod:`stew.data.check` per modality: flagged when it warns (near-perfect within train, or far above
its train-to-test score where the data labels a test split). Without a labelled test split only the
within-train threshold can flag, so a modality fitted on its labels but not near-perfect goes unseen.

The verdict is cached per data folder (its contents' fingerprint) under ``$XDG_CACHE_HOME/stew/leakage``
beside the openSMILE feature cache, so a folder is probed once, not once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stew.data.check import ProbeSettings, probe_modality
from stew.data.dataset import Dataset
from stew.errors import DataError
from stew.util.atomic import write_text_atomic

PROBE_VERSION = 4  # bump when the probe or its thresholds change: cached verdicts are then recomputed


# Below these sizes a probe's score is too noisy to judge by: training groups (for either rule), test
# groups and test steps (for the train-to-test gap).
MIN_GROUPS = (10, 3)
MIN_TEST_STEPS = 30


@dataclass
class ModalityVerdict:
    modality: str
    flagged: bool
    metric: str | None = None  # "acc" or "ccc"; None when the probe could not run
    within_train: float | None = None
    train_to_test: float | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class LeakageVerdict:
    """The probe's verdict on some modalities of one dataset."""

    modalities: dict[str, ModalityVerdict]
    test_labelled: bool  # a labelled test split let the probe compare within-train with train-to-test
    source: str = "probe"  # probe | cache | override

    @property
    def flagged(self) -> list[str]:
        return [m for m, v in self.modalities.items() if v.flagged]

    def used(self, modalities: list[str]) -> list[str]:
        """The flagged modalities among ``modalities`` (early-fused inputs ``a+b`` by their parts)."""
        parts = {p for m in modalities for p in m.split("+")}
        return [m for m in self.flagged if m in parts]

    def to_json(self) -> dict:
        return {"flagged": self.flagged, "test_labelled": self.test_labelled, "source": self.source,
                "modalities": {m: asdict(v) for m, v in self.modalities.items()}}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stew/leakage`` (``~/.cache/stew/leakage`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stew" / "leakage"


def _judge(ds: Dataset, m: str) -> ModalityVerdict:
    """Flagged when the within-train score is far above the train-to-test score, or, without a labelled
    test split to compare with, when it is near-perfect (a strong honest modality on synthetic data is
    near-perfect too, but keeps its score on test)."""
    notes: list[str] = []
    settings = ProbeSettings()
    probes = probe_modality(ds, m, 5, 0, settings, notes)
    if not probes:
        return ModalityVerdict(m, False, reasons=notes)
    first = probes[0]  # regression: one probe per target; the modality is flagged if any of them is
    reasons = []
    test_groups = len(ds.groups("test"))
    for p in probes:
        near = settings.near_perfect_ccc if p.metric == "ccc" else settings.near_perfect_acc
        if p.train_groups < MIN_GROUPS[0]:
            continue  # grouped CV over a handful of groups says little about memorised features
        if p.train_to_test is not None:  # a labelled test split: the gap decides, where it is large enough
            big_enough = test_groups >= MIN_GROUPS[1] and p.test_steps >= MIN_TEST_STEPS
            if big_enough and p.within_train - p.train_to_test > settings.max_gap:
                reasons.append(f"{p.label}: within-train {p.metric} {p.within_train:.3f}, train-to-test "
                               f"{p.train_to_test:.3f}")
        elif p.within_train >= near:
            reasons.append(f"{p.label}: within-train {p.metric} {p.within_train:.3f}, near-perfect")
    return ModalityVerdict(m, bool(reasons), first.metric, first.within_train, first.train_to_test, reasons)


def _test_labelled(ds: Dataset) -> bool:
    return any(s.targets.size and bool(np.isfinite(s.targets).all()) for s in ds.split("test"))


def leakage_verdict(ds: Dataset, modalities: list[str], fingerprint: str | None = None) -> LeakageVerdict:
    """The verdict on ``modalities`` of ``ds``; read from and written to the cache when ``fingerprint``
    (the data folder's) is given. Early-fused inputs (``a+b``) are judged by their parts."""
    parts = list(dict.fromkeys(p for m in modalities for p in m.split("+") if p in ds.modalities))
    test_labelled = _test_labelled(ds)
    cached: dict[str, dict] = {}
    path = None
    if fingerprint is not None:
        # One folder can hold several datasets: RECOLA's feature set per target, IEMOCAP's folds.
        variant = (ds.meta.get("feature_set"), ds.meta.get("fold"), PROBE_VERSION)
        key = hashlib.sha256(f"{fingerprint}:{variant}".encode()).hexdigest()[:24]
        path = cache_dir() / f"{key}.json"
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
    found = {m: ModalityVerdict(**cached[m]) for m in parts if m in cached}
    todo = [m for m in parts if m not in found]
    for m in todo:
        found[m] = _judge(ds, m)
    if path is not None and todo:
        try:  # a read-only home or a full disk only costs the next run the probe again
            write_text_atomic(path, json.dumps({**cached, **{m: asdict(v) for m, v in found.items()}}))
        except DataError:
            pass
    source = "probe" if todo else "cache"
    return LeakageVerdict({m: found[m] for m in parts}, test_labelled, source)


def declared(ds: Dataset, flagged: list[str]) -> LeakageVerdict:
    """The user's own verdict (``--flagged``), taken as it is: the probe does not run."""
    return LeakageVerdict({m: ModalityVerdict(m, True, reasons=["declared with --flagged"]) for m in flagged},
                          _test_labelled(ds), "override")


def warning_line(verdict: LeakageVerdict, used: list[str]) -> str | None:
    """One line naming the flagged modalities a run reads (input or teacher), or None."""
    hit = verdict.used(used)
    if not hit:
        return None
    where = ("within train and against the test split" if verdict.test_labelled
             else "within train only (no labelled test split to compare with)")
    return (f"warning: {', '.join(hit)} look fitted on their own labels (leakage probe, {where}): scores measured "
            "inside the training split are optimistic for them")
