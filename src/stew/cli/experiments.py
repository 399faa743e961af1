"""``stew rank``, ``transfer``, ``demo``, ``compare``, ``reproduce``, ``tune`` and ``report``: many runs at once."""

# Library modules are imported inside the commands: `stew --help` stays fast, and `stew predict` and
# `stew serve` (other modules) run on a torch-free install without loading these.

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from stew.cli.base import (
    AddressOpt,
    ConfigOpt,
    DataOpt,
    EngineOpt,
    FormatOpt,
    MethodOpt,
    ModalityOpt,
    TargetOpt,
    TeacherOpt,
    ThreadsOpt,
    WorkersOpt,
    app,
    cli_errors,
    console,
    table_console,
    workers_for,
)
from stew.errors import DataError
from stew.util.atomic import check_output_folder
from stew.util.tables import TableFormat


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
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train every modality's unimodal (or linear) model over seeds and print the ranking (validation decides)."""
    from stew.config import load_config
    from stew.experiments.engines import open_engine
    from stew.experiments.rank import rank_modalities, render_ranking

    cfg = load_config(config, dict(data=data, method=method, arch=arch, target=target, max_epochs=max_epochs,
                                   overwrite=overwrite or None, threads=threads))
    eng = open_engine(engine, address, workers=workers_for(engine, workers, cfg.data), threads=cfg.threads)
    if out is not None:  # before any data are loaded: an earlier result is never replaced by accident
        check_output_folder(out, overwrite=cfg.overwrite)
    c = table_console(fmt)
    res = rank_modalities(cfg, list(range(seeds)), out.absolute() if out else None, c, eng)
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
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Rank the modalities, run every clear stronger-to-weaker pair, compare with the weaker unimodal."""
    from stew.config import load_config
    from stew.experiments.engines import open_engine
    from stew.experiments.transfer import transfer

    if method != "cmstew":
        raise DataError("stew transfer supports --method cmstew")
    cfg = load_config(config, dict(data=data, overwrite=overwrite or None, recipe=recipe, threads=threads))
    eng = open_engine(engine, address, workers=workers_for(engine, workers, cfg.data), threads=cfg.threads)
    if out is not None:  # before any data are loaded: an earlier result is never replaced by accident
        check_output_folder(out, overwrite=cfg.overwrite)
    transfer(cfg, list(range(seeds)), out.absolute() if out else None, table_console(fmt), gap, eng)


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
    c = table_console(fmt)
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
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
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
    engine: EngineOpt = "local",
    address: AddressOpt = None,
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
    from stew.experiments.reproduce import parse_overrides, reproduce
    from stew.experiments.workers import sigterm_as_interrupt

    p = load_protocol(protocol)
    sigterm_as_interrupt()
    c = table_console(fmt)
    summary = reproduce(p, data, out, seeds=seeds, workers=workers_for(engine, workers, data), tuned_storage=tuned,
                        overrides=parse_overrides(set_ or []), only=only, threads=threads,
                        console=c, engine=engine, address=address)
    proto, store = results.load(out)
    with store:
        results.render(results.tables(proto, results.collect(store)), c)
    c.print(f"{summary['done']}/{summary['runs']} runs done ({summary['trained']} trained now, "
            f"{summary['skipped']} already finished) in {summary['wall_s']:.0f}s with {summary['ran_on']} -> {out}")
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
    trials: Annotated[int, typer.Option(help="trials this worker runs (--engine ray: all its workers together)")] = 20,
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
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="with --engine ray: this many tune workers as Ray tasks sharing the study, --trials split "
                    "among them (default 1)")] = None,
) -> None:
    """Search hyper-parameters on validation (Optuna TPE); write OUT/best.json."""
    import optuna

    from stew.config import load_config
    from stew.experiments.engines import open_engine
    from stew.experiments.tune import render_summary, tune_on
    from stew.experiments.tune import tune as do_tune

    if timeout is not None and not timeout > 0:
        raise DataError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    if workers is not None and engine != "ray":
        raise DataError("--workers needs --engine ray (or run several stew tune commands on one --storage)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(config, dict(
        data=data, method=method, modality=modality, teacher=teacher, target=target, ablation=ablation,
        max_epochs=max_epochs,
    ))
    eng = open_engine(engine, address, threads=cfg.threads)
    names = params.split(",") if params is not None else None
    if eng.kind == "ray":
        summary = tune_on(eng, cfg, study=study, out=out, trials=trials, workers=workers or 1, storage=storage,
                          seed=seed, params=names, timeout=timeout)
    else:
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
