"""Converters from verl's and TRL's batch arrays to the per-token table (no framework is imported).

Arrays may be numpy arrays or torch tensors (any float dtype; moved to the CPU), shaped `[batch, response_len]`
(TRL's advantages may be `[batch]`). One row per response token (mask true); padding is dropped unless
`keep_padding`. `sequence` = `first_sequence` + row index, `position` = column index.

verl (``DataProto.batch`` keys; verl's policy losses take ``old_log_prob, log_prob, advantages, response_mask``):
    responses → token_id, response_mask → response_mask, rollout_log_probs → rollout_logprob (μ; needs
    ``actor_rollout_ref.rollout.calculate_log_probs=True``), advantages → advantage,
    old_log_probs → logprob (the trainer's log-prob at the weights that generated: what verl's
    ``training/rollout_probs_diff_*`` compare), or, when `log_prob` (the current π inside the loss) is given,
    log_prob → logprob and old_log_probs → old_logprob (the recompute anchor); token_level_rewards summed per
    sequence → reward (when present).
    verl's bypass mode sets old_log_probs = rollout_log_probs: the table would then compare μ with itself, so
    `from_verl` warns, and the report says so (every token's π(a) = μ(a)).
TRL (``GRPOTrainer`` inputs): completion_ids → token_id, completion_mask (× action_mask and tool_mask when
    present) → response_mask, sampling_per_token_logps → rollout_logprob (μ, vLLM's), advantages → advantage,
    per_token_logps (the current π, computed in the loss; pass it) → logprob and old_per_token_logps →
    old_logprob; without per_token_logps, old_per_token_logps → logprob. importance_sampling_ratio (TRL's
    vLLM IS weight, `[batch, time]` in its token modes, `[batch, 1]` in its sequence modes; capped from above
    only: truncated to the cap, or set to 0 above it in the mask modes) → is_weight.

Which π the table holds: the log-probs these batches carry are taken before the step's updates (verl's
old_log_probs, TRL's old_per_token_logps: π at the weights that generated), so a report on them measures the
engine mismatch μ vs π_old, not how far the update moves π. Pass the π computed inside the loss (verl's
log_prob, TRL's per_token_logps) to measure that too.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["from_arrays", "from_trl", "from_verl"]


def _numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16; float32 holds both
            x = x.float()
        x = x.cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array or tensor, got dtype object")
    return arr


def _optional(batch: Mapping[str, Any], key: str) -> Any:
    """batch[key] or None; uses ``keys()`` so a TensorDict (verl's ``DataProto.batch``) works too."""
    return batch[key] if key in batch.keys() else None


def _get(batch: Mapping[str, Any], key: str, framework: str) -> np.ndarray:
    value = _optional(batch, key)
    if value is None:
        raise ValueError(f"{framework} batch is missing {key!r}")
    return _numpy(value, key)


def from_arrays(
    *,
    step: int,
    token_ids: Any,
    response_mask: Any,
    rollout_logprob: Any,
    logprob: Any,
    advantages: Any,
    old_logprob: Any = None,
    reward: Any = None,
    entropy: Any = None,
    is_weight: Any = None,
    tv_exact: Any = None,
    kl_exact: Any = None,
    topk_ids: Any = None,
    rollout_topk_logprobs: Any = None,
    topk_logprobs: Any = None,
    first_sequence: int = 0,
    keep_padding: bool = False,
    source: str | None = None,
) -> pd.DataFrame:
    """Token table from `[batch, time]` arrays (advantages and reward may be `[batch]`; the top-K arrays are
    `[batch, time, K]`, id −1 marking an unused slot; advantages, reward and is_weight may also be `[batch]` or
    `[batch, 1]`). Column meanings: `trustregion_lab.report.schema`."""
    mask = _numpy(response_mask, "response_mask")
    if mask.ndim != 2:
        raise ValueError(f"response_mask must have shape [batch, time], got {mask.shape}")
    shape = mask.shape
    columns: dict[str, np.ndarray] = {}
    for name, values in (
        ("token_id", token_ids),
        ("rollout_logprob", rollout_logprob),
        ("logprob", logprob),
        ("advantage", advantages),
        ("old_logprob", old_logprob),
        ("entropy", entropy),
        ("reward", reward),
        ("is_weight", is_weight),
        ("tv_exact", tv_exact),
        ("kl_exact", kl_exact),
    ):
        if values is None:
            continue
        arr = _numpy(values, name)
        if arr.ndim == 1 and arr.shape[0] == shape[0] and name in ("advantage", "reward", "is_weight"):
            arr = np.broadcast_to(arr[:, None], shape)
        if arr.ndim == 2 and arr.shape == (shape[0], 1) and name in ("advantage", "reward", "is_weight"):
            arr = np.broadcast_to(arr, shape)  # a per-sequence value `[batch, 1]`
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} like response_mask, got {arr.shape}")
        columns[name] = arr
    rows, cols = np.indices(shape)
    keep = np.ones(shape, bool) if keep_padding else mask.astype(bool)
    frame = pd.DataFrame(
        {
            "step": np.full(int(keep.sum()), int(step), dtype=np.int64),
            "sequence": rows[keep].astype(np.int64) + int(first_sequence),
            "position": cols[keep].astype(np.int64),
            "response_mask": mask.astype(bool)[keep],
        }
    )
    for name, arr in columns.items():
        frame[name] = arr[keep].astype(np.int64 if name == "token_id" else np.float64)
    lists = {
        "topk_ids": topk_ids,
        "rollout_topk_logprobs": rollout_topk_logprobs,
        "topk_logprobs": topk_logprobs,
    }
    given = {name: values for name, values in lists.items() if values is not None}
    if given and len(given) != len(lists):
        raise ValueError(f"pass all of {list(lists)} or none, got only {list(given)}")
    for name, values in given.items():
        arr = _numpy(values, name)
        if arr.ndim != 3 or arr.shape[:2] != shape:
            raise ValueError(f"{name} must have shape {(*shape, 'K')}, got {arr.shape}")
        frame[name] = list(arr[keep].astype(np.int64 if name == "topk_ids" else np.float64))
    ordered = [
        c for c in ("step", "sequence", "position", "token_id", "rollout_logprob", "logprob", "advantage")
    ]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    if source:
        frame.attrs["source"] = source
    return frame


def from_verl(
    batch: Mapping[str, Any], *, step: int, log_prob: Any = None, first_sequence: int = 0
) -> pd.DataFrame:
    """Token table from a verl batch (`DataProto.batch` or a dict of its tensors); see the module docstring."""
    old = _get(batch, "old_log_probs", "verl")
    rollout = _get(batch, "rollout_log_probs", "verl")
    rewards = _optional(batch, "token_level_rewards")
    mask = _get(batch, "response_mask", "verl").astype(bool)
    same = old.shape == rollout.shape == mask.shape and mask.any()
    if log_prob is None and same and np.array_equal(old[mask], rollout[mask]):
        warnings.warn(
            "verl batch: old_log_probs equals rollout_log_probs on every response token (verl's bypass mode); "
            "the table then compares mu with itself: pass log_prob= (pi inside the loss) to measure the update",
            stacklevel=2,
        )
    return from_arrays(
        step=step,
        token_ids=_get(batch, "responses", "verl"),
        response_mask=_get(batch, "response_mask", "verl"),
        rollout_logprob=rollout,
        logprob=old if log_prob is None else log_prob,
        old_logprob=None if log_prob is None else old,
        advantages=_get(batch, "advantages", "verl"),
        reward=None if rewards is None else _numpy(rewards, "token_level_rewards").sum(axis=-1),
        first_sequence=first_sequence,
        source="verl",
    )


def from_trl(
    inputs: Mapping[str, Any], *, step: int, per_token_logps: Any = None, first_sequence: int = 0
) -> pd.DataFrame:
    """Token table from TRL GRPOTrainer inputs (plus the loss's `per_token_logps`); see the module docstring."""
    old = _optional(inputs, "old_per_token_logps")
    if per_token_logps is None and old is None:
        raise ValueError(
            "TRL inputs have no old_per_token_logps; pass per_token_logps= (the trainer's log-probs in the loss)"
        )
    mask = _get(inputs, "completion_mask", "TRL")
    for extra in ("action_mask", "tool_mask"):
        if _optional(inputs, extra) is not None:
            mask = mask * _numpy(inputs[extra], extra)
    ratio = _optional(inputs, "importance_sampling_ratio")
    return from_arrays(
        step=step,
        token_ids=_get(inputs, "completion_ids", "TRL"),
        response_mask=mask,
        rollout_logprob=_get(inputs, "sampling_per_token_logps", "TRL"),
        logprob=old if per_token_logps is None else per_token_logps,
        old_logprob=None if per_token_logps is None else old,
        advantages=_get(inputs, "advantages", "TRL"),
        is_weight=None if ratio is None else _numpy(ratio, "importance_sampling_ratio"),
        first_sequence=first_sequence,
        source="trl",
    )
