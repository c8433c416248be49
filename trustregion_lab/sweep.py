"""``python -m trustregion_lab.sweep``: run a named preset over a grid of parameters and seeds, write tidy tables.

A sweep expands a preset's grid (its default grid, with ``--grid`` overrides) into runs, one per
(configuration, seed). Each run calls the preset's ``run(config, seed)`` and stores its tidy table as
``OUT/runs/<run id>.csv``; the run id is a hash of the configuration plus the seed, so a run that finished is
never recomputed (resume is the default). Every file is written to a temporary file in the same folder and then
renamed, so a sweep killed at any moment leaves only complete files. At the end the runs are merged into
``OUT/table.csv`` and the figures of ``trustregion_lab.plots`` are drawn into ``--figures-dir``.

Every row carries the run's configuration (one column per parameter), the seed, the preset name, the run id,
the package version and the git commit of the code that computed it.

``OUT/sweep.json`` records what the folder holds (preset, fixed parameters, grid, seeds). A sweep pointed at a
folder that holds another configuration stops with an error and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

import trustregion_lab
from trustregion_lab.experiment import Preset

__all__ = [
    "RunSpec",
    "SweepConfigError",
    "SweepPlan",
    "available_presets",
    "expand_grid",
    "git_commit",
    "main",
    "parse_grid_args",
    "parse_value",
    "plan_sweep",
    "run_id",
    "run_sweep",
]

MANIFEST_NAME = "sweep.json"
TABLE_NAME = "table.csv"
RUNS_DIR = "runs"
_TMP_SUFFIX = ".tmp"
_SCALAR_TYPES = (bool, int, float, str)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SweepConfigError(ValueError):
    """A sweep request that cannot be honoured (unknown preset or parameter, bad grid, folder conflict)."""


# --------------------------------------------------------------------------------------------- presets
def available_presets() -> dict[str, Preset]:
    """All presets by name: the analysis presets, then the training presets (when that module exists)."""
    from trustregion_lab.analysis.presets import PRESETS as analysis_presets

    presets: list[Preset] = list(analysis_presets)
    try:
        from trustregion_lab.train.presets import PRESETS as training_presets
    except ModuleNotFoundError as exc:  # the training presets are optional; any other import error is a bug
        if exc.name not in ("trustregion_lab.train.presets", "trustregion_lab.train"):
            raise
        training_presets = []
    presets.extend(training_presets)
    by_name: dict[str, Preset] = {}
    for preset in presets:
        if preset.name in by_name:
            raise RuntimeError(f"two presets are named {preset.name!r}")
        by_name[preset.name] = preset
    return by_name


# ------------------------------------------------------------------------------------------ grid parsing
def parse_value(text: str, default: Any, key: str) -> Any:
    """Parse one command-line value to the type of the parameter's default (bool, int, float or str).

    bool accepts 1/0, true/false, yes/no, on/off; int accepts integral floats such as ``1e4``.
    """
    text = text.strip()
    if text == "":
        raise SweepConfigError(f"--grid {key}: empty value; expected {type(default).__name__} values")
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SweepConfigError(f"--grid {key}={text}: expected a boolean (true/false, 1/0, yes/no)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            as_float = float(text)
        except ValueError:
            as_float = float("nan")
        if as_float.is_integer():
            return int(as_float)
        raise SweepConfigError(f"--grid {key}={text}: expected an integer")
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise SweepConfigError(f"--grid {key}={text}: expected a number") from None
        if value != value:
            raise SweepConfigError(f"--grid {key}={text}: expected a number, got NaN")
        return value
    if isinstance(default, str):
        return text
    raise SweepConfigError(
        f"--grid {key}: parameter has a default of type {type(default).__name__}, which cannot be set from the "
        "command line (only bool, int, float and str parameters can)"
    )


def parse_grid_args(items: Sequence[str], defaults: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Parse ``["key=v1,v2", ...]`` into ``{key: [v1, v2]}``, each value cast to the type of ``defaults[key]``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise SweepConfigError(
                f"--grid {item!r}: expected KEY=V1,V2,... (for example vocab_size=1024,32768)"
            )
        key, _, values_text = item.partition("=")
        key = key.strip()
        if not key:
            raise SweepConfigError(f"--grid {item!r}: missing parameter name before '='")
        if key not in defaults:
            raise SweepConfigError(
                f"--grid {item!r}: unknown parameter {key!r}; this preset takes: {', '.join(sorted(defaults))}"
            )
        if key in grid:
            raise SweepConfigError(
                f"--grid: parameter {key!r} given twice; put all its values in one KEY=V1,V2"
            )
        pieces = values_text.split(",")
        values = [parse_value(piece, defaults[key], key) for piece in pieces]
        if len(set(map(repr, values))) != len(values):
            raise SweepConfigError(f"--grid {item!r}: repeated value")
        grid[key] = values
    return grid


def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of ``grid`` over ``base``: one config dict per combination, first key varying slowest.

    Keys keep the order of ``base``; a key of ``grid`` absent from ``base`` is an error.
    """
    unknown = [key for key in grid if key not in base]
    if unknown:
        raise SweepConfigError(f"grid parameters {unknown} are not parameters of the preset ({sorted(base)})")
    keys = list(grid)
    configs = []
    for combination in itertools.product(*(list(grid[key]) for key in keys)):
        config = dict(base)
        config.update(zip(keys, combination))
        configs.append(config)
    return configs


def _canonical(value: Any) -> Any:
    """A JSON round trip: tuples become lists, so stored and requested configurations compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def run_id(config: Mapping[str, Any], seed: int) -> str:
    """Stable id of one run: ``<12 hex digits of sha1(config as sorted JSON)>-s<seed>``."""
    digest = hashlib.sha1(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"{digest}-s{seed}"


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a full configuration, a seed and its id."""

    config: dict[str, Any]
    seed: int
    run_id: str


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs: the preset, its fixed parameters, the grid, the seeds and the expanded runs."""

    preset: Preset
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: int
    runs: list[RunSpec]

    def manifest(self) -> dict[str, Any]:
        """The part of ``sweep.json`` that identifies the folder's contents."""
        return _canonical(
            {"preset": self.preset.name, "base": self.base, "grid": self.grid, "seeds": self.seeds}
        )


def plan_sweep(
    preset: Preset, grid: Mapping[str, Sequence[Any]] | None = None, seeds: int | None = None
) -> SweepPlan:
    """Expand ``preset`` into runs.

    ``grid`` entries replace the preset's default grid for their key (a single value fixes the parameter);
    keys of the preset's grid not named keep their default values. ``seeds`` defaults to ``preset.seeds``;
    the seeds are ``0 .. seeds - 1``.
    """
    merged: dict[str, list[Any]] = {key: list(values) for key, values in preset.grid.items()}
    for key, values in (grid or {}).items():
        if key not in preset.defaults:
            raise SweepConfigError(
                f"unknown parameter {key!r} for preset {preset.name!r}; it takes: {', '.join(sorted(preset.defaults))}"
            )
        values = list(values)
        if not values:
            raise SweepConfigError(f"grid[{key!r}] is empty; give at least one value")
        merged[key] = values
    base = dict(preset.defaults)
    for key in list(merged):
        if len(merged[key]) == 1:  # a single value is a fixed parameter, not a grid axis
            base[key] = merged.pop(key)[0]
    n_seeds = preset.seeds if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise SweepConfigError(f"seeds must be a positive integer, got {n_seeds!r}")
    runs = [
        RunSpec(config=config, seed=seed, run_id=run_id(config, seed))
        for config in expand_grid(base, merged)
        for seed in range(n_seeds)
    ]
    return SweepPlan(preset=preset, base=base, grid=merged, seeds=n_seeds, runs=runs)


# ----------------------------------------------------------------------------------------- provenance
def git_commit() -> str:
    """The commit hash of the source tree the package is imported from, with "-dirty" appended when that tree has
    uncommitted changes (tracked or untracked, not ignored); ``"unknown"`` outside git."""
    source_dir = Path(trustregion_lab.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(source_dir), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    status = git("status", "--porcelain")
    return f"{commit}-dirty" if status else commit


# -------------------------------------------------------------------------------------------- writing
def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _atomic_write_csv(path: Path, table: pd.DataFrame) -> None:
    _atomic_write_text(path, table.to_csv(index=False))


def _remove_stale_temporaries(folder: Path) -> None:
    if folder.is_dir():
        for stale in folder.glob(f".*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()


def _annotate(table: pd.DataFrame, spec: RunSpec, preset_name: str, commit: str) -> pd.DataFrame:
    """Add the configuration, seed and provenance columns to one run's rows."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"preset {preset_name!r}: run(config, seed) must return a pandas.DataFrame, got {type(table).__name__}"
        )
    table = table.reset_index(drop=True).copy()
    for key, value in spec.config.items():
        if key not in table.columns:
            table[key] = value
    if "seed" not in table.columns:
        table["seed"] = spec.seed
    table["preset"] = preset_name
    table["run_id"] = spec.run_id
    table["version"] = trustregion_lab.__version__
    table["git_commit"] = commit
    return table


def _execute_run(run: Callable[[dict, int], pd.DataFrame], config: dict, seed: int, single_thread: bool):
    """Worker body (local processes and Ray tasks): one run, optionally limited to one torch thread."""
    if single_thread:
        _limit_threads()
    return run(dict(config), seed)


def _limit_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but the sweep itself does not need it
        return
    torch.set_num_threads(1)


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


# ------------------------------------------------------------------------------------------- the sweep
def _check_folder(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse a folder that holds another sweep (or other files); nothing is written before this check."""
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        try:
            stored = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SweepConfigError(f"--out {out_dir}: cannot read {MANIFEST_NAME} ({exc})") from None
        stored_identity = {key: stored.get(key) for key in manifest}
        if stored_identity != manifest:
            differences = [key for key in manifest if stored_identity.get(key) != manifest[key]]
            details = "; ".join(
                f"{key}: folder has {json.dumps(stored_identity.get(key), sort_keys=True)}, "
                f"requested {json.dumps(manifest[key], sort_keys=True)}"
                for key in differences
            )
            raise SweepConfigError(
                f"--out {out_dir} holds results of another configuration ({details}). "
                "Choose another --out folder, or delete this one to start over; nothing was changed."
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise SweepConfigError(
            f"--out {out_dir} is not empty and holds no {MANIFEST_NAME}, so it is not a sweep folder; "
            "choose an empty or new folder"
        )


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
        plan: from :func:`plan_sweep`.
        out_dir: results folder; receives ``sweep.json``, ``runs/<run id>.csv`` and ``table.csv``.
        jobs: worker processes for the local backend (spawn context, one torch thread each when > 1); for the
            Ray backend, the CPUs of a local Ray instance started here (ignored with ``address``).
        backend: ``"local"`` or ``"ray"`` (runs become Ray tasks; same files, same resume rules).
        address: Ray cluster address (``"auto"`` or ``"ray://host:10001"``); None starts a local instance.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The merged table (all runs of the plan, in plan order).
    """
    if backend not in ("local", "ray"):
        raise SweepConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepConfigError(f"jobs must be a positive integer, got {jobs!r}")
    if address is not None and backend != "ray":
        raise SweepConfigError("--address only applies to --backend ray")
    out_dir = Path(out_dir)
    manifest = plan.manifest()
    _check_folder(out_dir, manifest)

    runs_dir = out_dir / RUNS_DIR
    fresh_folder = not (out_dir / MANIFEST_NAME).exists()
    runs_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(runs_dir)
    _remove_stale_temporaries(out_dir)
    commit = git_commit()
    _atomic_write_text(
        out_dir / MANIFEST_NAME,
        json.dumps(
            {
                **manifest,
                "kind": plan.preset.kind,
                "defaults": _canonical(plan.preset.defaults),
                "runs": [spec.run_id for spec in plan.runs],
                "version": trustregion_lab.__version__,
                "git_commit": commit,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
    )

    pending = [spec for spec in plan.runs if not (runs_dir / f"{spec.run_id}.csv").exists()]
    done = len(plan.runs) - len(pending)
    if progress and done:
        print(f"resuming in {out_dir}: {done} of {len(plan.runs)} runs already done", file=sys.stderr)

    def store(spec: RunSpec, table: pd.DataFrame) -> None:
        _atomic_write_csv(runs_dir / f"{spec.run_id}.csv", _annotate(table, spec, plan.preset.name, commit))

    if pending:
        try:
            _run_pending(plan, pending, store, progress=progress, backend=backend, jobs=jobs, address=address)
        except SweepConfigError:
            if fresh_folder and not any(runs_dir.glob("*.csv")):
                # nothing was computed: leave no manifest behind, so the corrected command can use this folder
                (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    runs_dir.rmdir()
                    out_dir.rmdir()
            raise

    merged = pd.concat(
        [
            pd.read_csv(runs_dir / f"{spec.run_id}.csv", keep_default_na=False, na_values=[""])
            for spec in plan.runs
        ],
        ignore_index=True,
        sort=False,
    )
    _atomic_write_csv(out_dir / TABLE_NAME, merged)
    return merged


def _run_pending(
    plan: SweepPlan,
    pending: list[RunSpec],
    store,
    *,
    progress: bool,
    backend: str,
    jobs: int,
    address: str | None,
) -> None:
    """Compute the runs not yet on disk, storing each as it finishes."""
    from tqdm.auto import tqdm

    with tqdm(total=len(pending), desc=plan.preset.name, unit="run", disable=not progress) as bar:
        if backend == "ray":
            _run_on_ray(plan.preset, pending, store, bar, jobs=jobs, address=address)
        elif jobs == 1:
            for spec in pending:
                with _rejected_parameters(spec):
                    table = _execute_run(plan.preset.run, spec.config, spec.seed, single_thread=False)
                store(spec, table)
                bar.update(1)
        else:
            _run_in_processes(plan.preset, pending, store, bar, jobs=jobs)


@contextlib.contextmanager
def _rejected_parameters(spec: RunSpec) -> Iterator[None]:
    """A run that rejects its parameters (ValueError/TypeError, also inside a Ray task error) becomes a
    SweepConfigError naming the run's configuration; the runs finished before it stay on disk."""
    try:
        yield
    except Exception as exc:
        cause = (
            getattr(exc, "cause", None) or exc
        )  # ray.exceptions.RayTaskError carries the original as .cause
        if isinstance(cause, ValueError | TypeError):
            raise SweepConfigError(
                f"run {spec.run_id} (seed {spec.seed}, config {json.dumps(spec.config, sort_keys=True)}) "
                f"rejected its parameters: {type(cause).__name__}: {cause}"
            ) from exc
        raise


def _run_in_processes(preset: Preset, pending: list[RunSpec], store, bar, *, jobs: int) -> None:
    with (
        _single_threaded_children(),
        ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=get_context("spawn")) as pool,
    ):
        futures = {
            pool.submit(_execute_run, preset.run, spec.config, spec.seed, True): spec for spec in pending
        }
        try:
            for future in as_completed(futures):
                with _rejected_parameters(futures[future]):
                    table = future.result()
                store(futures[future], table)
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _run_on_ray(
    preset: Preset, pending: list[RunSpec], store, bar, *, jobs: int, address: str | None
) -> None:
    try:
        import ray
    except ImportError:
        raise SweepConfigError(
            "--backend ray needs the optional extra: pip install 'trustregion_lab[ray]'"
        ) from None
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
        waiting = {remote_run.remote(preset.run, spec.config, spec.seed, True): spec for spec in pending}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                spec = waiting.pop(ref)
                with _rejected_parameters(spec):
                    table = ray.get(ref)
                store(spec, table)
                bar.update(1)
    except BaseException:
        for ref in waiting:  # runs not stored yet: stop them, their files were never written
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------- CLI
_EXAMPLES = """\
examples:
  # the main job: the default preset -> results/default/{table.csv,figures/}
  python -m trustregion_lab.sweep

  # what can be run, with each preset's parameters and default grid
  python -m trustregion_lab.sweep --list-presets

  # one preset, one parameter changed
  python -m trustregion_lab.sweep --preset masks --grid vocab_size=32768 --out results/masks-32k

  # a bigger grid: 2 vocabulary sizes x 2 state families x GRPO vs clip-higher, 3 seeds, 2 worker processes
  python -m trustregion_lab.sweep --preset masks --grid vocab_size=4096,32768 family=mixed,high_entropy ppo_high=0.2,0.28 --seeds 3 --jobs 2 --out results/masks-big

  # estimator error up to V = 262,144 (list parameters join values with '+'), 5 seeds
  python -m trustregion_lab.sweep --preset vocab-scaling --grid scaling_vocab_sizes=1024+8192+65536+262144 --seeds 5 --jobs 2 --out results/vocab-big

  # the same runs as Ray tasks (pip install 'trustregion_lab[ray]'); --address joins a running cluster
  python -m trustregion_lab.sweep --preset estimators --backend ray --jobs 2
  python -m trustregion_lab.sweep --preset estimators --backend ray --address auto

  # redraw the figures of a finished sweep from its stored tables
  python -m trustregion_lab.plots results/default

Rerunning the same command resumes: finished runs (files under OUT/runs/) are kept, only missing runs are
computed. A folder that holds another configuration is refused; pick a new --out or delete the folder.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.sweep",
        description=(
            "Run a named preset of trustregion_lab over a grid of parameters and seeds. Each run writes one "
            "tidy CSV table (every row carries the configuration, seed, package version and git commit); "
            "the runs are merged into OUT/table.csv and figures are drawn from the stored tables."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default="default",
        metavar="NAME",
        help="which experiment to run (default: %(default)s; see --list-presets)",
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help=(
            "set or sweep preset parameters: KEY=V1,V2,... makes KEY a grid axis (replacing the preset's "
            "default values for it), KEY=V fixes it; values are parsed to the type of the parameter's default. "
            "Several may follow one --grid; all combinations are run"
        ),
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="number of seeds per configuration, seeds 0..N-1 (default: the preset's)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="parallel worker processes (spawned; one torch thread each when N > 1); default: %(default)s",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="results folder (default: results/<preset>); rerunning into it resumes",
    )
    parser.add_argument(
        "--figures-dir",
        default=None,
        metavar="DIR",
        help="where the figures go (default: <out>/figures)",
    )
    parser.add_argument("--no-figures", action="store_true", help="do not draw figures at the end")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local processes, or Ray tasks (optional extra [ray]); default: %(default)s",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join with --backend ray ('auto', 'ray://head:10001'); default: a local Ray instance",
    )
    parser.add_argument(
        "--list-presets", action="store_true", help="list the presets and their parameters, then exit"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _describe_presets(presets: Mapping[str, Preset]) -> str:
    lines = []
    for preset in presets.values():
        lines.append(f"{preset.name}  (seeds: {preset.seeds}; figures: {preset.kind or 'none'})")
        lines.append(f"    {preset.help}")
        grid = ", ".join(f"{key}={','.join(map(str, values))}" for key, values in preset.grid.items())
        lines.append(f"    default grid: {grid or '(none)'}")
        params = ", ".join(f"{key}={value!r}" for key, value in preset.defaults.items())
        lines.append(f"    parameters: {params}")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (errors in the request exit with code 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    presets = available_presets()
    if args.list_presets:
        print(_describe_presets(presets))
        return 0
    if args.preset not in presets:
        parser.error(f"argument --preset: unknown preset {args.preset!r}; choose from: {', '.join(presets)}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"argument --seeds: expected a positive integer, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"argument --jobs: expected a positive integer, got {args.jobs}")
    if args.address is not None and args.backend != "ray":
        parser.error("argument --address: only used with --backend ray")
    preset = presets[args.preset]
    out_dir = Path(args.out) if args.out else Path("results") / preset.name
    figures_dir = Path(args.figures_dir) if args.figures_dir else out_dir / "figures"
    try:
        plan = plan_sweep(preset, parse_grid_args(args.grid, preset.defaults), args.seeds)
        table = run_sweep(
            plan, out_dir, jobs=args.jobs, backend=args.backend, address=args.address, progress=not args.quiet
        )
    except SweepConfigError as exc:
        parser.error(str(exc))
    written: list[Path] = []
    if not args.no_figures:
        from trustregion_lab import plots

        written = plots.draw_figures(out_dir, figures_dir)
    if not args.quiet:
        print(f"{len(plan.runs)} runs, {len(table)} rows -> {out_dir / TABLE_NAME}")
        for path in written:
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
