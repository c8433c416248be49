"""Sequence trainer: GRPO with the decoder transformer on the token-sequence task.

Each step: ``prompts_per_step`` prompts, ``group_size`` answers each, decoded token by token with the rollout
engine (batched over all B = prompts × group rows; the engine turns π's logits into μ's and samples from μ),
verifier rewards (exact match or partial credit), group-normalised advantages, then ``epochs ×
num_minibatches`` optimiser steps on ``trustregion_lab.losses.policy_loss`` with the chosen variant and
aggregation. Positions after the first EOS are padding (``response_mask`` False).

The model first gets a cached supervised warm start (``trustregion_lab.train.warm_start``); the table reports
its start reward in the columns ``start_reward_greedy`` and ``start_reward_sampled``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trustregion_lab.envs.token_sequence import TokenSequenceTask
from trustregion_lab.policies import DecoderTransformer, TransformerConfig, resolve_device
from trustregion_lab.train.base import Trainer, make_optimizer
from trustregion_lab.train.common import RolloutBatch, group_advantages
from trustregion_lab.train.config import SequenceConfig
from trustregion_lab.train.engine import make_sampler
from trustregion_lab.train.warm_start import warm_start_cached

__all__ = ["SequenceTrainer", "build_model", "train_sequence"]


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

    def __init__(self, config: SequenceConfig) -> None:
        if not isinstance(config, SequenceConfig):
            raise TypeError(f"config must be a SequenceConfig, got {type(config).__name__}")
        super().__init__(config)
        self.device = resolve_device(config.device)
        self.task = TokenSequenceTask(
            config.task,
            vocab_size=config.vocab_size,
            max_length=config.max_length,
            reward_mode=config.reward_mode,
        )
        self.policy = build_model(config, self.task, self.device)
        start = time.perf_counter()
        key = {
            "task": config.task,
            "vocab_size": config.vocab_size,
            "max_length": config.max_length,
            "reward_mode": config.reward_mode,  # the cached start-reward stats are scored with it
            "model": self.policy.config.to_dict(),
            "device": self.device.type,
        }
        self.warm_start_stats = {"start_reward_greedy": float("nan"), "start_reward_sampled": float("nan")}
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
        self.warm_start_seconds = time.perf_counter() - start
        self.rollout_policy = build_model(config, self.task, self.device)
        self.optimizer = make_optimizer(config, list(self.policy.parameters()))
        self.rng = np.random.default_rng([config.seed, 0x5E])
        self.sampler = make_sampler(config.engine, config.engine_topk, config.seed)

    @torch.no_grad()
    def collect(self) -> tuple[RolloutBatch, torch.Tensor]:
        """Decode one rollout batch; returns (batch, model inputs [B, prompt + answer − 1])."""
        cfg, task = self.config, self.task
        prompts = np.repeat(task.sample_prompts(self.rng, cfg.prompts_per_step), cfg.group_size, axis=0)
        sequence = torch.as_tensor(prompts, dtype=torch.int64, device=self.device)
        serving = self.serving_policy()
        steps = []
        for _ in range(task.answer_length):
            logits = serving(sequence)[:, -1].float()
            sample = self.sampler.sample(logits)
            steps.append(sample)
            sequence = torch.cat([sequence, sample.tokens[:, None]], dim=1)
        tokens = torch.stack([s.tokens for s in steps], dim=1)
        ended_before = torch.cumsum((tokens == task.eos_id).int(), dim=1) - (tokens == task.eos_id).int()
        response_mask = ended_before == 0
        rewards = np.asarray(task.score(prompts, tokens.cpu().numpy()), dtype=np.float32)
        advantages = group_advantages(rewards, cfg.group_size, cfg.adv_norm)
        inputs = sequence[:, :-1]
        old_logprob = old_logits = None
        if self.variant.anchor == "recompute":
            old_logits = self.policy(inputs)[:, task.prompt_length - 1 :].float()
            old_logprob = torch.log_softmax(old_logits, -1).gather(-1, tokens[..., None])[..., 0]
        batch = RolloutBatch(
            tokens=tokens,
            rollout_logprob=torch.stack([s.logprob for s in steps], dim=1),
            rollout_logits=torch.stack([s.engine_logits for s in steps], dim=1),
            topk_ids=torch.stack([s.topk_ids for s in steps], dim=1),
            topk_logprobs=torch.stack([s.topk_logprobs for s in steps], dim=1),
            response_mask=response_mask,
            rewards=torch.as_tensor(rewards, device=self.device),
            advantages=torch.as_tensor(advantages, device=self.device),
            old_logprob=old_logprob,
            old_logits=old_logits,
        )
        return batch, inputs

    def logits_for(self, context: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """π_θ's logits [b, T, V] at the answer positions of the given rows (with gradient)."""
        return self.policy(context[rows])[:, self.task.prompt_length - 1 :]

    def extra_metrics(self) -> dict[str, float]:
        return {
            "start_reward_greedy": self.warm_start_stats["start_reward_greedy"],
            "start_reward_sampled": self.warm_start_stats["start_reward_sampled"],
        }

    def should_stop(self) -> bool:
        target = self.config.target_reward
        return bool(target > 0 and self.rows and self.rows[-1]["reward"] >= target)


def train_sequence(config: SequenceConfig, checkpoint_dir: str | Path | None = None) -> pd.DataFrame:
    """Warm-start (cached) and GRPO-train the transformer with ``config``; return the tidy per-step table."""
    return SequenceTrainer(config).train(checkpoint_dir)
