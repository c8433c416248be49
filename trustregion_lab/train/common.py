"""Pieces both trainers share: the rollout batch, group advantages, the optimisation pass, checkpoint files.

The optimisation pass calls ``trustregion_lab.losses.policy_loss`` (the one surrogate of DESIGN §2) on each
mini-batch; nothing here re-implements a loss or a mask.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustregion_lab import divergence
from trustregion_lab.losses import DESIGN_METRICS, policy_loss
from trustregion_lab.policies.device import autocast
from trustregion_lab.train.config import TrainConfig
from trustregion_lab.train.variants import Variant

__all__ = [
    "LOSS_METRICS",
    "ROW_COLUMNS",
    "TIMING_COLUMNS",
    "RolloutBatch",
    "atomic_torch_save",
    "group_advantages",
    "optimise_on_batch",
]

# the names policy_loss reports (DESIGN §2), pooled over the mini-batches of a step (see _POOLING_WEIGHT)
LOSS_METRICS = DESIGN_METRICS
# the denominator each loss metric is pooled with over a step's mini-batches (ess is not a ratio of sums: plain mean)
_POOLING_WEIGHT = {
    "mask_frac": "adv_tokens",
    "ratio_clip_frac": "adv_tokens",
    "mask_frac_pos": "pos_tokens",
    "mask_frac_neg": "neg_tokens",
    "ratio_cap_frac": "valid_tokens",
    "mismatch_k1": "valid_tokens",
    "mismatch_k3": "valid_tokens",
    "chi2": "valid_tokens",
}
# wall-clock columns: the only ones that differ between two runs of one seed
TIMING_COLUMNS = ("tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "time_s")
ROW_COLUMNS = (
    "method",
    "seed",
    "step",
    "reward",
    "entropy",
    "tv_exact",
    "kl_exact",
    "tv_exact_start",
    "kl_exact_start",
    *LOSS_METRICS,
    "prob_diff_mean",
    "prob_diff_max",
    "grad_norm",
    "loss",
    *TIMING_COLUMNS,
)


@dataclass
class RolloutBatch:
    """One rollout batch, on the trainer's device. B = rows (prompts × group), T = response positions.

    tokens [B, T] int64; rollout_logprob [B, T] log μ(a); rollout_logits [B, T, V] μ's logits; topk_ids and
    topk_logprobs [B, T, K] (the engine's reported set) or None; response_mask [B, T] bool; rewards [B];
    advantages [B]; old_logprob [B, T] and old_logits [B, T, V]: the trainer's π_old (recompute anchor) or None.
    """

    tokens: torch.Tensor
    rollout_logprob: torch.Tensor
    rollout_logits: torch.Tensor
    topk_ids: torch.Tensor | None
    topk_logprobs: torch.Tensor | None
    response_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    old_logprob: torch.Tensor | None = None
    old_logits: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


def group_advantages(
    rewards: np.ndarray, group_size: int, norm: str = "std", eps: float = 1e-6
) -> np.ndarray:
    """GRPO advantages per group of ``group_size`` consecutive rows: rewards [B] -> [B] (float32).

    norm="std": Â_i = (R_i − mean_g R) / (std_g R + eps) (population std); norm="mean": Â_i = R_i − mean_g R.
    A group whose rewards are all equal gets Â = 0.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size % group_size != 0:
        raise ValueError(
            f"rewards must have shape [groups * group_size], got {rewards.shape} with group_size={group_size}"
        )
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    if norm == "std":
        centred = centred / (grouped.std(axis=1, keepdims=True) + eps)
    elif norm != "mean":
        raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
    return centred.reshape(-1).astype(np.float32)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = mask.sum()
    if int(count) == 0:
        return float("nan")
    return float((values.double() * mask).sum() / count)


def optimise_on_batch(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: RolloutBatch,
    *,
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    config: TrainConfig,
    variant: Variant,
    rng: np.random.Generator,
    bf16: bool = False,
) -> dict[str, float]:
    """Run ``config.epochs`` passes of ``config.num_minibatches`` optimiser steps over one rollout batch.

    ``logits_fn(rows [b]) -> logits [b, T, V]`` is π_θ's logits at the batch's states for those rows (with
    gradient). Each mini-batch: loss = policy_loss(variant.method, ...) (DESIGN §2: −Â·sg(min(r, C))·M·log π(a),
    aggregated by ``config.agg``), backward, gradient-norm clip, optimiser step. Returns the step's metrics:
    policy_loss's metrics, exact TV/KL(μ‖π) at the states (``tv_exact`` averaged over mini-batches before each
    update; ``tv_exact_start`` before the first), entropy of π, |π(a) − μ(a)| mean and max, gradient norm, loss.
    """
    device = batch.tokens.device
    rows = batch.num_rows
    if rows < config.num_minibatches:
        raise ValueError(f"num_minibatches={config.num_minibatches} exceeds the rollout batch's {rows} rows")
    use_anchor = variant.anchor == "recompute"
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    prob_diff_max = 0.0
    first = True

    def add(name: str, value: float, weight: float = 1.0) -> None:
        """Pool over the step's mini-batches, weighting each by its denominator: a fraction over tokens stays
        (total numerator) / (total denominator) as DESIGN §2 defines it, not a mean of mini-batch means."""
        if not math.isnan(value) and weight > 0:
            sums[name] = sums.get(name, 0.0) + value * weight
            counts[name] = counts.get(name, 0.0) + weight

    for _ in range(config.epochs):
        order = rng.permutation(rows)
        for chunk in np.array_split(order, config.num_minibatches):
            idx = torch.from_numpy(np.sort(chunk)).to(device)
            mask = batch.response_mask[idx]
            with autocast(device, bf16):
                logits = logits_fn(idx)
            logits = logits.float()
            logp_all = torch.log_softmax(logits, dim=-1)
            tokens = batch.tokens[idx]
            logprob = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            rollout_logprob = batch.rollout_logprob[idx]
            advantages = batch.advantages[idx].unsqueeze(-1).expand_as(logprob)
            rollout_logits = batch.rollout_logits[idx]
            extra: dict[str, Any] = {}
            if batch.topk_ids is not None:
                extra["topk_ids"] = batch.topk_ids[idx]
                extra["rollout_topk_logprobs"] = batch.topk_logprobs[idx]
            if use_anchor:
                extra["old_logprob"] = batch.old_logprob[idx]
                extra["old_logits"] = batch.old_logits[idx]
            loss, metrics = policy_loss(
                variant.method,
                logprob=logprob,
                rollout_logprob=rollout_logprob,
                advantages=advantages,
                response_mask=mask,
                low=variant.low,
                high=variant.high,
                ratio_cap=config.ratio_cap,
                agg=config.agg,
                logits=logits,
                rollout_logits=rollout_logits,
                **extra,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                detached = logits.detach()
                tv, kl = divergence.exact_tv_kl(rollout_logits, detached)
                entropy = -(logp_all.detach().exp() * logp_all.detach()).sum(-1)
                prob_diff = (logprob.detach().exp() - rollout_logprob.exp()).abs()
                fmask = mask.to(torch.float64)
                n_tokens = float(fmask.sum())
                tv_mean, kl_mean = _masked_mean(tv, fmask), _masked_mean(kl, fmask)
                if first:
                    add("tv_exact_start", tv_mean, n_tokens)
                    add("kl_exact_start", kl_mean, n_tokens)
                    first = False
                add("tv_exact", tv_mean, n_tokens)
                add("kl_exact", kl_mean, n_tokens)
                add("entropy", _masked_mean(entropy, fmask), n_tokens)
                add("prob_diff_mean", _masked_mean(prob_diff, fmask), n_tokens)
                if bool(mask.any()):
                    prob_diff_max = max(prob_diff_max, float(prob_diff[mask].max()))
                add("grad_norm", float(grad_norm))
                add("loss", float(loss.detach()))
                for name in LOSS_METRICS:
                    weight = metrics[_POOLING_WEIGHT[name]] if name in _POOLING_WEIGHT else 1.0
                    add(name, float(metrics.get(name, float("nan"))), weight)
    out = {name: sums[name] / counts[name] for name in sums}
    out["prob_diff_max"] = prob_diff_max
    return out


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename (nothing half-written on disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
