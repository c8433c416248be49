"""Estimator report card: single-sample and approximate divergence estimates against the exact TV and KL.

For every token i (state s, token a ~ μ) and estimator x with target y ∈ {TV(μ, π), KL(μ‖π)} of the state, the
error is e_i = x_i − y_s. With token weights w_i (see `trustregion_lab.analysis.tokens`), per stratum:
    bias = Σ w e / Σ w,   variance = Σ w (e − bias)² / Σ w,   mse = Σ w e² / Σ w = bias² + variance,
    bias_se = sqrt(variance / n_eff) with n_eff = (Σ w)² / Σ w²  (standard error of the bias for sampled tokens),
    rank_corr = Spearman correlation between x and y over the stratum's tokens.
Strata: "all" tokens; μ(a) buckets (log-spaced decades 1e-6 … 1); entropy-of-μ buckets.

Estimators (all computed by `trustregion_lab.divergence`):
    TV target: ratio_tv = |r − 1| / 2 (unbiased: E_{a~μ}|r − 1| = 2·TV, paper Eq. 10), binary_tv (Eq. 13),
               topk_tv (Eq. 15) for each (set rule, K).
    KL target: k1 = −log r and k3 = (r − 1) − log r (both unbiased for KL(μ‖π)), k2 = ½ (log r)² (biased),
               binary_kl (Eq. 14), topk_kl (Eq. 16) for each (set rule, K).
Binary and Top-K are lower bounds of the exact divergence (data-processing inequality), so their bias is ≤ 0.
`token_estimates` reports each estimator it has computed on the progress channel (``report("estimators", i, n)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from trustregion_lab import divergence as div
from trustregion_lab import progress
from trustregion_lab.analysis.buckets import (
    DEFAULT_ENTROPY_EDGES,
    DEFAULT_MU_EDGES,
    entropy_buckets,
    mu_buckets,
)
from trustregion_lab.analysis.stats import rank_correlation, weighted_sums
from trustregion_lab.analysis.tokens import TokenBatch, state_entropy, unique_rows

__all__ = ["ESTIMATOR_TARGETS", "estimator_report", "token_estimates"]

ESTIMATOR_TARGETS: dict[str, str] = {
    "ratio_tv": "tv",
    "binary_tv": "tv",
    "topk_tv": "tv",
    "k1": "kl",
    "k2": "kl",
    "k3": "kl",
    "binary_kl": "kl",
    "topk_kl": "kl",
}

# rows of per-token logits materialised at once for the Top-K estimates: rows · V ≤ this many elements
_CHUNK_ELEMENTS = 1 << 22


def topk_estimates(fn: Callable, batch: TokenBatch, ids: np.ndarray, lps: np.ndarray) -> np.ndarray:
    """A Top-K estimate per token `[N]`: computed once per distinct (state, reported ids) row, in chunks of
    rows whose per-token logits hold at most _CHUNK_ELEMENTS values."""
    first, inverse = unique_rows(batch.state, ids)
    out = np.empty(first.shape[0], dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // batch.vocab_size)
    for start in range(0, first.shape[0], step):
        rows = first[start : start + step]
        out[start : start + step] = fn(lps[rows], ids[rows], batch.logits[batch.state[rows]])
    return out[inverse]


def token_estimates(batch: TokenBatch) -> list[tuple[str, str, int, np.ndarray]]:
    """Every estimator's value per token: [(estimator, set_rule, K, values `[N]` float64)], set_rule/K only for Top-K."""
    lmu, lpi = batch.rollout_logprob, batch.logprob
    out: list[tuple[str, str, int, np.ndarray]] = [
        ("ratio_tv", "", 0, 0.5 * np.asarray(div.abs_ratio_dev(lmu, lpi), np.float64)),
        ("binary_tv", "", 0, np.asarray(div.binary_tv(lmu, lpi), np.float64)),
        ("k1", "", 0, np.asarray(div.kl_k1(lmu, lpi), np.float64)),
        ("k2", "", 0, np.asarray(div.kl_k2(lmu, lpi), np.float64)),
        ("k3", "", 0, np.asarray(div.kl_k3(lmu, lpi), np.float64)),
        ("binary_kl", "", 0, np.asarray(div.binary_kl(lmu, lpi), np.float64)),
    ]
    total = len(out) + 2 * len(batch.topk_sets)
    progress.report("estimators", len(out), total)
    for (rule, k), (ids, lps) in sorted(batch.topk_sets.items()):
        out.append(("topk_tv", rule, k, topk_estimates(div.topk_tv, batch, ids, lps)))
        out.append(("topk_kl", rule, k, topk_estimates(div.topk_kl, batch, ids, lps)))
        progress.report("estimators", len(out), total)
    return out


def _strata(
    batch: TokenBatch, mu_edges: Sequence[float], entropy_edges: Sequence[float]
) -> list[tuple[str, np.ndarray, list[str], np.ndarray, np.ndarray]]:
    """[(stratum name, group index per token `[N]`, labels, lo, hi)] for "all", "mu" and "entropy"."""
    mu_b = mu_buckets(mu_edges)
    h_b = entropy_buckets(entropy_edges)
    entropy = state_entropy(batch.rollout_logits)[batch.state]
    n = batch.state.shape[0]
    return [
        ("all", np.zeros(n, dtype=np.int64), ["all"], np.array([np.nan]), np.array([np.nan])),
        ("mu", mu_b.assign(np.exp(batch.rollout_logprob), "mu(a)"), list(mu_b.labels), mu_b.lo, mu_b.hi),
        ("entropy", h_b.assign(entropy, "entropy"), list(h_b.labels), h_b.lo, h_b.hi),
    ]


def estimator_report(
    batch: TokenBatch,
    *,
    mu_edges: Sequence[float] = DEFAULT_MU_EDGES,
    entropy_edges: Sequence[float] = DEFAULT_ENTROPY_EDGES,
) -> pd.DataFrame:
    """The estimator report card of `batch` as a tidy table (one row per estimator × stratum × bucket).

    Columns: analysis ("estimators"), estimator, target ("tv" | "kl"), set_rule, k, stratum ("all" | "mu" |
    "entropy"), bucket (label), bucket_lo, bucket_hi, n_tokens, weight_share (share of the batch's token weight),
    exact_mean, estimate_mean, bias, variance, mse, rmse, bias_se, rank_corr. Empty buckets are left out.
    """
    tv_exact, kl_exact = batch.exact_divergences()
    exact = {"tv": tv_exact[batch.state], "kl": kl_exact[batch.state]}
    w = batch.weight
    total_weight = w.sum()
    rows = []
    strata = _strata(batch, mu_edges, entropy_edges)
    for estimator, rule, k, values in token_estimates(batch):
        target = ESTIMATOR_TARGETS[estimator]
        y = exact[target]
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(f"estimator {estimator} produced non-finite values")
        err = values - y
        for stratum, group, labels, lo, hi in strata:
            g = len(labels)
            wsum = np.bincount(group, weights=w, minlength=g)
            w2sum = np.bincount(group, weights=w * w, minlength=g)
            count = np.bincount(group, minlength=g)
            mean_err = weighted_sums(err, w, group, g)
            mean_sq = weighted_sums(err * err, w, group, g)
            mean_x = weighted_sums(values, w, group, g)
            mean_y = weighted_sums(y, w, group, g)
            for b in np.flatnonzero(count):
                wb = wsum[b]
                bias = mean_err[b] / wb
                variance = max(mean_sq[b] / wb - bias * bias, 0.0)
                n_eff = wb * wb / w2sum[b]
                members = group == b
                rows.append(
                    {
                        "analysis": "estimators",
                        "estimator": estimator,
                        "target": target,
                        "set_rule": rule,
                        "k": k,
                        "stratum": stratum,
                        "bucket": labels[b],
                        "bucket_lo": lo[b],
                        "bucket_hi": hi[b],
                        "n_tokens": int(count[b]),
                        "weight_share": wb / total_weight,
                        "exact_mean": mean_y[b] / wb,
                        "estimate_mean": mean_x[b] / wb,
                        "bias": bias,
                        "variance": variance,
                        "mse": mean_sq[b] / wb,
                        "rmse": float(np.sqrt(mean_sq[b] / wb)),
                        "bias_se": float(np.sqrt(variance / n_eff)),
                        "rank_corr": rank_correlation(values[members], y[members]),
                    }
                )
    return pd.DataFrame(rows)
