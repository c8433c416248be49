"""Throughput and memory of the report card on a generated prime-rl token export.

Generates a prime-rl-format export (`trustregion_lab.report.write_prime_rl_export`, schema_version 1, prompt
tokens included, ~220 bytes of JSON per token) in a temporary folder, then runs
``python -m trustregion_lab.report EXPORT --out OUT --no-progress`` in a fresh subprocess and reports its wall
time, response tokens per second, and its peak resident memory (``resource.getrusage(RUSAGE_CHILDREN)``).
Baseline: a subprocess that only reads the same files line by line with ``json.loads`` (the least any reader of
this format pays); the report's time is also given as a ratio to it. Goal: 10 M response tokens in ≤ 3 minutes
and ≤ 2 GiB on 2 cores.

Run: `.venv/bin/python benchmarks/bench_report.py [--tokens 10_000_000] [--keep DIR]`
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Every step runs in a fresh subprocess that reports its own peak RSS (getrusage(RUSAGE_SELF), which on Linux
# includes the image it was spawned from: this parent imports nothing heavy, so that part is a few MiB).
_PEAK = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
_GENERATE = """
import sys
from trustregion_lab.report import write_prime_rl_export
steps, ranks, per_rank = map(int, sys.argv[2:5])
write_prime_rl_export(sys.argv[1], steps=steps, ranks=ranks, sequences_per_rank=per_rank, min_length=64,
                      max_length=2048, prompt_length=128, null_share=1e-4, seed=0)
"""
_BASELINE = """
import json, sys
from pathlib import Path
n = 0
for path in sorted(Path(sys.argv[1]).glob("**/rank_*.jsonl")):
    with open(path, "rb") as handle:
        for line in handle:
            n += sum(json.loads(line)["loss_mask"])
print(n)
"""
_REPORT = """
import runpy, sys
sys.argv = ["trustregion_lab.report", sys.argv[1], "--out", sys.argv[2], "--no-progress"]
try:
    runpy.run_module("trustregion_lab.report", run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
"""


def _run(code: str, *args: str) -> tuple[float, list[str], float]:
    """(wall seconds, stdout lines before the peak line, peak RSS in GiB) of `python -c code args`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code + "\n" + _PEAK, *args], check=True, capture_output=True, text=True
    )
    lines = done.stdout.strip().splitlines()
    return time.perf_counter() - start, lines[:-1], int(lines[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, default=10_000_000, help="response tokens to generate (approx.)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="write the export and report here instead of a temp folder")
    args = parser.parse_args()

    mean_length = (64 + 2048) / 2
    per_rank = max(1, round(args.tokens / (args.steps * args.ranks * mean_length)))
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        root = args.keep or Path(tmp)
        generated, _, _ = _run(_GENERATE, str(root / "run"), str(args.steps), str(args.ranks), str(per_rank))
        export = root / "run" / "token_exports"
        size = sum(p.stat().st_size for p in export.glob("**/*.jsonl"))
        base_time, out, base_rss = _run(_BASELINE, str(export))
        tokens = int(out[0])
        report_time, _, peak = _run(_REPORT, str(export), str(root / "out"))
        print(
            f"report card on a generated prime-rl export: {tokens:,} response tokens "
            f"({args.steps} steps × {args.ranks} ranks × {per_rank} sequences, {size / 2**30:.2f} GiB JSONL; "
            f"generated in {generated:.0f} s)"
        )
        print(
            f"  baseline (json.loads of every line): {base_time:7.1f} s  {tokens / base_time:12,.0f} tokens/s"
        )
        print(
            f"  python -m trustregion_lab.report:     {report_time:7.1f} s  {tokens / report_time:12,.0f} tokens/s  "
            f"({report_time / base_time:.2f}× the baseline)"
        )
        print(f"  peak RSS: report {peak:.2f} GiB, baseline {base_rss:.2f} GiB; goal ≤ 3 min and ≤ 2 GiB")


if __name__ == "__main__":
    main()
