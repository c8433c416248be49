"""The driver: `draw_figures` reads a finished sweep's stored table and writes its preset's figures, and
`main` is ``python -m trustregion_lab.plots RESULTS_DIR [--figures-dir DIR]``.

The preset is the one named by ``RESULTS_DIR/sweep.json`` (or by the table's ``preset`` column); its figure
function (``PRESET_FIGURES[preset]``, `trustregion_lab.plots.registry`) returns ``{file name: Figure or DataFrame}``,
written into ``RESULTS_DIR/figures`` or ``--figures-dir``: PNG figures, each with a CSV of the rows it is drawn
from. Bad results folders exit with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trustregion_lab.plots.common import Outputs, save_output
from trustregion_lab.plots.registry import PRESET_FIGURES

__all__ = ["ResultsError", "draw_figures", "draw_table_figures", "main"]


class ResultsError(ValueError):
    """A results folder the figures cannot be drawn from (bad sweep.json, unknown preset)."""


def _read_manifest(results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / "sweep.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(
            f"{path} is not valid JSON ({exc}); expected the manifest a sweep writes"
        ) from None
    if not isinstance(manifest, dict):
        raise ResultsError(
            f"{path} holds a JSON {type(manifest).__name__}, expected an object (a sweep manifest)"
        )
    return manifest


def _preset_name(manifest: dict[str, Any] | None, table: pd.DataFrame, table_path: Path) -> str:
    if manifest is not None and isinstance(manifest.get("preset"), str):
        return manifest["preset"]
    names = table["preset"].dropna().unique() if "preset" in table.columns else []
    if len(names) != 1:
        raise ResultsError(
            f"cannot tell which preset made {table_path}: no sweep.json names it and the table's 'preset' "
            f"column holds {len(names)} names"
        )
    return str(names[0])


def _run_constants(table: pd.DataFrame) -> list[str]:
    """Without a manifest: the columns constant within every run (``run_id``), i.e. the configuration; [] when
    the table names no runs."""
    if "run_id" not in table.columns or table.empty:
        return []
    counts = table.groupby("run_id", dropna=False).nunique(dropna=False).max()
    return [column for column in table.columns if column != "run_id" and counts.get(column, 2) <= 1]


def draw_figures(
    results_dir: str | os.PathLike,
    figures_dir: str | os.PathLike | None = None,
    *,
    figures: Callable[[pd.DataFrame, list[str]], Outputs] | None = None,
) -> list[Path]:
    """Draw the figures of a finished sweep; returns the paths of the PNGs written (the CSVs go beside them).

    results_dir: a sweep folder holding ``table.csv`` (and ``sweep.json``); figures_dir: where the files go
    (default ``results_dir/figures``); figures: the figure function to call (default: ``PRESET_FIGURES`` of the
    preset named by ``sweep.json`` or by the table's ``preset`` column). The configuration columns passed to it
    are the preset's parameters (``sweep.json``'s ``defaults``) present in the table; without ``sweep.json`` the
    columns constant within each run (``run_id``), none when the table has no ``run_id``.
    """
    results_dir = Path(results_dir)
    table_path = results_dir / "table.csv"
    if not table_path.is_file():
        raise FileNotFoundError(
            errno.ENOENT, "not found; results_dir must be a finished sweep folder", str(table_path)
        )
    figures_dir = Path(figures_dir) if figures_dir is not None else results_dir / "figures"
    if figures_dir.exists() and not figures_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the figures folder is a file", str(figures_dir))
    manifest = _read_manifest(results_dir)
    table = pd.read_csv(table_path, keep_default_na=False, na_values=["", "nan", "NaN"])
    stored = manifest.get("defaults") if manifest is not None else None
    parameters: list[str] = list(stored) if isinstance(stored, dict) else _run_constants(table)
    if figures is None:
        name = _preset_name(manifest, table, table_path)
        if name not in PRESET_FIGURES:
            raise ResultsError(
                f"{results_dir} holds results of preset {name!r}, which is not a preset of this code"
            )
        figures = PRESET_FIGURES[name]
    return draw_table_figures(table, parameters, figures_dir, figures)


def draw_table_figures(
    table: pd.DataFrame,
    parameters: Sequence[str],
    figures_dir: str | os.PathLike,
    figures: Callable[[pd.DataFrame, list[str]], Outputs],
) -> list[Path]:
    """Call ``figures(table, the parameters present in the table)`` and write its outputs into ``figures_dir``
    (PNGs, CSVs beside them); returns the paths of the PNGs. `draw_figures` reads the table of a finished sweep;
    the sweep's ``--so-far`` passes the runs finished so far."""
    figures_dir = Path(figures_dir)
    outputs = figures(table, [name for name in parameters if name in table.columns])
    written: list[Path] = []
    for file_name, output in outputs.items():
        if Path(file_name).name != file_name:
            raise ValueError(f"figure output {file_name!r}: expected a plain file name")
        save_output(output, figures_dir / file_name)
        if file_name.endswith(".png"):
            written.append(figures_dir / file_name)
    return written


def _os_error_text(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "the figures folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on {where}; the stored table is kept, rerun to draw the figures"
    return f"{where}: {exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustregion_lab.plots RESULTS_DIR [--figures-dir DIR]``; bad folders exit with code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.plots",
        description="Draw the figures of a finished sweep from its stored table (RESULTS_DIR/table.csv).",
        epilog="example:\n  python -m trustregion_lab.plots results/default --figures-dir figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder holding table.csv")
    parser.add_argument("--figures-dir", default=None, metavar="DIR", help="default: RESULTS_DIR/figures")
    args = parser.parse_args(argv)
    try:
        written = draw_figures(args.results_dir, args.figures_dir)
    except ResultsError as exc:
        parser.error(str(exc))
    except OSError as exc:
        parser.error(_os_error_text(exc))
    for path in written:
        print(f"figure: {path}")
    if not written:
        print("no figure: the preset draws none from this table", file=sys.stderr)
    return 0
