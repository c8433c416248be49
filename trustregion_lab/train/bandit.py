"""Bandit trainer: GRPO-style groups on ``trustregion_lab/LargeVocabBandit-v0`` with a tabular softmax policy.

Each step: pick ``contexts_per_step`` contexts, sample ``group_size`` tokens per context from the rollout engine
(μ = engine(π's logits), so μ ≠ π even at equal weights unless ``engine="none"``), score them with the bandit's
verifiable reward, group-normalise the advantages, then ``epochs × num_minibatches`` optimiser steps on
``trustregion_lab.losses.policy_loss``. With one pass (one mini-batch, one epoch) and ``engine="none"`` every
ratio π/μ is exactly 1 and no mask fires: the trust region only binds once the batch is reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trustregion_lab.envs.bandit_problem import make_bandit_problem
from trustregion_lab.policies import TabularSoftmaxPolicy, resolve_device
from trustregion_lab.train.base import Trainer, make_optimizer
from trustregion_lab.train.common import RolloutBatch, group_advantages
from trustregion_lab.train.config import BanditConfig
from trustregion_lab.train.engine import make_sampler

__all__ = ["BanditTrainer", "train_bandit"]


class BanditTrainer(Trainer):
    """GRPO on the large-vocabulary bandit. ``train()`` returns the tidy table (one row per step).

    Extra column ``reward_expected``: mean over all contexts of Σ_a π(a|s) R(s, a), exact (no sampling); with
    the verifiable reward it is π's mean mass on the correct tokens.
    """

    def __init__(self, config: BanditConfig) -> None:
        if not isinstance(config, BanditConfig):
            raise TypeError(f"config must be a BanditConfig, got {type(config).__name__}")
        super().__init__(config)
        self.device = resolve_device(config.device)
        self.problem = make_bandit_problem(
            vocab_size=config.vocab_size,
            num_contexts=config.num_contexts,
            num_correct=config.num_correct,
            correct_rank_range=(2, min(config.correct_rank_max, config.vocab_size)),
            logit_family=config.family,
            problem_seed=config.env_seed,
        )
        initial_logits = np.asarray(self.problem.initial_logits, dtype=np.float32)
        self.policy = TabularSoftmaxPolicy(initial_logits).to(self.device)
        self.rollout_policy = TabularSoftmaxPolicy(initial_logits).to(self.device)
        self.optimizer = make_optimizer(config, list(self.policy.parameters()))
        self.rng = np.random.default_rng([config.seed, 0xB4])
        self.sampler = make_sampler(config.engine, config.engine_topk, config.seed)

    @torch.no_grad()
    def collect(self) -> tuple[RolloutBatch, torch.Tensor]:
        """Sample one rollout batch (T = 1); returns (batch, contexts [B])."""
        cfg = self.config
        size = min(cfg.contexts_per_step, cfg.num_contexts)
        chosen = self.rng.choice(cfg.num_contexts, size=size, replace=False)
        contexts = torch.as_tensor(np.repeat(chosen, cfg.group_size), dtype=torch.int64, device=self.device)
        sample = self.sampler.sample(self.serving_policy()(contexts))
        rewards_np = self.problem.clean_reward(contexts.cpu().numpy(), sample.tokens.cpu().numpy())
        rewards = torch.as_tensor(rewards_np, dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards_np, cfg.group_size, cfg.adv_norm)
        old_logprob = old_logits = None
        if self.variant.anchor == "recompute":
            old_logits = self.policy(contexts).detach()[:, None, :]
            old_logprob = torch.log_softmax(old_logits, -1).gather(-1, sample.tokens[:, None, None])[..., 0]
        batch = RolloutBatch(
            tokens=sample.tokens[:, None],
            rollout_logprob=sample.logprob[:, None],
            rollout_logits=sample.engine_logits[:, None, :],
            topk_ids=sample.topk_ids[:, None, :],
            topk_logprobs=sample.topk_logprobs[:, None, :],
            response_mask=torch.ones(contexts.shape[0], 1, dtype=torch.bool, device=self.device),
            rewards=rewards,
            advantages=torch.as_tensor(advantages, device=self.device),
            old_logprob=old_logprob,
            old_logits=old_logits,
        )
        return batch, contexts

    def logits_for(self, context: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """π_θ's logits [b, 1, V] at the contexts of the given batch rows (with gradient)."""
        return self.policy(context[rows])[:, None, :]

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, float]:
        probs = torch.softmax(self.policy.logits.detach().double(), dim=-1).cpu().numpy()
        return {"reward_expected": float(self.problem.expected_reward(probs).mean())}


def train_bandit(config: BanditConfig, checkpoint_dir: str | Path | None = None) -> pd.DataFrame:
    """Train a tabular policy on the bandit with ``config``; return the tidy per-step table."""
    return BanditTrainer(config).train(checkpoint_dir)
