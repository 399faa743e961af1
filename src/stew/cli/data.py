"""``stew data synth``, ``stew data check`` and ``stew features extract``."""

# Library modules are imported inside the commands: `stew --help` stays fast, and `stew predict` and
# `stew serve` (other modules) run on a torch-free install without loading these.

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from stew.cli.base import FormatOpt, app, cli_errors, console, table_console
from stew.errors import DataError
from stew.util.tables import TableFormat

data_app = typer.Typer(no_args_is_help=True, help="Check and synthesise datasets.")
app.add_typer(data_app, name="data")
features_app = typer.Typer(no_args_is_help=True, help="Audio files to features (openSMILE).")
app.add_typer(features_app, name="features")


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
    from stew.data.synth import write_synthetic

    console.print(write_synthetic(
        kind.value, out, seed=seed, speakers=speakers, minutes=minutes, videos=videos, utterances=utterances,
        full_shapes=full_shapes, clips=clips, clip_s=clip_s, fmt=fmt,
    ))


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
    render_report(check_dataset(ds, folds=folds), table_console(fmt))


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
    # extract_folder checks --out (check_output_folder) before it decodes any file.
    t0 = time.time()
    extract_folder(audio_dir, settings, out, workers=workers, cache_dir=cache, cache=not no_cache)
    console.print(f"{settings.set} features ({settings.dim}-d at {settings.rate_hz:g} Hz) -> {out} "
                  f"in {time.time() - t0:.1f}s")
