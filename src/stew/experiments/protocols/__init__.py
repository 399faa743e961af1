"""Paper protocols: one YAML file per paper table, shipped inside the package.

A protocol names *groups* of runs (a method, modality, architecture or ablation, each run over seeds)
and the *tables* that lay their results out as the paper does. ``expand`` turns it into run
specifications for :mod:`stew.experiments.reproduce`; :mod:`stew.report` renders the tables.

Group names may hold ``{field}`` placeholders filled from a ``matrix`` of TrainConfig values, so
``unimodal-{modality}-{arch}`` with ``matrix: {modality: [text, audio], arch: [classifier, bigru]}``
is four groups. A ``null`` ablation is written ``full`` in names.

With ``folds`` (IEMOCAP's five AMH folds), every group runs ``seeds x folds`` runs: run index
r = 0 .. seeds*folds-1 trains on fold ``r % folds + 1`` with TrainConfig ``seed = r``. The run store,
the plan and the tables key runs by that index (the "seed" of a store row), so each run keeps a
unique key and mean +- std is over all seeds x folds runs (the thesis's "50 runs").

A group's ``missing`` entries (``zero``, ``knn5``, ``knn10``, ...) score every finished run with each
modality subset present (stew.eval.missing); ``missing_tables`` lay those scores out as subset x model.
"""

from __future__ import annotations

import itertools
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stew.config import TrainConfig, first_error
from stew.data.dataset import modality_subsets
from stew.data.validate import parse_yaml
from stew.errors import DataError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tuned(_Strict):
    """Take hyper-parameters from the best trial of a ``stew tune`` study (storage given at run time)."""

    study: str


class Synthetic(_Strict):
    """Arguments of ``stew data synth``; the protocol's default data, written once into its output folder."""

    kind: Literal["recola", "mosi", "iemocap", "conflict"]
    seed: int = 0
    speakers: int = 9
    minutes: float = 1.0
    videos: int = 40
    utterances: int = Field(default=350, ge=50)  # iemocap (stew.data.synth.iemocap.MIN_UTTERANCES)
    clips: int = Field(default=240, ge=1)  # conflict: clips of clip_s seconds at 8 kHz
    clip_s: float = Field(default=30.0, ge=1.0)
    layout: Literal["native", "avec"] = "native"


# A missing-modality evaluation: absent modalities masked out (zero, stew's), fed as an all-zero input
# through the encoders (zero-input, the thesis's Table 4.4) or imputed from the K nearest training
# samples (knnK, intra fusion models only).
IMPUTATION = r"zero|zero-input|knn[1-9][0-9]*"
Imputation = Annotated[str, Field(pattern=f"^({IMPUTATION})$")]


def parse_imputation(name: str) -> tuple[str, int | None, str]:
    """(impute, k, absent) for stew.eval.missing: ``"zero"`` -> ("zero", None, "mask"); ``"zero-input"`` ->
    ("zero", None, "zero-input"); ``"knn10"`` -> ("knn", 10, "mask")."""
    if not re.fullmatch(IMPUTATION, name):
        raise ValueError(f"unknown imputation {name!r}: write zero, zero-input or knnK (e.g. knn10)")
    if name.startswith("knn"):
        return "knn", int(name[3:]), "mask"
    return "zero", None, "zero-input" if name == "zero-input" else "mask"


class GroupSpec(_Strict):
    """One or more groups of runs (one per matrix point), each run over the protocol's seeds."""

    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields (nested as in YAML configs)
    # Group whose run of the same seed is this group's stage-1 teacher (CM-StEW), e.g. unimodal-text-bigru-te.
    teacher_run: str | None = None
    tuned: Tuned | None = None
    # Missing-modality evaluations of every finished run (fusion runs; knnK needs fusion.kind intra).
    missing: list[Imputation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_missing(self) -> GroupSpec:
        if len(set(self.missing)) != len(self.missing):
            raise ValueError(f"missing {self.missing} names an imputation twice")
        return self


class Column(_Strict):
    label: str
    key: str  # substituted for ``{col}`` in row group names
    vars: dict[str, str] = Field(default_factory=dict)  # more placeholders, e.g. {weak: audio, target: valence}


class Row(_Strict):
    label: str
    group: str | None = None  # a group name, may contain ``{col}``; None: a row of the paper's numbers only
    # The paper's numbers: {metric: value} without columns, {column label: {metric: value}} with columns.
    paper: dict[str, Any] = Field(default_factory=dict)
    # Group this row is tested against instead of the table's baseline (may contain ``{col}``): e.g.
    # intra vs cross per modality set, where each row needs its own comparison.
    baseline: str | None = None


Split = Literal["val", "test"]


class TableSpec(_Strict):
    # The title names the table and its metrics, not the split: the split a table reports depends on
    # the data (see ``split``), so stew.experiments.results appends it.
    title: str
    metrics: list[str]
    # auto: test when every run of the table has test scores (a labelled held-out split), else val.
    # Selection (early stopping, grids) reads val only, so test is an unbiased headline where it exists.
    split: Literal["auto", "val", "test"] = "auto"
    # The split the paper's numbers are on, in stew's names: RECOLA's dev partition is stew's val.
    paper_split: Split = "test"
    columns: list[Column] = Field(default_factory=list)
    rows: list[Row]
    baseline: str | None = None  # group (may contain ``{col}``) every row is tested against
    note: str | None = None

    def cells(self) -> list[tuple[Row, Column | None, str]]:
        """(row, column, group name) for every cell of the table that has runs."""
        cols: list[Column | None] = list(self.columns) or [None]
        return [(r, c, fill_col(r.group, c)) for r in self.rows if r.group for c in cols]

    def baseline_for(self, col: Column | None, row: Row | None = None) -> str | None:
        """The group a cell is tested against: the row's own baseline, else the table's."""
        base = (row.baseline if row is not None else None) or self.baseline
        return fill_col(base, col) if base else None

    def baselines(self) -> list[str]:
        """Every baseline group the table's cells are tested against."""
        cols: list[Column | None] = list(self.columns) or [None]
        out = [b for r in self.rows for c in cols if (b := self.baseline_for(c, r)) is not None]
        return list(dict.fromkeys(out))

    def paper_value(self, row: Row, col: Column | None, metric: str) -> float | None:
        src = row.paper.get(col.label, {}) if col is not None else row.paper
        v = src.get(metric) if isinstance(src, dict) else None
        return float(v) if v is not None else None


class MissingColumn(_Strict):
    """One model of a missing-modality table: a group's runs scored with modalities absent, or
    ``orig``: groups trained (and tested) on each subset only, read from their normal scores."""

    label: str
    # zero / knnK: a group with that ``missing`` entry. orig: a template with ``{initials}`` (TV for
    # text+video, in the table's modality order) or ``{subset}`` (text+video); a subset whose group
    # the protocol lacks (cross needs two modalities) is shown as N.A.
    group: str
    impute: Literal["orig"] | Imputation
    # The paper's numbers, {subset: {metric: value}}; subsets as "text+video" (any order) or initials ("TV").
    paper: dict[str, dict[str, float]] = Field(default_factory=dict)

    def group_for(self, subset: tuple[str, ...], modalities: list[str]) -> str:
        if self.impute != "orig":
            return self.group
        present = [m for m in modalities if m in subset]
        return self.group.replace("{subset}", "+".join(present)).replace(
            "{initials}", "".join(m[0].upper() for m in present))


class MissingTableSpec(_Strict):
    """Modality subset x model (thesis Table 4.4): every subset of ``modalities`` present, the others absent."""

    title: str
    metrics: list[str] = Field(min_length=1)
    modalities: list[str] = Field(min_length=1)  # the table's rows are their non-empty subsets
    split: Literal["auto", "val", "test"] = "auto"
    paper_split: Split = "test"
    columns: list[MissingColumn] = Field(min_length=1)
    note: str | None = None

    def subsets(self) -> list[tuple[str, ...]]:
        return modality_subsets(self.modalities)

    def paper_value(self, col: MissingColumn, subset: tuple[str, ...], metric: str) -> float | None:
        for key, values in col.paper.items():
            if self._subset_of(key) == frozenset(subset):
                v = values.get(metric)
                return float(v) if v is not None else None
        return None

    def _subset_of(self, key: str) -> frozenset[str] | None:
        """``"text+video"`` or ``"TV"`` -> {text, video}; None when it names no subset of the table."""
        parts = key.split("+")
        if set(parts) <= set(self.modalities):
            return frozenset(parts)
        initials = {m[0].upper(): m for m in self.modalities}
        if len(initials) == len(self.modalities) and set(key) <= set(initials) and len(set(key)) == len(key):
            return frozenset(initials[c] for c in key)
        return None

    @model_validator(mode="after")
    def _valid(self) -> MissingTableSpec:
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"missing table {self.title!r}: a modality is named twice in {self.modalities}")
        for col in self.columns:
            bad = [k for k in col.paper if self._subset_of(k) is None]
            if bad:
                raise ValueError(f"missing table {self.title!r}, column {col.label!r}: paper subset {bad[0]!r} is not "
                                 f"a subset of {self.modalities}")
        return self


def fill_col(template: str, col: Column | None) -> str:
    """A row's group name in one column: ``{col}`` and the column's ``vars`` filled in."""
    if col is None:
        return template
    for k, v in {"col": col.key, **col.vars}.items():
        template = template.replace("{" + k + "}", v)
    return template


class Protocol(_Strict):
    name: str
    title: str
    description: str = ""
    seeds: int = 5  # with folds: seeds per fold
    # Cross-validation folds of the data (IEMOCAP AMH: 5); None: the data has one split. TrainConfig.fold is 1..5.
    folds: Annotated[int, Field(ge=1, le=5)] | None = None
    data_hint: str = ""  # what data the protocol expects, for error messages and --list
    synthetic: Synthetic | None = None  # data synthesised into OUT/data when --data is not given
    base: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields shared by every run
    departures: list[str] = Field(default_factory=list)  # where and why the protocol departs from the paper
    # What the val split is called in this protocol's tables: "validation" where it is carved from train,
    # "dev" where the data ships a dev partition (AVEC RECOLA).
    val_name: str = "validation"
    groups: dict[str, GroupSpec]
    tables: list[TableSpec] = Field(default_factory=list)
    missing_tables: list[MissingTableSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tables_name_groups(self) -> Protocol:
        groups = self.expand_groups()
        names = set(groups)
        for spec in self.groups.values():
            if spec.teacher_run is not None and spec.teacher_run not in names:
                raise ValueError(f"teacher_run {spec.teacher_run!r} is not a group of this protocol")
        for name, (fields, spec) in groups.items():
            if spec.missing and fields.get("method") != "fusion":
                raise ValueError(f"group {name!r}: missing needs method fusion (a model that reads several modalities)")
            kind = (fields.get("fusion") or {}).get("kind", "intra")
            if kind != "intra" and any(m.startswith("knn") for m in spec.missing):
                raise ValueError(f"group {name!r}: missing {spec.missing} imputes with KNN, which needs fusion.kind "
                                 f"intra (not {kind})")
        for t in self.tables:
            for row, col, g in t.cells():
                if g not in names:
                    raise ValueError(f"table {t.title!r} names unknown group {g!r}")
                base = t.baseline_for(col, row)
                if base is not None and base not in names:
                    raise ValueError(f"table {t.title!r} has unknown baseline {base!r}")
        for mt in self.missing_tables:
            for col in mt.columns:
                where = f"missing table {mt.title!r}, column {col.label!r}"
                if col.impute == "orig":
                    if not any(col.group_for(s, mt.modalities) in names for s in mt.subsets()):
                        raise ValueError(f"{where}: no subset of {mt.modalities} has a group {col.group!r}")
                elif col.group not in names:
                    raise ValueError(f"{where} names unknown group {col.group!r}")
                elif col.impute not in groups[col.group][1].missing:
                    raise ValueError(f"{where}: group {col.group!r} has no missing entry {col.impute!r} "
                                     f"(it has {groups[col.group][1].missing})")
        return self

    def run_seeds(self, seeds: int | None = None) -> list[int]:
        """The run indices (store "seeds") of ``seeds`` seeds per fold: 0 .. seeds*folds-1."""
        n = self.seeds if seeds is None else seeds
        return list(range(n * (self.folds or 1)))

    def fold_of(self, seed: int) -> int | None:
        """The fold run index ``seed`` trains on (None without folds): folds cycle fastest, so the
        first ``folds`` runs cover every fold once and any prefix of seeds is balanced over folds."""
        return seed % self.folds + 1 if self.folds else None

    def expand_groups(self) -> dict[str, tuple[dict[str, Any], GroupSpec]]:
        """Group name -> (TrainConfig overrides for this group, its spec), in protocol order."""
        out: dict[str, tuple[dict[str, Any], GroupSpec]] = {}
        for template, spec in self.groups.items():
            keys = list(spec.matrix)
            for values in itertools.product(*(spec.matrix[k] for k in keys)) if keys else [()]:
                point = dict(zip(keys, values, strict=True))
                name = template.format(**{k: "full" if v is None else v for k, v in point.items()})
                if name in out:
                    raise ValueError(f"group name {name!r} appears twice; add its matrix fields to the name")
                out[name] = (_merge(_merge(self.base, spec.set), point), spec)
        return out

    def group_names(self) -> list[str]:
        return list(self.expand_groups())

    def config(
        self, group: str, data: Path, seed: int, out: Path, overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        """The validated TrainConfig of one run of ``group`` (``overrides``, e.g. from --set, win)."""
        fields, _ = self.expand_groups()[group]
        if self.folds and "fold" in (overrides or {}):
            raise DataError(f"protocol {self.name} sets the fold of each run (folds: {self.folds}); drop --set fold")
        run = {"data": str(data), "seed": seed, "out": str(out), "progress": False}
        if self.folds:
            run["fold"] = self.fold_of(seed)
        # A protocol reproduces its paper: CM-StEW runs take the paper recipe unless the protocol names one.
        # Tracked runs land in one experiment named after the protocol unless --set experiment=... names another.
        raw = _merge({"recipe": "paper", "experiment": self.name}, _merge(fields, {**(overrides or {}), **run}))
        try:
            return TrainConfig.model_validate(raw)
        except ValidationError as e:
            loc, msg = first_error(e)
            raise DataError(f"protocol {self.name}, group {group}: invalid '{loc}': {msg}") from e


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: ``b`` wins; sub-configs (``cmstew: {...}``) merge key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def available() -> list[str]:
    """Names of the protocols shipped with stew."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A shipped protocol by name, or a protocol YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, where = path.read_text(), path
    elif str(name_or_path) in available():
        text = resources.files(__package__).joinpath(f"{name_or_path}.yaml").read_text()
        where = Path(f"{name_or_path}.yaml")
    else:
        raise DataError(f"unknown protocol {str(name_or_path)!r}; choose from {available()} or give a YAML file")
    return parse_protocol(text, where)


def parse_protocol(text: str, where: Path | str = "<protocol>") -> Protocol:
    raw = parse_yaml(text, where)  # one line: PyYAML's own message spans several
    if not isinstance(raw, dict):
        raise DataError("a protocol must be a mapping", file=where)
    try:
        return Protocol.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(f"invalid protocol{' key ' + repr(loc) if loc else ''}: {msg}", file=where) from e
