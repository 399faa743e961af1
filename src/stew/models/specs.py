"""The pydantic specs of every model: what ``model.json`` stores and what rebuilds a model.

They live apart from the ``nn.Module`` classes so that reading and validating a model folder needs no
torch: the torch-free deployment path (``stew predict`` on an ONNX model, ``stew serve``) imports this
module and never the model code. The model modules re-export these classes, so the old import paths
(``from stew.models.student import StudentSpec``) keep working.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stew.data.dataset import Task

EncoderKind = Literal["identity", "bigru", "bigru-te", "mlp", "gru", "feature-image"]


class EncoderSpec(BaseModel):
    """Everything needed to rebuild an encoder (stored as JSON next to exported weights)."""

    model_config = ConfigDict(extra="forbid")
    kind: EncoderKind
    d_in: int
    gru_units: int = 0  # per direction; 0 = the input dimension (docs/methods/unimodal.md#encoder)
    gru_layers: int = 2
    d_model: int = 100
    heads: int = 2
    ffn: int = 400
    te_layers: int = 2
    dropout: float = 0.3
    mlp_sizes: list[int] = []
    # feature-image (CER-MTL): N columns taken every `image_stride` steps, Conv1d(filters, kernel), max-pool
    image_steps: int = 20
    image_stride: int = 10
    filters: int = 25
    kernel: int = 3
    pool: int = 2

    @property
    def pooled_steps(self) -> int:
        """Image columns left after the valid convolution and the max-pooling."""
        return (self.image_steps - self.kernel + 1) // self.pool

    @property
    def out_dim(self) -> int:
        if self.kind == "identity":
            return self.d_in
        if self.kind == "bigru":
            return 2 * (self.gru_units or self.d_in)
        if self.kind == "bigru-te":
            return self.d_model
        if self.kind == "gru":
            return self.gru_units or self.d_in
        if self.kind == "feature-image":
            return self.pooled_steps * self.filters
        return self.mlp_sizes[-1]

    @property
    def context(self) -> tuple[int, int]:
        """Steps of input the encoder needs before and after each output step (0, 0 for most)."""
        if self.kind != "feature-image":
            return 0, 0
        return (self.image_steps - 1) // 2 * self.image_stride, self.image_steps // 2 * self.image_stride


class HeadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["classifier", "gru4", "linear", "gru", "task-gru"]
    d_in: int
    n_out: int
    hidden: int = 300
    dropout: float = 0.3
    gru_units: int = 120
    gru_layers: int = 4
    # task-gru (CER-MTL): the encoder's per-step output is `seq_steps` x (d_in / seq_steps) meta-features
    seq_steps: int = 1
    task_units: int = 5
    task_fc: int = 2


class StudentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    task: Task
    targets: list[str]
    encoder: EncoderSpec
    head: HeadSpec
    # "identity": raw outputs, for linear regression, whose least-squares fit is not squashed by tanh.
    activation: Literal["task", "identity"] = "task"
    # "mean": one label per sequence (a clip, an utterance): the encoder's outputs are averaged over the
    # modality's present steps and the head predicts once per sequence.
    pool: Literal["none", "mean"] = "none"


FusionKind = Literal["intra", "cross", "cross+intra"]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")  # nn.ModuleDict keys: no dots


class FusionSpec(BaseModel):
    """Everything needed to rebuild a :class:`FusionModel` (stored as JSON next to exported weights)."""

    model_config = ConfigDict(extra="forbid")
    modalities: dict[str, int]  # name -> input dim, ordered
    step_conv: dict[str, tuple[int, int]] = {}  # name -> (T_in, T_out): Conv1d over time steps (fixed lengths)
    fusion: FusionKind = "intra"
    pairs: list[tuple[str, str]] | None = None  # (source, target); None = every ordered pair of distinct modalities
    sp: bool = True  # False: the -noSP variant, vectors concatenated
    gru_units: int = 60  # per direction
    heads: int = 6
    attn_dropout: float = 0.1
    input_dropout: dict[str, float] = {}  # training-only dropout on the input features (authors' code: text 0.25)
    clf_hidden: int = 60
    clf_activation: Literal["none", "relu"] = "none"
    n_out: int
    pool_time: bool = True  # False: step-level labels, one output per step

    @model_validator(mode="after")
    def _check(self) -> FusionSpec:
        errors: list[str] = []
        if not self.modalities:
            errors.append("modalities is empty")
        for m, d in self.modalities.items():
            if not _NAME.match(m):
                errors.append(f"modality name {m!r} must be letters, digits, '_' or '-' (no dots)")
            if d < 1:
                errors.append(f"modality {m!r} has input dim {d}; must be >= 1")
        for m, (t_in, t_out) in self.step_conv.items():
            if m not in self.modalities:
                errors.append(f"step_conv names unknown modality {m!r} (modalities: {list(self.modalities)})")
            if t_in < 1 or t_out < 1:
                errors.append(f"step_conv[{m!r}] = ({t_in}, {t_out}); both step counts must be >= 1")
        if self.step_conv and not self.pool_time:
            errors.append("step_conv changes the step count, so it needs pool_time=True (sequence-level labels)")
        if self.fusion == "intra":
            if self.pairs is not None:
                errors.append("pairs is only used by fusion 'cross' or 'cross+intra'")
        else:
            if len(self.modalities) < 2:
                errors.append(f"fusion {self.fusion!r} needs >= 2 modalities; got {list(self.modalities)}")
            if self.pairs is not None:
                if not self.pairs:
                    errors.append("pairs is empty; use None for every ordered pair")
                for s, t in self.pairs:
                    for m in (s, t):
                        if m not in self.modalities:
                            errors.append(f"pair ({s!r}, {t!r}) names unknown modality {m!r}")
                    if s == t:
                        errors.append(f"pair ({s!r}, {t!r}) has source == target; that is intra-attention")
                if len(set(self.pairs)) != len(self.pairs):
                    errors.append(f"pairs has duplicates: {self.pairs}")
        if self.gru_units < 1:
            errors.append(f"gru_units = {self.gru_units}; must be >= 1")
        if self.heads < 1 or (2 * self.gru_units) % self.heads:
            errors.append(f"heads = {self.heads} must be >= 1 and divide the attention width 2*gru_units = "
                          f"{2 * self.gru_units}")
        if not 0.0 <= self.attn_dropout < 1.0:
            errors.append(f"attn_dropout = {self.attn_dropout}; must be in [0, 1)")
        for m, p in self.input_dropout.items():
            if m not in self.modalities:
                errors.append(f"input_dropout names unknown modality {m!r}")
            if not 0.0 <= p < 1.0:
                errors.append(f"input_dropout[{m!r}] = {p}; must be in [0, 1)")
        if self.clf_hidden < 1 or self.n_out < 1:
            errors.append(f"clf_hidden = {self.clf_hidden} and n_out = {self.n_out} must be >= 1")
        if not errors and len(set(self.vector_names)) != len(self.vector_names):
            errors.append(f"vector names collide: {self.vector_names}; rename the modalities")
        if errors:
            raise ValueError("invalid FusionSpec: " + "; ".join(errors))
        return self

    @property
    def width(self) -> int:
        """Encoder output and attention width, 2 * gru_units (120 in the thesis)."""
        return 2 * self.gru_units

    @property
    def pair_list(self) -> list[tuple[str, str]]:
        """(source, target) pairs of the cross modules; empty for intra."""
        if self.fusion == "intra":
            return []
        if self.pairs is not None:
            return list(self.pairs)
        names = list(self.modalities)
        return [(s, t) for t in names for s in names if s != t]

    @property
    def pair_names(self) -> list[str]:
        return [f"{s}2{t}" for s, t in self.pair_list]

    @property
    def intra_names(self) -> list[str]:
        return list(self.modalities) if self.fusion in ("intra", "cross+intra") else []

    @property
    def vector_names(self) -> list[str]:
        """The M vectors entering SP (or the noSP concatenation), in order: intra modules, then cross pairs."""
        return self.intra_names + self.pair_names

    @property
    def used_modalities(self) -> list[str]:
        """Modalities some attention module reads (those with an encoder and a required input)."""
        used = set(self.intra_names) | {m for pair in self.pair_list for m in pair}
        return [m for m in self.modalities if m in used]

    @property
    def sp_dim(self) -> int:
        """Classifier input: [mean, std] per SP group (intra, cross), or all vectors concatenated (noSP)."""
        if not self.sp:
            return len(self.vector_names) * self.width
        groups = (1 if self.intra_names else 0) + (1 if self.pair_names else 0)
        return groups * 2 * self.width


Impute = Literal["zero", "knn"]


class FusedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["fusion"] = "fusion"
    task: Task
    targets: list[str]
    fusion: FusionSpec
    activation: Literal["task", "identity"] = "task"
    impute: Impute = "zero"
    k: int = Field(default=10, ge=1)
    bank_size: int = Field(default=0, ge=0)  # training vectors in the KNN memory bank (0: none stored)

    @model_validator(mode="after")
    def _knn_needs_a_bank(self) -> FusedSpec:
        if self.impute == "knn" and self.fusion.fusion != "intra":
            raise ValueError("KNN imputation needs an intra model (its vectors are per modality)")
        if self.impute == "knn" and self.bank_size == 0:
            raise ValueError("KNN imputation needs a memory bank (bank_size 0)")
        return self

    @property
    def modalities(self) -> list[str]:
        return self.fusion.used_modalities


Ablation = Literal["paranet", "+ap", "+attn", "conflictnet", "+gap"]
# ConflictNET's knobs that TrainConfig's ``conflictnet`` section sets (docs/methods/conflictnet.md#options).
GateActivation = Literal["sigmoid", "hard_sigmoid"]
BlockOrder = Literal["conv-bn-pool", "conv-pool-bn"]
OutputActivation = Literal["identity", "tanh"]
Init = Literal["keras", "torch"]


class ConflictNetSpec(BaseModel):
    """Everything needed to rebuild a ConflictNET variant (stored as JSON next to exported weights)."""

    model_config = ConfigDict(extra="forbid")
    # paranet: no AP, no attention. +ap / +attn: ParaNET plus one of them. conflictnet: both.
    # +gap: ConflictNET with a temporal mean over LSTM-2's output sequence before the dense layer.
    ablation: Ablation = "conflictnet"
    samples: int = 240_000  # nominal clip length (30 s at 8 kHz); forward accepts any length that leaves >= 1 step
    n_out: int = 1
    filters: list[int] = [64, 128, 256]
    kernels: list[int] = [6, 4, 4]  # stride 1, 'valid' padding
    pools: list[int] = [8, 6, 6]  # max-pool size = stride, 'valid'
    avg_pool: int = 4  # AP: 832 -> 208 steps, under the 250 that LSTMs were found to handle well
    lstm_units: list[int] = [128, 64]
    attention_units: int = 32  # keras-self-attention's default
    dropout: float = 0.0  # none in the thesis or code; stew's choice of where it would go: before the dense layer
    # Keras code: conv -> BN -> pool; the thesis text lists conv -> pool -> BN.
    block_order: BlockOrder = "conv-bn-pool"
    # LSTM gates: Keras 2.2.4 (the authors' pin) defaults to hard_sigmoid; sigmoid runs the fused kernel.
    gate_activation: GateActivation = "sigmoid"
    activation: OutputActivation = "identity"  # the paper's output is linear
    bn_momentum: float = 0.01  # PyTorch convention; Keras momentum 0.99
    bn_eps: float = 1e-3  # Keras default
    init: Init = "keras"

    @model_validator(mode="after")
    def _check(self) -> ConflictNetSpec:
        if not (len(self.filters) == len(self.kernels) == len(self.pools) >= 1):
            raise ValueError("filters, kernels and pools need one entry per conv block (at least one)")
        if len(self.lstm_units) != 2:
            raise ValueError("lstm_units must name LSTM-1 and LSTM-2")
        if self.lstm_steps(self.samples) < 1:
            raise ValueError(f"{self.samples} samples leave no time step for the LSTMs; use a longer clip")
        return self

    @property
    def use_ap(self) -> bool:
        return self.ablation in ("+ap", "conflictnet", "+gap")

    @property
    def use_attention(self) -> bool:
        return self.ablation in ("+attn", "conflictnet", "+gap")

    @property
    def use_gap(self) -> bool:
        return self.ablation == "+gap"

    def layer_steps(self, samples: int | None = None) -> list[tuple[str, int]]:
        """(layer name, time steps after it) through the convolutional front end, for a clip of ``samples``."""
        n = self.samples if samples is None else samples
        out = []
        for i, (k, p) in enumerate(zip(self.kernels, self.pools, strict=True), 1):
            n = n - k + 1
            out.append((f"conv{i}", n))
            n = n // p
            out.append((f"pool{i}", n))
        if self.use_ap:
            out.append(("avg_pool", n // self.avg_pool))
        return out

    def lstm_steps(self, samples: int | None = None) -> int:
        """Time steps LSTM-1 sees (208 for ConflictNET on 240,000 samples, 832 without AP)."""
        return self.layer_steps(samples)[-1][1]


class RawAudioSpec(BaseModel):
    """The deployable raw-waveform model: a ConflictNET variant over one modality of waveform samples."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["conflictnet"] = "conflictnet"
    modality: str
    task: Literal["regression"] = "regression"
    targets: list[str]
    net: ConflictNetSpec
