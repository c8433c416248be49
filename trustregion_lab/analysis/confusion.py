"""Mask confusion: each trust-region mask against the exact-divergence mask, on the same tokens.

For a mask method m (thresholds low, high) and its reference — the exact mask `dppo_exact_tv`, or `dppo_exact_kl`
for the KL-based methods, at the same thresholds; for `ppo` and `none`, whose ratio threshold ε is not a
divergence, `dppo_exact_tv` at the thresholds given as `ppo_reference` — every token with Â ≠ 0 is one of:
    false mask:  m drops it, the reference keeps it (the update would stay within the region);
    missed mask: m keeps it, the reference drops it (the update pushes it further out of the region).
Masks come from `trustregion_lab.masks.trust_region_mask` (True = keep).

Gradient mass. The surrogate's gradient for token i with respect to its state's logits z is
−Â_i · min(r_i, C) · ∇_z log π(a_i), and for a softmax over free logits ∇_z log π(a) = e_a − π, whose norm is
    ‖e_a − π‖₂ = sqrt((1 − π(a))² + Σ_{v≠a} π_v²) = sqrt(1 − 2π(a) + Σ_v π_v²).
The gradient mass of a token is g_i = |Â_i| · min(r_i, C) · ‖e_a − π‖₂: exact for a tabular softmax policy, and
the logit-space factor of the gradient for a network (the back-propagated part is shared by all tokens of a
state). grad_share_false / grad_share_missed are the weighted Σ g over the cell's false / missed masks divided by
Σ g over all tokens of the batch: the share of the batch's policy-gradient mass wrongly dropped / let through.

All rates are weighted by the token weights (see `trustregion_lab.analysis.tokens`) and exclude Â = 0 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from trustregion_lab import masks, progress
from trustregion_lab.analysis.buckets import (
    DEFAULT_ENTROPY_EDGES,
    DEFAULT_MU_EDGES,
    entropy_buckets,
    mu_buckets,
)
from trustregion_lab.analysis.tokens import TokenBatch, state_entropy, unique_rows

__all__ = ["BatchMaskSpec", "gradient_mass", "mask_confusion", "token_mask"]

_CHUNK_ELEMENTS = 1 << 22


def _is_topk(method: str) -> bool:
    return "topk_ids" in masks.METHODS[method].needs


def _is_exact(method: str) -> bool:
    return "anchor_logits" in masks.METHODS[method].needs


@dataclass(frozen=True)
class BatchMaskSpec:
    """One mask to evaluate: method name (see `trustregion_lab.masks.METHODS`), thresholds, Top-K set."""

    method: str
    low: float
    high: float
    set_rule: str = ""
    k: int = 0

    def __post_init__(self) -> None:
        if self.method not in masks.METHODS:
            raise ValueError(f"method must be one of {sorted(masks.METHODS)}, got {self.method!r}")
        if _is_topk(self.method) and (not self.set_rule or self.k < 1):
            raise ValueError(f"method {self.method!r} needs set_rule and k >= 1")

    @property
    def label(self) -> str:
        if _is_topk(self.method):
            return f"{self.method}[{self.set_rule},K={self.k}]"
        return self.method


def token_mask(batch: TokenBatch, spec: BatchMaskSpec) -> np.ndarray:
    """`trust_region_mask` for every token of the batch → bool `[N]` (True = keep)."""
    common = {"low": spec.low, "high": spec.high}
    if not (_is_topk(spec.method) or _is_exact(spec.method)):
        return np.asarray(
            masks.trust_region_mask(
                spec.method,
                logprob=batch.logprob,
                rollout_logprob=batch.rollout_logprob,
                advantages=batch.advantages,
                **common,
            ),
            dtype=bool,
        )
    # docs/design.md §2: a DPPO mask depends on the token only through the state's divergence estimate D (a function of
    # the state, and for Top-K of the reported ids), the direction of π(a) − μ(a) and the sign of Â. The mask is
    # evaluated once per distinct key, materialising per-token logits for those rows only (in chunks).
    direction = np.sign(batch.logprob - batch.rollout_logprob)
    key = [batch.state, direction, np.sign(batch.advantages)]
    if _is_topk(spec.method):
        if (spec.set_rule, spec.k) not in batch.topk_sets:
            raise ValueError(f"the batch has no Top-K sets for rule {spec.set_rule!r}, K={spec.k}")
        ids, lps = batch.topk_sets[(spec.set_rule, spec.k)]
        key.append(ids)
    first, inverse = unique_rows(*key)
    keep_unique = np.empty(first.shape[0], dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // batch.vocab_size)
    for start in range(0, first.shape[0], step):
        rows = first[start : start + step]
        extra: dict[str, np.ndarray] = {"logits": batch.logits[batch.state[rows]]}
        if _is_topk(spec.method):
            extra.update(topk_ids=ids[rows], rollout_topk_logprobs=lps[rows])
        else:
            extra["rollout_logits"] = batch.rollout_logits[batch.state[rows]]
        keep_unique[start : start + step] = np.asarray(
            masks.trust_region_mask(
                spec.method,
                logprob=batch.logprob[rows],
                rollout_logprob=batch.rollout_logprob[rows],
                advantages=batch.advantages[rows],
                **common,
                **extra,
            ),
            dtype=bool,
        )
    return keep_unique[inverse]


def gradient_mass(batch: TokenBatch, ratio_cap: float = 10.0) -> np.ndarray:
    """g_i = |Â_i| · min(r_i, C) · sqrt(1 − 2π(a_i) + Σ_v π_v²) per token `[N]` (see the module docstring)."""
    logp = log_softmax(np.asarray(batch.logits, np.float64), axis=-1)
    sum_sq = np.exp(2.0 * logp).sum(-1)[batch.state]
    pi_a = np.exp(batch.logprob)
    norm = np.sqrt(np.maximum(1.0 - 2.0 * pi_a + sum_sq, 0.0))
    ratio = np.exp(batch.logprob - batch.rollout_logprob)
    return np.abs(batch.advantages) * np.minimum(ratio, ratio_cap) * norm


def _reference(spec: BatchMaskSpec, ppo_reference: tuple[float, float]) -> BatchMaskSpec:
    entry = masks.METHODS[spec.method]
    if entry.rule != "divergence":  # a ratio threshold ε is not a divergence: compare with exact TV at δ
        return BatchMaskSpec("dppo_exact_tv", *ppo_reference)
    if entry.divergence == "kl":
        return BatchMaskSpec("dppo_exact_kl", spec.low, spec.high)
    return BatchMaskSpec("dppo_exact_tv", spec.low, spec.high)


def mask_confusion(
    batch: TokenBatch,
    specs: Sequence[BatchMaskSpec],
    *,
    ppo_reference: tuple[float, float] = (0.15, 0.15),
    ratio_cap: float = 10.0,
    mu_edges: Sequence[float] = DEFAULT_MU_EDGES,
    entropy_edges: Sequence[float] = DEFAULT_ENTROPY_EDGES,
) -> pd.DataFrame:
    """False and missed masks of each spec against its exact reference, by stratum and advantage sign.

    Returns a tidy table, one row per spec × stratum ("all" | "mu" | "entropy") × bucket × adv_sign
    ("all" | "pos" | "neg"), with columns: analysis ("masks"), method, mask (label), set_rule, k, low, high,
    reference, ref_low, ref_high, stratum, bucket, bucket_lo, bucket_hi, adv_sign, n_tokens, weight_share,
    mask_rate, ref_mask_rate, false_mask_rate, missed_mask_rate (shares of the cell's token weight),
    grad_share, grad_share_false, grad_share_missed (shares of the batch's total gradient mass). Empty cells are
    left out. Tokens with Â = 0 are left out of every denominator. Each finished spec is reported on the progress
    channel (``report("masks", i, len(specs))``).
    """
    valid = batch.advantages != 0
    w = np.where(valid, batch.weight, 0.0)
    grad = gradient_mass(batch, ratio_cap) * w
    total_w, total_grad = w.sum(), grad.sum()
    if total_w <= 0:
        raise ValueError("mask_confusion needs tokens with non-zero advantages")
    mu_b, h_b = mu_buckets(mu_edges), entropy_buckets(entropy_edges)
    n = batch.state.shape[0]
    strata = [
        ("all", np.zeros(n, np.int64), ["all"], [np.nan], [np.nan]),
        ("mu", mu_b.assign(np.exp(batch.rollout_logprob), "mu(a)"), mu_b.labels, mu_b.lo, mu_b.hi),
        (
            "entropy",
            h_b.assign(state_entropy(batch.rollout_logits)[batch.state], "entropy"),
            h_b.labels,
            h_b.lo,
            h_b.hi,
        ),
    ]
    signs = {"all": valid, "pos": batch.advantages > 0, "neg": batch.advantages < 0}
    reference_cache: dict[BatchMaskSpec, np.ndarray] = {}
    rows = []
    progress.report("masks", 0, len(specs))
    for done, spec in enumerate(specs, start=1):
        ref_spec = _reference(spec, ppo_reference)
        if ref_spec not in reference_cache:
            reference_cache[ref_spec] = ~token_mask(batch, ref_spec)
        ref_drop = reference_cache[ref_spec]
        drop = ~token_mask(batch, spec)
        false_mask = drop & ~ref_drop
        missed_mask = ~drop & ref_drop
        for stratum, group, labels, lo, hi in strata:
            for sign, sign_members in signs.items():
                for b in range(len(labels)):
                    cell = (group == b) & sign_members & valid
                    count = int(cell.sum())
                    if count == 0:
                        continue
                    wc = w[cell].sum()
                    rows.append(
                        {
                            "analysis": "masks",
                            "method": spec.method,
                            "mask": spec.label,
                            "set_rule": spec.set_rule,
                            "k": spec.k,
                            "low": spec.low,
                            "high": spec.high,
                            "reference": ref_spec.method,
                            "ref_low": ref_spec.low,
                            "ref_high": ref_spec.high,
                            "stratum": stratum,
                            "bucket": labels[b],
                            "bucket_lo": lo[b],
                            "bucket_hi": hi[b],
                            "adv_sign": sign,
                            "n_tokens": count,
                            "weight_share": wc / total_w,
                            "mask_rate": w[cell & drop].sum() / wc,
                            "ref_mask_rate": w[cell & ref_drop].sum() / wc,
                            "false_mask_rate": w[cell & false_mask].sum() / wc,
                            "missed_mask_rate": w[cell & missed_mask].sum() / wc,
                            "grad_share": grad[cell].sum() / total_grad,
                            "grad_share_false": grad[cell & false_mask].sum() / total_grad,
                            "grad_share_missed": grad[cell & missed_mask].sum() / total_grad,
                        }
                    )
        progress.report("masks", done, len(specs))
    return pd.DataFrame(rows)
