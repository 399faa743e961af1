"""The ``stew`` command line. Bad input exits with code 2 and one line naming the problem."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup, TyperOption

from stew.errors import DataError
from stew.util import progress
from stew.util.tables import FormatConsole, TableFormat, WideConsole, console_for

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx: Any) -> str | None:
    # Typer 0.29 prints "<bool>" in the type column of every flag (--help, --resume/--no-resume), where
    # it reads like a value the flag takes; a flag takes none, so its type column stays empty.
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]


class OneLineUsageErrors(TyperGroup):
    """Usage errors (a bad option value, a missing or unknown option) as one line and exit code 2.

    Typer prints them as a usage line, a hint and a boxed panel (6 lines or more); the CLI's contract is
    one line for every expected failure, so they read like a DataError: ``error: <command>: <problem>``.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - only click's exceptions are handled, the rest re-raised
            # Typer vendors click, so its ClickException is matched by shape rather than imported.
            code, fmt = getattr(e, "exit_code", None), getattr(e, "format_message", None)
            if not isinstance(code, int) or not callable(fmt):
                raise
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()  # type: ignore[attr-defined]  # `stew` alone prints the help, as before
                sys.exit(code)
            ctx = getattr(e, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            msg = " ".join(str(fmt()).split()).replace("Value error, ", "")
            typer.echo(f"error: {where}{msg}", err=True)
            sys.exit(code)
        # Without standalone mode, an explicit typer.Exit(code) comes back as its code; commands return None.
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True,
    help="stew: train with every modality, deploy with one.",
)
data_app = typer.Typer(no_args_is_help=True, help="Check and synthesise datasets.")
app.add_typer(data_app, name="data")
features_app = typer.Typer(no_args_is_help=True, help="Audio files to features (openSMILE).")
app.add_typer(features_app, name="features")
# Piped or logged output (CI, `| tee`) is where tables are read most: rich would wrap them at 80 columns
# and cut cells to "Acoust…", so off a terminal tables get room for their natural width.
# WideConsole also prints a table wider than that at its natural width: no cell is ever cut.
console = Console() if sys.stdout.isatty() else WideConsole(width=240)
progress.use(console)  # library stages (CM-StEW's stage 1, the grid, epoch lines) print here

FormatOpt = Annotated[
    TableFormat,
    typer.Option("--format", help="tables as: table (boxed), md, csv or json (one object per line); "
                                  "md/csv/json put only the tables on stdout, everything else on stderr"),
]


def _table_console(fmt: TableFormat) -> Console:
    """The console a table-printing command renders on (see stew.tables)."""
    out = console_for(fmt, console)
    if isinstance(out, FormatConsole):
        progress.use(out.messages)  # stage announcements stay off the tables' stdout
    return out

# Options of the commands that build a TrainConfig (train, rank, transfer, tune): one wording everywhere.
DataOpt = Annotated[Path | None, typer.Option(help="dataset folder")]
ConfigOpt = Annotated[Path | None, typer.Option(help="YAML file with any TrainConfig field")]
MethodOpt = Annotated[
    str | None,
    typer.Option(help="unimodal | linear | sew | cmstew | emobed | joint | triplet | cermtl | fusion | conflictnet"),
]
ModalityOpt = Annotated[
    str | None, typer.Option(help="the (weaker) modality the model is deployed on; 'all' or 'a+b': early fusion")
]
TeacherOpt = Annotated[
    str | None, typer.Option(help="sew, cmstew: the stronger modality (cmstew: several, comma-separated); "
                             "emobed, joint, triplet: the auxiliary one")
]
TargetOpt = Annotated[str | None, typer.Option(help="regression target; default all")]


def cli_errors(fn: Callable) -> Callable:
    """DataError -> one line on stderr, exit code 2 (writers are atomic, so nothing half-written remains)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as e:
            # A torch-free install (requirements-serve.txt) runs `predict` on ONNX models and `serve`; the
            # other commands need the full install. Only a missing third-party package is reported here.
            if not e.name or e.name.split(".")[0] == "stew":
                raise
            typer.echo(f"error: {fn.__name__.removesuffix('_cmd')} needs the package {e.name.split('.')[0]!r}, "
                       "which is not installed (pip install stew)", err=True)
            raise typer.Exit(2) from None
        finally:
            # A --format command sends stage lines to stderr; the next command (in one process: tests,
            # notebooks) starts from the default again.
            progress.use(console)

    return wrapper


class Kind(StrEnum):
    recola = "recola"
    mosi = "mosi"
    iemocap = "iemocap"
    conflict = "conflict"


@data_app.command("synth")
@cli_errors
def data_synth(
    kind: Annotated[Kind, typer.Option(help="recola: RECOLA-like frames; mosi: MOSI-like utterances")],
    out: Annotated[Path, typer.Option(help="output folder (must not exist or be empty)")],
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1)] = 0,
    speakers: Annotated[int, typer.Option(min=3, help="recola: speakers, a multiple of 3")] = 27,
    minutes: Annotated[float, typer.Option(min=0, help="recola: minutes per recording")] = 5.0,
    videos: Annotated[int, typer.Option(min=3, help="mosi: number of videos")] = 93,
    utterances: Annotated[int, typer.Option(min=50, help="iemocap: utterances (7,487 in the real corpus)")] = 350,
    full_shapes: Annotated[
        bool, typer.Option("--full-shapes", help="iemocap: the real array shapes (1000x120 MFCC, 32x2048 video, ...)")
    ] = False,
    clips: Annotated[int, typer.Option(min=1, help="conflict: clips (1,430 in the SSPNet corpus)")] = 240,
    clip_s: Annotated[float, typer.Option(min=1.0, help="conflict: seconds per clip (the corpus: 30)")] = 30.0,
    fmt: Annotated[str, typer.Option("--format", help="parquet or npz")] = "parquet",
) -> None:
    """Write a synthetic dataset (deterministic per seed): stew's native format, or for iemocap the
    AMH fold layout (folds/fold01..fold05 of .npy arrays, 7 classes), read like the real release.

    The default RECOLA-like set (27 speakers x 5 minutes) takes about 1 GB on disk, and training one
    epoch of a unimodal model on it needs about 5 GB of memory; --speakers 9 --minutes 1 makes a small
    one (the demo's size).
    """
    from stew.data.formats.native import write_native
    from stew.data.synth.affect import RATE_HZ, synth_mosi, synth_recola

    # The generators' own checks raise ValueError (a library contract); here they are options, so the
    # same conditions are one-line errors, checked before anything is written.
    if fmt not in ("parquet", "npz"):
        raise DataError(f"--format must be parquet or npz, not {fmt!r}")
    if kind == Kind.recola and speakers % 3:
        raise DataError(f"--speakers must be a multiple of 3 (train, dev and test get a third each), not {speakers}")
    if kind == Kind.recola and round(minutes * 60 * RATE_HZ) < 2:
        raise DataError(f"--minutes {minutes:g} gives fewer than 2 frames at {RATE_HZ:g} Hz")
    _check_out_folder(out)
    if kind == Kind.conflict:
        from stew.data.synth.conflict import write_synthetic_conflict

        write_synthetic_conflict(out, clips=clips, seed=seed, clip_s=clip_s)
        console.print(f"wrote a synthetic conflict corpus: {clips} clips of {clip_s:g} s at 8 kHz -> {out}")
        return
    if kind == Kind.iemocap:
        from stew.data.synth.iemocap import write_synthetic_iemocap

        write_synthetic_iemocap(out, utterances=utterances, seed=seed, full_shapes=full_shapes)
        console.print(f"wrote synthetic IEMOCAP: {utterances} utterances, 5 folds (AMH layout) -> {out}")
        return
    if kind == Kind.recola:
        ds = synth_recola(seed, n_speakers=speakers, minutes=minutes)
    else:
        ds = synth_mosi(seed, n_videos=videos)
    write_native(ds, out, fmt=fmt)
    console.print(f"wrote {ds.name}: {len(ds.sequences)} sequences, {ds.n_steps()} steps, {ds.splits()} -> {out}")


@data_app.command("check")
@cli_errors
def data_check(
    path: Annotated[Path, typer.Argument(help="dataset folder")],
    feature_set: Annotated[str | None, typer.Option(help="AVEC RECOLA: arousal or valence features")] = None,
    folds: Annotated[int, typer.Option(min=2, help="grouped folds of the leakage probe")] = 5,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Validate a dataset and print its summary and a leakage probe."""
    from stew.data.check import check_dataset, render_report
    from stew.data.io import load_dataset

    ds = load_dataset(path, feature_set=feature_set)
    render_report(check_dataset(ds, folds=folds), _table_console(fmt))


def _check_out_folder(out: Path | None, empty: bool = False) -> None:
    """An output folder must be a folder (or not exist yet), and with ``empty`` (rank and transfer without
    --overwrite) hold nothing: checked before any data is loaded, so an earlier result is never replaced
    by accident. (data synth's writer makes its own emptiness check; train leaves all to run().)"""
    if out is not None and out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", file=out)
    if out is not None and empty and out.is_dir() and any(out.iterdir()):
        raise DataError("output folder is not empty (an earlier result?): give --overwrite to replace it, "
                        "or a new --out", file=out)


def _train_config(config: Path | None, **overrides: Any):
    from stew.config import load_config

    return load_config(config, overrides)


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
    impute: Annotated[
        str | None, typer.Option(help="--method fusion: an absent modality is zero (masked) or knn-imputed")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="--impute knn: neighbours (default 10)")] = None,
    fold: Annotated[int | None, typer.Option(help="IEMOCAP AMH data: fold 1-5 (default 1)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train one model; write RUN/metrics.json, RUN/predictions.csv and RUN/model/."""
    from stew.train.core import run

    if resume and overwrite:
        raise DataError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    target_list = [t.strip() for t in targets.split(",") if t.strip()] if targets is not None else None
    fusion_opts = {
        "kind": fusion, "modalities": _comma_list(modalities), "pairs": _comma_list(pairs), "sp": sp,
        "moddrop": moddrop, "moddrop_p": moddrop_p, "impute": impute, "k": k,
    }
    fusion_opts = {key: v for key, v in fusion_opts.items() if v is not None}
    cfg = _train_config(
        config, data=data, method=method, modality=modality, teacher=teacher, target=target, targets=target_list,
        arch=arch, recipe=recipe, unlabelled=unlabelled, loss=loss, ablation=ablation, seed=seed, out=out, cv=cv,
        max_epochs=max_epochs, lr=lr,
        resume=resume, postprocess=postprocess, overwrite=overwrite or None, fold=fold, fusion=fusion_opts or None,
    )
    if fusion_opts and cfg.method != "fusion":
        flag = {"kind": "fusion", "sp": "no-sp"}.get(next(iter(fusion_opts)), next(iter(fusion_opts)))
        raise DataError(f"--{flag.replace('_', '-')} applies to --method fusion")
    if cfg.out is None:
        raise DataError("--out is required (the run folder)")
    # The run folder is run()'s to judge (training.check_run_folder, before any data is loaded): a file
    # is refused, a non-empty folder continued with --resume or replaced with --overwrite.
    t0 = time.time()
    r = run(cfg)
    console.print_json(json.dumps({k: r[k] for k in ("val", "test") if k in r}))
    console.print(f"run written to {cfg.out} in {time.time() - t0:.1f}s")


def _comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


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
    res = evaluate_missing(run_dir, impute, k)
    # The run's selection metric (weighted F1, accuracy, CCC) heads the table.
    first = next(iter(res.values()))["val"]
    key = next(k for k in ("f1_weighted", "acc", "ccc", "ccc_mean", "pcc") if k in first)
    c = _table_console(fmt)
    c.print(missing_table(res, key, f"{run_dir} · ● present ○ absent · {impute or 'as trained'}"))
    c.print(f"written to {run_dir / 'missing.json'}")


@features_app.command("extract")
@cli_errors
def features_extract(
    audio_dir: Annotated[
        Path, typer.Argument(help="folder of audio files with labels.csv (file, targets, split/group)")
    ],
    out: Annotated[Path, typer.Option(help="dataset folder to write (new or empty)")],
    feature_set: Annotated[
        str, typer.Option("--set", help="egemaps (88 functionals over 8 s, AVEC 2016) | egemaps-lld | compare-lld")
    ] = "egemaps",
    rate: Annotated[float, typer.Option(help="frames per second of the output (must divide 100)")] = 25.0,
    window_s: Annotated[float | None, typer.Option(help="egemaps: functionals window in seconds (default 8)")] = None,
    sample_rate: Annotated[int, typer.Option(help="audio resampled to this rate first (Hz)")] = 16000,
    workers: Annotated[int, typer.Option(min=1, help="extraction processes")] = 1,
    cache: Annotated[Path | None, typer.Option(help="feature cache folder (default ~/.cache/stew/features)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="extract every file again, store nothing")] = False,
) -> None:
    """openSMILE features of every clip, written as a stew dataset (modality 'audio', one label per clip)."""
    from stew.data.features import ExtractorSettings, extract_folder

    if feature_set not in ("egemaps", "egemaps-lld", "compare-lld"):
        raise DataError(f"--set {feature_set!r}: choose egemaps, egemaps-lld or compare-lld")
    try:
        settings = ExtractorSettings.make(feature_set, rate_hz=rate, window_s=window_s, sample_rate=sample_rate)
    except ValueError as e:
        raise DataError(str(e)) from None
    _check_out_folder(out, empty=True)
    t0 = time.time()
    extract_folder(audio_dir, settings, out, workers=workers, cache_dir=cache, cache=not no_cache)
    console.print(f"{settings.set} features ({settings.dim}-d at {settings.rate_hz:g} Hz) -> {out} "
                  f"in {time.time() - t0:.1f}s")


@app.command()
@cli_errors
def explain(
    model: Annotated[Path, typer.Argument(help="exported raw-audio model folder (with --analysis: a run folder)")],
    audio_file: Annotated[Path | None, typer.Argument(help="one audio file (WAV, FLAC, ...)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for explanation.json/.png (analysis.json/.png)")] = None,
    samples: Annotated[int, typer.Option(min=2, help="LIME perturbations (the thesis: 2,000)")] = 2000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    analysis: Annotated[bool, typer.Option(
        "--analysis", help="instead: a run's true vs predicted plot with the epsilon bands (spec §3.6)")] = False,
    split: Annotated[str, typer.Option(help="--analysis: the split to plot")] = "test",
) -> None:
    """Which 3 s segments of a clip drive the model's prediction (LIME); --analysis: a run's true vs predicted."""
    from stew.eval.explain import analysis_run, explain_model

    if out is None:
        raise DataError("--out is required (the folder for the explanation)")
    if analysis:
        if audio_file is not None:
            raise DataError("--analysis reads a run's predictions.csv: give the run folder only, no audio file")
        png = analysis_run(model, out, split)
        counts = json.loads((png.parent / "analysis.json").read_text())["counts"]
        console.print(f"{counts}\nwritten to {png} and {png.parent / 'analysis.json'}")
        return
    if audio_file is None:
        raise DataError("give an audio file to explain (or --analysis with a run folder)")

    expl, json_path, png_path = explain_model(model, audio_file, out, n_samples=samples, seed=seed)
    top = ", ".join(f"{s['start_s']:g}-{s['end_s']:g} s ({s['weight']:+.3g})" for s in expl.segments[:3])
    console.print(f"prediction {expl.prediction:.4g}; most relevant segments: {top}")
    console.print(f"written to {json_path} and {png_path}")


@app.command()
@cli_errors
def rank(
    data: DataOpt = None,
    seeds: Annotated[int, typer.Option(min=1, help="number of seeds (0..N-1)")] = 5,
    method: Annotated[
        str | None, typer.Option(help="unimodal (default) or linear: ridge/logistic, fitted in seconds")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="unimodal architecture: classifier | bigru | bigru-te (default) | gru4 | gru")
    ] = None,
    target: Annotated[str | None, typer.Option(help="regression target to rank on; default each target")] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for the runs and rank.json: new or empty, unless --overwrite")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="epochs per run at most (early stopping may end sooner)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the runs and rank.json of an earlier ranking in --out")
    ] = False,
    config: ConfigOpt = None,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Train every modality's unimodal (or linear) model over seeds and print the ranking (validation decides)."""
    from stew.experiments.rank import rank_modalities, render_ranking

    cfg = _train_config(config, data=data, method=method, arch=arch, target=target, max_epochs=max_epochs,
                        overwrite=overwrite or None)
    _check_out_folder(out, empty=not cfg.overwrite)
    c = _table_console(fmt)
    res = rank_modalities(cfg, list(range(seeds)), out, c)
    render_ranking(res, c)


@app.command("transfer")
@cli_errors
def transfer_cmd(
    data: DataOpt = None,
    method: Annotated[str, typer.Option(help="transfer method (cmstew)")] = "cmstew",
    seeds: Annotated[int, typer.Option(min=1, help="number of seeds (0..N-1)")] = 5,
    gap: Annotated[
        float | None, typer.Option(min=0, help="minimum validation gap (default 0.05 CCC, 5 pp F1)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for all runs and transfer.json: new or empty, unless --overwrite")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the runs and transfer.json of an earlier transfer in --out")
    ] = False,
    recipe: Annotated[
        str | None, typer.Option(help="stew (default: cross-fitted teachers, the guard) | paper")
    ] = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Rank the modalities, run every clear stronger-to-weaker pair, compare with the weaker unimodal."""
    from stew.experiments.transfer import transfer

    if method != "cmstew":
        raise DataError("stew transfer supports --method cmstew")
    cfg = _train_config(config, data=data, overwrite=overwrite or None, recipe=recipe)
    _check_out_folder(out, empty=not cfg.overwrite)
    transfer(cfg, list(range(seeds)), out, _table_console(fmt), gap)


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
        from stew.data.features import predict_audio

        df = predict_audio(model, audio, out, workers=workers, progress=True)
        console.print(f"{len(df)} predictions (one per file) -> {out}")
        return
    from stew.deploy.runtime import predict_dataset  # torch-free: torch is imported only for --engine torch

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


@app.command()
@cli_errors
def demo(
    out: Annotated[Path, typer.Option(help="folder for the demo's data and runs")] = Path("demo-out"),
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1)] = 0,
) -> None:
    """Synthesise RECOLA-like data, rank the modalities, train the baselines (a few minutes on 2 cores)."""
    from stew.experiments.demo import run_demo

    run_demo(out, seed, console)


class CompareTail(StrEnum):
    two = "two"
    greater = "greater"
    less = "less"


def _split_vs(tokens: list[str]) -> tuple[list[Path], list[Path]]:
    """``A1 A2 --vs B1 B2`` (or ``--vs B1 --vs B2``, ``--vs=B1``) -> the runs before and after the first --vs."""
    a: list[Path] = []
    b: list[Path] = []
    seen = False
    for tok in tokens:
        if tok == "--vs":
            seen = True
        elif tok.startswith("--vs="):
            seen = True
            b.append(Path(tok[len("--vs="):]))
        elif tok.startswith("-") and tok != "-":
            raise DataError(f"unknown option {tok!r} (see stew compare --help)")
        else:
            (b if seen else a).append(Path(tok))
    if not seen or not b:
        raise DataError("give the second set of runs after --vs: stew compare RUN_A... --vs RUN_B...")
    if not a:
        raise DataError("give the first set of runs before --vs: stew compare RUN_A... --vs RUN_B...")
    return a, b


@app.command("compare", context_settings={"ignore_unknown_options": True})
@cli_errors
def compare_cmd(
    runs: Annotated[
        list[str],
        typer.Argument(metavar="RUN_A... --vs RUN_B...", show_default=False,
                       help="run folders of set A, then --vs and the run folders of set B"),
    ],
    split: Annotated[str | None, typer.Option(help="val or test; default test if every run has one")] = None,
    metric: Annotated[
        str | None, typer.Option(help="metric key(s), comma-separated; default each ccc key / acc")
    ] = None,
    tail: Annotated[CompareTail, typer.Option(help="two, greater (A > B) or less (A < B)")] = CompareTail.two,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON")] = None,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Significance of A against B: run for run (Fisher r-to-z / two-proportion z) and over seeds (t-test)."""
    from stew.eval.compare import compare, render, write_json

    runs_a, runs_b = _split_vs(runs)
    res = compare(runs_a, runs_b, split=split, metric=metric, tail=tail.value)
    c = _table_console(fmt)
    render(res, c)
    if out is not None:
        write_json(res, out)
        c.print(f"results -> {out}")


@app.command("reproduce")
@cli_errors
def reproduce_cmd(
    protocol: Annotated[
        str | None, typer.Argument(help="a shipped protocol (see --list) or a protocol YAML file")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="dataset folder the protocol expects; synthetic-quick makes its own")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder: run store, runs, tables (re-run to resume)")] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, help="seeds 0..N-1 (per fold: runs 0..N*folds-1 where the protocol has folds); default the protocol's"
    )] = None,
    workers: Annotated[int, typer.Option(min=1, help="runs in parallel, each in its own process")] = 2,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads per run; default cores // workers")
    ] = None,
    tuned: Annotated[
        str | None, typer.Option(help="storage URL of stew tune studies the protocol's groups name")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE TrainConfig override for every run (repeatable), e.g. max_epochs=5"),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option(help="run only groups matching this glob (repeatable), plus their teachers")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the shipped protocols and exit")] = False,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Run a whole paper table: every run over seeds, resumable; prints the tables (see stew report)."""
    from stew.experiments.protocols import available, load_protocol

    if list_:
        for name in available():
            p = load_protocol(name)
            console.print(f"[bold]{name}[/bold]: {p.title}\n  data: {p.data_hint}")
        return
    if protocol is None:
        raise DataError("give a protocol (stew reproduce --list shows them)")
    if out is None:
        raise DataError("--out is required (the output folder; re-run with the same --out to resume)")
    from stew.experiments import results
    from stew.experiments.reproduce import parse_overrides, reproduce, sigterm_as_interrupt

    p = load_protocol(protocol)
    sigterm_as_interrupt()
    c = _table_console(fmt)
    summary = reproduce(p, data, out, seeds=seeds, workers=workers, tuned_storage=tuned,
                        overrides=parse_overrides(set_ or []), only=only, threads=threads,
                        console=c)
    proto, store = results.load(out)
    with store:
        results.render(results.tables(proto, results.collect(store)), c)
    c.print(f"{summary['done']}/{summary['runs']} runs done ({summary['trained']} trained now, "
                  f"{summary['skipped']} already finished) in {summary['wall_s']:.0f}s with {summary['workers']} "
                  f"workers x {summary['threads']} threads -> {out}")
    if summary["failed"]:
        for name, err in summary["failed"].items():
            typer.echo(f"error: run {name} failed: {err}", err=True)
        raise typer.Exit(1)


@app.command()
@cli_errors
def tune(
    study: Annotated[str, typer.Option(help="study name: workers giving the same name and --storage share it")],
    out: Annotated[
        Path,
        typer.Option(help="folder for best.json, trials/<study>/trial<N>/ and the default SQLite; "
                          "re-used on purpose: a study continues there"),
    ],
    data: DataOpt = None,
    method: MethodOpt = None,
    modality: ModalityOpt = None,
    teacher: TeacherOpt = None,
    target: TargetOpt = None,
    ablation: Annotated[
        str | None, typer.Option(help="sew or cmstew ablation; the weights it switches off are not searched")
    ] = None,
    params: Annotated[
        str | None, typer.Option(help="comma-separated subset of the method's search space, e.g. alpha,beta,dropout")
    ] = None,
    trials: Annotated[int, typer.Option(help="trials this worker runs")] = 20,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL; default sqlite:///OUT/tune.sqlite; postgresql+psycopg://... to share"),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1,
                          help="TPE sampler seed (give each worker its own); the runs use the config's seed")
    ] = 0,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    max_epochs: Annotated[int | None, typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """Search hyper-parameters on validation (Optuna TPE); write OUT/best.json."""
    import optuna

    from stew.experiments.tune import render_summary
    from stew.experiments.tune import tune as do_tune

    if timeout is not None and not timeout > 0:
        raise DataError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = _train_config(
        config, data=data, method=method, modality=modality, teacher=teacher, target=target, ablation=ablation,
        max_epochs=max_epochs,
    )
    names = params.split(",") if params is not None else None
    summary = do_tune(cfg, study=study, out=out, trials=trials, storage=storage, seed=seed, params=names,
                      timeout=timeout, console=console)
    render_summary(summary, console)
    console.print(f"best parameters -> {out / 'best.json'}")


@app.command("report")
@cli_errors
def report_cmd(
    folder: Annotated[Path, typer.Argument(help="a stew reproduce output folder")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write; default FOLDER/report.html")] = None,
    tsne: Annotated[
        bool, typer.Option("--tsne", help="project latents with t-SNE (scikit-learn) instead of PCA; slower")
    ] = False,
    lime_samples: Annotated[int, typer.Option(
        min=0, help="LIME perturbations for the ConflictNET explanation (the thesis: 2,000; 0: none)")] = 300,
) -> None:
    """One self-contained HTML file: the protocol's tables, departures, and plots (traces, ablations, latents)."""
    from stew.report import write_report

    typer.echo(str(write_report(folder, out, tsne=tsne, lime_samples=lime_samples)))


def main() -> None:  # pragma: no cover
    sys.exit(app())
