"""The trainer skeleton both trainers share: the step loop, tidy rows, checkpoints that resume bit for bit.

A step (``train_step``):
    1. sync the engine: it serves the current weights, or those of ``staleness`` steps ago;
    2. ``collect()``: the engine samples a rollout batch (subclass);
    3. π_old: the trainer's own forward over the whole batch at the current weights, no gradient
       (``old_logits``); it anchors the recompute variants, stands in for μ with the exact engine
       (``engine="none"``) and gives the step's equal-weight diagnostics (``step.start_metrics``);
    4. ``step.update``: epochs × mini-batches of the surrogate;
    4b. the off-policy dose: one no-grad forward of the updated policy over the batch, π after the step against
       μ (``after_metrics``: ``dose``, ``tv_after``; ``step.after_metrics``), on steps whose number (the row's
       ``step``, from 1) is a multiple of ``config.dose_every`` (1 = every step; the other rows get NaN there,
       and a mean over steps is the mean over the measured ones);
    5. every ``eval_every`` steps an evaluation (subclass), then one tidy row.

A subclass sets ``policy``, ``optimizer``, ``rng`` (numpy Generator for contexts/prompts and mini-batch order),
``engine`` (an ``Engine``, built by ``trustregion_lab.train.engine.make_engine``) and implements ``collect()``, ``policy_logits(inputs)`` and
``served_logits(inputs)``. The batch carries everything the loss reads (``RolloutBatch.inputs`` included): no
step reads state a previous ``collect()`` left on the trainer.

Each finished step is reported on the progress channel (``trustregion_lab.progress.report("train", step, steps,
{reward, mismatch_mean, mask_frac, time_s})``); a front end that listens prints or forwards it.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trustregion_lab import divergence, progress
from trustregion_lab._io import atomic_torch_save
from trustregion_lab.mismatch import StalePolicy
from trustregion_lab.policies import autocast, resolve_device
from trustregion_lab.train import step as step_lib
from trustregion_lab.train.batch import RolloutBatch
from trustregion_lab.train.config import TrainConfig
from trustregion_lab.train.engine import Engine
from trustregion_lab.train.safe_load import safe_torch_load

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "ROW_COLUMNS",
    "TIMING_COLUMNS",
    "CheckpointError",
    "Trainer",
    "keep_freed_memory",
    "make_optimizer",
    "rows_to_frame",
]

CHECKPOINT_NAME = "checkpoint.pt"
# /2: tensors and plain types only, read with torch.load(weights_only=True); /1 pickled Python objects
CHECKPOINT_FORMAT = "trustregion_lab.checkpoint/2"
PROGRESS_METRICS = ("reward", "mismatch_mean", "mask_frac", "time_s")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from: not one of this package's, truncated, of an older format, or
    written by a run with another config."""


# wall-clock columns: the only ones that differ between two runs of one seed
TIMING_COLUMNS = ("tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "time_s")
ROW_COLUMNS = (
    "variant",
    "method",
    "threshold_low",
    "threshold_high",
    "ratio_cap",
    "anchor",
    "engine",
    "seed",
    "step",
    "reward",
    *step_lib.START_METRICS,
    *step_lib.UPDATE_METRICS,
    *step_lib.AFTER_METRICS,
    *TIMING_COLUMNS,
)


KEEP_FREED_MEMORY_ENV = "TRUSTREGION_LAB_KEEP_FREED_MEMORY"
# glibc mallopt parameters (malloc.h) and the values the trainer sets (``keep_freed_memory``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the OS (process-wide, once).

    A step allocates and frees the same tensors every time (logits `[B, T, V]`, activations, gradients: tens of
    MB). By default glibc unmaps large freed blocks and trims the heap top beyond a threshold that adapts to them,
    so the next step faults the pages in again: 7,000–26,000 minor page faults per step of the stability preset
    on one thread, depending on the heap's history, and 20–35 ms of its after-step forward (measured with
    ``resource.getrusage`` and a timer). With M_MMAP_THRESHOLD at its maximum (32 MiB) and M_TRIM_THRESHOLD at
    1 GiB the blocks stay in the heap (200–800 faults per step). No
    value computed changes; the process keeps its peak heap. Returns whether the settings were applied (False
    off Linux, where the C library has no ``mallopt``, or with the environment variable
    ``TRUSTREGION_LAB_KEEP_FREED_MEMORY=0``: the opt-out for a process that must return memory to the OS).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    _malloc_tuned = ok
    return ok


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam (β₁, β₂, ε from the config) or plain SGD at ``config.lr``."""
    if config.optimizer == "adam":
        betas = (config.adam_beta1, config.adam_beta2)
        return torch.optim.Adam(parameters, lr=config.lr, betas=betas, eps=config.adam_eps)
    return torch.optim.SGD(parameters, lr=config.lr)


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Tidy table: the standard columns first, extras after (every row carries every standard column)."""
    frame = pd.DataFrame(rows)
    extras = [c for c in frame.columns if c not in ROW_COLUMNS]
    return frame.reindex(columns=[*ROW_COLUMNS, *extras])


class Trainer:
    """Base class: ``train(checkpoint_dir)`` runs to ``config.steps`` and returns one row per step."""

    config: TrainConfig
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    engine: Engine

    def __init__(self, config: TrainConfig, *, export_dir: str | Path | None = None) -> None:
        """``export_dir``: write every step's per-token table there (docs/design.md §8); None = don't."""
        self.config = config
        self.variant = config.resolved_variant
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        keep_freed_memory()
        self.device = resolve_device(config.device)
        if config.bf16 and self.device.type != "cuda":
            raise ValueError(
                f"bf16 autocast applies only to CUDA; device {config.device!r} resolved to the CPU"
            )
        self.step = 0
        self.rows: list[dict[str, Any]] = []
        self.stale = StalePolicy(config.staleness)
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.checkpoint_step: int | None = None  # the step of the last checkpoint written or resumed from

    # subclasses -----------------------------------------------------------------------------------------
    def collect(self) -> RolloutBatch:
        """Sample one rollout batch with ``self.engine`` from the weights ``served_state`` holds."""
        raise NotImplementedError

    def policy_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """π_θ's logits `[b, T, V]` for rows of ``RolloutBatch.inputs`` (with gradient)."""
        raise NotImplementedError

    eval_columns: tuple[str, ...] = ()

    def eval_due(self) -> bool:
        """Whether this step ends with an evaluation (``evaluate`` fills ``eval_columns``; NaN otherwise)."""
        return False

    def evaluate(self) -> dict[str, float]:
        return {}

    def row_extras(self) -> dict[str, float]:
        """Per-run constants every row carries (e.g. the warm start's reward)."""
        return {}

    def served_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The served (engine) weights' logits `[B, T, V]` for ``RolloutBatch.inputs``, no gradient."""
        raise NotImplementedError

    @staticmethod
    def exact_engine_report(
        batch: RolloutBatch, served_logits: torch.Tensor, *, log_mu: torch.Tensor | None = None
    ) -> RolloutBatch:
        """With ``engine="none"`` μ is the trainer's own forward at the served weights (π_old itself unless the
        engine is stale): the report is replaced by those log-probs, exactly. ``log_mu``: log_softmax of
        ``served_logits`` when the caller already holds it (computed here otherwise); kept as ``rollout_logp``."""
        if log_mu is None:
            log_mu = torch.log_softmax(served_logits, -1)
        batch.rollout_logits = served_logits  # normalised inside the divergences
        batch.rollout_logp = log_mu
        batch.rollout_logprob = log_mu.gather(-1, batch.tokens.unsqueeze(-1)).squeeze(-1)
        batch.topk_logprobs = torch.where(
            batch.topk_ids >= 0, log_mu.gather(-1, batch.topk_ids.clamp(min=0)), -torch.inf
        )
        return batch

    # shared ---------------------------------------------------------------------------------------------
    @property
    def sampler(self) -> Engine:
        """The rollout engine (the earlier name of ``engine``)."""
        return self.engine

    @sampler.setter
    def sampler(self, engine: Engine) -> None:
        self.engine = engine

    def sync_engine(self) -> dict[str, torch.Tensor]:
        """Hand the engine its weights for this step: the current ones, or ``staleness`` steps old. Returns them."""
        self.stale.push(self.policy.state_dict())
        return self.stale.rollout_params()

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.config.bf16):
            return self.policy_logits(inputs)

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        """Step 3: π_old over the whole batch (``old_logits``, ``old_logprob``); with the exact engine it becomes
        μ. Each log-softmax of the step is computed here, once: ``old_logp`` = log_softmax(old_logits) and
        ``rollout_logp`` = log_softmax(rollout_logits) `[B, T, V]`, which the diagnostics of ``prepare``,
        ``update`` and ``after_metrics`` read. Returns the equal-weight diagnostics (``step.start_metrics``)."""
        logits = self._logits(batch.inputs).float()
        batch.old_logits = logits
        batch.old_logp = torch.log_softmax(logits, -1)
        batch.old_logprob = batch.old_logp.gather(-1, batch.tokens.unsqueeze(-1)).squeeze(-1)
        if self.engine.exact and self.config.staleness == 0:  # μ = π_old: its log-softmax is old_logp
            self.exact_engine_report(batch, logits, log_mu=batch.old_logp)
        elif self.engine.exact:
            self.exact_engine_report(batch, self.served_logits(batch.inputs).float())
        else:
            batch.rollout_logp = torch.log_softmax(batch.rollout_logits.float(), -1)
        return step_lib.start_metrics(batch)

    @torch.no_grad()
    def export_tokens(self, batch: RolloutBatch) -> Path:
        """Write the step's per-token table (docs/design.md §8) to ``export_dir/step_<n>.parquet``: the engine's
        and the trainer's log-probs at equal weights (π_old), advantages, the reported top-K with π_old's log-probs
        there, and the exact TV/KL of each token's state, which only a toy knows. Returns the path."""
        from trustregion_lab.report import from_arrays, token_table_path, write_token_table

        ids = batch.topk_ids
        old = batch.old_logp if batch.old_logp is not None else torch.log_softmax(batch.old_logits, -1)
        frame = from_arrays(
            step=self.step + 1,
            token_ids=batch.tokens,
            response_mask=batch.response_mask,
            rollout_logprob=batch.rollout_logprob,
            logprob=batch.old_logprob,
            advantages=batch.advantages,
            reward=batch.rewards,
            tv_exact=divergence.tv(batch.rollout_logits, batch.old_logits),
            kl_exact=divergence.kl(batch.rollout_logits, batch.old_logits),
            topk_ids=ids,
            rollout_topk_logprobs=batch.topk_logprobs,
            topk_logprobs=old.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, -torch.inf),
            source="trustregion_lab",
        )
        path = token_table_path(self.export_dir, self.step + 1)
        write_token_table(frame, path)
        return path

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Step 4: epochs × mini-batches of the surrogate on a prepared batch (``step.update``)."""
        return step_lib.update(
            lambda rows: self._logits(batch.inputs[rows]),
            batch,
            optimizer=self.optimizer,
            parameters=[p for p in self.policy.parameters() if p.requires_grad],
            config=self.config,
            variant=self.variant,
            rng=self.rng,
        )

    def dose_due(self) -> bool:
        """Whether the step now running (row ``step`` = ``self.step + 1``) measures the dose (``dose_every``)."""
        return (self.step + 1) % self.config.dose_every == 0

    @torch.no_grad()
    def after_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """Step 4b: π after the step's last update against μ (``step.after_metrics``: ``dose``, ``tv_after``)."""
        return step_lib.after_metrics(batch, self._logits(batch.inputs))

    def train_step(self) -> dict[str, Any]:
        """One rollout batch and its optimisation; appends and returns the step's row."""
        start = time.perf_counter()
        self.engine.begin_step(self.step)
        batch = self.collect()
        sampled = time.perf_counter()
        row_start = self.prepare(batch)
        if self.export_dir is not None:
            self.export_tokens(batch)
        metrics = self.update(batch)
        row_after = (
            self.after_metrics(batch) if self.dose_due() else dict.fromkeys(step_lib.AFTER_METRICS, math.nan)
        )
        done = time.perf_counter()
        self.step += 1
        evaluation = self.evaluate() if self.eval_due() else dict.fromkeys(self.eval_columns, math.nan)
        tokens = batch.num_tokens
        v = self.variant
        row: dict[str, Any] = {
            "variant": self.config.variant,
            "method": v.method,
            "threshold_low": v.low,
            "threshold_high": v.high,
            "ratio_cap": v.ratio_cap,
            "anchor": v.anchor,
            "engine": self.config.engine,
            "seed": self.config.seed,
            "step": self.step,
            "reward": float(batch.rewards.double().mean()),
            **row_start,
            **metrics,
            **row_after,
            **evaluation,
            **self.row_extras(),
            "tokens_per_s": tokens / max(done - start, 1e-9),
            "sample_tokens_per_s": tokens / max(sampled - start, 1e-9),
            "train_tokens_per_s": tokens * self.config.epochs / max(done - sampled, 1e-9),
            "time_s": done - start,
        }
        self.rows.append(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit: weights, optimiser, RNGs, stale weights, rows.

        Tensors and plain types only (dicts, lists, str, int, float, bool, None), so ``torch.load`` reads it with
        ``weights_only=True`` and a planted file cannot run code; the numpy bit generator's state is a dict of
        ints (its 128-bit PCG64 state and increment written as decimal strings).
        """
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _plain_bit_generator_state(self.rng.bit_generator.state),
            "stale": {"staleness": self.stale.staleness, "snapshots": list(self.stale._snapshots)},
            "torch_rng": torch.get_rng_state(),
            "rows": list(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # dose_every came later; a checkpoint written before it ran with every step measured (its default)
        if {"dose_every": 1, **state["config"]} != self.config.to_dict():
            raise CheckpointError(
                "checkpoint was written by a run with another config; use a fresh checkpoint_dir"
            )
        self.step = int(state["step"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = _bit_generator_state(state["rng"])
        self.stale = StalePolicy(int(state["stale"]["staleness"]))
        for snapshot in state["stale"]["snapshots"]:
            self.stale.push(snapshot)
        torch.set_rng_state(state["torch_rng"])
        self.rows = list(state["rows"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the state to ``path`` (temp file, then rename)."""
        atomic_torch_save(self.state_dict(), path)
        self.checkpoint_step = self.step

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path``, read with ``torch.load(weights_only=True)``: a file that holds anything but
        tensors and plain types (a pickle that would run code), is truncated, is not a checkpoint of this package
        or is of the older format is a ``CheckpointError`` (a ValueError) and nothing in it runs."""
        state = safe_torch_load(path, what="checkpoint", error=CheckpointError)
        if isinstance(state, dict) and state.get("format") == "trustregion_lab.checkpoint/1":
            raise CheckpointError(
                f"checkpoint {path} has the older format trustregion_lab.checkpoint/1 (pickled objects, which "
                "this version no longer loads); delete it to start over"
            )
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {path} is not a trustregion_lab checkpoint or is truncated")
        try:
            self.load_state_dict(state)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is not a complete trustregion_lab checkpoint ({type(exc).__name__}); "
                "delete it to start over"
            ) from None
        self.checkpoint_step = self.step

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
        total = self.config.steps
        progress.report("train", self.step, total, {})
        while self.step < last and not self.should_stop():
            row = self.train_step()
            if path is not None and every and (self.step % every == 0 or self.step == self.config.steps):
                self.save_checkpoint(path)
            progress.report("train", self.step, total, {k: float(row[k]) for k in PROGRESS_METRICS})
        return rows_to_frame(self.rows)


def _plain_bit_generator_state(state: dict[str, Any]) -> dict[str, Any]:
    """A numpy bit generator's state (nested dicts of str and ints, which may exceed 64 bits) with every int
    written as a decimal string, so ``torch.load(weights_only=True)`` reads it."""
    if isinstance(state, dict):
        return {k: _plain_bit_generator_state(v) for k, v in state.items()}
    if isinstance(state, bool) or not isinstance(state, int | np.integer):
        return state
    return {"int": str(int(state))}


def _bit_generator_state(plain: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``_plain_bit_generator_state``."""
    if isinstance(plain, dict):
        if set(plain) == {"int"}:
            return int(plain["int"])
        return {k: _bit_generator_state(v) for k, v in plain.items()}
    return plain
