"""Progress that reaches every stream: a rich bar on a terminal, plain lines everywhere else.

rich's Progress draws nothing (or only its last frame) when stdout is not a terminal, and Lightning's
tqdm bar writes carriage returns that a log shows as one line; logs, CI and ``| tee`` are where long
runs are watched most. So off a terminal, each stage prints one line per finished run (runs done /
total, elapsed, time left), and the training loop one line per epoch milestone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Where library code (``stew.training.run``, CM-StEW's stage 1) announces its stages; the CLI points it at
# its own console (see ``use``). soft_wrap: a long announcement stays one line in a log.
_console = Console(soft_wrap=True)


def use(console: Console) -> None:
    """Send library announcements to ``console`` (the CLI's)."""
    global _console
    _console = console


def console() -> Console:
    return _console


def line(console: Console, message: str) -> None:
    """One plain line (no markup) on ``console``, whatever the stream."""
    console.print(escape(message), soft_wrap=True, highlight=False)


def say(message: str) -> None:
    """One plain line on the library's console (see ``use``)."""
    line(_console, message)


def sayer(enabled: bool) -> Callable[[str], None]:
    """``say`` when a run reports progress, else a no-op: runs inside rank/transfer/reproduce stay quiet."""
    return say if enabled else (lambda _message: None)


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour)."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def eta(elapsed: float, done: int, total: int) -> str:
    """Time left, from the mean time per finished unit so far ("?" before the first one)."""
    return clock(elapsed / done * (total - done)) if done else "?"


class Runs:
    """Runs done / total of one stage, with time elapsed and time left.

    On a terminal: a rich bar (transient unless told otherwise, as before). Elsewhere: a line when the
    stage starts and one per finished run: ``what: 3/12 runs done (label) · 0:41 elapsed · ~1:50 left``.
    """

    def __init__(self, console: Console, what: str, total: int, transient: bool = True, done: int = 0) -> None:
        self.console, self.what, self.total, self.transient = console, what, total, transient
        # ``done``: runs already finished before this invocation (a resumed stage); time left counts
        # only the runs finished since.
        self.done, self._start, self.label = done, done, ""
        self._bar: Progress | None = None
        self._task = None
        self._t0 = time.monotonic()

    def __enter__(self) -> Runs:
        self._t0 = time.monotonic()
        if self.console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                       TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
            self._bar = Progress(*columns, console=self.console, transient=self.transient)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)
        else:
            already = f" ({self.done} already done)" if self.done else ""
            line(self.console, f"{self.what}: {self.total} run{'' if self.total == 1 else 's'}{already}")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(et, e, tb)

    def describe(self, label: str) -> None:
        """What runs now (the bar's description; the label of the next finished-run line)."""
        self.label = label
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.what}: {label}")

    def advance(self, note: str = "") -> None:
        """One more run finished; ``note`` (e.g. its score) goes on its line."""
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)
            return
        elapsed = time.monotonic() - self._t0
        what = f" ({self.label}{', ' + note if note else ''})" if self.label or note else ""
        line(self.console, f"{self.what}: {self.done}/{self.total} runs done{what} · {clock(elapsed)} elapsed"
                           f" · ~{eta(elapsed, self.done - self._start, self.total - self._start)} left")


def so_far(t0: float, done: int, total: int) -> str:
    """``m:ss elapsed · ~m:ss left`` for a loop over ``total`` units started at ``time.monotonic()`` ``t0``."""
    elapsed = time.monotonic() - t0
    return f"{clock(elapsed)} elapsed · ~{eta(elapsed, done, total)} left"
