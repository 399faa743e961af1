"""What every command module shares: the Typer app, one-line errors, the consoles and the common options.

Bad input exits with code 2 and one line naming the problem: usage errors through
:class:`OneLineUsageErrors`, a DataError through :func:`cli_errors`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup, TyperOption

from stew.errors import DataError
from stew.util import progress
from stew.util.tables import FormatConsole, TableFormat, WideConsole, console_for


def hide_flag_types() -> None:
    """Leave the type column of a flag empty in ``--help`` (every command's).

    Typer 0.29 prints "<bool>" in the type column of every flag (--help, --resume/--no-resume), where
    it reads like a value the flag takes; a flag takes none. Typer has no setting for this and makes its
    option objects itself, so the method is replaced on the class; applying it twice changes nothing.
    """
    shown = TyperOption.display_type_rich
    if getattr(shown, "hides_flag_types", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.hides_flag_types = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


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


# The patch is global to Typer, so it comes with the app rather than with any one command's help.
hide_flag_types()
app = typer.Typer(
    cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True,
    help="stew: train with every modality, deploy with one.",
)

# Piped or logged output (CI, `| tee`) is where tables are read most: rich would wrap them at 80 columns
# and cut cells to "Acoust…", so off a terminal tables get room for their natural width.
# WideConsole also prints a table wider than that at its natural width: no cell is ever cut.
console = Console() if sys.stdout.isatty() else WideConsole(width=240)
progress.use(console)  # library stages (CM-StEW's stage 1, the grid, epoch lines) print here


def table_console(fmt: TableFormat) -> Console:
    """The console a table-printing command renders on (see stew.util.tables)."""
    out = console_for(fmt, console)
    if isinstance(out, FormatConsole):
        progress.use(out.messages)  # stage announcements stay off the tables' stdout
    return out


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


FormatOpt = Annotated[
    TableFormat,
    typer.Option("--format", help="tables as: table (boxed), md, csv or json (one object per line); "
                                  "md/csv/json put only the tables on stdout, everything else on stderr"),
]

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

# Where the runs of reproduce, rank, transfer and tune execute (stew.experiments.engines).
EngineOpt = Annotated[
    str, typer.Option("--engine", help="local (this machine's processes) | ray (Ray tasks on a cluster; "
                                       "pip install 'stew\\[cluster]')"),
]
AddressOpt = Annotated[
    str | None, typer.Option(help="with --engine ray: an existing Ray cluster (HOST:PORT of its head, or auto); "
                                  "default a new local Ray instance. --out must be on storage every node sees"),
]
WorkersOpt = Annotated[int | None, typer.Option(
    min=1, help="runs in parallel. local: processes (default one per core, fewer where memory is short); ray: at "
                "most this many in flight (default as many as the cluster places)")]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="torch threads (ray: CPUs) per run; default cores // workers (ray: 1)")
]


def workers_for(engine: str, workers: int | None, data: Path | None) -> int | None:
    """``--workers`` as given, or the local engine's default for ``data`` (stew.experiments.workers), saying
    so when memory made it fewer than the cores."""
    if workers is not None or engine != "local":
        return workers
    from stew.experiments.workers import default_workers

    n, why = default_workers(data)
    if why:
        progress.say(why)
    return n
