"""``python -m trustregion_lab.report PATH [--format ...] [--out DIR]``: the report card of a per-token export."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trustregion_lab.report.pipeline import analyse, check_out_folder, write_report
from trustregion_lab.report.schema import ReportInputError
from trustregion_lab.report.sources import FORMATS, open_source

__all__ = ["default_out", "main", "run_report"]

DESCRIPTION = """\
The trust-region report card of a run's per-token log-probs.

PATH is a token export: prime-rl's trainer export (a folder holding token_exports/step_<n>/rank_<r>.jsonl, or one
such file), or the per-token table (one .parquet / .jsonl / .csv file, or a folder of them, e.g. the folder a
trainer of this project writes with --export-tokens). The table's columns: step, sequence, position, token_id,
rollout_logprob (log mu(a), the engine's), logprob (log pi(a), the trainer's), advantage, response_mask; optional
old_logprob, entropy, reward, group, env, tv_exact, kl_exact, topk_ids, rollout_topk_logprobs, topk_logprobs.

Writes into --out: summary.csv (mask rates of PPO and DPPO masks on these tokens), by_mu.csv (PPO vs Binary TV
by mu(a) bucket and advantage sign, matched delta), matched_delta.csv (the delta whose mask rate matches PPO's
epsilon), by_step.csv (mismatch metrics per step, with the framework's own metric name), by_position.csv,
sequence_is.csv (token / sequence importance weights and what a cap of 2, 3, 5 touches), PNG figures and
report.md. The export is streamed (a progress bar on a terminal): memory does not grow with its size.

Null or non-finite log-probs and advantages are counted (skipped_nonfinite, report.md) and left out. Bad input
(a missing field, per-token arrays of unequal length, log-probs above 0, a repeated (step, sequence, position),
a step or position that is not a whole number >= 0, a response_mask other than true/false or 0/1, text in a
numeric column, an empty or damaged file, an unreadable file or folder, tables of several formats in one folder,
several prime-rl runs in one folder, no export at PATH) ends with a one-line error naming the file, line or row
and field, exit status 2, and --out left as it was. --out may not lie inside PATH and must be new, empty or an
earlier report's folder; it is checked before the export is read, and replaced whole once the report is
complete (a failed or killed report leaves the earlier one intact).
"""


def default_out(path: Path) -> Path:
    """``<PATH>_report`` next to the export (never inside it, so a later run does not read the report)."""
    path = path.resolve()
    return path.with_name(f"{path.stem if path.is_file() else path.name}_report")


def run_report(
    path: str | Path, *, fmt: str = "auto", out: str | Path | None = None, progress: bool | None = None
) -> list[Path]:
    """Analyse the export at `path` and write the report into `out` (default `default_out`) → written paths."""
    target = check_out_folder(Path(out) if out is not None else default_out(Path(path)), path)
    source = open_source(path, fmt)
    tables = analyse(source, progress=progress)
    return write_report(tables, target)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="export file or folder")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format (default auto: prime-rl when step_<n>/rank_<r>.jsonl files exist, else by file suffix)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <PATH>_report next to PATH)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        written = run_report(
            args.path, fmt=args.format, out=args.out, progress=False if args.no_progress else None
        )
    except (ReportInputError, OSError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    folder = written[-1].parent
    print(f"wrote {len(written)} files to {folder} in {time.perf_counter() - start:.1f} s (see report.md)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
