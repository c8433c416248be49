"""Benchmark: GRPO with the transformer on ``reverse`` (short sequences) until the mean reward reaches 0.9.

Prints the warm-start time (fresh, not cached), the RL time-to-target, and the median sampling and training
throughput in answer tokens per second (valid response tokens; sampling = decoding with the rollout engine,
training = the mini-batch passes, counted once per epoch). Baseline, measured in the same run: the supervised
warm start's teacher-forced training throughput (same model, forward + backward), so the ratio says what the
RL loop's decoding and masked-loss machinery cost against plain training.

    python benchmarks/bench_train.py                 # CPU (goal: reward >= 0.9 within 10 minutes)
    python benchmarks/bench_train.py --device cuda   # the same command on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from trustregion_lab.train import SequenceConfig, SequenceTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--max-length", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per rollout batch")
    parser.add_argument("--group", type=int, default=16, help="samples per prompt")
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--method", default="ppo")
    parser.add_argument("--engine", default="bf16")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default; 1 is faster on a busy CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        config = SequenceConfig(
            task=args.task,
            max_length=args.max_length,
            vocab_size=args.vocab_size,
            prompts_per_step=args.prompts,
            group_size=args.group,
            num_minibatches=args.minibatches,
            method=args.method,
            engine=args.engine,
            steps=args.max_steps,
            target_reward=args.target,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            cache_dir=cache,
        )
        wall = time.perf_counter()
        trainer = SequenceTrainer(config)
        warm_seconds = trainer.warm_start_seconds
        rl_start = time.perf_counter()
        table = trainer.train()
        rl_seconds = time.perf_counter() - rl_start
        total = time.perf_counter() - wall

    tokens_per_warm_step = config.warm_start_batch * trainer.task.answer_length  # upper bound incl. padding
    warm_tokens_per_s = config.warm_start_steps * tokens_per_warm_step / warm_seconds
    reached = table["reward"].ge(args.target)
    sample_tps = float(np.median(table["sample_tokens_per_s"]))
    train_tps = float(np.median(table["train_tokens_per_s"]))
    print(
        f"device={trainer.device} threads={torch.get_num_threads()} task={args.task} L<={args.max_length} "
        f"V={args.vocab_size} params={trainer.policy.num_parameters():,} batch={args.prompts}x{args.group} "
        f"minibatches={args.minibatches} method={args.method} engine={args.engine}"
    )
    print(
        f"warm start: {config.warm_start_steps} steps in {warm_seconds:.1f} s; start reward greedy "
        f"{trainer.warm_start_stats['start_reward_greedy']:.3f}, sampled (T = 1) "
        f"{trainer.warm_start_stats['start_reward_sampled']:.3f}"
    )
    if reached.any():
        step = int(table.loc[reached.idxmax(), "step"])
        print(
            f"time-to-{args.target}: {rl_seconds:.1f} s of RL ({step} steps), {total:.1f} s including the warm start"
        )
    else:
        print(
            f"target {args.target} NOT reached in {len(table)} steps ({rl_seconds:.1f} s); "
            f"last reward {table['reward'].iloc[-1]:.3f}"
        )
    print(f"sampling tokens/s (median over steps): {sample_tps:,.0f}")
    print(f"training tokens/s (median over steps): {train_tps:,.0f}")
    print(
        f"baseline, teacher-forced warm-start training tokens/s: {warm_tokens_per_s:,.0f}; "
        f"ratios sampling/baseline {sample_tps / warm_tokens_per_s:.2f}, training/baseline "
        f"{train_tps / warm_tokens_per_s:.2f}"
    )


if __name__ == "__main__":
    main()
