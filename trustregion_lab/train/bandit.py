"""Bandit trainer: GRPO-style groups on ``trustregion_lab/LargeVocabBandit-v0`` with a tabular softmax policy.

Each step: pick ``contexts_per_step`` contexts, sample ``group_size`` tokens per context from the rollout engine
(μ = engine(π's logits at the served weights), so μ ≠ π even at equal weights unless ``engine="none"``), score
them with the bandit's verifiable reward, compute group advantages, then ``epochs × num_minibatches``
optimiser steps (``trustregion_lab.train.step.update``). With one pass (one mini-batch, one epoch) and
``engine="none"`` every ratio π/μ is exactly 1 and no mask fires: the trust region only binds once the batch
is reused. Engines whose registry entry does not list the bandit (the model engines: a table has no decode path)
are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trustregion_lab.envs.bandit_problem import make_bandit_problem
from trustregion_lab.policies import TabularSoftmaxPolicy
from trustregion_lab.train.base import Trainer, make_optimizer
from trustregion_lab.train.batch import RolloutBatch, group_advantages
from trustregion_lab.train.config import BanditConfig
from trustregion_lab.train.engine import make_engine

__all__ = ["BanditTrainer"]


class BanditTrainer(Trainer):
    """GRPO on the large-vocabulary bandit. ``train()`` returns the tidy table (one row per step).

    Extra column ``reward_expected``: mean over all contexts of Σ_a π(a|s) R(s, a), exact (no sampling); with
    the verifiable reward it is π's mean mass on the correct tokens.
    """

    eval_columns = ("reward_expected",)

    def __init__(self, config: BanditConfig, *, export_dir: str | Path | None = None) -> None:
        if not isinstance(config, BanditConfig):
            raise TypeError(f"config must be a BanditConfig, got {type(config).__name__}")
        engine = make_engine(
            config.engine, config.engine_topk, config.topk_rule, config.seed, trainer="bandit"
        )
        super().__init__(config, export_dir=export_dir)
        self.problem = make_bandit_problem(
            vocab_size=config.vocab_size,
            num_contexts=config.num_contexts,
            num_correct=config.num_correct,
            correct_rank_range=(2, config.correct_rank_max),
            logit_family=config.family,
            problem_seed=config.env_seed,
        )
        initial_logits = np.asarray(self.problem.initial_logits, dtype=np.float32)
        self.policy = TabularSoftmaxPolicy(initial_logits).to(self.device)
        self.served = TabularSoftmaxPolicy(initial_logits).to(self.device)
        self.optimizer = make_optimizer(config, list(self.policy.parameters()))
        self.rng = np.random.default_rng([config.seed, 0xB4])
        self.engine = engine

    @torch.no_grad()
    def collect(self) -> RolloutBatch:
        """Sample one rollout batch (T = 1) from the engine at the served weights."""
        cfg = self.config
        self.served.load_state_dict(self.sync_engine())
        size = min(cfg.contexts_per_step, cfg.num_contexts)
        chosen = self.rng.choice(cfg.num_contexts, size=size, replace=False)
        contexts = torch.as_tensor(np.repeat(chosen, cfg.group_size), dtype=torch.int64, device=self.device)
        sample = self.engine.sample(self.served(contexts))
        rewards = self.problem.clean_reward(contexts.cpu().numpy(), sample.tokens.cpu().numpy())
        return RolloutBatch(
            tokens=sample.tokens[:, None],
            rollout_logprob=sample.logprob[:, None],
            rollout_logits=sample.engine_logits[:, None, :],
            topk_ids=sample.topk_ids[:, None, :],
            topk_logprobs=sample.topk_logprobs[:, None, :],
            response_mask=torch.ones(contexts.shape[0], 1, dtype=torch.bool, device=self.device),
            rewards=torch.as_tensor(rewards, dtype=torch.float32, device=self.device),
            advantages=torch.as_tensor(
                group_advantages(rewards, cfg.group_size, cfg.adv_norm), device=self.device
            ),
            inputs=contexts,
        )

    def policy_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """π_θ's logits [b, 1, V] at the context ids ``inputs`` [b] (``RolloutBatch.inputs``)."""
        return self.policy(inputs)[:, None, :]

    @torch.no_grad()
    def served_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.served(inputs)[:, None, :]

    def eval_due(self) -> bool:
        return True

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        probs = torch.softmax(self.policy.logits.detach().double(), dim=-1).cpu().numpy()
        return {"reward_expected": float(self.problem.expected_reward(probs).mean())}
