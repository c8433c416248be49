"""``python -m trustregion_lab.sweep``: the command line of the sweep runner.

Parses the arguments, plans the sweep (every configuration validated), checks the output folders, runs it and
draws the preset's figures; a preset whose figures include a stability verdict (``stability_verdict.csv``) gets
that table printed at the end. Exit codes: 0 done; 2 a bad request (unknown preset or parameter, a rejected grid
value, an output path that is a file or cannot be written, a folder of another configuration, a full disk),
with a one-line message; 1 a run raised while computing, shown with its traceback; 130 Ctrl-C, with one line
saying how many runs are kept (the same command resumes).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from trustregion_lab.experiment import Preset
from trustregion_lab.sweep import store
from trustregion_lab.sweep.backends import BACKENDS, RunError, SweepInterrupted, run_sweep
from trustregion_lab.sweep.plan import SweepConfigError, available_presets, parse_grid_args, plan_sweep

__all__ = ["main"]

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

  # while a long sweep runs in the background: the figures of the runs finished so far (runs nothing)
  python -m trustregion_lab.sweep --preset regime-map --out results/regime-map --so-far

  # redraw the figures of a finished sweep from its stored tables
  python -m trustregion_lab.plots results/default

Rerunning the same command resumes: finished runs (files under OUT/runs/) are kept, only missing runs are
computed; a command that adds values or seeds computes only the new runs. A folder holding finished runs the
command does not include (another preset or configuration) is refused; pick a new --out or delete the folder.
Ctrl-C stops the sweep and keeps the finished runs; the same command resumes.
Exit codes: 0 done, 2 a bad request or an unusable output folder, 1 a run failed (its traceback is shown),
130 interrupted (Ctrl-C).
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.sweep",
        description=(
            "Run a named preset of trustregion_lab over a grid of parameters and seeds. Each run writes one "
            "tidy CSV table (every row carries the configuration, seed and package version; the git commit is in "
            "OUT/runs/<run id>.json); "
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
        "--so-far",
        action="store_true",
        help="run nothing: draw the figures of the runs finished so far in --out (e.g. while a long sweep runs "
        "in the background) into --figures-dir, default <out>/figures-so-far; table.csv is not written",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
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
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar, summary or verdict table (errors still print)"
    )
    return parser


def _describe_presets(presets: Mapping[str, Preset]) -> str:
    lines = []
    for preset in presets.values():
        figures = preset.figures.__name__ if preset.figures is not None else "none"
        lines.append(f"{preset.name}  (seeds: {preset.seeds}; figures: {figures})")
        lines.append(f"    {preset.help}")
        grid = ", ".join(f"{key}={','.join(map(str, values))}" for key, values in preset.grid.items())
        lines.append(f"    default grid: {grid or '(none)'}")
        params = ", ".join(f"{key}={value!r}" for key, value in preset.defaults.items())
        lines.append(f"    parameters: {params}")
        lines.append("")
    return "\n".join(lines)


VERDICT_NAME = "stability_verdict.csv"


def _verdict_text(path: Path) -> str:
    """The stability verdict table at ``path`` as aligned text (empty cells blank; n/a: too small to judge)."""
    import pandas as pd

    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    rows = [list(table.columns), *table.to_numpy().tolist()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _interrupted(out_dir: Path, exc: KeyboardInterrupt) -> int:
    if isinstance(exc, SweepInterrupted):
        kept = f"{exc.kept} of {exc.total} runs are kept in {out_dir}"
    else:
        kept = f"the finished runs are kept in {out_dir}"
    print(f"interrupted: {kept}; run the same command to resume", file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (module docstring). Bad requests exit via
    ``parser.error`` (code 2)."""
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
    if args.so_far:
        if args.no_figures:
            parser.error("argument --so-far: draws figures; it cannot be combined with --no-figures")
        figures_dir = Path(args.figures_dir) if args.figures_dir else out_dir / "figures-so-far"
        return _so_far(parser, args, preset, out_dir, figures_dir)
    figures_dir = Path(args.figures_dir) if args.figures_dir else out_dir / "figures"
    try:
        return _run(parser, args, preset, out_dir, figures_dir)
    except KeyboardInterrupt as exc:
        return _interrupted(out_dir, exc)


def _so_far(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    preset: Preset,
    out_dir: Path,
    figures_dir: Path,
) -> int:
    """``--so-far``: the figures of the runs of this command's plan finished so far; nothing runs."""
    try:
        plan = plan_sweep(preset, parse_grid_args(args.grid, preset.defaults), args.seeds)
        if not out_dir.is_dir():
            raise SweepConfigError(f"--out {out_dir} does not exist: no run of this sweep has started there")
        store.check_folder(out_dir, plan)
        store.check_writable_folder(figures_dir, "--figures-dir")
    except SweepConfigError as exc:
        parser.error(str(exc))
    table, done = store.merge_finished(out_dir, plan)
    if table is None:
        parser.error(f"--so-far: none of the {len(plan.runs)} runs in {out_dir} has finished yet")
    written: list[Path] = []
    if preset.figures is not None:
        from trustregion_lab import plots

        try:
            written = plots.draw_table_figures(table, list(plan.base), figures_dir, preset.figures)
        except OSError as exc:
            parser.error(store.write_error_text(Path(exc.filename or figures_dir), exc))
        except (ValueError, TypeError) as exc:  # e.g. too few runs yet for what a figure needs
            parser.error(f"--so-far: the figures cannot be drawn from the {done} runs finished so far: {exc}")
    if not args.quiet:
        print(f"{done} of {len(plan.runs)} runs finished in {out_dir} (the figures show those only)")
        for path in written:
            print(f"figure: {path}")
    return 0


def _run(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    preset: Preset,
    out_dir: Path,
    figures_dir: Path,
) -> int:
    """Plan, run and draw (``main`` after the argument checks); KeyboardInterrupt goes up to ``main``."""
    try:
        plan = plan_sweep(preset, parse_grid_args(args.grid, preset.defaults), args.seeds)
        store.check_writable_folder(out_dir, "--out")
        store.check_writable_folder(out_dir / store.RUNS_DIR, "--out")
        if not args.no_figures:
            store.check_writable_folder(figures_dir, "--figures-dir")
        table = run_sweep(
            plan, out_dir, jobs=args.jobs, backend=args.backend, address=args.address, progress=not args.quiet
        )
    except SweepConfigError as exc:
        parser.error(str(exc))
    except RunError as exc:
        traceback.print_exception(exc)
        print(
            f"error: {exc}\nthe runs finished before it are kept in {out_dir}; rerun to resume",
            file=sys.stderr,
        )
        return 1
    written: list[Path] = []
    drawn_since = time.time()
    if not args.no_figures and preset.figures is not None:  # a preset with no figure function draws none
        from trustregion_lab import plots

        try:
            written = plots.draw_figures(out_dir, figures_dir, figures=preset.figures)
        except OSError as exc:
            parser.error(store.write_error_text(Path(exc.filename or figures_dir), exc))
    if not args.quiet:
        print(f"{len(plan.runs)} runs, {len(table)} rows -> {out_dir / store.TABLE_NAME}")
        for path in written:
            print(f"figure: {path}")
        verdict = figures_dir / VERDICT_NAME
        if not args.no_figures and verdict.is_file() and verdict.stat().st_mtime >= drawn_since - 1:
            print(f"\nstability verdict ({verdict}; n/a: the runs are too few to judge that claim):")
            print(_verdict_text(verdict))
    return 0
