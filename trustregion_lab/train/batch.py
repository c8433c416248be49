"""The rollout batch both trainers hand to the update, and GRPO group advantages.

B = rows (prompts × group), T = response positions, V = vocabulary, K' = reported top-K slots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from trustregion_lab._validate import check_choice, check_int

__all__ = ["ADVANTAGE_NORMS", "RolloutBatch", "group_advantages"]

ADVANTAGE_NORMS = ("std", "mean")
# fields ``RolloutBatch.rows`` leaves out: computed once per step over the whole batch
_STEP_LEVEL = ("rollout_logp", "old_logp")


@dataclass
class RolloutBatch:
    """One rollout batch on the trainer's device.

    tokens `[B, T]` int64; rollout_logprob `[B, T]` log μ(a) as the engine reported it; rollout_logits
    `[B, T, V]` log μ over the vocabulary (the engine's distribution, for exact divergences); topk_ids and
    topk_logprobs `[B, T, K']` (the engine's reported set, −1 / −inf in unused slots); response_mask `[B, T]`
    bool; rewards `[B]`; advantages `[B]`; inputs: what the trainer's policy reads to give each row's logits
    (the bandit's context ids `[B]`, the sequence trainer's prompt and answer tokens `[B, P + T − 1]`), so the
    loss needs nothing but the batch (``Trainer.policy_logits(batch.inputs[rows])``). old_logits `[B, T, V]`
    and old_logprob `[B, T]` are π_old, the trainer's own forward at the step's start (no gradient): the
    recompute anchor and the step's equal-weight diagnostics (filled by the trainer before the update).
    rollout_logp and old_logp `[B, T, V]` float32 are log_softmax(rollout_logits) and log_softmax(old_logits),
    each computed once per step by the trainer's ``prepare`` and read by every diagnostic of the step (exact
    TV/KL, entropy, tv_after); None until then.
    """

    tokens: torch.Tensor
    rollout_logprob: torch.Tensor
    rollout_logits: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    inputs: torch.Tensor
    old_logits: torch.Tensor | None = None
    old_logprob: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        """The mini-batch of rows ``index`` `[b]` (int64), copied with ``index_select`` along the rows. The step's
        log-softmaxes (``rollout_logp``, ``old_logp``) are left out (None): a mini-batch reads the rows it needs
        from the whole batch's, so nothing copies `[b, T, V]` twice."""
        return replace(
            self,
            **{
                f.name: None
                if (v := getattr(self, f.name)) is None or f.name in _STEP_LEVEL
                else v.index_select(0, index)
                for f in fields(self)
            },
        )

    def mask_inputs(self, anchor: str) -> dict[str, Any]:
        """The keyword arguments of ``policy_loss`` beyond log-probs and advantages: the engine's report and, for
        the recompute anchor, π_old (docs/design.md §2 "Anchor")."""
        inputs: dict[str, Any] = {
            "topk_ids": self.topk_ids,
            "rollout_topk_logprobs": self.topk_logprobs,
            "rollout_logits": self.rollout_logits,
        }
        if anchor == "recompute":
            inputs["old_logprob"] = self.old_logprob
            inputs["old_logits"] = self.old_logits
        return inputs


def group_advantages(
    rewards: np.ndarray, group_size: int, norm: str = "std", eps: float = 1e-6
) -> np.ndarray:
    """GRPO advantages per group of ``group_size`` consecutive rows: rewards `[B]` → `[B]` float32.

    norm="std" (GRPO): Â_i = (R_i − mean_g R) / (std_g R + eps), population std; norm="mean" (Dr.GRPO, no std
    normalisation): Â_i = R_i − mean_g R. A group whose rewards are all equal gets Â = 0.
    """
    check_int("group_size", group_size, 1)
    check_choice("norm", norm, ADVANTAGE_NORMS)
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size % group_size != 0:
        raise ValueError(
            f"rewards must have shape [groups * group_size], got {rewards.shape} with group_size={group_size}"
        )
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    if norm == "std":
        centred = centred / (grouped.std(axis=1, keepdims=True) + eps)
    return centred.reshape(-1).astype(np.float32)
