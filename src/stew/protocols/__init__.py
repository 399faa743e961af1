"""Paper protocols: one YAML file per paper table, shipped inside the package.

A protocol names *groups* of runs (a method, modality, architecture or ablation, each run over seeds)
and the *tables* that lay their results out as the paper does. ``expand`` turns it into run
specifications for :mod:`stew.reproduce`; :mod:`stew.report` renders the tables.

Group names may hold ``{field}`` placeholders filled from a ``matrix`` of TrainConfig values, so
``unimodal-{modality}-{arch}`` with ``matrix: {modality: [text, audio], arch: [classifier, bigru]}``
is four groups. A ``null`` ablation is written ``full`` in names.
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stew.config import TrainConfig, first_error
from stew.data.validate import parse_yaml
from stew.errors import DataError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tuned(_Strict):
    """Take hyper-parameters from the best trial of a ``stew tune`` study (storage given at run time)."""

    study: str


class Synthetic(_Strict):
    """Arguments of ``stew data synth``; the protocol's default data, written once into its output folder."""

    kind: Literal["recola", "mosi"]
    seed: int = 0
    speakers: int = 9
    minutes: float = 1.0
    videos: int = 40
    layout: Literal["native", "avec"] = "native"


class GroupSpec(_Strict):
    """One or more groups of runs (one per matrix point), each run over the protocol's seeds."""

    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields (nested as in YAML configs)
    # Group whose run of the same seed is this group's stage-1 teacher (CM-StEW), e.g. unimodal-text-bigru-te.
    teacher_run: str | None = None
    tuned: Tuned | None = None


class Column(_Strict):
    label: str
    key: str  # substituted for ``{col}`` in row group names
    vars: dict[str, str] = Field(default_factory=dict)  # more placeholders, e.g. {weak: audio, target: valence}


class Row(_Strict):
    label: str
    group: str | None = None  # a group name, may contain ``{col}``; None: a row of the paper's numbers only
    # The paper's numbers: {metric: value} without columns, {column label: {metric: value}} with columns.
    paper: dict[str, Any] = Field(default_factory=dict)


Split = Literal["val", "test"]


class TableSpec(_Strict):
    # The title names the table and its metrics, not the split: the split a table reports depends on
    # the data (see ``split``), so stew.results appends it.
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

    def baseline_for(self, col: Column | None) -> str | None:
        return fill_col(self.baseline, col) if self.baseline else None

    def paper_value(self, row: Row, col: Column | None, metric: str) -> float | None:
        src = row.paper.get(col.label, {}) if col is not None else row.paper
        v = src.get(metric) if isinstance(src, dict) else None
        return float(v) if v is not None else None


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
    seeds: int = 5
    data_hint: str = ""  # what data the protocol expects, for error messages and --list
    synthetic: Synthetic | None = None  # data synthesised into OUT/data when --data is not given
    base: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields shared by every run
    departures: list[str] = Field(default_factory=list)  # where and why the protocol departs from the paper
    # What the val split is called in this protocol's tables: "validation" where it is carved from train,
    # "dev" where the data ships a dev partition (AVEC RECOLA).
    val_name: str = "validation"
    groups: dict[str, GroupSpec]
    tables: list[TableSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tables_name_groups(self) -> Protocol:
        names = set(self.group_names())
        for spec in self.groups.values():
            if spec.teacher_run is not None and spec.teacher_run not in names:
                raise ValueError(f"teacher_run {spec.teacher_run!r} is not a group of this protocol")
        for t in self.tables:
            for _, col, g in t.cells():
                if g not in names:
                    raise ValueError(f"table {t.title!r} names unknown group {g!r}")
                if t.baseline and t.baseline_for(col) not in names:
                    raise ValueError(f"table {t.title!r} has unknown baseline {t.baseline_for(col)!r}")
        return self

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
        raw = _merge(fields, {**(overrides or {}), "data": str(data), "seed": seed, "out": str(out), "progress": False})
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
