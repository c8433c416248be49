"""How the runs of a sweep are computed: serially, in a pool of spawned worker processes, or as Ray tasks.

`run_sweep` ties the parts together: it checks the results folder (`trustregion_lab.sweep.store`) before
anything is written, computes the runs the folder does not hold with the chosen backend, stores each run as it
finishes and merges the plan's runs into ``table.csv``.

A run that raises is a failure of the computation, not of the request: it stops the sweep with `RunError`, whose
cause carries the run's own traceback (from the worker process or Ray task); the runs stored before it, and those
that finish while the others are stopped, stay on disk for the rerun.

Progress inside runs: a run reports its steps through `trustregion_lab.progress` (``report("train", step,
total)``; the warm start likewise). The serial backend hears those reports directly; a worker process forwards them
to the sweep over a multiprocessing queue and a Ray task over a Ray queue. The bar counts finished runs and its
postfix shows each running run's latest report, e.g. ``2 running: train 37/200, warm start 120/600``; a run that
has not reported yet shows as ``started``. The bar is redrawn every second, so its clock moves during a long run.

Ctrl-C stops the sweep: the runs already stored stay on disk, the worker processes are stopped, and `run_sweep`
raises `SweepInterrupted` (a `KeyboardInterrupt`) saying how many runs of the plan are kept.

Worker processes exit on their own when the sweep process dies (even by SIGKILL): each runs a watchdog thread
that polls its parent's pid, so no worker, and no multiprocessing resource tracker held open by the workers,
outlives the sweep. Workers ignore SIGINT (a Ctrl-C reaches the whole process group); the sweep stops them.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from trustregion_lab import progress as progress_channel
from trustregion_lab.sweep import store
from trustregion_lab.sweep.plan import RunSpec, SweepConfigError, SweepPlan

__all__ = ["BACKENDS", "RunError", "SweepInterrupted", "run_sweep"]

BACKENDS = ("local", "ray")
WATCHDOG_INTERVAL = 0.5  # seconds between a worker's checks that its parent is alive
FORWARD_INTERVAL = 0.25  # seconds: a worker forwards at most this often (a run's last report always)
REDRAW_INTERVAL = 1.0  # seconds between redraws of the bar
POLL_INTERVAL = 0.2  # seconds the parent waits for a finished run before reading the progress queue

StoreFn = Callable[[RunSpec, Any], None]


class RunError(RuntimeError):
    """A run raised while computing; ``__cause__`` is the run's own exception (with its traceback)."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep: ``kept`` of the plan's ``total`` runs are stored in ``out_dir``."""

    def __init__(self, kept: int, total: int, out_dir: Path) -> None:
        super().__init__(f"interrupted: {kept} of {total} runs are kept in {out_dir}")
        self.kept, self.total, self.out_dir = kept, total, out_dir


def _failure(plan: SweepPlan, spec: RunSpec, exc: BaseException) -> RunError:
    cause = getattr(exc, "cause", None) or exc  # ray.exceptions.RayTaskError carries the original as .cause
    where = ", ".join(filter(None, [f"seed {spec.seed}", plan.describe(spec.config)]))
    return RunError(
        f"run {spec.run_id} ({where}) of preset {plan.preset.name!r} failed: {type(cause).__name__}: {cause}"
    )


# ------------------------------------------------------------------------------------------- workers
_channel: Any = None  # in a worker process: the queue its runs' progress goes to (set by _start_worker)


class _Forwarder:
    """A progress sink that puts ``(run id, stage, done, total)`` on a queue, at most every FORWARD_INTERVAL
    seconds per run (a report with ``done == total`` always goes). A full or broken queue drops the report:
    progress never stops a run."""

    def __init__(self, channel: Any, run_id: str) -> None:
        self.channel, self.run_id, self.last = channel, run_id, 0.0

    def put(self, stage: str, done: int, total: int) -> None:
        with contextlib.suppress(Exception):
            self.channel.put_nowait((self.run_id, stage, done, total))

    def __call__(self, report: progress_channel.Progress) -> None:
        now = time.monotonic()
        if report.done >= report.total or now - self.last >= FORWARD_INTERVAL:
            self.last = now
            self.put(report.stage, report.done, report.total)


def _execute_run(
    run: Callable[[dict, int], pd.DataFrame],
    config: dict,
    seed: int,
    single_thread: bool,
    run_id: str = "",
    channel: Any = None,
):
    """Worker body (local processes and Ray tasks): one run, optionally limited to one torch thread; its progress
    reports go to ``channel`` (or the worker's queue) tagged with ``run_id``."""
    if single_thread:
        import torch

        torch.set_num_threads(1)
    channel = channel if channel is not None else _channel
    if channel is None:
        return run(dict(config), seed)
    forward = _Forwarder(channel, run_id)
    forward.put("started", 0, 0)
    with progress_channel.listening(forward):
        return run(dict(config), seed)


def _watch_parent(parent_pid: int, interval: float = WATCHDOG_INTERVAL, stop: Any = None) -> None:
    """Exit this process (code 1) as soon as its parent is no longer ``parent_pid`` (the parent died) or the
    ``stop`` event is set (the sweep was interrupted)."""
    while True:
        if os.getppid() != parent_pid or (stop is not None and stop.is_set()):
            os._exit(1)
        time.sleep(interval)


def _start_worker(parent_pid: int, stop: Any = None, channel: Any = None) -> None:
    """Initializer of each worker process: SIGINT ignored (the sweep stops its workers), the parent watchdog
    as a daemon thread, and the progress queue."""
    global _channel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if channel is not None:
        channel.cancel_join_thread()  # a worker stopped mid-run must not hang flushing progress at exit
    _channel = channel
    threading.Thread(
        target=_watch_parent, args=(parent_pid, WATCHDOG_INTERVAL, stop), name="parent-watchdog", daemon=True
    ).start()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the body (processes started meanwhile inherit that), then restored;
    a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Environment for spawned workers: one BLAS/OpenMP thread each (restored afterwards)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------------- display
class _Display:
    """The sweep's bar: finished runs as its count, each running run's latest report as its postfix
    (``2 running: train 37/200, warm start 120/600``); redrawn every REDRAW_INTERVAL seconds by a thread."""

    def __init__(self, bar: Any, enabled: bool) -> None:
        self.bar, self.enabled = bar, enabled
        self.running: dict[str, str] = {}
        self.finished_ids: set[str] = set()
        self.shown = ""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.ticker: threading.Thread | None = None

    def __enter__(self) -> _Display:
        if self.enabled:
            self.ticker = threading.Thread(target=self._tick, name="sweep-progress", daemon=True)
            self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.ticker is not None:
            self.ticker.join()

    def _tick(self) -> None:
        while not self.stopping.wait(REDRAW_INTERVAL):
            with self.lock:
                self.bar.refresh()

    def report(self, run_id: str, stage: str, done: int, total: int) -> None:
        """The latest report of a running run (``total`` 0: it started and has not reported yet)."""
        with self.lock:
            if run_id in self.finished_ids:
                return  # a late report of a stored run
            self.running[run_id] = f"{stage} {done}/{total}" if total > 0 else "started"
            self._postfix()

    def finished(self, run_id: str) -> None:
        with self.lock:
            self.finished_ids.add(run_id)
            self.running.pop(run_id, None)
            self._postfix()
            self.bar.update(1)

    def _postfix(self) -> None:
        text = f"{len(self.running)} running: {', '.join(self.running.values())}" if self.running else ""
        if text != self.shown:
            self.shown = text
            self.bar.set_postfix_str(text, refresh=False)

    def sink(self, run_id: str) -> Callable[[progress_channel.Progress], None]:
        """A `trustregion_lab.progress` sink for one run computed in this process."""
        return lambda report: self.report(run_id, report.stage, report.done, report.total)

    def drain(self, channel: Any) -> None:
        """Show every report waiting on ``channel`` (a worker queue or a Ray queue)."""
        if channel is None:
            return
        while True:
            try:
                item = channel.get_nowait()
            except queue_module.Empty:
                return
            except Exception:  # a broken queue (a worker stopped mid-write): progress is best effort
                return
            self.report(*item)


# ------------------------------------------------------------------------------------------ backends
def _run_serially(plan: SweepPlan, pending: list[RunSpec], save: StoreFn, display: _Display) -> None:
    for spec in pending:
        listen = contextlib.nullcontext()
        if display.enabled:
            display.report(spec.run_id, "started", 0, 0)
            listen = progress_channel.listening(display.sink(spec.run_id))
        try:
            with listen:
                table = _execute_run(plan.preset.run, spec.config, spec.seed, single_thread=False)
        except Exception as exc:
            raise _failure(plan, spec, exc) from exc
        save(spec, table)
        display.finished(spec.run_id)


def _run_in_processes(
    plan: SweepPlan, pending: list[RunSpec], save: StoreFn, display: _Display, *, jobs: int
) -> None:
    """Spawned workers, one torch thread each. After a failure the queued runs are cancelled; the runs already
    computing finish and are stored, then the first failure is raised. On Ctrl-C (or any other interruption of
    the sweep process) the workers are stopped at once and the interruption is re-raised."""
    failure: RunError | None = None
    context = get_context("spawn")
    stop = context.Event()
    channel = context.Queue() if display.enabled else None
    with _single_threaded_children():
        pool = ProcessPoolExecutor(
            max_workers=min(jobs, len(pending)),
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), stop, channel),
        )
        futures: dict = {}
        try:
            with _sigint_ignored():  # the workers start here and inherit SIGINT ignored
                for spec in pending:
                    future = pool.submit(
                        _execute_run, plan.preset.run, spec.config, spec.seed, True, spec.run_id
                    )
                    futures[future] = spec
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, timeout=POLL_INTERVAL, return_when=FIRST_COMPLETED)
                display.drain(channel)
                for future in finished:
                    if future.cancelled():
                        continue
                    spec = futures[future]
                    try:
                        table = future.result()
                    except Exception as exc:
                        if failure is None:
                            failure = _failure(plan, spec, exc)
                            failure.__cause__ = exc
                            for other in futures:
                                other.cancel()
                        continue
                    save(spec, table)
                    display.finished(spec.run_id)
        except BaseException:
            stop.set()  # every worker's watchdog exits its process within WATCHDOG_INTERVAL
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    if failure is not None:
        raise failure


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepConfigError(
            "--backend ray needs the optional extra: pip install 'trustregion_lab[ray]'"
        ) from None
    return ray


def _ray_queue(display: _Display) -> Any:
    """A Ray queue for the tasks' progress (None when the bar is off or Ray cannot make one)."""
    if not display.enabled:
        return None
    try:
        from ray.util.queue import Queue

        return Queue(maxsize=10_000)
    except Exception:
        return None


def _run_on_ray(
    plan: SweepPlan,
    pending: list[RunSpec],
    save: StoreFn,
    display: _Display,
    *,
    jobs: int,
    address: str | None,
) -> None:
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        started_here = True
    waiting: dict = {}
    channel = None
    try:
        channel = _ray_queue(display)
        remote_run = ray.remote(num_cpus=1)(_execute_run)
        waiting = {
            remote_run.remote(plan.preset.run, spec.config, spec.seed, True, spec.run_id, channel): spec
            for spec in pending
        }
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_INTERVAL)
            display.drain(channel)
            for ref in ready:
                spec = waiting.pop(ref)
                try:
                    table = ray.get(ref)
                except Exception as exc:
                    raise _failure(plan, spec, exc) from exc
                save(spec, table)
                display.finished(spec.run_id)
    except BaseException:
        for ref in waiting:  # runs not stored yet: stop them, their files were never written
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.shutdown()
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------------- the sweep
def run_sweep(
    plan: SweepPlan,
    out_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every run of ``plan`` that ``out_dir`` does not yet hold, then write and return the merged table.

    Args:
        plan: from :func:`~trustregion_lab.sweep.plan.plan_sweep` (every configuration already validated).
        out_dir: results folder; receives ``sweep.json``, ``runs/<run id>.{csv,json}`` and ``table.csv``.
        jobs: worker processes for the local backend (spawn context, one torch thread each when > 1); for the
            Ray backend, the CPUs of a local Ray instance started here (ignored with ``address``).
        backend: ``"local"`` or ``"ray"`` (runs become Ray tasks; same files, same resume rules).
        address: Ray cluster address (``"auto"`` or ``"ray://host:10001"``); None starts a local instance.
        progress: show a tqdm progress bar on stderr: finished runs, and the steps of each running run.

    Returns:
        The merged table (all runs of the plan, in plan order).

    Raises:
        SweepConfigError: a bad request or a folder the plan may not use (before anything is written), or
            `StorageError` (a subclass): a write failed; finished runs are kept.
        RunError: a run raised; its cause is the run's exception.
        SweepInterrupted: Ctrl-C (a `KeyboardInterrupt`); the finished runs are kept, the workers stopped.
    """
    if backend not in BACKENDS:
        raise SweepConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepConfigError(f"jobs must be a positive integer, got {jobs!r}")
    if address is not None and backend != "ray":
        raise SweepConfigError("--address only applies to --backend ray")
    if backend == "ray":
        _import_ray()
    out_dir = Path(out_dir)
    store.check_writable_folder(out_dir, "--out")
    store.check_writable_folder(out_dir / store.RUNS_DIR, "--out")
    broken = store.check_folder(out_dir, plan)
    commit = store.git_commit()
    store.prepare_folder(out_dir, plan, commit)
    runs_dir = out_dir / store.RUNS_DIR
    for run_id, reason in broken.items():
        store.warn(f"{runs_dir / run_id}.csv is not a complete run file ({reason}); recomputing it")
    pending = [
        spec for spec in plan.runs if spec.run_id in broken or not (runs_dir / f"{spec.run_id}.csv").exists()
    ]
    done = len(plan.runs) - len(pending)
    if progress and done:
        print(f"resuming in {out_dir}: {done} of {len(plan.runs)} runs already done", file=sys.stderr)

    stored = [done]

    def save(spec: RunSpec, table: Any) -> None:
        if not isinstance(table, pd.DataFrame):
            raise RunError(
                f"preset {plan.preset.name!r}: run(config, seed) must return a pandas.DataFrame, got "
                f"{type(table).__name__} (run {spec.run_id})"
            )
        store.store_run(runs_dir, spec, table, plan.preset.name, commit)
        stored[0] += 1

    if pending:
        from tqdm.auto import tqdm

        try:
            with (
                tqdm(total=len(pending), desc=plan.preset.name, unit="run", disable=not progress) as bar,
                _Display(bar, enabled=progress) as display,
            ):
                if backend == "ray":
                    _run_on_ray(plan, pending, save, display, jobs=jobs, address=address)
                elif jobs == 1:
                    _run_serially(plan, pending, save, display)
                else:
                    _run_in_processes(plan, pending, save, display, jobs=jobs)
        except KeyboardInterrupt:
            raise SweepInterrupted(stored[0], len(plan.runs), out_dir) from None
    return store.merge_runs(out_dir, plan)
