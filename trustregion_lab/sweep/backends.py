"""How the runs of a sweep are computed: serially, in a pool of spawned worker processes, or as Ray tasks.

`run_sweep` ties the parts together: it checks the results folder (`trustregion_lab.sweep.store`) before
anything is written, computes the runs the folder does not hold with the chosen backend, stores each run as it
finishes and merges the plan's runs into ``table.csv``.

A run that raises is a failure of the computation, not of the request: it stops the sweep with `RunError`, whose
cause carries the run's own traceback (from the worker process or Ray task); the runs stored before it, and those
that finish while the others are stopped, stay on disk for the rerun.

Worker processes exit on their own when the sweep process dies (even by SIGKILL): each runs a watchdog thread
that polls its parent's pid, so no worker, and no multiprocessing resource tracker held open by the workers,
outlives the sweep.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from trustregion_lab.sweep import store
from trustregion_lab.sweep.plan import RunSpec, SweepConfigError, SweepPlan

__all__ = ["BACKENDS", "RunError", "run_sweep"]

BACKENDS = ("local", "ray")
WATCHDOG_INTERVAL = 0.5  # seconds between a worker's checks that its parent is alive

StoreFn = Callable[[RunSpec, Any], None]


class RunError(RuntimeError):
    """A run raised while computing; ``__cause__`` is the run's own exception (with its traceback)."""


def _failure(plan: SweepPlan, spec: RunSpec, exc: BaseException) -> RunError:
    cause = getattr(exc, "cause", None) or exc  # ray.exceptions.RayTaskError carries the original as .cause
    where = ", ".join(filter(None, [f"seed {spec.seed}", plan.describe(spec.config)]))
    return RunError(
        f"run {spec.run_id} ({where}) of preset {plan.preset.name!r} failed: {type(cause).__name__}: {cause}"
    )


# ------------------------------------------------------------------------------------------- workers
def _execute_run(run: Callable[[dict, int], pd.DataFrame], config: dict, seed: int, single_thread: bool):
    """Worker body (local processes and Ray tasks): one run, optionally limited to one torch thread."""
    if single_thread:
        import torch

        torch.set_num_threads(1)
    return run(dict(config), seed)


def _watch_parent(parent_pid: int, interval: float = WATCHDOG_INTERVAL) -> None:
    """Exit this process (code 1) as soon as its parent is no longer ``parent_pid`` (the parent died)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(interval)


def _start_worker(parent_pid: int) -> None:
    """Initializer of each worker process: the parent watchdog, as a daemon thread."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


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


# ------------------------------------------------------------------------------------------ backends
def _run_serially(plan: SweepPlan, pending: list[RunSpec], save: StoreFn, bar) -> None:
    for spec in pending:
        try:
            table = _execute_run(plan.preset.run, spec.config, spec.seed, single_thread=False)
        except Exception as exc:
            raise _failure(plan, spec, exc) from exc
        save(spec, table)
        bar.update(1)


def _run_in_processes(plan: SweepPlan, pending: list[RunSpec], save: StoreFn, bar, *, jobs: int) -> None:
    """Spawned workers, one torch thread each. After a failure the queued runs are cancelled; the runs already
    computing finish and are stored, then the first failure is raised."""
    failure: RunError | None = None
    with (
        _single_threaded_children(),
        ProcessPoolExecutor(
            max_workers=min(jobs, len(pending)),
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        ) as pool,
    ):
        futures = {
            pool.submit(_execute_run, plan.preset.run, spec.config, spec.seed, True): spec for spec in pending
        }
        try:
            for future in as_completed(futures):
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
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
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


def _run_on_ray(
    plan: SweepPlan, pending: list[RunSpec], save: StoreFn, bar, *, jobs: int, address: str | None
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
    try:
        remote_run = ray.remote(num_cpus=1)(_execute_run)
        waiting = {remote_run.remote(plan.preset.run, spec.config, spec.seed, True): spec for spec in pending}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                spec = waiting.pop(ref)
                try:
                    table = ray.get(ref)
                except Exception as exc:
                    raise _failure(plan, spec, exc) from exc
                save(spec, table)
                bar.update(1)
    except BaseException:
        for ref in waiting:  # runs not stored yet: stop them, their files were never written
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
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
        progress: show a tqdm progress bar on stderr.

    Returns:
        The merged table (all runs of the plan, in plan order).

    Raises:
        SweepConfigError: a bad request or a folder the plan may not use (before anything is written), or
            `StorageError` (a subclass): a write failed; finished runs are kept.
        RunError: a run raised; its cause is the run's exception.
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

    def save(spec: RunSpec, table: Any) -> None:
        if not isinstance(table, pd.DataFrame):
            raise RunError(
                f"preset {plan.preset.name!r}: run(config, seed) must return a pandas.DataFrame, got "
                f"{type(table).__name__} (run {spec.run_id})"
            )
        store.store_run(runs_dir, spec, table, plan.preset.name, commit)

    if pending:
        from tqdm.auto import tqdm

        with tqdm(total=len(pending), desc=plan.preset.name, unit="run", disable=not progress) as bar:
            if backend == "ray":
                _run_on_ray(plan, pending, save, bar, jobs=jobs, address=address)
            elif jobs == 1:
                _run_serially(plan, pending, save, bar)
            else:
                _run_in_processes(plan, pending, save, bar, jobs=jobs)
    return store.merge_runs(out_dir, plan)
