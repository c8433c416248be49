"""Threshold calibration: which divergence threshold δ masks as many tokens as a ratio clip ε?

Every mask method with symmetric thresholds (low = high = t) drops a token exactly when its *critical
threshold* c exceeds t; c is the mask registry's own definition (``trustregion_lab.masks.METHODS[m].critical``,
docs/design.md §2), e.g.
    ppo:          c = r − 1 when Â > 0,  c = 1 − r when Â < 0          (r = π(a)/μ(a))
    dppo_<D>:     c = D when (Â > 0 and π(a) > μ(a)) or (Â < 0 and π(a) < μ(a)),  c = −∞ otherwise
    (c = −∞ for Â = 0, which is never masked.)
So the mask rate at threshold t is rate(t) = Σ w [c > t] / Σ w over tokens with Â ≠ 0, and one pass gives the
whole curve. D is computed by `trustregion_lab.divergence` (binary_tv, binary_kl, topk_tv/kl, exact tv/kl); the
rule matches `trustregion_lab.masks.trust_region_mask` token for token (checked by the tests).

The matched threshold of a method for a ratio ε is the smallest δ ≥ 0 with rate_method(δ) ≤ rate_ppo(ε): the
divergence mask that drops no more tokens than PPO's clip at ε. "reachable" is False when even δ = 0 masks fewer
tokens than PPO (then matched_delta = 0).
Iso-mask curves are these matched δ(ε), computed over all tokens and within entropy-of-μ buckets; the sweep adds
the vocabulary size and the state family as run parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from trustregion_lab import divergence as div
from trustregion_lab import masks, progress
from trustregion_lab.analysis.buckets import DEFAULT_ENTROPY_EDGES, entropy_buckets
from trustregion_lab.analysis.confusion import BatchMaskSpec
from trustregion_lab.analysis.estimators import topk_estimates
from trustregion_lab.analysis.tokens import TokenBatch, state_entropy

__all__ = ["batch_critical_thresholds", "calibration_table", "mask_rate", "matched_threshold"]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.5001, 0.01), 2))
DEFAULT_EPSILONS: tuple[float, ...] = tuple(np.round(np.arange(0.04, 0.4001, 0.02), 2))
DEFAULT_CALIBRATION_SPECS: tuple[BatchMaskSpec, ...] = (
    BatchMaskSpec("dppo_binary_tv", 0.0, 0.0),
    BatchMaskSpec("dppo_exact_tv", 0.0, 0.0),
    BatchMaskSpec("dppo_binary_kl", 0.0, 0.0),
    BatchMaskSpec("dppo_exact_kl", 0.0, 0.0),
)


def batch_critical_thresholds(batch: TokenBatch, spec: BatchMaskSpec) -> np.ndarray:
    """Per token `[N]`, the threshold c above which `spec.method` drops the token: the registry entry's critical
    threshold (``trustregion_lab.masks.MaskMethod.critical``) on the side of the token's advantage sign, −∞ for
    Â = 0. The spec's own thresholds are ignored (only its method, set rule and K are used).

    Divergences that need full logits are computed once per state (exact) or per distinct (state, reported ids)
    row (Top-K) and handed to the entry as its estimate.
    """
    entry = masks.METHODS[spec.method]
    estimate = None
    if "anchor_logits" in entry.needs:  # exact: a function of the state alone
        tv_exact, kl_exact = batch.exact_divergences()
        estimate = torch.from_numpy((kl_exact if entry.divergence == "kl" else tv_exact)[batch.state])
    elif "topk_ids" in entry.needs:
        ids, lps = batch.topk_sets[(spec.set_rule, spec.k)]
        fn = div.topk_kl if entry.divergence == "kl" else div.topk_tv
        estimate = torch.from_numpy(topk_estimates(fn, batch, ids, lps))
    inputs = masks.MaskInputs(
        logprob=torch.from_numpy(np.asarray(batch.logprob, np.float64)),
        anchor_logprob=torch.from_numpy(np.asarray(batch.rollout_logprob, np.float64)),
    )
    up, down = (c.numpy() for c in entry.critical(inputs, estimate))
    adv = batch.advantages
    return np.where(adv > 0, up, np.where(adv < 0, down, -np.inf))


def mask_rate(critical: np.ndarray, weight: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """rate(t) = Σ w [c > t] / Σ w for each t → `[len(thresholds)]` (weights of Â = 0 tokens must be 0)."""
    total = weight.sum()
    if total <= 0:
        raise ValueError("mask_rate needs a positive total weight")
    order = np.argsort(critical)
    sorted_c = critical[order]
    tail = np.concatenate([np.cumsum(weight[order][::-1])[::-1], [0.0]])  # tail[j] = Σ_{i ≥ j} w (sorted)
    idx = np.searchsorted(sorted_c, np.asarray(thresholds, np.float64), side="right")
    return tail[idx] / total


def matched_threshold(critical: np.ndarray, weight: np.ndarray, target_rate: float) -> tuple[float, bool]:
    """Smallest δ ≥ 0 with rate(δ) ≤ target_rate, and whether rate(0) ≥ target_rate (reachable)."""
    candidates = np.unique(np.concatenate([[0.0], critical[np.isfinite(critical) & (critical > 0)]]))
    rates = mask_rate(critical, weight, candidates)
    ok = np.flatnonzero(rates <= target_rate + 1e-12)
    reachable = bool(rates[0] >= target_rate - 1e-12)
    return float(candidates[ok[0]]), reachable


def calibration_table(
    batch: TokenBatch,
    specs: Sequence[BatchMaskSpec] = DEFAULT_CALIBRATION_SPECS,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    entropy_edges: Sequence[float] = DEFAULT_ENTROPY_EDGES,
) -> pd.DataFrame:
    """Mask-rate curves and matched thresholds, over all tokens and per entropy-of-μ bucket.

    Rows with record "curve": method, mask, threshold, mask_rate (ppo included).
    Rows with record "match": mask, epsilon, ppo_mask_rate, matched_delta, reachable.
    Both carry analysis ("calibration"), stratum ("all" | "entropy"), bucket, bucket_lo, bucket_hi, n_tokens.
    Progress: ``report("calibration", i, len(specs) + 2)`` after each method's critical thresholds and at the end.
    """
    valid = batch.advantages != 0
    w = np.where(valid, batch.weight, 0.0)
    h_b = entropy_buckets(entropy_edges)
    entropy_group = h_b.assign(state_entropy(batch.rollout_logits)[batch.state], "entropy")
    n = batch.state.shape[0]
    strata = [("all", np.ones(n, bool), "all", np.nan, np.nan)] + [
        ("entropy", entropy_group == b, h_b.labels[b], h_b.lo[b], h_b.hi[b]) for b in range(len(h_b.labels))
    ]
    ppo = BatchMaskSpec("ppo", 0.0, 0.0)
    critical = {}
    for done, spec in enumerate((ppo, *specs), start=1):
        critical[spec] = batch_critical_thresholds(batch, spec)
        progress.report("calibration", done, len(specs) + 2)
    rows = []
    for stratum, members, label, lo, hi in strata:
        cell = members & valid
        if not cell.any():
            continue
        base = {
            "analysis": "calibration",
            "stratum": stratum,
            "bucket": label,
            "bucket_lo": lo,
            "bucket_hi": hi,
            "n_tokens": int(cell.sum()),
        }
        wc = w[cell]
        for spec, c in critical.items():
            for t, rate in zip(thresholds, mask_rate(c[cell], wc, thresholds)):
                rows.append(
                    {
                        **base,
                        "record": "curve",
                        "method": spec.method,
                        "mask": spec.label,
                        "threshold": float(t),
                    }
                    | {"mask_rate": float(rate)}
                )
        ppo_rates = mask_rate(critical[ppo][cell], wc, epsilons)
        for spec in specs:
            for eps, target in zip(epsilons, ppo_rates):
                delta, reachable = matched_threshold(critical[spec][cell], wc, float(target))
                rows.append(
                    {
                        **base,
                        "record": "match",
                        "method": spec.method,
                        "mask": spec.label,
                        "epsilon": float(eps),
                        "ppo_mask_rate": float(target),
                        "matched_delta": delta,
                        "reachable": reachable,
                    }
                )
    progress.report("calibration", len(specs) + 2, len(specs) + 2)
    return pd.DataFrame(rows)
