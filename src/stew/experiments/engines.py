"""Where the runs of ``stew reproduce``, ``rank``, ``transfer`` and ``tune`` execute: an engine.

Both engines have the interface of an executor: entered as a context manager, ``submit(fn, *args)``
returns a :class:`concurrent.futures.Future`, and ``capacity`` says how many runs the driver keeps in
flight (None: as many as are ready; the cluster queues what it cannot place yet).

- :class:`LocalEngine`: this machine's processes (stew.experiments.workers), as before.
- :class:`RayEngine`: each run is a Ray task asking for ``threads`` CPUs (and one GPU where the run's
  accelerator asks for one), on a local Ray instance or an existing cluster (``--address``). Ray is
  imported only here and only then, so ``stew --help`` and the torch-free ``stew predict`` stay light.

What makes a cluster safe to use is unchanged from local processes: the driver alone writes the run store
(stew.experiments.store); a run folder is finished only once its ``metrics.json`` is written
(atomically); and a run started again (Ray retries a task whose worker or node died, up to ``RETRIES``
times) resumes from its checkpoint or starts clean (stew.experiments.workers.execute). Run folders must
therefore lie on storage every node sees (docs/cluster.md).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from stew.config import TrainConfig
from stew.errors import DataError, first_line
from stew.experiments.workers import cores, pool_of, run_metrics, threads_per_worker

ENGINES = ("local", "ray")
RETRIES = 2  # Ray re-runs a task whose worker process or node died this many times before it fails
RAY_PIN = "ray==2.60.0"
DEFAULT_RAY_PORT = 6379


class _Engine:
    """Re-entrant: ``transfer`` enters the engine it hands to ``rank`` too; it starts and stops once."""

    kind = ""
    capacity: int | None = None

    def __init__(self) -> None:
        self._depth = 0

    def __enter__(self) -> _Engine:
        if self._depth == 0:
            self._start()
        self._depth += 1
        return self

    def __exit__(self, et: type[BaseException] | None, *rest: Any) -> Any:
        self._depth -= 1
        if self._depth == 0:
            return self._stop(et, *rest)
        return False

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self, et: type[BaseException] | None, *rest: Any) -> Any:
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any, accelerator: str = "cpu") -> Future:
        raise NotImplementedError

    def describe(self) -> str:
        """How the runs execute, for the closing line (``with 2 workers x 1 threads``)."""
        raise NotImplementedError


class LocalEngine(_Engine):
    """``workers`` processes on this machine with ``threads`` torch threads each; one worker runs in this
    process (``threads`` None: torch's setting is left alone)."""

    kind = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        super().__init__()
        if workers < 1:
            raise DataError("--workers must be at least 1")
        self.capacity = workers
        self.threads = threads if threads is not None or workers == 1 else threads_per_worker(workers)

    def _start(self) -> None:
        self._pool = pool_of(self.capacity, self.threads)
        self._pool.__enter__()

    def _stop(self, et: type[BaseException] | None, *rest: Any) -> Any:
        return self._pool.__exit__(et, *rest)

    def submit(self, fn: Callable, *args: Any, accelerator: str = "cpu") -> Future:
        return self._pool.submit(fn, *args)  # a local process sees this machine's devices itself

    def describe(self) -> str:
        return f"{self.capacity} workers x {self.threads or 'default'} threads"


def import_ray() -> Any:
    """The ``ray`` module, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DataError(f"--engine ray needs Ray, which is not installed: pip install 'stew[cluster]' "
                        f"({RAY_PIN})") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, where nothing listens at ``address`` (ray.init would retry for
    minutes). ``auto`` (the cluster ``ray start`` left on this machine) is left to Ray."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        host, port = address.removeprefix("ray://"), str(DEFAULT_RAY_PORT)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise DataError(f"--address {address}: no Ray cluster reachable there ({e.strerror or first_line(e)})") \
            from None


class RayEngine(_Engine):
    """Runs as Ray tasks of ``threads`` CPUs each on the cluster at ``address`` (None: a new local Ray
    instance with this machine's cores). ``capacity`` (``--workers``) caps the runs in flight; None
    submits every ready run and Ray schedules them as CPUs (and GPUs) free up."""

    kind = "ray"

    def __init__(self, address: str | None = None, threads: int | None = None, capacity: int | None = None,
                 retries: int = RETRIES) -> None:
        super().__init__()
        if capacity is not None and capacity < 1:
            raise DataError("--workers must be at least 1")
        self.address, self.threads, self.capacity, self.retries = address, threads or 1, capacity, retries
        self._ray = import_ray()  # checked before anything is written
        self._pending: set[Any] = set()

    def _start(self) -> None:
        ray = self._ray
        if self.address is not None:
            check_reachable(self.address)
        self._owner = not ray.is_initialized()  # a session the caller opened is the caller's to close
        if self._owner:
            # ray.init installs its own SIGTERM handler; stew's (a kill unwinds like Ctrl-C) is kept.
            main = threading.current_thread() is threading.main_thread()
            handler = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(address=self.address or "local", num_cpus=None if self.address else cores(),
                         include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as e:  # noqa: BLE001 - any failure to connect is the --address the user gave
                raise DataError(f"--address {self.address}: cannot connect to the Ray cluster: {first_line(e)}") \
                    from None
            finally:
                if main and handler is not None:
                    signal.signal(signal.SIGTERM, handler)
        self._call = ray.remote(_call)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self._gpus = sum(r.get("GPU", 0) for r in nodes)
        largest = max((r.get("CPU", 0) for r in nodes), default=0)
        if self.threads > largest:  # such a task could never be placed: Ray would wait for ever
            self._stop(None)
            raise DataError(f"--threads {self.threads}: no node of the Ray cluster has that many CPUs "
                            f"(the largest has {largest:g})")

    def _stop(self, et: type[BaseException] | None, *rest: Any) -> Any:
        if et is not None:  # Ctrl-C, SIGTERM, a failure: the runs in flight stop (they resume next time)
            for ref in list(self._pending):
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 - already finished or its node gone
                    pass
        self._pending.clear()
        if self._owner:
            self._ray.shutdown()
        return False

    def _gpus_for(self, accelerator: str) -> int:
        if accelerator == "gpu" and not self._gpus:
            raise DataError("a run asks for a GPU (--accelerator gpu), but the Ray cluster has none")
        return 1 if accelerator == "gpu" or (accelerator == "auto" and self._gpus) else 0

    def submit(self, fn: Callable, *args: Any, accelerator: str = "cpu") -> Future:
        # Only failures of the worker or its node are retried (retry_exceptions=False): an exception the
        # run raises is its result, as with local processes.
        ref = self._call.options(num_cpus=self.threads, num_gpus=self._gpus_for(accelerator),
                                 max_retries=self.retries, retry_exceptions=False).remote(self.threads, fn, *args)
        self._pending.add(ref)
        out: Future = Future()

        def settle(inner: Future) -> None:
            self._pending.discard(ref)
            try:
                out.set_result(inner.result())
            except BaseException as e:  # noqa: BLE001 - handed to the driver, which reports it
                out.set_exception(self._unwrap(e))

        ref.future().add_done_callback(settle)
        return out

    def _unwrap(self, e: BaseException) -> BaseException:
        """The run's own exception (a DataError stays one); a lost worker or node as one line."""
        if isinstance(e, self._ray.exceptions.RayTaskError) and isinstance(getattr(e, "cause", None), Exception):
            return e.cause
        if isinstance(e, self._ray.exceptions.RayError):
            return RuntimeError(f"{type(e).__name__} after {self.retries + 1} tries: {first_line(e)}")
        return e

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return f"{self.threads} CPU thread{'s' if self.threads > 1 else ''} per run on {where}"


def _call(threads: int, fn: Callable, *args: Any) -> Any:
    """A Ray task: ``fn(*args)`` with ``threads`` torch threads (a Ray worker process serves many tasks)."""
    from stew.experiments.workers import init_worker

    init_worker(threads)
    return fn(*args)


def open_engine(engine: str = "local", address: str | None = None, *, workers: int | None = None,
                threads: int | None = None) -> LocalEngine | RayEngine:
    """The engine of ``--engine``/``--address``/``--workers``/``--threads``, checked but not started (enter it).

    Local: ``workers`` processes (default 1) of ``threads`` threads (default cores // workers; one worker
    runs in this process, whose torch setting None leaves alone). Ray: ``threads`` CPUs per run (default 1)
    and ``workers`` runs in flight at most (default: no cap).
    """
    if engine not in ENGINES:
        raise DataError(f"--engine {engine!r}: choose local or ray")
    if engine == "local":
        if address is not None:
            raise DataError("--address needs --engine ray (it names a Ray cluster)")
        return LocalEngine(workers or 1, threads)
    return RayEngine(address, threads, workers)


def run_configs(engine: LocalEngine | RayEngine, runs: Sequence[tuple[str, TrainConfig]],
                done: Callable[[str, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train every (name, config) on ``engine`` (``engine.capacity`` at a time); their metrics.json records
    in the given order. ``done(name, metrics)`` as each finishes (progress lines). The first failure is
    raised; the engine's exit stops the runs still in flight."""
    results: dict[int, dict[str, Any]] = {}
    running: dict[Future, int] = {}
    todo = list(range(len(runs)))[::-1]
    while todo or running:
        while todo and (engine.capacity is None or len(running) < engine.capacity):
            i = todo.pop()
            cfg = runs[i][1]
            running[engine.submit(run_metrics, cfg, accelerator=cfg.accelerator)] = i
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in finished:
            i = running.pop(fut)
            results[i] = fut.result()
            if done is not None:
                done(runs[i][0], results[i])
    return [results[i] for i in range(len(runs))]
