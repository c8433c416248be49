"""Binary TV and KL: the divergence of the partition {a, rest}, from the sampled token's log-probs `[...]`.

Paper Eq. 13–14, with μ(a), π(a) the sampled token's probabilities under the rollout engine and the trainer:
    TV_bin = |π(a) − μ(a)|
    KL_bin = μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a)))
By the data-processing inequality both are lower bounds of the exact divergence (and of Top-K when a ∈ S).

Numerics and floors:
- 1 − p is computed in log space with `log1mexp`, never as 1 − exp(x); |π(a) − μ(a)| with `abs_exp_diff`.
- Binary KL floors its rest buckets 1 − μ(a) and 1 − π(a) at the resolution of the log-probs' dtype, eps/2
  (`resolution_log_floor`: ≈ 6e-8 for float32, 1.1e-16 for float64), since a rounded log-prob of exactly 0 only
  says the rest is below it.
- The per-token maths runs in float64 whatever the inputs' dtype.
"""

from __future__ import annotations

import torch

from trustregion_lab._arrays import ArrayLike
from trustregion_lab.divergence.common import (
    LOG_MASS_FLOOR,
    abs_exp_diff,
    log1mexp,
    resolution_log_floor,
    sampled_logprobs,
)

__all__ = ["binary_kl", "binary_tv"]


def _floor_log_mass(x: torch.Tensor, floor: float = LOG_MASS_FLOOR) -> torch.Tensor:
    return x.clamp(min=floor)


def _binary_tv(lmu: torch.Tensor, lpi: torch.Tensor) -> torch.Tensor:
    return abs_exp_diff(lpi, lmu)


def _binary_kl(lmu: torch.Tensor, lpi: torch.Tensor, log_floor: float) -> torch.Tensor:
    lmu_rest = _floor_log_mass(log1mexp(lmu), log_floor)
    lpi_rest = _floor_log_mass(log1mexp(lpi), log_floor)
    out = torch.exp(lmu) * (lmu - lpi) + torch.exp(lmu_rest) * (lmu_rest - lpi_rest)
    return out.clamp(min=0.0)


def binary_tv(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """Binary TV (paper Eq. 13): |π(a) − μ(a)| from the sampled token's log-probs `[...]` → `[...]`.

    The TV of the two-outcome partition {a, rest}; a lower bound of the exact TV. `dtype`: the result's dtype.
    """
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(_binary_tv(lmu, lpi))


def binary_kl(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """Binary KL (paper Eq. 14) from the sampled token's log-probs `[...]` → `[...]`:

    μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a))), with 1 − p from log1mexp and the rest bucket's
    mass floored at the inputs' resolution, eps/2 of their dtype (`resolution_log_floor`): a float32 log π(a) that
    rounded to 0 says only that 1 − π(a) < ~6e-8. The floor follows the inputs' dtype, not `dtype` (the result's).
    """
    conv, lmu, lpi = sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(_binary_kl(lmu, lpi, resolution_log_floor(conv.input_dtype)))
