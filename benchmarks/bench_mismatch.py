"""Cost of the rollout-engine simulator per token, relative to one `torch.log_softmax` over the same logits.

Baseline: `torch.log_softmax(logits, -1)` on float32 logits [N, V] (N = 256 rows, V = 151,936, the Qwen vocabulary),
the least any consumer of full logits pays. Measured: `RolloutEngine.sample(logits)` for the default
`EngineConfig()` (bf16 rounding, bf16 softmax, top-K = 20 plus the sampled token), for top_p = 0.95, for
temperature 0.7, and for the calibrated presets with logit noise. Interleaved (one of each per round), medians
after one warm-up round. Goal: ≤ 3× for the default config.

Run: `.venv/bin/python benchmarks/bench_mismatch.py [--rows 256] [--vocab 151936] [--rounds 9]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from trustregion_lab.envs.logit_model import llm_like_logits
from trustregion_lab.mismatch import ENGINE_PRESETS, EngineConfig, RolloutEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    logits = torch.from_numpy(
        llm_like_logits(np.random.default_rng(0), args.rows, args.vocab, family="mixed")
    )
    configs = {
        "default (bf16, top-K 20 + sampled)": EngineConfig(),
        "top_p = 0.95": EngineConfig(top_p=0.95),
        "temperature = 0.7": EngineConfig(temperature=0.7),
        "preset bf16 (logit noise)": ENGINE_PRESETS["bf16"],
        "preset moe (noise + routing)": ENGINE_PRESETS["moe"],
    }
    runs = {"torch.log_softmax (baseline)": lambda: torch.log_softmax(logits, dim=-1)}
    for name, config in configs.items():
        engine = RolloutEngine(config, seed=0)
        runs[name] = lambda engine=engine: engine.sample(logits)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds + 1):  # round 0 is the warm-up
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_index > 0:
                times[name].append(elapsed)

    baseline = statistics.median(times["torch.log_softmax (baseline)"])
    tokens = args.rows
    print(
        f"mismatch simulator cost, N = {args.rows} rows, V = {args.vocab:,}, float32, "
        f"{torch.get_num_threads()} torch threads, medians of {args.rounds} interleaved rounds"
    )
    print(f"{'run':38s} {'median ms':>10s} {'µs/token':>10s} {'× log_softmax':>14s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:38s} {median * 1e3:10.1f} {median / tokens * 1e6:10.1f} {median / baseline:14.2f}")
    ratio = statistics.median(times["default (bf16, top-K 20 + sampled)"]) / baseline
    print(f"default config: {ratio:.2f}× one log_softmax (goal ≤ 3×): {'met' if ratio <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
