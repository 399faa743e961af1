"""stew's Python API: the CLI's main commands as functions, with the same names and options.

    import stew

    stew.synth_data("recola", "data/recola-synth", speakers=9, minutes=1)  # stew data synth ...
    ds = stew.load_data("data/recola-synth")
    run = stew.train("data/recola-synth", method="cmstew", modality="video_geo", teacher="audio",
                     target="arousal", max_epochs=5, out="runs/cm")  # stew train --method cmstew ...
    run["test"]["ccc_arousal"], run.predictions                     # metrics.json, predictions.csv
    stew.export(run, "models/video")                                # stew export RUN --out models/video
    preds = stew.predict("models/video", data="new-recordings/")    # stew predict MODEL --data DIR

Every keyword of :func:`train` is a :class:`~stew.config.TrainConfig` field (the CLI's options with
``-`` written ``_``; nested sections as dicts, e.g. ``cmstew={"alpha": 0.1}``), validated the same way,
with the same one-line :class:`~stew.errors.DataError` on bad input. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from stew.config import TrainConfig, load_config
from stew.data.dataset import Dataset
from stew.data.io import load_dataset
from stew.data.synth import write_synthetic
from stew.deploy import export as export_run
from stew.deploy import predict_dataset
from stew.deploy.model import ExportFormat
from stew.errors import DataError
from stew.training.result import RunResult
from stew.training.run import run


def synth_data(kind: str, out: str | Path, *, seed: int = 0, **sizes: Any) -> Path:
    """Write a synthetic dataset, as ``stew data synth --kind KIND --out OUT`` does; ``sizes`` are its
    options (``speakers``, ``minutes``, ``videos``, ``utterances``, ``clips``, ``clip_s``, ``fmt``)."""
    write_synthetic(kind, Path(out), seed=seed, **sizes)
    return Path(out)


def load_data(path: str | Path, *, feature_set: str | None = None, fold: int | None = None) -> Dataset:
    """Read a data folder in any format stew knows (native, CMU-MOSI, AVEC RECOLA, IEMOCAP, audio)."""
    return load_dataset(Path(path), feature_set=feature_set, fold=fold)


def train_config(
    data: str | Path | Dataset | None = None, method: str | None = None, *, out: str | Path | None = None,
    config: str | Path | None = None, **options: Any,
) -> TrainConfig:
    """The configuration :func:`train` runs: the YAML file ``config`` (if any), then ``data``, ``method``,
    ``out`` and ``options`` (None leaves the file's value or the default), validated as a whole."""
    if isinstance(data, Dataset):
        data = Path(data.meta.get("source", data.name))
    overrides = {**options, "data": Path(data) if data is not None else None, "method": method,
                 "out": Path(out) if out is not None else None}
    return load_config(Path(config) if config else None, overrides)


def train(
    data: str | Path | Dataset | None = None, method: str | None = None, *, out: str | Path | None = None,
    config: str | Path | TrainConfig | None = None, **options: Any,
) -> RunResult:
    """Train, select on validation and score one run, as ``stew train`` does.

    ``data``: a data folder, or a :class:`Dataset` already loaded (then the config's ``data`` names where
    it came from, for the record). ``method``: default the config file's, else ``unimodal``. ``out``: the
    run folder (``None``: nothing written). ``config``: a YAML file of TrainConfig fields, overridden by
    the other arguments; or the configuration :func:`train_config` returned, as it is.
    """
    if isinstance(config, TrainConfig):
        if options or data is not None or method is not None or out is not None:
            raise DataError("stew.train(config=TrainConfig) takes the configuration as it is: give no other "
                            "arguments beside it")
        cfg = config
    else:
        cfg = train_config(data, method, out=out, config=config, **options)
    return run(cfg, data if isinstance(data, Dataset) else None)


def load_run(run_dir: str | Path) -> RunResult:
    """A finished run folder: ``run.metrics`` (metrics.json) and ``run.predictions`` (predictions.csv)."""
    return RunResult.read(Path(run_dir))


def export(
    run: RunResult | str | Path, out: str | Path, *, format: ExportFormat = "both", impute: str | None = None,
    k: int | None = None,
) -> Path:
    """Write a run's deployable model (the weaker encoder and head only) as a model folder, as
    ``stew export`` does: ``model.json`` + ``model.safetensors`` and/or ``model.onnx``."""
    folder = run.folder if isinstance(run, RunResult) else Path(run)
    if folder is None:
        raise ValueError("this run was trained without out=...: it has no run folder to export")
    return export_run(Path(folder), Path(out), impute=impute, k=k, fmt=format)


def predict(
    model: str | Path, data: str | Path | Dataset, *, out: str | Path | None = None, engine: str = "auto",
) -> pd.DataFrame:
    """Predict every step of ``data`` with an exported model folder, as ``stew predict`` does (ONNX Runtime
    when the folder has ``model.onnx``); ``out`` also writes the CSV."""
    data = data if isinstance(data, Dataset) else Path(data)
    return predict_dataset(Path(model), data, Path(out) if out else None, engine=engine)
