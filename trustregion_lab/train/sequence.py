"""Sequence trainer: GRPO with the decoder transformer on the token-sequence task.

Each step: ``prompts_per_step`` prompts, ``group_size`` answers each, decoded by the rollout engine with a KV
cache (the engine's ``prefill`` / ``decode_step``, a ``KVCacheDecoder`` in its ``decode_precision``; batched over
all B = prompts × group rows): the
model engines decode in their own precision and μ is the softmax of their logits; ``"none"`` and the logit
simulators decode in fp32 and the simulators perturb each step's logits. Then verifier rewards, group
advantages, and ``epochs × num_minibatches`` optimiser steps on the trainer's fp32 full forward. Positions
after the first EOS are padding (``response_mask`` False); decoding stops once every row has ended.

The model first gets a cached supervised warm start (``trustregion_lab.train.warm_start``); the table reports
its start reward (``start_reward_greedy``, ``start_reward_sampled``) and, every ``eval_every`` steps, an fp32
evaluation on held-out prompts (``eval_reward_greedy``, ``eval_reward_sampled``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from trustregion_lab.envs.token_sequence import TokenSequenceTask
from trustregion_lab.policies import DecoderTransformer, TransformerConfig
from trustregion_lab.train.base import Trainer, make_optimizer
from trustregion_lab.train.batch import RolloutBatch, group_advantages
from trustregion_lab.train.config import SequenceConfig
from trustregion_lab.train.engine import make_engine
from trustregion_lab.train.prompts import prompt_pool_cached
from trustregion_lab.train.warm_start import evaluate_answers, warm_start_cached

__all__ = ["SequenceTrainer", "build_model"]

_EVAL_SEED = 0xE7A1


def build_model(config: SequenceConfig, task: TokenSequenceTask, device: torch.device) -> DecoderTransformer:
    """A freshly initialised transformer for ``task`` (initialisation seeded by ``config.seed``)."""
    model_config = TransformerConfig(
        vocab_size=task.vocab_size,
        max_seq_len=task.prompt_length + task.answer_length,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DecoderTransformer(model_config)
    return model.to(device)


class SequenceTrainer(Trainer):
    """GRPO on the token-sequence task; ``train()`` returns the tidy table (one row per step)."""

    eval_columns = ("eval_reward_greedy", "eval_reward_sampled")

    def __init__(self, config: SequenceConfig, *, export_dir: str | Path | None = None) -> None:
        if not isinstance(config, SequenceConfig):
            raise TypeError(f"config must be a SequenceConfig, got {type(config).__name__}")
        super().__init__(config, export_dir=export_dir)
        self.task = TokenSequenceTask(
            config.task,
            vocab_size=config.vocab_size,
            max_length=config.max_length,
            min_length=config.min_length,
            num_symbols=config.num_symbols,
            reward_mode=config.reward_mode,
            scratch_length=config.scratch_length,
            scratch_zipf=config.scratch_zipf,
        )
        self.policy = build_model(config, self.task, self.device)
        start = time.perf_counter()
        self.warm_start_stats = {"start_reward_greedy": float("nan"), "start_reward_sampled": float("nan")}
        key = {
            "task": repr(self.task),
            "reward_mode": config.reward_mode,  # the cached start-reward stats are scored with it
            "model": self.policy.config.to_dict(),
            "device": self.device.type,
        }
        if config.warm_start_steps > 0:
            self.warm_start_stats = warm_start_cached(
                self.policy,
                self.task,
                key=key,
                steps=config.warm_start_steps,
                lr=config.warm_start_lr,
                batch_size=config.warm_start_batch,
                noise=config.warm_start_noise,
                seed=config.seed,
                cache_dir=config.cache_dir,
            )
        self.pool = None
        if config.prompt_pool:
            pool_key = {
                **key,
                "warm_start": [config.warm_start_steps, config.warm_start_lr, config.warm_start_batch],
            }
            pool_key["warm_start"] += [config.warm_start_noise, config.seed]
            self.pool = prompt_pool_cached(
                self.policy,
                self.task,
                key=pool_key,
                cache_dir=config.cache_dir,
                size=config.prompt_pool,
                eval_size=config.eval_prompts,
                candidates=config.pool_candidates,
                samples=config.pool_samples,
                low=config.pool_min_success,
                high=config.pool_max_success,
                seed=config.seed,
            )
        self.warm_start_seconds = time.perf_counter() - start
        self.served = build_model(config, self.task, self.device)
        self.optimizer = make_optimizer(config, list(self.policy.parameters()))
        self.rng = np.random.default_rng([config.seed, 0x5E])
        if self.pool is None:
            self.eval_prompts = self.task.sample_prompts(
                np.random.default_rng([config.seed, _EVAL_SEED]), config.eval_prompts
            )
        else:  # held-out prompts of the pool's band, never trained on
            self.eval_prompts = self.pool.eval_prompts
        self.engine = make_engine(
            config.engine, config.engine_topk, config.topk_rule, config.seed, trainer="sequence"
        )

    @torch.no_grad()
    def collect(self) -> RolloutBatch:
        """Decode one rollout batch with the engine at the served weights (module docstring)."""
        cfg, task = self.config, self.task
        self.served.load_state_dict(self.sync_engine())
        self.engine.sync(self.served)
        if self.pool is None:
            chosen = task.sample_prompts(self.rng, cfg.prompts_per_step)
        else:
            chosen = self.pool.prompts[
                self.rng.choice(len(self.pool.prompts), cfg.prompts_per_step, replace=False)
            ]
        prompts = np.repeat(chosen, cfg.group_size, axis=0)
        prompt_ids = torch.as_tensor(prompts, dtype=torch.int64, device=self.device)
        logits = self.engine.prefill(prompt_ids)
        samples, ended = [], torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=self.device)
        for t in range(task.answer_length):
            sample = self.engine.sample(logits)
            samples.append(sample)
            ended |= sample.tokens == task.eos_id
            if bool(ended.all()) or t == task.answer_length - 1:
                break
            logits = self.engine.decode_step(sample.tokens)
        tokens = torch.stack([s.tokens for s in samples], dim=1)
        is_eos = (tokens == task.eos_id).int()
        response_mask = (torch.cumsum(is_eos, dim=1) - is_eos) == 0
        answers = np.full((tokens.shape[0], task.answer_length), task.pad_id, dtype=np.int64)
        answers[:, : tokens.shape[1]] = tokens.cpu().numpy()
        rewards = np.asarray(task.score(prompts, answers), dtype=np.float32)
        return RolloutBatch(
            tokens=tokens,
            rollout_logprob=torch.stack([s.logprob for s in samples], dim=1),
            rollout_logits=torch.stack([s.engine_logits for s in samples], dim=1),
            topk_ids=torch.stack([s.topk_ids for s in samples], dim=1),
            topk_logprobs=torch.stack([s.topk_logprobs for s in samples], dim=1),
            response_mask=response_mask,
            rewards=torch.as_tensor(rewards, device=self.device),
            advantages=torch.as_tensor(
                group_advantages(rewards, cfg.group_size, cfg.adv_norm), device=self.device
            ),
            inputs=torch.cat([prompt_ids, tokens[:, :-1]], dim=1),
        )

    def policy_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """π_θ's logits [b, T, V] at the answer positions of ``inputs`` [b, P + T − 1] (prompt and answer tokens,
        ``RolloutBatch.inputs``): the fp32 full forward, with gradient."""
        return self.policy(inputs, start=self.task.prompt_length - 1)

    @torch.no_grad()
    def served_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.served(inputs, start=self.task.prompt_length - 1)

    def eval_due(self) -> bool:
        every = self.config.eval_every
        return bool(every) and (self.step % every == 0 or self.step == 1)

    def evaluate(self) -> dict[str, float]:
        """fp32 evaluation of the current weights on the held-out prompts: greedy and sampled (temperature 1)."""
        out = {
            name: evaluate_answers(self.policy, self.task, self.eval_prompts, greedy=greedy, seed=self.step)
            for name, greedy in (("eval_reward_greedy", True), ("eval_reward_sampled", False))
        }
        return out

    def row_extras(self) -> dict[str, float]:
        return {k: self.warm_start_stats[k] for k in ("start_reward_greedy", "start_reward_sampled")}

    def should_stop(self) -> bool:
        target = self.config.target_reward
        return bool(target > 0 and self.rows and self.rows[-1]["reward"] >= target)
