"""Attention fusion robust to missing modalities (docs/methods/fusion.md; thesis ch. 4, ICASSP 2022).

Every modality is encoded by its own (time-step conv +) bi-GRU. The intra model attends within each
modality, the cross model from each source to each target (query = target); every attention output
is averaged over time, the M vectors are summarised by statistical pooling (their element-wise mean
and std) and a two-layer classifier predicts the emotion. Unlike the rest of stew, the deployable
model reads *all* its modalities; it is made to survive losing some of them by

- **ModDrop** (``fusion.moddrop``): every training sample also appears with each single modality
  absent, i.e. M + 1 versions of the training set (docs/methods/fusion.md#moddrop); ``fusion.moddrop_p`` instead
  drops each modality of each training sample at random with probability p (never all of them);
- **KNN imputation** (``fusion.impute: knn``): after training, a memory bank of the training samples'
  per-modality vectors at the input of statistical pooling is stored with the model, and an absent
  modality's vector becomes the mean of its K nearest training neighbours' vectors.

The same method runs on sequence-level data (IEMOCAP utterances, one label each: the temporal mean
gives one vector per module) and on aligned step-level data (MOSI utterances of a video, RECOLA
frames: attention runs across the steps, and SP and the classifier run at every step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from stew.config import TrainConfig, moved_fields
from stew.data.bundle import Bundle
from stew.data.dataset import Dataset
from stew.data.preprocess import WindowDataset, device_of, to_device
from stew.errors import DataError
from stew.methods.base import STUDENT_KNOBS, Method, MethodDef, prediction_loss
from stew.models.fused import Absent, FusedModel, FusedSpec
from stew.models.fusion import FusionSpec

# docs/methods/fusion.md#encoders: the time-step Conv1d of the IEMOCAP inputs (audio 1000 -> 500 steps, video 32 -> 25),
# whose lengths the AMH release fixes; a smaller (synthetic) release keeps the same ratios.
IEMOCAP_STEP_RATIO = {"audio": 500 / 1000, "video": 25 / 32}


class Fusion(Method):
    def __init__(self, spec: FusedSpec, loss: str, moddrop: bool, moddrop_p: float, seed: int,
                 absent: Absent = "mask", zero_steps: dict[str, int] | None = None) -> None:
        super().__init__()
        self.student = FusedModel(spec)
        # How ModDrop removes a modality: masked out (stew's) or an all-zero input (the thesis's).
        self.student.absent_as, self.student.zero_steps = absent, dict(zero_steps or {})
        self.loss_name, self.moddrop, self.moddrop_p = loss, moddrop, moddrop_p
        self._rng = torch.Generator().manual_seed(seed)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.moddrop_p and self.training:  # never on a validation batch (Method.validation_loss)
            batch = self.student.remove(batch, self.drop_at_random(batch))
        out = self.student.outputs(batch)
        loss = prediction_loss(out, batch["y"], batch["mask"], self.student.spec.task, self.loss_name)
        return loss, {"prediction": loss.detach()}

    def drop_at_random(self, batch: dict) -> dict[str, torch.Tensor]:
        """Which samples lose each modality ([B] bool per modality): each with probability p, except that
        a sample about to be left with no modality (counting those its data lack) keeps them all."""
        mods = self.student.spec.modalities
        mask = batch["mask"]
        drop = (torch.rand(mask.shape[0], len(mods), generator=self._rng) < self.moddrop_p).to(mask.device)
        have = torch.stack([batch["present"][m].any(1) for m in mods], 1)
        drop[~(have & ~drop).any(1)] = False
        return {m: drop[:, j] for j, m in enumerate(mods)}

    def training_windows(self, windows: WindowDataset) -> WindowDataset:
        if not self.moddrop:
            return windows
        return ModDropWindows(windows, self.student.spec.modalities, self.student.remove)

    @torch.no_grad()
    def after_fit(self, bundle: Bundle) -> None:
        """Fill the KNN memory bank with the training samples' vectors (all modalities present)."""
        if not self.student.spec.bank_size:
            return
        self.student.fill_bank(training_vectors(self.student, bundle))

    def extra_record(self) -> dict:
        spec = self.student.spec
        return {
            "fusion": spec.fusion.fusion, "modalities": spec.modalities, "pairs": spec.fusion.pair_names,
            "sp": spec.fusion.sp, "moddrop": self.moddrop, "moddrop_p": self.moddrop_p,
            "absent": self.student.absent_as, "impute": spec.impute,
            "k": spec.k, "parameters": sum(p.numel() for p in self.student.net.parameters()),
        }


class ModDropWindows(WindowDataset):
    """The training windows M + 1 times: as they are, then with each single modality absent, removed by
    ``remove`` (the model's :meth:`FusedModel.remove`: masked out or an all-zero input)."""

    def __init__(self, base: WindowDataset, modalities: list[str],
                 remove: Callable[[dict, dict[str, torch.Tensor]], dict]) -> None:
        super().__init__(base.seqs, base.spans, base.context)
        self.modalities = modalities
        self.versions = [None, *modalities]
        self.remove = remove

    def __len__(self) -> int:
        return len(self.spans) * len(self.versions)

    def __getitem__(self, i: int) -> tuple[tuple[int, int, int], str | None]:
        return self.spans[i % len(self.spans)], self.versions[i // len(self.spans)]

    def collate(self, items: list) -> dict:
        batch = super().collate([span for span, _ in items])
        drop = {m: torch.tensor([dropped == m for _, dropped in items]) for m in self.modalities}
        return self.remove(batch, drop)


@torch.no_grad()
def training_vectors(model: FusedModel, bundle: Bundle, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per-modality vectors of every training sample (or step) where all modalities are present."""
    was = model.training
    model.eval()
    windows = WindowDataset.for_evaluation(bundle.train, bundle.eval_win)
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in model.spec.modalities}
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, collate_fn=windows.collate)
    device = device_of(model)  # the GPU that trained it: the memory bank is filled there
    for batch in loader:
        batch = to_device(batch, device)
        masks = model.masks(batch)
        vectors = model.net.vectors(batch["x"], masks)
        keep = torch.stack([model._present(masks[m]) for m in parts], -1).all(-1)
        if not model.spec.fusion.pool_time:
            keep &= batch["mask"]
        for m in parts:
            parts[m].append(vectors[m][keep])
    model.train(was)
    return {m: torch.cat(v) for m, v in parts.items()}


def fusion_pairs(names: list[str] | None, modalities: list[str]) -> list[tuple[str, str]] | None:
    """``T2V`` (initials, the thesis's notation) or ``text2video`` -> (source, target) pairs."""
    if names is None:
        return None
    initials = {m[0].upper(): m for m in modalities}
    if len(initials) < len(modalities):  # two modalities share an initial: full names only
        initials = {}

    def one(name: str) -> str:
        if name in modalities:
            return name
        if name.upper() in initials:
            return initials[name.upper()]
        raise DataError(f"--pairs {name!r}: unknown modality; write pairs as S2T with S, T among {modalities}"
                        + (f" or their initials {sorted(initials)}" if initials else ""))

    pairs = []
    for p in names:
        if p.count("2") != 1:
            raise DataError(f"--pairs {p!r}: write a pair as SOURCE2TARGET, e.g. T2V or text2video")
        s, t = p.split("2")
        pairs.append((one(s), one(t)))
    return pairs


def fusion_modalities(cfg: TrainConfig, modalities: dict[str, int]) -> list[str]:
    """The modalities a fusion run reads: ``fusion.modalities``, or every (non-early-fused) one of the data."""
    names = cfg.fusion.modalities or [m for m in modalities if "+" not in m]
    unknown = [m for m in names if m not in modalities]
    if unknown:
        raise DataError(f"--modalities: unknown {', '.join(unknown)}; the data has {list(modalities)}")
    if len(set(names)) != len(names):
        raise DataError(f"--modalities {','.join(names)}: a modality is named twice")
    if cfg.fusion.kind != "intra" and len(names) < 2:
        raise DataError(f"--fusion {cfg.fusion.kind} needs at least two modalities (cross-attention pairs them)")
    return names


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> Fusion:
    ds = bundle.ds
    f = cfg.fusion
    mods = bundle.modalities
    sequence_level = ds.label_level == "sequence"
    step_conv = f.step_conv
    if step_conv is None:
        # The thesis's time-step conv (docs/methods/fusion.md#encoders) mixes a fixed number of steps: only for
        # data laid out that way (IEMOCAP).
        fixed = fixed_steps(ds)
        step_conv = {m: (fixed[m], max(1, round(fixed[m] * r))) for m, r in IEMOCAP_STEP_RATIO.items() if m in fixed}
    step_conv = {m: tuple(v) for m, v in step_conv.items() if m in mods}
    text_dropout = {m: f.text_dropout for m in mods if m == "text" and f.text_dropout}
    if f.impute == "knn" and f.kind != "intra":
        raise DataError(f"--impute knn needs --fusion intra (vectors per modality); not --fusion {f.kind}")
    try:
        net = FusionSpec(
            modalities={m: ds.modalities[m] for m in mods}, step_conv=step_conv, fusion=f.kind,
            pairs=fusion_pairs(f.pairs, mods) if f.kind != "intra" else None, sp=f.sp,
            gru_units=f.gru_units, heads=f.heads, attn_dropout=f.attn_dropout, input_dropout=text_dropout,
            clf_hidden=f.clf_hidden, clf_activation=f.clf_activation, n_out=ds.n_outputs if ds.task != "regression"
            else len(bundle.targets), pool_time=sequence_level,
        )
    except ValueError as e:
        raise DataError(str(e).splitlines()[0]) from None
    bank = 0
    if f.kind == "intra":  # every intra model keeps its bank, so `stew evaluate --impute knn` can use it
        bank = _bank_size(bundle, net.used_modalities, sequence_level)
    spec = FusedSpec(task=ds.task, targets=bundle.targets, fusion=net, impute=f.impute, k=f.k, bank_size=bank)
    return Fusion(spec, cfg.loss, f.moddrop, f.moddrop_p, cfg.seed, f.absent, zero_input_steps(bundle))


def fixed_steps(ds: Dataset) -> dict[str, int]:
    """The padded length of each modality where the data fix one (the IEMOCAP AMH release), else none."""
    return ds.meta.get("max_steps", {}) if ds.meta.get("format") == "iemocap-amh" else {}


def zero_input_steps(bundle: Bundle) -> dict[str, int]:
    """The length of the thesis's all-zero input per modality (absent as ``zero-input``): the data's fixed
    padded length (IEMOCAP AMH: audio 1,000, video 32, text 128), else the longest training sequence's."""
    fixed = fixed_steps(bundle.ds)
    return {m: int(fixed.get(m) or max(s.x[m].shape[0] for s in bundle.train)) for m in bundle.modalities}


def _bank_size(bundle: Bundle, mods: list[str], sequence_level: bool) -> int:
    """Training samples (sequence-level) or steps (step-level) with every modality present."""
    if sequence_level:
        return sum(all(bool(s.present[m].any()) for m in mods) for s in bundle.train)
    return sum(int(torch.stack([s.present[m] for m in mods]).all(0).sum()) for s in bundle.train)


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    if cfg.modality is not None or cfg.teacher is not None:
        raise DataError("--method fusion reads --modalities (default: all of the data's), not --modality or --teacher")
    modalities = fusion_modalities(cfg, ds.modalities)
    return cfg.model_copy(update={"fusion": cfg.fusion.model_copy(update={"modalities": modalities})})


def unused(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Fusion knobs set but unused: K without KNN imputation, how ModDrop removes a modality without ModDrop."""
    f, moved = cfg.fusion, moved_fields(cfg.fusion)
    out = []
    if "k" in moved and f.impute != "knn":
        out.append(("fusion.k", f"applies to --impute knn, not --impute {f.impute}; leave it out"))
    if "absent" in moved and not (f.moddrop or f.moddrop_p):
        out.append(("fusion.absent", "applies to --moddrop or --moddrop-p (how training drops a modality); "
                                     "score a run with `stew evaluate RUN --missing --absent ...`"))
    return out


# Adam at 1e-3, early stopping after 10 epochs without a better validation score (docs/methods/fusion.md).
# The unimodal student's knobs (--arch, --dropout, ...) do not reach its networks: refused if set.
METHOD = MethodDef(
    name="fusion", build=build, fuses=True, lr=1e-3, patience=10, resolve=resolve, ignores=STUDENT_KNOBS,
    own_knobs="its networks are set under fusion: gru_units, heads, attn_dropout, text_dropout, clf_hidden, "
              "clf_activation", unused=unused,
)
