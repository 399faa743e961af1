"""Run configuration, validated with pydantic. Every CLI option is a field here; YAML files use the
same names, and unknown keys are an error.

Defaults marked [U] are choices where the papers are silent (see docs/choices.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stew.errors import DataError

Arch = Literal["classifier", "bigru", "bigru-te", "gru4", "gru"]
LossName = Literal["mse", "ccc", "pcc", "bce", "ce"]
MethodName = Literal["unimodal", "linear", "sew", "cmstew", "emobed", "joint", "triplet", "cermtl"]
EMOBED_MODES = ("emobed", "joint", "triplet")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SEWConfig(Strict):
    """SEW (spec §5): L = alpha*translation + beta*autoencode + gamma*(-CCA) + prediction."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    k: int | None = 10
    r1: float = 1e-3
    r2: float = 1e-3
    latent: int | None = None  # None: 168 with video_app, else 128 (spec §5.3)


class CMStEWConfig(Strict):
    """CM-StEW (spec §6): L = L_p + alpha*(-corr) + beta*MAE(translation)."""

    alpha: float | None = None  # None: selected on validation from alpha_grid
    beta: float | None = None
    alpha_grid: list[float] = [0.001, 0.01, 0.1, 1.0]
    beta_grid: list[float] = [0.001, 0.01, 0.1, 1.0]
    k: int | None = None  # None: all singular values (the paper's trace norm)
    r1: float = 1e-3
    r2: float = 1e-3
    decoder_units: int | None = None  # [U] None: 250, or 500 when the teacher is 168/632-d video
    # None: the spec's default, 1 for a frame-level audio student (the RECOLA valence audio model) else 2
    # (spec §6.3); an explicit value is honoured for every student.
    decoder_layers: int | None = Field(default=None, ge=1)
    teacher_run: Path | None = None  # reuse a unimodal run of the teacher modality as stage 1


class EmoBedConfig(Strict):
    """EmoBed (emobed_cermtl spec §1): J = L_target + alpha*L_aux + beta*L_triplet + lambda*R(theta).

    ``--method joint`` uses alpha only, ``--method triplet`` beta only, ``--method emobed`` both; lambda
    (``l2``) applies in every mode and to the classic system (``--method unimodal --arch gru``).
    """

    alpha: float = 0.5  # [U] the paper's best OMG alpha; tuned on dev in the paper
    beta: float = 1.0  # the paper's best beta for every arousal system
    # lambda: lambda/2 * ||theta||^2 (gradient lambda*theta), the paper's L2 1e-4 on all its networks (spec
    # §1.4): every EmoBed mode and the classic system (--method unimodal --arch gru); 0 switches it off.
    l2: float = 1e-4
    triplet_form: Literal["difference", "hinge", "softplus"] = "hinge"  # [U] the paper writes the difference
    margin: float = 0.2  # hinge margin [U]
    classes: Literal["sign", "quantile"] = "sign"  # [U] regression labels -> classes for the triplet
    n_bins: int = 2  # quantile bins (classes = "quantile")
    max_rows: int | None = 512  # [U] steps per modality in the triplet's distance matrix (random subset)
    # The paper draws audio and video samples at random, not time-aligned pairs (spec §1.3); "paired" uses
    # the same windows for both modalities.
    pairing: Literal["paired", "unpaired"] = "unpaired"
    units: int = 120  # GRU units of the embedding nets and of the shared back-end (RECOLA, spec §1.4)
    embed_layers: int = 2
    shared_layers: int = 2


class CERMTLConfig(Strict):
    """CER-MTL (emobed_cermtl spec §2): feature images, shared CNN, a GRU + FC head per task."""

    image_steps: int = 20  # N
    image_stride_s: float = 0.4  # t = 10 frames at 25 Hz (the paper's 60 fps data: t = 10 frames)
    filters: int = 25
    kernel: int = 3
    pool: int = 2
    task_units: int = 5
    task_fc: int = 2
    task_weights: list[float] | None = None  # alpha_m per target; None = uniform 1/M


class LinearConfig(Strict):
    """Linear baselines (AVEC 2016's "SVR + offset", spec §2.3): standardised features, one linear map per
    step, fitted by scikit-learn. The strength and (frame-level data) the label offset are searched on
    validation; see docs/choices.md."""

    model: Literal["ridge", "svr"] = "ridge"  # regression; classification always uses logistic regression
    # Regularisation searched on validation. None: ridge alpha 10^-1..10^5, SVR C 10^-5..1 (AVEC 2016's
    # complexity range), logistic C 10^-4..10^2; one decade apart.
    grid: list[Annotated[float, Field(gt=0)]] | None = None
    # Label offsets (seconds) searched on validation: the label at t + offset is predicted from the
    # features at t. None: 0 to 8 s every 0.4 s on frame-level data, 0 on utterance-level data.
    offsets_s: list[Annotated[float, Field(ge=0)]] | None = None
    class_weight: Literal["balanced", "none"] = "balanced"  # classification: weight classes by 1 / frequency
    max_iter: int = Field(default=5000, ge=1)


class TrainConfig(Strict):
    data: Path
    method: MethodName = "unimodal"
    modality: str | None = None
    teacher: str | None = None
    target: str | None = None
    targets: list[str] | None = None  # several targets (multi-task); None: ``target`` or all
    ablation: str | None = None
    arch: Arch = "bigru-te"
    loss: LossName | None = None  # None: mse (regression; ccc for cermtl), bce (binary), ce (multiclass)
    seed: int = 0
    out: Path | None = None

    # data and preprocessing
    val_groups: int = 10  # groups carved from train when the data has no validation split
    cv: int | None = None
    # None: 2.4 s for SEW and EmoBed, none for CER-MTL, 2.8 s otherwise (the papers); frame-level data only
    label_delay_s: float | None = None
    window_s: float | None = None  # None: 3 s (1 step for SEW, which sees frames one at a time)
    hop_s: float | None = None  # None: 1 s (1 step for SEW)
    eval_window_s: float | None = None  # None: window_s; 3 s for SEW (per-step models ignore context)
    feature_set: str | None = None  # AVEC RECOLA: arousal or valence feature set (default: the target)

    # model
    gru_units: int | None = None  # None: the input dimension (spec §6.3)
    gru_layers: int | None = None  # None: 1 for frame-level audio and for text, else 2 (spec §6.3)
    d_model: int = 100
    heads: int = 2
    ffn: int = 400
    te_layers: int = 2
    dropout: float = 0.3
    clf_hidden: int = 300
    clf_dropout: float = 0.3

    # optimisation
    optimizer: Literal["adam", "sgd"] | None = None  # None: adam; sgd for SEW (spec §5.5)
    lr: float | None = None  # None: 1e-4 utterance-level, 1e-5 frame-level (CM-StEW paper); SEW 1e-3
    momentum: float = 0.7
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 200
    min_epochs: int = 1
    patience: int = 20
    threads: int | None = None
    progress: bool = True
    resume: bool = False
    postprocess: bool = False  # AVEC chain (median filter, centring, scaling, shift) searched on validation

    sew: SEWConfig = Field(default_factory=SEWConfig)
    cmstew: CMStEWConfig = Field(default_factory=CMStEWConfig)
    emobed: EmoBedConfig = Field(default_factory=EmoBedConfig)
    cermtl: CERMTLConfig = Field(default_factory=CERMTLConfig)
    linear: LinearConfig = Field(default_factory=LinearConfig)


def first_error(e: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error's first problem: what our one-line errors name."""
    err = e.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """YAML file (if any) first, then explicit command-line overrides; validated as a whole."""
    raw: dict = {}
    if path is not None:
        if not path.is_file():
            raise DataError("missing file", file=path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DataError(f"invalid YAML: {e}", file=path) from e
        if not isinstance(raw, dict):
            raise DataError("config must be a mapping", file=path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid config key '{loc}': {msg}", file=path) from e
