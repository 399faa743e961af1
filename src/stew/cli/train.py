"""``stew train``, ``evaluate`` and ``explain`` (one run), and ``export``, ``predict`` and ``serve`` (its model)."""

# Library modules are imported inside the commands: `stew --help` stays fast, and `stew predict` (ONNX)
# and `stew serve` run on a torch-free install, which the library modules of the others would break.

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from stew.cli.base import (
    ConfigOpt,
    DataOpt,
    FormatOpt,
    MethodOpt,
    ModalityOpt,
    TargetOpt,
    TeacherOpt,
    app,
    cli_errors,
    console,
    table_console,
)
from stew.errors import DataError
from stew.util.tables import TableFormat


def _comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


@app.command()
@cli_errors
def train(
    data: DataOpt = None,
    method: MethodOpt = None,
    modality: ModalityOpt = None,
    teacher: TeacherOpt = None,
    target: TargetOpt = None,
    targets: Annotated[str | None, typer.Option(help="several targets, comma-separated (multi-task)")] = None,
    arch: Annotated[str | None, typer.Option(help="classifier | mlp | bigru | bigru-te | gru4 | gru")] = None,
    recipe: Annotated[
        str | None, typer.Option(help="--method cmstew: stew (default: cross-fitted teachers, the guard) | paper")
    ] = None,
    unlabelled: Annotated[
        Path | None, typer.Option(help="--method cmstew: paired recordings without labels (alignment/translation)")
    ] = None,
    loss: Annotated[str | None, typer.Option(help="mse | ccc | pcc | bce | ce")] = None,
    ablation: Annotated[str | None, typer.Option(help="sew: -SD2 -CCA -SD1 -(CCA&SD1); cmstew: -LFA -Decoder")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    out: Annotated[
        Path | None, typer.Option(help="run folder: new or empty, unless --resume or --overwrite")
    ] = None,
    cv: Annotated[int | None, typer.Option(help="grouped K-fold over training groups")] = None,
    max_epochs: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    lr_scheduler: Annotated[str | None, typer.Option(
        help="none (default: constant) | plateau (ReduceLROnPlateau on the validation loss: plateau_factor 0.1 "
             "after plateau_patience 10 epochs without a lower one)")] = None,
    resume: Annotated[
        bool | None, typer.Option(help="continue the run in a non-empty --out from its checkpoints/last.ckpt")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the earlier run in a non-empty --out (stew's files only)")
    ] = False,
    postprocess: Annotated[
        bool | None, typer.Option(help="AVEC chain (median filter, centring, scaling, shift) searched on validation")
    ] = None,
    fusion: Annotated[
        str | None, typer.Option(help="--method fusion: intra (default) | cross | cross+intra attention")
    ] = None,
    modalities: Annotated[
        str | None, typer.Option(help="--method fusion: modalities to fuse, comma-separated (default: all)")
    ] = None,
    pairs: Annotated[
        str | None, typer.Option(help="--fusion cross: source-to-target pairs, e.g. T2V,A2V (default: all)")
    ] = None,
    sp: Annotated[
        bool | None, typer.Option("--sp/--no-sp", help="--method fusion: statistical pooling (default on)")
    ] = None,
    moddrop: Annotated[
        bool | None, typer.Option("--moddrop", help="--method fusion: train also with each single modality absent")
    ] = None,
    moddrop_p: Annotated[
        float | None, typer.Option(help="--method fusion: instead drop each modality at random with this probability")
    ] = None,
    absent: Annotated[str | None, typer.Option(
        help="--moddrop / --moddrop-p: a dropped modality is masked out (mask, default) or fed as an all-zero input "
             "(zero-input, the thesis's)")] = None,
    impute: Annotated[
        str | None, typer.Option(help="--method fusion: an absent modality is zero (masked) or knn-imputed")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="--impute knn: neighbours (default 10)")] = None,
    fold: Annotated[int | None, typer.Option(help="IEMOCAP AMH data: fold 1-5 (default 1)")] = None,
    standardize: Annotated[str | None, typer.Option(
        help="modalities z-scored on the training steps: all (default) | none | a comma-separated list (e.g. audio: "
             "the thesis's IEMOCAP, MFCCs only)")] = None,
    val_from: Annotated[str | None, typer.Option(
        help="validation from: train (whole groups carved from it) | test (whole groups of a labelled test "
             "split, test reported on the others) | auto (default: test when a modality the run reads looks "
             "fitted on its own training labels)")] = None,
    val_groups: Annotated[int | None, typer.Option(
        help="validation groups (default: 10 from train, a third of the test groups from test)")] = None,
    flagged: Annotated[str | None, typer.Option(
        help="modalities whose training features are fitted on their own labels, comma-separated, or 'none' "
             "(default: the leakage probe decides)")] = None,
    accelerator: Annotated[str | None, typer.Option(
        help="auto (default: a CUDA GPU when torch sees one, else the CPU) | cpu | gpu")] = None,
    devices: Annotated[int | None, typer.Option(help="devices per run: 1 (stew trains a run on one device)")] = None,
    precision: Annotated[str | None, typer.Option(
        help="32 (default) | bf16-mixed (CPU or GPU) | 16-mixed (GPU only)")] = None,
    tracker: Annotated[str | None, typer.Option(
        help="none (default) | mlflow | tensorboard: parameters, per-epoch metrics, the run folder "
             "(pip install 'stew\\[tracking]')")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="mlflow: tracking URI (default sqlite:///mlruns.db in the working folder); tensorboard: a folder "
             "(default RUN/logs/tensorboard)")] = None,
    experiment: Annotated[str | None, typer.Option(help="the tracker's experiment (default stew)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train one model; write RUN/metrics.json, RUN/predictions.csv and RUN/model/."""
    from stew import api, methods

    if resume and overwrite:
        raise DataError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    fusion_opts = {
        "kind": fusion, "modalities": _comma_list(modalities), "pairs": _comma_list(pairs), "sp": sp,
        "moddrop": moddrop, "moddrop_p": moddrop_p, "absent": absent, "impute": impute, "k": k,
    }
    fusion_opts = {key: v for key, v in fusion_opts.items() if v is not None}
    options = dict(
        modality=modality, teacher=teacher, target=target, targets=_comma_list(targets), arch=arch, recipe=recipe,
        unlabelled=unlabelled, loss=loss, ablation=ablation, seed=seed, cv=cv, max_epochs=max_epochs, lr=lr,
        lr_scheduler=lr_scheduler,
        resume=resume, postprocess=postprocess, overwrite=overwrite or None, fold=fold, fusion=fusion_opts or None,
        val_from=val_from, val_groups=val_groups,
        standardize=None if standardize is None else "all" if standardize.strip() == "all"
        else [] if standardize.strip() == "none" else _comma_list(standardize),
        flagged=None if flagged is None else [] if flagged.strip() == "none" else _comma_list(flagged),
        accelerator=accelerator, devices=devices, precision=precision, tracker=tracker, tracking_uri=tracking_uri,
        experiment=experiment,
    )
    cfg = api.train_config(data, method, out=out, config=config, **options)
    if fusion_opts and not methods.get(cfg.method).fuses:
        flag = {"kind": "fusion", "sp": "no-sp"}.get(next(iter(fusion_opts)), next(iter(fusion_opts)))
        raise DataError(f"--{flag.replace('_', '-')} applies to --method fusion")
    if cfg.out is None:
        raise DataError("--out is required (the run folder)")
    # The run folder is run()'s to judge (check_run_folder, before any data is loaded): a file is
    # refused, a non-empty folder continued with --resume or replaced with --overwrite.
    t0 = time.time()
    r = api.train(config=cfg)
    console.print_json(json.dumps({k: r[k] for k in ("val", "test") if k in r}))
    console.print(f"run written to {cfg.out} in {time.time() - t0:.1f}s")


@app.command()
@cli_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    missing: Annotated[
        bool, typer.Option("--missing", help="score every subset of a fusion model's modalities (others absent)")
    ] = False,
    impute: Annotated[
        str | None, typer.Option(help="absent modalities: zero (masked out) | knn (default: as the model was trained)")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", min=1, help="--impute knn: neighbours")] = None,
    absent: Annotated[str | None, typer.Option(
        help="--impute zero: absent modalities masked out (mask) or fed as an all-zero input through the encoders "
             "(zero-input, the thesis's Table 4.4); default: as the run's ModDrop, else mask")] = None,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Re-score a run; with --missing, write RUN/missing.json and print the missing-modality table."""
    from stew.eval.missing import evaluate_missing, missing_table

    if not missing:
        raise DataError("nothing to evaluate: give --missing (the only evaluation so far)")
    if impute not in (None, "zero", "knn"):
        raise DataError(f"--impute must be zero or knn, not {impute!r}")
    if k is not None and impute != "knn":
        raise DataError("--k applies to --impute knn")
    if absent not in (None, "mask", "zero-input"):
        raise DataError(f"--absent must be mask or zero-input, not {absent!r}")
    res = evaluate_missing(run_dir, impute, k, absent=absent)
    # The run's selection metric (weighted F1, accuracy, CCC) heads the table.
    first = next(iter(res.values()))["val"]
    key = next(k for k in ("f1_weighted", "acc", "ccc", "ccc_mean", "pcc") if k in first)
    c = table_console(fmt)
    how = " ".join(v for v in (impute, absent) if v) or "as trained"
    c.print(missing_table(res, key, f"{run_dir} · ● present ○ absent · {how}"))
    c.print(f"written to {run_dir / 'missing.json'}")


@app.command()
@cli_errors
def explain(
    model: Annotated[Path, typer.Argument(help="exported raw-audio model folder (with --analysis: a run folder)")],
    audio_file: Annotated[Path | None, typer.Argument(help="one audio file (WAV, FLAC, ...)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for explanation.json/.png (analysis.json/.png)")] = None,
    samples: Annotated[int, typer.Option(min=2, help="LIME perturbations (the thesis: 2,000)")] = 2000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    analysis: Annotated[bool, typer.Option(
        "--analysis",
        help="instead: a run's true vs predicted plot with the epsilon bands (docs/methods/conflictnet.md#evaluation)",
    )] = False,
    split: Annotated[str, typer.Option(help="--analysis: the split to plot")] = "test",
    target_kind: Annotated[str | None, typer.Option(
        help="what LIME explains: probability (default: P(positive) = (1 + y) / 2, the thesis's eq. 3.7) | score (y)",
    )] = None,
) -> None:
    """Which 3 s segments of a clip drive the model's prediction (LIME); --analysis: a run's true vs predicted."""
    from stew.eval.explain import analysis_run, explain_model

    if out is None:
        raise DataError("--out is required (the folder for the explanation)")
    if analysis:
        if audio_file is not None:
            raise DataError("--analysis reads a run's predictions.csv: give the run folder only, no audio file")
        if target_kind is not None:
            raise DataError("--target-kind applies to explaining an audio file, not to --analysis")
        png = analysis_run(model, out, split)
        counts = json.loads((png.parent / "analysis.json").read_text())["counts"]
        console.print(f"{counts}\nwritten to {png} and {png.parent / 'analysis.json'}")
        return
    if audio_file is None:
        raise DataError("give an audio file to explain (or --analysis with a run folder)")

    expl, json_path, png_path = explain_model(model, audio_file, out, n_samples=samples, seed=seed,
                                              target_kind=target_kind or "probability")
    top = ", ".join(f"{s['start_s']:g}-{s['end_s']:g} s ({s['weight']:+.3g})" for s in expl.segments[:3])
    what = "P(positive)" if expl.target == "p_pos" else "the score"
    console.print(f"prediction {expl.prediction:.4g}; segments most relevant to {what}: {top}")
    console.print(f"written to {json_path} and {png_path}")


class ExportFormat(StrEnum):
    both = "both"
    onnx = "onnx"
    safetensors = "safetensors"


class Engine(StrEnum):
    auto = "auto"
    onnx = "onnx"
    torch = "torch"


@app.command()
@cli_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    impute: Annotated[
        str | None, typer.Option(help="fusion models: absent modalities zero (masked) or knn-imputed at predict")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", min=1, help="--impute knn: neighbours")] = None,
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="both: model.safetensors (torch) and model.onnx (torch-free ONNX Runtime); "
                                      "onnx: model.onnx only; safetensors: model.safetensors only"),
    ] = ExportFormat.both,
) -> None:
    """Write the deployable model (the weaker modality's, or a fusion model): model.json with safetensors
    weights and/or an ONNX graph (checked against torch), no pickle."""
    from stew.deploy.model import export as do_export
    from stew.deploy.model import load_model, onnx_exportable

    if impute not in (None, "zero", "knn"):
        raise DataError(f"--impute must be zero or knn, not {impute!r}")
    do_export(run_dir, out, impute=impute, k=k, fmt=fmt.value)
    if fmt == ExportFormat.both and not (out / "model.onnx").is_file():
        # One line, not an error: the folder is complete for the torch engine.
        why = onnx_exportable(load_model(out)[0])
        console.print(f"note: {why}: wrote model.safetensors only (stew predict uses torch for it)")
    console.print(f"exported {run_dir} -> {out}")


@app.command()
@cli_errors
def predict(
    model: Annotated[Path, typer.Argument(help="exported model folder")],
    out: Annotated[Path, typer.Option(help="predictions CSV")],
    data: Annotated[
        Path | None,
        typer.Option(help="dataset folder (the model's modality; a fusion model: any subset of its modalities)"),
    ] = None,
    audio: Annotated[
        Path | None,
        typer.Option(help="an audio file or a folder of them: features made as the model's were (or raw waveforms)"),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="--audio: extraction processes")] = 1,
    engine: Annotated[
        Engine, typer.Option(help="auto: ONNX Runtime when the folder has model.onnx (no torch imported), else torch")
    ] = Engine.auto,
    threads: Annotated[
        int | None, typer.Option(min=1, help="inference threads (default: ONNX Runtime 1, torch its own default)")
    ] = None,
) -> None:
    """Predict every step of every sequence in DATA, or one value per audio file with --audio."""
    if (data is None) == (audio is None):
        raise DataError("give --data DIR (a dataset) or --audio FILE_OR_DIR (audio files), one of them")
    if audio is not None:
        from stew.deploy.audio import predict_audio

        df = predict_audio(model, audio, out, workers=workers, progress=True)
        console.print(f"{len(df)} predictions (one per file) -> {out}")
        return
    from stew.deploy.predict import predict_dataset  # torch-free: torch is imported only for --engine torch

    df = predict_dataset(model, data, out, engine=engine.value, threads=threads)
    console.print(f"{len(df)} predictions -> {out}")


@app.command()
@cli_errors
def serve(
    models: Annotated[
        list[str], typer.Argument(help="model folders, each served as its folder's name or as NAME=DIR")
    ],
    host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one, printed at start)")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="inference threads running requests at once")] = 2,
    threads: Annotated[int, typer.Option(min=1, max=64, help="ONNX Runtime threads per inference")] = 1,
    max_steps: Annotated[int, typer.Option(min=1, help="most steps one request may send")] = 100_000,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body (MB); 413 above it")] = 16.0,
    queue: Annotated[int, typer.Option(min=0, help="requests waiting for a worker before 503")] = 64,
) -> None:
    """Serve exported ONNX models over HTTP (FastAPI + uvicorn): GET /healthz, GET /models,
    POST /models/{name}/predict; OpenAPI docs at /docs. Torch is not imported."""
    try:
        from stew.deploy.serve import ServeSettings, run_server
    except ImportError as e:  # the `serve` extra is not installed
        raise DataError(f"stew serve needs FastAPI and uvicorn ({e.name} is missing): "
                        "pip install 'stew[serve]'") from None

    settings = ServeSettings(workers=workers, threads=threads, max_steps=max_steps,
                             max_body_bytes=int(max_body_mb * 1e6), queue=queue)
    run_server(models, host=host, port=port, settings=settings, console=console)
