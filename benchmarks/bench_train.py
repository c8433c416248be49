"""Benchmark: the sequence trainer's sampling and training throughput at 24-token answers.

Same run, same warm-started model, same engine and batch, interleaved rounds, medians:
- baseline: the full-forward decode (every step recomputes ``model(sequence)[:, -1]`` over the whole growing
  sequence, then the engine samples from those logits), the trainer's decode before KV caching;
- KV cache: ``SequenceTrainer.collect()`` (the engine's own incremental decode, one position per step);
- training: ``prepare`` + ``update`` (π_old forward and epochs × mini-batches of the surrogate).
Throughput is answer tokens per second (valid response tokens; training counts each token once per epoch).

    python benchmarks/bench_train.py                       # reverse, L = 23 (24-token answers), fp32 engine
    python benchmarks/bench_train.py --engine model-bf16   # the bf16 model engine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from trustregion_lab.train import SequenceConfig, SequenceTrainer


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
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
    for step in range(args.rounds):
        trainer.sampler.begin_step(step)
        start = time.perf_counter()
        tokens = full_forward_collect(trainer)
        baseline.append(tokens / (time.perf_counter() - start))
        trainer.sampler.begin_step(step)
        start = time.perf_counter()
        batch = trainer.collect()
        cached.append(batch.num_tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        trainer.prepare(batch)
        trainer.update(batch)
        training.append(batch.num_tokens * config.epochs / (time.perf_counter() - start))
    base, kv, train = (statistics.median(v) for v in (baseline, cached, training))
    print(
        f"reverse, {trainer.task.answer_length}-token answers, V={config.vocab_size}, "
        f"params={trainer.policy.num_parameters():,}, batch={args.prompts}x{args.group}, engine={args.engine}, "
        f"threads={torch.get_num_threads()}, medians of {args.rounds} interleaved rounds"
    )
    print(f"sampling, full-forward decode (baseline): {base:10,.0f} answer tokens/s")
    print(
        f"sampling, KV-cache decode:                {kv:10,.0f} answer tokens/s   ({kv / base:.1f}x the baseline)"
    )
    print(f"training (π_old + {config.num_minibatches} mini-batches):   {train:10,.0f} answer tokens/s")


if __name__ == "__main__":
    main()
