"""Benchmark: the sequence trainer's sampling and training throughput at 24-token answers.

Same run, same warm-started model, same engine and batch, interleaved rounds, medians:
- baseline: the full-forward decode (every step recomputes ``model(sequence)[:, -1]`` over the whole growing
  sequence, then the engine samples from those logits), the trainer's decode before KV caching;
- KV cache: ``SequenceTrainer.collect()`` (the engine's own incremental decode, one position per step);
- training: ``prepare`` + ``update`` (π_old forward and epochs × mini-batches of the surrogate), on the same
  batch from the same weights, optimiser state and generator state, by two paths in alternation:
  old = the LM head on every position of the sequence (then sliced to the answer) and the step's equal-weight
  entropy from a float64 log-softmax; new = the head on the answer positions only
  (``DecoderTransformer.forward(tokens, start=...)``) and the entropy per state in float32.
Throughput is answer tokens per second (valid response tokens; training counts each token once per epoch).

    python benchmarks/bench_train.py                       # reverse, L = 23 (24-token answers), fp32 engine
    python benchmarks/bench_train.py --engine model-bf16   # the bf16 model engine
    python benchmarks/bench_train.py --stability           # the stability preset's step (sort, its warm start)
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from trustregion_lab import divergence
from trustregion_lab.train import SequenceConfig, SequenceTrainer
from trustregion_lab.train import step as step_lib
from trustregion_lab.train.batch import RolloutBatch
from trustregion_lab.train.stability import STABILITY_SETTINGS


@torch.no_grad()
def old_start_metrics(batch: RolloutBatch) -> dict[str, float]:
    """``step.start_metrics`` before the speed-up: the entropy from a float64 log-softmax of every state."""
    mask = batch.response_mask
    if batch.old_logits is None or batch.old_logprob is None or not bool(mask.any()):
        return dict.fromkeys(step_lib.START_METRICS, math.nan)
    lp, lmu = batch.old_logprob.double()[mask], batch.rollout_logprob.double()[mask]
    diff = lp.exp() - lmu.exp()
    log_r = lp - lmu
    w = torch.exp(log_r - log_r.max())
    tv, kl = divergence.exact_tv_kl(batch.rollout_logits[mask], batch.old_logits[mask])
    logp = torch.log_softmax(batch.old_logits[mask].double(), -1)
    return {
        "mismatch_mean": float(diff.abs().mean()),
        "mismatch_max": float(diff.max()),
        "mismatch_min": float(diff.min()),
        "mismatch_k3_start": float((torch.expm1(log_r) - log_r).clamp(min=0).mean()),
        "ess_start": float(w.sum() ** 2 / (w.numel() * (w**2).sum())),
        "tv_exact_start": float(tv.double().mean()),
        "kl_exact_start": float(kl.double().mean()),
        "entropy": float(-(logp.exp() * logp).sum(-1).mean()),
    }


def train_once(trainer: SequenceTrainer, batch: RolloutBatch, old: bool) -> tuple[float, dict[str, float]]:
    """prepare + update by one path; returns (seconds, the step's metrics)."""
    new_metrics: Callable[[RolloutBatch], dict[str, float]] = step_lib.start_metrics
    if old:
        start = trainer.task.prompt_length - 1
        trainer.policy_logits = lambda inputs: trainer.policy(inputs)[:, start:]  # type: ignore[method-assign]
        step_lib.start_metrics = old_start_metrics
    try:
        begin = time.perf_counter()
        metrics = trainer.prepare(batch)
        metrics.update(trainer.update(batch))
        return time.perf_counter() - begin, metrics
    finally:
        step_lib.start_metrics = new_metrics
        trainer.__dict__.pop("policy_logits", None)


@torch.no_grad()
def full_forward_collect(trainer: SequenceTrainer) -> int:
    """The baseline decode: the whole sequence through the model at every step; returns answer tokens drawn."""
    task, cfg = trainer.task, trainer.config
    prompts = np.repeat(task.sample_prompts(trainer.rng, cfg.prompts_per_step), cfg.group_size, axis=0)
    sequence = torch.as_tensor(prompts, dtype=torch.int64, device=trainer.device)
    ended = torch.zeros(sequence.shape[0], dtype=torch.bool, device=trainer.device)
    tokens = 0
    for _ in range(task.answer_length):
        sample = trainer.sampler.sample(trainer.served(sequence)[:, -1].float())
        tokens += int((~ended).sum())
        ended |= sample.tokens == task.eos_id
        sequence = torch.cat([sequence, sample.tokens[:, None]], dim=1)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-length", type=int, default=23, help="prompt symbols; answers are max_length + 1"
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch")
    parser.add_argument("--group", type=int, default=16, help="samples per prompt")
    parser.add_argument("--engine", default="model-fp32")
    parser.add_argument("--variant", default="dppo_binary_tv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--stability",
        action="store_true",
        help="the stability preset's setting (--engine applies; cached warm start)",
    )
    parser.add_argument(
        "--cache-dir", default="", help="warm-start cache with --stability ('' = the default)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        if args.stability:
            settings = {**STABILITY_SETTINGS, "engine": args.engine, "variant": args.variant}
            config = SequenceConfig(**settings, threads=args.threads, cache_dir=args.cache_dir)
        else:
            config = SequenceConfig(
                task="reverse",
                max_length=args.max_length,
                prompts_per_step=args.prompts,
                group_size=args.group,
                engine=args.engine,
                variant=args.variant,
                warm_start_steps=100,
                threads=args.threads,
                cache_dir=cache,
            )
        trainer = SequenceTrainer(config)
    trainer.served.load_state_dict(trainer.policy.state_dict())
    baseline, cached, training = [], [], []
    old_s, new_s, worst, worst_name = [], [], 0.0, ""
    for step in range(args.rounds):
        trainer.sampler.begin_step(step)
        start = time.perf_counter()
        tokens = full_forward_collect(trainer)
        baseline.append(tokens / (time.perf_counter() - start))
        trainer.sampler.begin_step(step)
        start = time.perf_counter()
        batch = trainer.collect()
        cached.append(batch.num_tokens / (time.perf_counter() - start))
        state = copy.deepcopy((trainer.policy.state_dict(), trainer.optimizer.state_dict()))
        rng_state = copy.deepcopy(trainer.rng.bit_generator.state)
        results = {}
        for old in (step % 2 == 0, step % 2 == 1):  # alternate which path goes first
            trainer.policy.load_state_dict(state[0])
            trainer.optimizer.load_state_dict(copy.deepcopy(state[1]))
            trainer.rng.bit_generator.state = copy.deepcopy(rng_state)
            results[old] = train_once(trainer, copy.copy(batch), old)
        old_s.append(results[True][0])
        new_s.append(results[False][0])
        training.append(batch.num_tokens * config.epochs / results[False][0])
        for name, value in results[True][1].items():
            other = results[False][1][name]
            if math.isfinite(value) and math.isfinite(other):
                relative = abs(value - other) / max(abs(value), 1e-12)
                if relative > worst:
                    worst, worst_name = relative, name
    base, kv, train = (statistics.median(v) for v in (baseline, cached, training))
    print(
        f"{config.task}, {trainer.task.answer_length}-token answers, V={config.vocab_size}, "
        f"params={trainer.policy.num_parameters():,}, batch={config.prompts_per_step}x{config.group_size}, "
        f"engine={args.engine}, "
        f"threads={torch.get_num_threads()}, medians of {args.rounds} interleaved rounds"
    )
    print(f"sampling, full-forward decode (baseline): {base:10,.0f} answer tokens/s")
    print(
        f"sampling, KV-cache decode:                {kv:10,.0f} answer tokens/s   ({kv / base:.1f}x the baseline)"
    )
    print(f"training (π_old + {config.num_minibatches} mini-batches):   {train:10,.0f} answer tokens/s")
    old_med, new_med = statistics.median(old_s), statistics.median(new_s)
    print(
        f"training step, old path: {old_med * 1e3:8.1f} ms   new path: {new_med * 1e3:8.1f} ms   "
        f"({old_med / new_med:.2f}x); largest relative difference of the step's metrics {worst:.1e} ({worst_name})"
    )


if __name__ == "__main__":
    main()
