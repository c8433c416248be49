"""Synthetic batches of LLM-like states: trainer logits, a rollout engine's μ, sampled tokens, a policy update.

`make_token_batch` builds one `TokenBatch` (see `trustregion_lab.analysis.tokens`):
1. The trainer's logits z_old `[S, V]` come from the environments' LLM-like model
   (`trustregion_lab.envs.logit_model.llm_like_logits`, family "mixed" by default: 80 % confident states,
   20 % high-entropy "forking" states).
2. The rollout engine's distribution μ = `RolloutEngine(ENGINE_PRESETS[engine], seed).engine_logits(z_old)`
   (`trustregion_lab.mismatch`: bf16 rounding, kernel noise, MoE routing flips) — the training–inference mismatch.
3. n tokens per state are drawn from μ (inverse CDF on float64 cumulative sums), reported with log μ(a) in
   float32 as an engine reports them, and with the Top-K id sets of each set rule.
4. Advantages Â ~ N(0, 1) per token.
5. The current policy π (float32 logits, as a trainer computes them): "mismatch" keeps π = softmax(z_old) (same weights, the engine differs); "update" applies
   one simulated policy-gradient step per state on the sampled tokens (see `simulated_update`) with a step
   size η_s drawn log-uniformly over `step_decades` decades centred on `step_size`, so the batch spans states
   barely moved to states pushed far out of any trust region.
Each of the five parts (states, engine μ, tokens, update, Top-K sets) is reported on the progress channel as
``report("batch V=<vocab_size>", part, 5)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import log_softmax

from trustregion_lab import progress
from trustregion_lab.analysis.tokens import SET_RULES, TokenBatch, sampled_tokens, simulated_update
from trustregion_lab.envs.logit_model import llm_like_logits
from trustregion_lab.mismatch import ENGINE_PRESETS, RolloutEngine, sample_categorical

__all__ = ["PERTURBATIONS", "make_token_batch", "sample_from_logits"]

PERTURBATIONS = ("mismatch", "update")


def sample_from_logits(rng: np.random.Generator, logits: np.ndarray, num_samples: int) -> np.ndarray:
    """Draw `num_samples` tokens per row of softmax(logits) `[S, V]` → int64 `[S, num_samples]`.

    Inverse CDF with u ~ U[0, 1) from ``rng`` (``trustregion_lab.mismatch.sample_categorical``: a zero-probability
    token is never drawn).
    """
    probs = np.exp(log_softmax(np.asarray(logits, np.float64), axis=-1))
    u = rng.random((probs.shape[0], num_samples))
    return sample_categorical(torch.from_numpy(probs), torch.from_numpy(u)).numpy().astype(np.int64)


def make_token_batch(
    seed: int,
    *,
    num_states: int = 512,
    vocab_size: int = 32768,
    samples_per_state: int = 8,
    family: str = "mixed",
    engine: str = "bf16",
    perturbation: str = "update",
    step_size: float = 1.0,
    step_decades: float = 2.0,
    topk_sizes: Sequence[int] = (20,),
    set_rules: Sequence[str] = SET_RULES,
) -> TokenBatch:
    """One reproducible batch of states and sampled tokens (see the module docstring). Seeded by the int `seed`."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if engine not in ENGINE_PRESETS:
        raise ValueError(f"engine must be one of {sorted(ENGINE_PRESETS)}, got {engine!r}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    if not (step_size > 0 and np.isfinite(step_size)):
        raise ValueError(f"step_size must be a finite float > 0, got {step_size!r}")
    if not (step_decades >= 0 and np.isfinite(step_decades)):
        raise ValueError(f"step_decades must be a finite float >= 0, got {step_decades!r}")
    if samples_per_state < 1:
        raise ValueError(f"samples_per_state must be an int >= 1, got {samples_per_state!r}")
    for k in topk_sizes:
        if not 1 <= k <= vocab_size:
            raise ValueError(f"topk_sizes must lie in [1, vocab_size={vocab_size}], got {k}")
    stage = f"batch V={vocab_size}"
    progress.report(stage, 0, 5)
    seeds = np.random.SeedSequence(int(seed)).spawn(3)
    rng_states, rng_tokens, rng_update = (np.random.default_rng(s) for s in seeds)
    trainer_logits = llm_like_logits(rng_states, num_states, vocab_size, family=family)
    progress.report(stage, 1, 5)
    engine_seed = int(np.random.SeedSequence(int(seed)).generate_state(1)[0] >> 1)
    rollout_logits = np.asarray(
        RolloutEngine(ENGINE_PRESETS[engine], engine_seed).engine_logits(trainer_logits)
    )
    progress.report(stage, 2, 5)
    tokens = sample_from_logits(rng_tokens, rollout_logits, samples_per_state)
    rollout_logprob = np.take_along_axis(rollout_logits, tokens, axis=-1).astype(np.float32)
    progress.report(stage, 3, 5)
    advantages = rng_update.standard_normal(tokens.shape)
    if perturbation == "update":
        half_width = 0.5 * step_decades * np.log(10.0)
        eta = step_size * np.exp(rng_update.uniform(-half_width, half_width, size=num_states))
        logits = simulated_update(trainer_logits, tokens, advantages, eta).astype(np.float32)
    else:
        logits = np.asarray(trainer_logits, np.float32)
    progress.report(stage, 4, 5)
    batch = sampled_tokens(
        rollout_logits,
        logits,
        tokens,
        advantages,
        rollout_logprob=rollout_logprob,
        topk_sizes=list(topk_sizes),
        set_rules=list(set_rules),
    )
    progress.report(stage, 5, 5)
    return batch
