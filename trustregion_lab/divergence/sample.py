"""Single-sample estimates of TV and KL(μ‖π) from the sampled token's log-probs `[...]`, a ~ μ.

With the sampled token's ratio r = π(a)/μ(a) (paper Eq. 10; Schulman's k1–k3):
    |r − 1|  (E = 2·TV),  k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r  (E k1 = E k3 = KL(μ‖π)).
The per-token maths runs in float64 whatever the inputs' dtype.
"""

from __future__ import annotations

import torch

from trustregion_lab._arrays import ArrayLike
from trustregion_lab.divergence.common import sampled_logprobs

__all__ = ["abs_ratio_dev", "kl_k1", "kl_k2", "kl_k3"]


def abs_ratio_dev(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """|r − 1| with r = π(a)/μ(a), from log-probs `[...]`: the single-sample estimate of 2·TV (paper Eq. 10).

    Computed as |expm1(log π(a) − log μ(a))|. r beyond the output dtype's range gives inf (the true value does not
    fit), never NaN. `dtype`: the result's float dtype (default the inputs').
    """
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(torch.expm1(lpi - lmu).abs())


def kl_k1(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k1 = −log r = log μ(a) − log π(a) `[...]`: unbiased for KL(μ‖π) when a ~ μ; single values can be negative."""
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(lmu - lpi)


def kl_k2(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k2 = ½ (log r)² `[...]`: low-variance, biased estimate of KL(μ‖π) (exact to second order in log r)."""
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(0.5 * (lpi - lmu) ** 2)


def kl_k3(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k3 = (r − 1) − log r `[...]`: unbiased for KL(μ‖π) when a ~ μ and never negative."""
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    log_r = lpi - lmu
    return conv.out((torch.expm1(log_r) - log_r).clamp(min=0.0))
