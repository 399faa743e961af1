"""How a fusion model degrades when sensors go dark (docs/methods/fusion.md#missing-modalities, thesis Table 4.4).

``evaluate_missing(run)`` re-scores a finished fusion run on validation and test with every non-empty
subset of its modalities present and the others absent: masked out (``zero``; ``absent="zero-input"``:
the thesis's all-zero input through the encoders instead, Table 4.4) or imputed from the K nearest
training samples (``knn``). It writes ``RUN/missing.json``
(``{"text+video": {"val": {...}, "test": {...}}, ...}``, the metric keys of ``metrics.json``) and a
copy named after the imputation (``missing-zero.json``, ``missing-zero-input.json``,
``missing-knn-k10.json``) so that several imputations of one run sit side by side for ``stew report``.
``evaluate_imputations`` scores several imputations at once, on a dataset already in memory if given
(``stew reproduce``'s workers keep one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from stew.config import TrainConfig
from stew.data.dataset import modality_subsets
from stew.data.io import load_dataset
from stew.deploy import load_model
from stew.errors import DataError
from stew.methods.fusion import zero_input_steps
from stew.models.fused import FusedModel
from stew.training.evaluate import predict_sequences, score
from stew.training.resolve import carve, make_bundle, resolve
from stew.util.atomic import write_text_atomic

if TYPE_CHECKING:
    from stew.data.bundle import Bundle
    from stew.data.dataset import Dataset


def evaluate_missing(
    run_dir: Path, impute: str | None = None, k: int | None = None, ds: Dataset | None = None,
    absent: str | None = None,
) -> dict:
    """Scores of every modality subset on validation and test; writes RUN/missing.json (see module doc).

    ``ds``: the run's dataset (its fold) already loaded; by default it is read from the run's config.
    ``absent``: ``mask`` or ``zero-input`` (None: as the run's ModDrop removed modalities, ``mask`` by default).
    """
    return evaluate_imputations(run_dir, [(impute, k, absent)], ds)[0]


def evaluate_imputations(
    run_dir: Path, imputations: list[tuple[str | None, int | None, str | None]], ds: Dataset | None = None
) -> list[dict]:
    """``evaluate_missing`` for each (impute, k, absent) in turn, on one model and one prepared dataset.

    None takes the model's own setting (absent: the run's ``fusion.absent``; ``mask`` with KNN, which
    imputes masked modalities). Each result is written as its ``missing-*.json`` (and ``missing.json``,
    which ends as the last one's).
    """
    run_dir = Path(run_dir)
    record = _read_run(run_dir)
    model, _ = load_model(run_dir / "model")
    if not isinstance(model, FusedModel):
        raise DataError("--missing needs a fusion run (--method fusion); this model reads one modality",
                        file=run_dir / "model")
    spec = model.spec
    cfg = TrainConfig.model_validate(record["config"])
    todo = []
    for impute, k, absent in imputations:
        impute = impute or spec.impute
        if absent not in (None, "mask", "zero-input"):
            raise DataError(f"--absent must be mask or zero-input, not {absent!r}")
        if impute == "knn" and absent == "zero-input":
            raise DataError("--absent zero-input feeds absent modalities as zeros, which KNN would not see as absent: "
                            "give it with --impute zero")
        todo.append((impute, k or spec.k, absent or ("mask" if impute == "knn" else cfg.fusion.absent)))
    if any(impute == "knn" for impute, _, _ in todo) and not spec.bank_size:
        raise DataError("--impute knn needs an intra fusion model, which keeps the training vectors",
                        file=run_dir / "model")
    if ds is None:
        ds = load_dataset(cfg.data, feature_set=cfg.feature_set or cfg.target, fold=cfg.fold)
    cfg = resolve(cfg, ds)
    ds = carve(cfg, ds)
    if ds.groups("val") != record.get("data", {}).get("val_groups", ds.groups("val")):
        raise DataError("the data's validation carve differs from the run's (was the data folder changed?)",
                        file=cfg.data)
    bundle = make_bundle(cfg, ds, spec.modalities)
    model.zero_steps = zero_input_steps(bundle)
    results = []
    for impute, k, absent in todo:
        model.spec = spec.model_copy(update={"impute": impute, "k": k})
        model.absent_as = absent
        result = score_subsets(model, bundle)
        write_missing(run_dir, result, impute, k, absent)
        results.append(result)
    return results


def score_subsets(model: FusedModel, bundle: Bundle) -> dict:
    """``{"a+b": {"val": metrics, "test": metrics}, ...}`` for every non-empty subset of the model's
    modalities present (the others absent as ``model.absent_as`` says, filled as ``model.spec.impute`` says)."""
    result: dict = {}
    mods = model.spec.modalities
    try:
        for present in modality_subsets(mods):
            model.absent = frozenset(mods) - set(present)
            result["+".join(present)] = {sp: score(predict_sequences(model, seqs, bundle), seqs, bundle)
                                         for sp in ("val", "test") if (seqs := getattr(bundle, sp))}
    finally:
        model.absent = frozenset()
    return result


def write_missing(run_dir: Path, result: dict, impute: str, k: int, absent: str = "mask") -> None:
    """``missing.json`` and its copy named after the imputation (``missing-zero.json``, ``missing-knn-k10.json``)."""
    text = json.dumps(result, indent=2)
    write_text_atomic(run_dir / "missing.json", text)
    write_text_atomic(run_dir / missing_file(impute, k, absent), text)


def missing_file(impute: str, k: int | None, absent: str = "mask") -> str:
    """The file name of one imputation's scores: ``missing-zero.json`` (masked), ``missing-zero-input.json``
    (the thesis's zero input) or ``missing-knn-k10.json``."""
    if impute == "knn":
        return f"missing-knn-k{k}.json"
    return "missing-zero-input.json" if absent == "zero-input" else "missing-zero.json"


def read_missing(path: Path) -> dict[str, Any] | None:
    """A ``missing-*.json`` written earlier, or None when absent or unreadable (a kill while writing)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return result if isinstance(result, dict) and result else None


def _read_run(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise DataError("not a finished stew run (no metrics.json)", file=run_dir)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable metrics.json: {e}", file=path) from None
    if "folds" in record:
        raise DataError("a --cv run: evaluate each fold's run folder (RUN/fold0, RUN/fold1, ...)", file=run_dir)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise DataError("metrics.json has no 'config' (not a stew run?)", file=path)
    return record


def missing_table(result: dict, key: str, title: str) -> Table:
    """Rows: modality subsets (● present, ○ absent); columns: validation and test ``key``."""
    names = list(result)
    mods = names[0].split("+")  # the full set comes first
    table = Table(title=title)
    for m in mods:
        table.add_column(m, justify="center")
    splits = [sp for sp in ("val", "test") if sp in result[names[0]]]
    for sp in splits:
        table.add_column(f"{sp} {key}", justify="right")
    for name in names:
        present = set(name.split("+"))
        cells = ["●" if m in present else "○" for m in mods]
        table.add_row(*cells, *(f"{result[name][sp][key]:.4g}" for sp in splits))
    return table
