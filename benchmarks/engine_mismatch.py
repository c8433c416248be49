"""Warm-start mismatch of the model engines: mean |π(a) − μ(a)| over sampled answer tokens, before any update.

The stability preset's setting (``trustregion_lab.train.stability.STABILITY_SETTINGS``: sort, scratchpad 8, the
warm start and the prompt pool), seed 0; each engine decodes ``--batches`` rollout batches of 16 prompts × 8
answers from the warm-started weights and the trainer's fp32 forward gives π at the same weights. Prints, per
engine, the token count, mean |π − μ|, min / max (π − μ) and the share of tokens with |π − μ| > 0.15.

    python benchmarks/engine_mismatch.py                      # bf16, fp8, int4, fp8-e5m2, fp32; 4 batches
    python benchmarks/engine_mismatch.py --engines model-fp8 --batches 2

The first run builds the warm start and the pool (about 7 minutes on 2 CPU cores; cached in ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from trustregion_lab.train.config import SequenceConfig
from trustregion_lab.train.engine import MODEL_ENGINES
from trustregion_lab.train.sequence import SequenceTrainer
from trustregion_lab.train.stability import STABILITY_SETTINGS

DEFAULT_ENGINES = "model-bf16,model-fp8,model-int4,model-fp8-e5m2,model-fp32"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help="comma-separated model engines")
    parser.add_argument("--batches", type=int, default=4, help="rollout batches per engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="", help="warm-start cache ('' = the default cache)")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in MODEL_ENGINES]
    if unknown or args.batches < 1:
        print(f"error: engines must be among {sorted(MODEL_ENGINES)} and --batches >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    for engine in engines:
        start = time.perf_counter()
        settings = {**STABILITY_SETTINGS, "engine": engine, "seed": args.seed, "cache_dir": args.cache_dir}
        trainer = SequenceTrainer(SequenceConfig(**settings))
        gaps = []
        for b in range(args.batches):
            trainer.sampler.begin_step(b)
            batch = trainer.collect()
            trainer.prepare(batch)
            gap = batch.old_logprob.double().exp() - batch.rollout_logprob.double().exp()
            gaps.append(gap[batch.response_mask])
        d = torch.cat(gaps)
        print(
            f"{engine:16s} tokens {d.numel():6d}  mean |π − μ| {float(d.abs().mean()):.5f}  "
            f"min {float(d.min()):+.3f}  max {float(d.max()):+.3f}  "
            f"share |π − μ| > 0.15 {float((d.abs() > 0.15).double().mean()):.3%}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
