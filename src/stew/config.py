"""Run configuration, validated with pydantic. Every CLI option is a field here; YAML files use the
same names, and unknown keys are an error.

Defaults marked [U] are choices where the papers are silent (see docs/choices.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stew.errors import DataError
from stew.models.specs import BlockOrder, GateActivation, Init, OutputActivation

Arch = Literal["classifier", "mlp", "bigru", "bigru-te", "gru4", "gru"]
Recipe = Literal["stew", "paper"]
LossName = Literal["mse", "ccc", "pcc", "bce", "ce"]
MethodName = Literal[
    "unimodal", "linear", "sew", "cmstew", "emobed", "joint", "triplet", "cermtl", "fusion", "conflictnet"
]
EMOBED_MODES = ("emobed", "joint", "triplet")


# Ranges: every numeric field carries the range where it means something, so `max_epochs: 0`,
# `dropout: 1.5` or `lr: -1` are one-line errors before any data is read, not an untrained model or a
# crash mid-run. NaN and Inf are refused everywhere (allow_inf_nan=False).
NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
Prob = Annotated[float, Field(ge=0, lt=1)]  # dropout: 1 would zero every unit
Precision = Literal["32", "bf16-mixed", "16-mixed"]
SEED_MAX = 2**32 - 1  # numpy and Lightning seed with a uint32
DEFAULT_MLFLOW_DB = "mlruns.db"  # --tracker mlflow without --tracking-uri: this SQLite file in the working folder
TRAIN_VAL_GROUPS = 10  # validation groups carved from train unless val_groups says otherwise (the papers')


# Fields that change where or how fast a run executes, where it is tracked or where its fits are shared, not
# what it computes: left out of a run's identity (the run store's key, the fit cache's). A GPU's results are
# not bit-identical to the CPU's (docs/devices.md), but a sweep resumed on other hardware keeps its finished
# runs; precision changes the arithmetic and stays in.
NOT_IN_IDENTITY = ("out", "progress", "threads", "resume", "overwrite", "data", "accelerator", "devices", "tracker",
                   "tracking_uri", "experiment", "fit_cache")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SEWConfig(Strict):
    """SEW (docs/methods/sew.md#losses): L = alpha*translation + beta*autoencode + gamma*(-CCA) + prediction."""

    alpha: NonNeg = 1.0
    beta: NonNeg = 1.0
    gamma: NonNeg = 1.0
    k: Count | None = 10
    r1: NonNeg = 1e-3
    r2: NonNeg = 1e-3
    latent: Count | None = None  # None: 168 with video_app, else 128 (docs/methods/sew.md#layer-sizes)


class CMStEWConfig(Strict):
    """CM-StEW (docs/methods/cmstew.md#losses): L = L_p + alpha*(-corr) + beta*MAE(translation)."""

    alpha: NonNeg | None = None  # None: selected on validation from alpha_grid
    beta: NonNeg | None = None
    alpha_grid: list[NonNeg] = Field(default=[0.001, 0.01, 0.1, 1.0], min_length=1)
    beta_grid: list[NonNeg] = Field(default=[0.001, 0.01, 0.1, 1.0], min_length=1)
    k: Count | None = None  # None: all singular values (the paper's trace norm)
    r1: NonNeg = 1e-3
    r2: NonNeg = 1e-3
    decoder_units: Count | None = None  # [U] None: 250, or 500 when the teacher is 168/632-d video
    # None: the paper's default, 1 for a frame-level audio student (the RECOLA valence audio model) else 2
    # (docs/methods/cmstew.md#decoder); an explicit value is honoured for every student.
    decoder_layers: Count | None = None
    teacher_run: Path | None = None  # reuse a unimodal run of the teacher modality as stage 1
    # Cross-fitting (docs/transfer.md): K teachers, each trained on the training groups outside one of K grouped
    # folds, give the latents of that fold, so the student aligns to what a teacher knows of unseen
    # groups, not to what it memorised. None: the recipe's (paper 1, stew 5); 1: one teacher on all.
    teacher_folds: Count | None = None
    teacher_arch: Arch | None = None  # None: the recipe's (paper: bigru-te; stew: the student's arch)
    # The negative-transfer guard: grouped K-fold CV over the training groups compares CM-StEW with
    # the unimodal model of the same architecture, and the run ships the winner. None: the recipe's
    # (paper 0: no guard; stew 5); 0 switches it off.
    guard_folds: Annotated[int, Field(ge=0)] | None = None
    # Transfer ships only when it beats unimodal on the folds' mean with a paired t-test p below this
    # [U]: without evidence of a gain, the model without a teacher dependency is the safer one to ship.
    guard_p: Annotated[float, Field(gt=0, le=1)] = 0.1
    # [U; not in the thesis, docs/transfer.md] Weight of a distillation term: on steps without labels (the
    # --unlabelled pairs) the student's prediction is fitted to its frozen teachers' mean prediction
    # with L_p's own loss (soft targets for binary, the argmax for multiclass). None: the recipe's.
    gamma: NonNeg | None = None


class EmoBedConfig(Strict):
    """EmoBed (docs/methods/emobed.md#losses): J = L_target + alpha*L_aux + beta*L_triplet + lambda*R(theta).

    ``--method joint`` uses alpha only, ``--method triplet`` beta only, ``--method emobed`` both; lambda
    (``l2``) applies in every mode and to the classic system (``--method unimodal --arch gru``).
    """

    alpha: NonNeg = 0.5  # [U] the paper's best OMG alpha; tuned on dev in the paper
    beta: NonNeg = 1.0  # the paper's best beta for every arousal system
    # lambda: lambda/2 * ||theta||^2 (gradient lambda*theta), the paper's L2 1e-4 on all its networks: every
    # EmoBed mode and the classic system (--method unimodal --arch gru); 0 switches it off.
    l2: NonNeg = 1e-4
    triplet_form: Literal["difference", "hinge", "softplus"] = "hinge"  # [U] the paper writes the difference
    margin: NonNeg = 0.2  # hinge margin [U]
    classes: Literal["sign", "quantile"] = "sign"  # [U] regression labels -> classes for the triplet
    n_bins: int = Field(default=2, ge=2)  # quantile bins (classes = "quantile")
    # [U] steps per modality in the triplet's distance matrix (random subset)
    max_rows: Annotated[int, Field(ge=2)] | None = 512
    # The paper draws audio and video samples at random, not time-aligned pairs (docs/methods/emobed.md#pairing);
    # "paired" uses the same windows for both modalities.
    pairing: Literal["paired", "unpaired"] = "unpaired"
    units: Count = 120  # GRU units of the embedding nets and of the shared back-end (the paper's RECOLA networks)
    embed_layers: Count = 2
    shared_layers: Count = 2


class CERMTLConfig(Strict):
    """CER-MTL (docs/methods/cermtl.md): feature images, shared CNN, a GRU + FC head per task."""

    image_steps: Count = 20  # N
    image_stride_s: Pos = 0.4  # t = 10 frames at 25 Hz (the paper's 60 fps data: t = 10 frames)
    filters: Count = 25
    kernel: Count = 3
    pool: Count = 2
    task_units: Count = 5
    task_fc: Count = 2
    task_weights: list[NonNeg] | None = Field(default=None, min_length=1)  # alpha_m per target; None = uniform 1/M


class LinearConfig(Strict):
    """Linear baselines (AVEC 2016's "SVR + offset", docs/methods/unimodal.md#linear-baselines): standardised
    features, one linear map per step, fitted by scikit-learn. The strength and (frame-level data) the label
    offset are searched on validation; see docs/choices.md."""

    model: Literal["ridge", "svr"] = "ridge"  # regression; classification always uses logistic regression
    # Regularisation searched on validation. None: ridge alpha 10^-1..10^5, SVR C 10^-5..1 (AVEC 2016's
    # complexity range), logistic C 10^-4..10^2; one decade apart.
    grid: list[Pos] | None = Field(default=None, min_length=1)
    # Label offsets (seconds) searched on validation: the label at t + offset is predicted from the
    # features at t. None: 0 to 8 s every 0.4 s on frame-level data, 0 on utterance-level data.
    offsets_s: list[NonNeg] | None = Field(default=None, min_length=1)
    class_weight: Literal["balanced", "none"] = "balanced"  # classification: weight classes by 1 / frequency
    max_iter: Count = 5000


class FusionConfig(Strict):
    """Attention fusion over several modalities (docs/methods/fusion.md): the thesis's sizes and its best model (intra
    with statistical pooling, every modality of the data) by default."""

    kind: Literal["intra", "cross", "cross+intra"] = "intra"
    modalities: list[str] | None = Field(default=None, min_length=1)  # None: every modality of the data
    # Cross pairs as SOURCE2TARGET, initials (T2V: query video, key/value text) or names; None: all pairs.
    pairs: list[str] | None = Field(default=None, min_length=1)
    sp: bool = True  # statistical pooling; False: the -noSP variant (vectors concatenated)
    moddrop: bool = False  # every training sample also with each single modality absent (M + 1 versions)
    moddrop_p: Prob = 0.0  # instead: drop each modality of each training sample with this probability
    # How ModDrop removes a modality: masked out (stew's, as `stew evaluate --missing` and predict do) or an
    # all-zero input through the encoders (the thesis's, docs/methods/fusion.md#missing-modalities).
    absent: Literal["mask", "zero-input"] = "mask"
    # An absent modality at evaluation/prediction: masked out ("zero" vectors) or imputed from the K
    # nearest training samples' vectors ("knn", intra only).
    impute: Literal["zero", "knn"] = "zero"
    k: Count = 10
    gru_units: Count = 60  # per direction
    heads: Count = 6
    attn_dropout: Prob = 0.1
    text_dropout: Prob = 0.25  # on the text input, training only (the authors' code)
    clf_hidden: Count = 60
    clf_activation: Literal["none", "relu"] = "none"  # the authors' code: none between the two linear layers
    # Time-step Conv1d per modality, {name: [T_in, T_out]}; None: the thesis's on IEMOCAP (audio 1000->500,
    # video 32->25), none elsewhere (it needs fixed-length inputs).
    step_conv: dict[str, tuple[Count, Count]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FusionConfig:
        if self.moddrop and self.moddrop_p:
            raise ValueError("give fusion.moddrop (each single modality dropped) or fusion.moddrop_p, not both")
        if (2 * self.gru_units) % self.heads:
            raise ValueError(f"heads {self.heads} must divide 2 * gru_units = {2 * self.gru_units}")
        if self.pairs is not None and self.kind == "intra":
            raise ValueError("fusion.pairs applies to --fusion cross or cross+intra")
        return self


class ConflictNetConfig(Strict):
    """ConflictNET's network knobs (docs/methods/conflictnet.md#options); the defaults are the paper's network
    as the authors' Keras code builds it, with PyTorch's fused sigmoid LSTM gates."""

    # Keras 2.2.4's default (the authors' pin) is hard_sigmoid, clip(0.2 x + 0.5, 0, 1): slower (a Python
    # loop over time) and not exportable to ONNX.
    gate_activation: GateActivation = "sigmoid"
    block_order: BlockOrder = "conv-bn-pool"  # the Keras code's; the thesis text lists conv -> pool -> BN
    dropout: Prob = 0.0  # before the dense layer [U]; none in the thesis or code
    activation: OutputActivation = "identity"  # the paper's linear output; tanh bounds it to [-1, 1]
    init: Init = "keras"  # Keras 2.2.4's initialisers; torch keeps PyTorch's


class TrainConfig(Strict):
    data: Path
    method: MethodName = "unimodal"
    modality: str | None = None
    teacher: str | None = None
    target: str | None = None
    targets: list[str] | None = None  # several targets (multi-task); None: ``target`` or all
    ablation: str | None = None
    arch: Arch = "bigru-te"
    # CM-StEW's recipe: "stew" (default) is stew's own (docs/transfer.md); "paper" the thesis's, for
    # reproduction. Other methods ignore it.
    recipe: Recipe = "stew"
    # Paired recordings without labels (a dataset folder; its labels, if any, are ignored): they feed
    # CM-StEW's alignment and translation terms only.
    unlabelled: Path | None = None
    loss: LossName | None = None  # None: mse (regression; ccc for cermtl), bce (binary), ce (multiclass)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    out: Path | None = None

    # data and preprocessing
    # Where validation comes from when the data has none: train (whole groups carved from it), test
    # (whole groups of a labelled test split; test is then reported on the others), or auto: test when a
    # modality the run reads looks fitted on its own training labels (stew.data.leakage) and the data
    # labels a test split, else train. Resolved per run; metrics.json names the groups in each role.
    val_from: Literal["auto", "train", "test"] = "auto"
    val_groups: Count | None = None  # None: TRAIN_VAL_GROUPS carved from train, a third of the test groups from test
    # The modalities whose training features are fitted on their own labels: None runs the leakage probe
    # (cached per data folder); a list declares them instead ([] declares none).
    flagged: list[str] | None = None
    cv: Annotated[int, Field(ge=2)] | None = None
    # None: 2.4 s for SEW and EmoBed, none for CER-MTL, 2.8 s otherwise (the papers); frame-level data only
    label_delay_s: NonNeg | None = None
    window_s: Pos | None = None  # None: 3 s (1 step for SEW, which sees frames one at a time)
    hop_s: Pos | None = None  # None: 1 s (1 step for SEW)
    eval_window_s: Pos | None = None  # None: window_s; 3 s for SEW (per-step models ignore context)
    feature_set: str | None = None  # AVEC RECOLA: arousal or valence feature set (default: the target)
    fold: Annotated[int, Field(ge=1, le=5)] | None = None  # IEMOCAP AMH folds: which of fold01..fold05 (default 1)
    # Which modalities are z-scored on the present training steps: "all" (every modality the run reads), or a
    # list of them, the others fed as they are ([]: none). docs/choices.md, "Standardisation".
    standardize: Literal["all"] | list[str] = "all"

    # model
    gru_units: Count | None = None  # None: the input dimension (docs/methods/unimodal.md#encoder)
    gru_layers: Count | None = None  # None: 1 for frame-level audio and for text, else 2 (the CM-StEW paper)
    d_model: Count = 100
    heads: Count = 2
    ffn: Count = 400
    te_layers: Count = 2
    dropout: Prob = 0.3
    clf_hidden: Count = 300
    clf_dropout: Prob = 0.3

    # optimisation
    optimizer: Literal["adam", "sgd"] | None = None  # None: adam; sgd for SEW (docs/methods/sew.md#defaults)
    lr: Pos | None = None  # None: 1e-4 utterance-level, 1e-5 frame-level (CM-StEW paper); SEW 1e-3
    momentum: Annotated[float, Field(ge=0, le=1)] = 0.7
    weight_decay: NonNeg = 0.0
    batch_size: Count = 32
    max_epochs: Count = 200
    min_epochs: Annotated[int, Field(ge=0)] = 1
    patience: Annotated[int, Field(ge=0)] = 20
    # The learning rate: constant ("none"), or ReduceLROnPlateau on the validation loss ("plateau": times
    # plateau_factor after plateau_patience epochs without a lower one; the fusion thesis's 0.1 and 10).
    lr_scheduler: Literal["none", "plateau"] = "none"
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    plateau_patience: Annotated[int, Field(ge=0)] = 10
    threads: Count | None = None
    # A folder of finished fits shared between runs (docs/architecture.md#shared-fits): a fit whose identity
    # (training.fitcache) is already there is copied, not trained again. reproduce, rank and transfer set it
    # under their output folder; their runs then train CM-StEW's cross-fitted teachers once per seed.
    fit_cache: Path | None = None
    progress: bool = True
    resume: bool = False
    # A non-empty run folder is refused unless the run resumes it or replaces it (an earlier run is
    # never lost by accident); rank, transfer and the demo pass it on to their runs.
    overwrite: bool = False
    postprocess: bool = False  # AVEC chain (median filter, centring, scaling, shift) searched on validation

    # Where a run trains (docs/devices.md). Checked against the machine when the run starts, not here: a
    # protocol's configuration is built where the sweep starts and may run on another machine.
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # auto: a CUDA GPU when torch sees one, else the CPU
    devices: Count = 1  # stew trains a run on one device: more are refused (docs/devices.md#devices)
    precision: Precision = "32"  # bf16-mixed on CPU or GPU; 16-mixed on a GPU only
    # Run tracking (docs/tracking.md): parameters, per-epoch losses and metrics, the run folder as artefacts.
    tracker: Literal["none", "mlflow", "tensorboard"] = "none"
    # mlflow: a tracking URI (default sqlite:///<working folder>/mlruns.db, fixed when the configuration is
    # made); tensorboard: a folder (default <run>/logs/tensorboard).
    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] | None = None  # None: "stew"; a protocol's runs: its name

    sew: SEWConfig = Field(default_factory=SEWConfig)
    cmstew: CMStEWConfig = Field(default_factory=CMStEWConfig)
    emobed: EmoBedConfig = Field(default_factory=EmoBedConfig)
    cermtl: CERMTLConfig = Field(default_factory=CERMTLConfig)
    linear: LinearConfig = Field(default_factory=LinearConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    conflictnet: ConflictNetConfig = Field(default_factory=ConflictNetConfig)

    @property
    def teachers(self) -> list[str]:
        """The stronger modalities: ``--teacher text,video`` names several (CM-StEW)."""
        return [t.strip() for t in self.teacher.split(",")] if self.teacher else []

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # YAML and --set read 32 as a number

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        # Cross-field ranges; each message names the keys involved.
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs {self.min_epochs} exceeds max_epochs {self.max_epochs}")
        if self.arch == "bigru-te" and self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        if self.teacher is not None and (len(set(self.teachers)) != len(self.teachers) or "" in self.teachers):
            raise ValueError(f"teacher {self.teacher!r}: name each stronger modality once, comma-separated")
        if self.modality in self.teachers and self.method not in (
            "unimodal", "linear", "cermtl"
        ):
            # Checked here, before any data is read or a stage-1 teacher is trained.
            raise ValueError(f"teacher {self.teacher!r} must differ from modality {self.modality!r}")
        if self.resume and self.overwrite:
            raise ValueError("give resume (continue the run folder) or overwrite (replace it), not both")
        if self.tracker == "none" and self.tracking_uri is not None:
            raise ValueError("tracking_uri applies to tracker mlflow or tensorboard")
        if self.tracker == "mlflow" and self.tracking_uri is None:
            # Fixed now, where the configuration is made: every run of a sweep then writes to the same store,
            # wherever its process starts (docs/tracking.md).
            self.tracking_uri = f"sqlite:///{Path.cwd().absolute() / DEFAULT_MLFLOW_DB}"
        return self


def moved_fields(model: BaseModel) -> set[str]:
    """The fields given a value other than their default. A whole configuration dumped and read back
    (metrics.json's ``config``, reproduce's workers) sets every field; a default value changes nothing."""
    fields = type(model).model_fields
    return {k for k in model.model_fields_set if getattr(model, k) != fields[k].get_default(call_default_factory=True)}


def first_error(e: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error's first problem: what our one-line errors name."""
    err = e.errors()[0]
    # A validator's own ValueError reads "Value error, <ours>": the prefix says nothing to a user.
    return ".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """YAML file (if any) first, then explicit command-line overrides; validated as a whole."""
    from stew.data.validate import read_yaml

    raw: dict = {}
    if path is not None:
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise DataError("config must be a mapping", file=path)
    for k, v in overrides.items():
        if v is None:
            continue
        # A nested option from the command line (--fusion cross) keeps the file's other keys of that section.
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid config key '{loc}': {msg}" if loc else f"invalid config: {msg}", file=path) from e
