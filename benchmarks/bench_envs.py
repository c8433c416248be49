"""Vector bandit throughput: ``LargeVocabBanditVectorEnv`` against ``SyncVectorEnv`` over single envs.

Baseline: ``gymnasium.make_vec(..., vectorization_mode="sync", vector_kwargs={"autoreset_mode": SAME_STEP})``, i.e.
``SyncVectorEnv`` over ``gymnasium.make`` copies of the single env, with the same autoreset mode. Both run
1,024 copies at V = 151,936, seeded alike, on precomputed action arrays (sampling actions is not part of a step),
interleaved in one run; the script prints median env steps/s after a warm-up round and their ratio
(goal: ≥ 40× and ≥ 1 M steps/s on 2 cores).

Run: ``python benchmarks/bench_envs.py [--num-envs 1024] [--vocab-size 151936] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import trustregion_lab  # noqa: F401  (registers the environments)

ENV_ID = "trustregion_lab/LargeVocabBandit-v0"


def steps_per_second(env: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    """Env steps per second over the action batches ``actions`` ``[num_steps, num_envs]``."""
    start = time.perf_counter()
    for batch in actions:
        env.step(batch)
    elapsed = time.perf_counter() - start
    return actions.shape[0] * actions.shape[1] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=151_936)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round")
    parser.add_argument("--vector-steps", type=int, default=400, help="vector steps per round")
    parser.add_argument("--sync-steps", type=int, default=8, help="SyncVectorEnv steps per round")
    args = parser.parse_args()

    kwargs = {"vocab_size": args.vocab_size, "reward_noise": 0.1}
    vector_env = gym.make_vec(
        ENV_ID, num_envs=args.num_envs, vectorization_mode="vector_entry_point", **kwargs
    )
    sync_env = gym.make_vec(
        ENV_ID,
        num_envs=args.num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )
    vector_env.reset(seed=0)
    sync_env.reset(seed=0)
    rng = np.random.default_rng(0)
    vector_actions = rng.integers(0, args.vocab_size, size=(args.vector_steps, args.num_envs))
    sync_actions = vector_actions[: args.sync_steps]

    vector_rates, sync_rates = [], []
    for round_index in range(args.rounds + 1):
        vector_rate = steps_per_second(vector_env, vector_actions)
        sync_rate = steps_per_second(sync_env, sync_actions)
        if round_index > 0:  # round 0 is the warm-up
            vector_rates.append(vector_rate)
            sync_rates.append(sync_rate)
    vector_median = float(np.median(vector_rates))
    sync_median = float(np.median(sync_rates))
    print(
        f"LargeVocabBandit-v0, {args.num_envs} envs, V = {args.vocab_size:,}, {args.rounds} rounds (medians)"
    )
    print(f"  vector env (vector_entry_point):    {vector_median:14,.0f} env steps/s")
    print(f"  SyncVectorEnv over single envs:     {sync_median:14,.0f} env steps/s")
    print(
        f"  ratio vector / sync:                {vector_median / sync_median:14.1f}x  (goal >= 40x, >= 1M steps/s)"
    )


if __name__ == "__main__":
    main()
