"""The results folder of a sweep: its manifest, one verified file per finished run, and the merged table.

Layout of ``OUT``:
    sweep.json          the manifest: preset, fixed parameters, grid, seeds, run ids, version, git commit
    runs/<run id>.csv   one finished run's tidy rows, each row carrying the configuration, seed, preset, run id
                        and package version
    runs/<run id>.json  what identifies that file complete (its row count and the sha256 of its bytes) and
                        the git commit of the code that computed it
    table.csv           every run of the current plan, merged in plan order

The git commit lives in the JSON files only, never in a table's rows: a table (and every figure table drawn from
it) changes only when its numbers do, so regenerating committed figures from unchanged code changes no file.

A folder belongs to one preset. A command may resume into it when its runs include every finished run the
folder holds (the same sweep, or one extended by values or seeds); runs that were planned but never finished
do not bind the folder. A command that would leave finished runs out is refused before anything is written.
A run file whose record is missing or does not match (truncated, edited, empty) is not a finished run: it is
recomputed, with a warning. The record is written before the run file, so a file that exists with a matching
record is complete. Every write goes through ``trustregion_lab._io`` (temporary file, then rename); a write that
fails (a full disk, a folder made read-only) stops the sweep with a one-line `StorageError` naming the path,
and the finished runs stay on disk for the rerun.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

import trustregion_lab
from trustregion_lab import _io
from trustregion_lab._io import (
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_text,
    remove_stale_temporaries,
)
from trustregion_lab.sweep.plan import RunSpec, SweepConfigError, SweepPlan, canonical

__all__ = [
    "MANIFEST_NAME",
    "RUNS_DIR",
    "TABLE_NAME",
    "StorageError",
    "check_folder",
    "check_writable_folder",
    "git_commit",
    "merge_runs",
    "prepare_folder",
    "read_manifest",
    "store_run",
    "verify_run",
    "warn",
    "write_error_text",
]

MANIFEST_NAME = "sweep.json"
TABLE_NAME = "table.csv"
RUNS_DIR = "runs"


class StorageError(SweepConfigError):
    """The results folder cannot be read or written (a file in its place, no permission, no space left)."""


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


# --------------------------------------------------------------------------------------- folder checks
def write_error_text(path: Path, exc: OSError) -> str:
    """One line for a failed write: ``no space left on …`` for ENOSPC/EDQUOT, else the system's reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on {path.parent} (writing {path.name}); finished runs are kept, rerun to resume"
        )
    return f"cannot write {path}: {exc.strerror or exc}; finished runs are kept, rerun to resume"


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StorageError(write_error_text(path, exc)) from exc


def check_writable_folder(path: str | os.PathLike, option: str) -> None:
    """Refuse (`StorageError`) a folder that is a file, lies under a file, or cannot be written or created
    (``trustregion_lab._io.check_writable_folder``)."""
    try:
        _io.check_writable_folder(path, option)
    except ValueError as exc:
        raise StorageError(str(exc)) from None


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """``OUT/sweep.json`` as a dict, None when absent; `StorageError` when unreadable or not a JSON object."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"--out {out_dir}: cannot read {path} ({exc})") from None
    if not isinstance(manifest, dict):
        raise StorageError(
            f"--out {out_dir}: {path} holds a JSON {type(manifest).__name__}, expected an object (a sweep "
            "manifest); delete the folder or choose another --out"
        )
    return manifest


# ------------------------------------------------------------------------------------------- run files
def _record_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / f"{run_id}.json"


def verify_run(runs_dir: Path, run_id: str) -> tuple[dict[str, Any] | None, str]:
    """(record, "") for a complete run file; (None, reason) otherwise (reason "" when there is no file)."""
    csv_path = runs_dir / f"{run_id}.csv"
    if not csv_path.exists():
        return None, ""
    try:
        record = json.loads(_record_path(runs_dir, run_id).read_text())
    except FileNotFoundError:
        return None, "no record of its row count and checksum"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "its record is unreadable"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, "its record is unreadable"
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror})"
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        return None, f"its content does not match its record ({record.get('rows')} rows, sha256)"
    return record, ""


def _differences(plan: SweepPlan, record: dict[str, Any]) -> str:
    """How a finished run's configuration differs from what ``plan`` runs, as ``key=value (requested …)``."""
    config, base, grid = canonical(record.get("config", {})), canonical(plan.base), canonical(plan.grid)
    parts = []
    for key, value in config.items():
        if key in grid and value not in grid[key]:
            parts.append(f"{key}={value!r} (requested {', '.join(map(repr, grid[key]))})")
        elif key not in grid and base.get(key) != value:
            parts.append(f"{key}={value!r} (requested {base.get(key)!r})")
    if isinstance(record.get("seed"), int):
        planned = [spec.seed for spec in plan.runs if canonical(spec.config) == config]
        if planned and record["seed"] not in planned:  # a configuration of the plan, with fewer seeds
            parts.append(f"seed {record['seed']} (requested seeds 0..{max(planned)} of this configuration)")
        elif not planned and record["seed"] >= plan.seeds:
            parts.append(f"seed {record['seed']} (requested seeds 0..{plan.seeds - 1})")
    return ", ".join(parts) or "other parameters"


def check_folder(out_dir: Path, plan: SweepPlan) -> dict[str, str]:
    """Refuse a folder the plan may not write into (`SweepConfigError`, nothing changed); return the runs of the
    plan whose files exist but failed verification, ``{run id: reason}``.

    Only finished runs bind a folder: they must all be runs of ``plan`` (same preset, a configuration and seed
    the plan includes). A folder that is not empty must hold a sweep manifest.
    """
    manifest = read_manifest(out_dir)
    if (
        manifest is None
        and out_dir.is_dir()
        and any(not p.name.endswith(TMP_SUFFIX) for p in out_dir.iterdir())
    ):
        raise SweepConfigError(
            f"--out {out_dir} is not empty and holds no {MANIFEST_NAME}, so it is not a sweep folder; "
            "choose an empty or new folder"
        )
    runs_dir = out_dir / RUNS_DIR
    planned = {spec.run_id for spec in plan.runs}
    stored = {path.stem for path in runs_dir.glob("*.json")} if runs_dir.is_dir() else set()
    status = {run_id: verify_run(runs_dir, run_id) for run_id in sorted(stored | planned)}
    finished = [{**record, "run_id": run_id} for run_id, (record, _) in status.items() if record is not None]

    def refuse(reason: str) -> SweepConfigError:
        return SweepConfigError(
            f"--out {out_dir} holds results of another configuration ({reason}). Choose another --out folder, "
            "or delete this one to start over; nothing was changed."
        )

    presets = sorted({str(record.get("preset")) for record in finished} - {plan.preset.name})
    if presets:
        raise refuse(f"runs of preset {presets[0]!r}, requested {plan.preset.name!r}")
    others = [record for record in finished if record["run_id"] not in planned]
    if others:
        raise refuse(
            f"{len(others)} finished runs this command does not include, e.g. {_differences(plan, others[0])}"
        )
    return {spec.run_id: status[spec.run_id][1] for spec in plan.runs if status[spec.run_id][1]}


def prepare_folder(out_dir: Path, plan: SweepPlan, commit: str) -> None:
    """Write the manifest, create ``runs/`` and remove temporaries a killed writer left."""
    manifest = {
        "preset": plan.preset.name,
        "base": plan.base,
        "grid": plan.grid,
        "seeds": plan.seeds,
        "defaults": plan.preset.defaults,
        "runs": [spec.run_id for spec in plan.runs],
        "version": trustregion_lab.__version__,
        "git_commit": commit,
    }
    path = out_dir / MANIFEST_NAME
    with _writing(path):
        atomic_write_text(path, json.dumps(canonical(manifest), indent=2, sort_keys=True) + "\n")
    with _writing(out_dir / RUNS_DIR):
        (out_dir / RUNS_DIR).mkdir(exist_ok=True)
    remove_stale_temporaries(out_dir / RUNS_DIR)
    remove_stale_temporaries(out_dir)


def _annotate(table: pd.DataFrame, spec: RunSpec, preset_name: str) -> pd.DataFrame:
    """Add the configuration, seed, preset, run id and version columns to one run's rows (the git commit goes to
    the run's record, not the rows)."""
    table = table.reset_index(drop=True).copy()
    for key, value in spec.config.items():
        if key not in table.columns:
            table[key] = value
    if "seed" not in table.columns:
        table["seed"] = spec.seed
    table["preset"] = preset_name
    table["run_id"] = spec.run_id
    table["version"] = trustregion_lab.__version__
    return table


def store_run(runs_dir: Path, spec: RunSpec, table: pd.DataFrame, preset_name: str, commit: str) -> None:
    """Write one finished run: its record (row count, sha256, version, git commit), then its CSV."""
    table = _annotate(table, spec, preset_name)
    data = table.to_csv(index=False).encode("utf-8")
    record = {
        "run_id": spec.run_id,
        "preset": preset_name,
        "seed": spec.seed,
        "config": spec.config,
        "rows": len(table),
        "sha256": hashlib.sha256(data).hexdigest(),
        "version": trustregion_lab.__version__,
        "git_commit": commit,
    }
    record_path, csv_path = _record_path(runs_dir, spec.run_id), runs_dir / f"{spec.run_id}.csv"
    with _writing(record_path):
        atomic_write_text(record_path, json.dumps(canonical(record), indent=2, sort_keys=True) + "\n")
    with _writing(csv_path):
        atomic_write_bytes(csv_path, data)


def merge_runs(out_dir: Path, plan: SweepPlan) -> pd.DataFrame:
    """Merge the plan's run files (in plan order) into ``OUT/table.csv`` and return the table."""
    runs_dir = out_dir / RUNS_DIR
    merged = pd.concat(
        [
            pd.read_csv(runs_dir / f"{spec.run_id}.csv", keep_default_na=False, na_values=[""])
            for spec in plan.runs
        ],
        ignore_index=True,
        sort=False,
    )
    with _writing(out_dir / TABLE_NAME):
        atomic_write_csv(out_dir / TABLE_NAME, merged)
    return merged


def merge_finished(out_dir: Path, plan: SweepPlan) -> tuple[pd.DataFrame | None, int]:
    """The plan's runs finished so far (verified run files, in plan order) as one table, without writing
    ``OUT/table.csv`` (which means "finished"); (None, 0) when none has finished. Safe while the sweep runs:
    run files are written whole (temp file, then rename) and each is checked against its record."""
    runs_dir = out_dir / RUNS_DIR
    done = [spec for spec in plan.runs if verify_run(runs_dir, spec.run_id)[0] is not None]
    if not done:
        return None, 0
    frames = [
        pd.read_csv(runs_dir / f"{spec.run_id}.csv", keep_default_na=False, na_values=[""]) for spec in done
    ]
    return pd.concat(frames, ignore_index=True, sort=False), len(done)


def warn(message: str) -> None:
    """A warning line on stderr (e.g. a run file that failed verification)."""
    print(f"warning: {message}", file=sys.stderr)
