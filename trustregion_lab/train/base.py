"""The trainer skeleton both trainers share: step loop, tidy rows, checkpoints that resume bit for bit.

A subclass sets ``self.policy`` (the trained module), ``self.optimizer``, ``self.rng`` (numpy Generator used
for mini-batch order and prompts/contexts), ``self.sampler`` (the rollout engine) and implements
``collect() -> (RolloutBatch, context)`` and ``logits_for(context, rows) -> [b, T, V]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trustregion_lab.mismatch import StalePolicy
from trustregion_lab.train.common import ROW_COLUMNS, RolloutBatch, atomic_torch_save, optimise_on_batch
from trustregion_lab.train.config import TrainConfig

__all__ = ["CHECKPOINT_NAME", "Trainer", "make_optimizer", "rows_to_frame"]

CHECKPOINT_NAME = "checkpoint.pt"


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or plain SGD at ``config.lr``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr)
    return torch.optim.SGD(parameters, lr=config.lr)


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Tidy table: the standard columns first (NaN where a metric had no tokens), extras after."""
    frame = pd.DataFrame(rows)
    for column in ROW_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    extras = [c for c in frame.columns if c not in ROW_COLUMNS]
    return frame[[*ROW_COLUMNS, *extras]]


class Trainer:
    """Base class: ``train(checkpoint_dir)`` runs to ``config.steps`` and returns one row per step."""

    config: TrainConfig
    policy: torch.nn.Module
    rollout_policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.variant = config.variant
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.step = 0
        self.rows: list[dict[str, Any]] = []
        self.stale = StalePolicy(config.staleness)

    # subclasses -----------------------------------------------------------------------------------------
    def collect(self) -> tuple[RolloutBatch, Any]:
        raise NotImplementedError

    def logits_for(self, context: Any, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # shared ---------------------------------------------------------------------------------------------
    def serving_policy(self) -> torch.nn.Module:
        """The weights the rollout engine serves: the current ones, or those of ``staleness`` steps ago."""
        if self.config.staleness == 0:
            return self.policy
        self.stale.push(self.policy.state_dict())
        self.rollout_policy.load_state_dict(self.stale.rollout_params())
        return self.rollout_policy

    def update(self, batch: RolloutBatch, context: Any) -> dict[str, float]:
        """``epochs × num_minibatches`` optimiser steps on one batch (``common.optimise_on_batch``)."""
        return optimise_on_batch(
            lambda rows: self.logits_for(context, rows),
            batch,
            optimizer=self.optimizer,
            parameters=[p for p in self.policy.parameters() if p.requires_grad],
            config=self.config,
            variant=self.variant,
            rng=self.rng,
            bf16=self.config.bf16,
        )

    def train_step(self) -> dict[str, Any]:
        """One rollout batch and its optimisation pass; appends and returns the step's row."""
        start = time.perf_counter()
        self.sampler.begin_step(self.step)
        batch, context = self.collect()
        sampled = time.perf_counter()
        metrics = self.update(batch, context)
        done = time.perf_counter()
        tokens = batch.num_tokens
        self.step += 1
        row: dict[str, Any] = {
            "method": self.config.method,
            # the thresholds actually applied (a variant's own unless low/high were set)
            "mask_method": self.config.variant.method,
            "threshold_low": self.config.variant.low,
            "threshold_high": self.config.variant.high,
            "seed": self.config.seed,
            "step": self.step,
            "reward": float(batch.rewards.float().mean()),
            **metrics,
            **self.extra_metrics(),
            "tokens_per_s": tokens / max(done - start, 1e-9),
            "sample_tokens_per_s": tokens / max(sampled - start, 1e-9),
            "train_tokens_per_s": tokens * self.config.epochs / max(done - sampled, 1e-9),
            "time_s": done - start,
        }
        self.rows.append(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit: weights, optimiser, RNGs, engine, rows."""
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "stale": self.stale,
            "torch_rng": torch.get_rng_state(),
            "rows": list(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise ValueError(
                "checkpoint was written by a run with another config; use a fresh checkpoint_dir"
            )
        self.step = int(state["step"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.stale = state["stale"]
        torch.set_rng_state(state["torch_rng"])
        self.rows = list(state["rows"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the state to ``path`` (temp file, then rename)."""
        atomic_torch_save(self.state_dict(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def should_stop(self) -> bool:
        return False

    def train(
        self, checkpoint_dir: str | Path | None = None, *, stop_after: int | None = None
    ) -> pd.DataFrame:
        """Run to ``config.steps`` (resuming from ``checkpoint_dir/checkpoint.pt`` when it exists); return rows.

        ``stop_after`` ends the call after that many steps in total (a killed run, for tests and demos).
        """
        path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        if path is not None and path.exists():
            self.load_checkpoint(path)
        last = self.config.steps if stop_after is None else min(stop_after, self.config.steps)
        every = self.config.checkpoint_every
        while self.step < last and not self.should_stop():
            self.train_step()
            if path is not None and every and (self.step % every == 0 or self.step == self.config.steps):
                self.save_checkpoint(path)
        return rows_to_frame(self.rows)
