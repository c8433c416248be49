"""Independent float64 numpy/scipy references for the core numerics (docs/design.md §2), written from the definitions.

They use plain formulas on full probability vectors; rest buckets are summed over the complement of the set
directly (not 1 − Σ), so they share no numerical trick with the package.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp


def logprobs(logits: np.ndarray) -> np.ndarray:
    return log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def tv(mu_logits: np.ndarray, pi_logits: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(np.exp(logprobs(mu_logits)) - np.exp(logprobs(pi_logits))).sum(-1)


def kl(mu_logits: np.ndarray, pi_logits: np.ndarray) -> np.ndarray:
    lmu, lpi = logprobs(mu_logits), logprobs(pi_logits)
    return (np.exp(lmu) * (lmu - lpi)).sum(-1)


def chi2(mu_logits: np.ndarray, pi_logits: np.ndarray) -> np.ndarray:
    mu, pi = np.exp(logprobs(mu_logits)), np.exp(logprobs(pi_logits))
    return ((pi - mu) ** 2 / mu).sum(-1)


def binary_tv(lmu: np.ndarray, lpi: np.ndarray) -> np.ndarray:
    return np.abs(np.exp(lpi) - np.exp(lmu))


def binary_kl(lmu: np.ndarray, lpi: np.ndarray) -> np.ndarray:
    lmu, lpi = np.asarray(lmu, np.float64), np.asarray(lpi, np.float64)
    mu = np.exp(lmu)
    one_minus_mu = -np.expm1(lmu)
    one_minus_pi = -np.expm1(lpi)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(one_minus_mu > 0, one_minus_mu * (np.log(one_minus_mu) - np.log(one_minus_pi)), 0.0)
    return mu * (lmu - lpi) + rest


def _partition(mu_logits: np.ndarray, pi_logits: np.ndarray, ids: np.ndarray):
    """Probabilities of the set (μ, π `[N, K]`, 0 at padding) and log-masses of the complement (`[N]`)."""
    lmu, lpi = logprobs(mu_logits), logprobs(pi_logits)
    ids = np.asarray(ids)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    mu_s = np.where(valid, np.exp(np.take_along_axis(lmu, safe, -1)), 0.0)
    pi_s = np.where(valid, np.exp(np.take_along_axis(lpi, safe, -1)), 0.0)
    in_set = np.zeros(lmu.shape, dtype=bool)
    for row in range(ids.shape[0]):
        in_set[row, ids[row][valid[row]]] = True
    lmu_rest = logsumexp(np.where(in_set, -np.inf, lmu), axis=-1)
    lpi_rest = logsumexp(np.where(in_set, -np.inf, lpi), axis=-1)
    return mu_s, pi_s, lmu_rest, lpi_rest


def topk_tv(mu_logits: np.ndarray, pi_logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    mu_s, pi_s, lmu_r, lpi_r = _partition(mu_logits, pi_logits, ids)
    return 0.5 * (np.abs(mu_s - pi_s).sum(-1) + np.abs(np.exp(lmu_r) - np.exp(lpi_r)))


def topk_kl(mu_logits: np.ndarray, pi_logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    mu_s, pi_s, lmu_r, lpi_r = _partition(mu_logits, pi_logits, ids)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_id = np.where(mu_s > 0, mu_s * (np.log(mu_s) - np.log(pi_s)), 0.0).sum(-1)
        rest = np.where(np.isfinite(lmu_r), np.exp(lmu_r) * (lmu_r - lpi_r), 0.0)
    return per_id + rest


def ppo_drop(r: np.ndarray, adv: np.ndarray, low: float, high: float) -> np.ndarray:
    """docs/design.md §2 'ppo': drop if Â > 0 and r > 1 + high, or Â < 0 and r < 1 − low."""
    return ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - low))


def divergence_drop(
    d: np.ndarray, pi_a: np.ndarray, mu_a: np.ndarray, adv: np.ndarray, low: float, high: float
):
    """docs/design.md §2 DPPO rule: drop if Â > 0, D > high, π(a) > μ(a); or Â < 0, D > low, π(a) < μ(a)."""
    return ((adv > 0) & (d > high) & (pi_a > mu_a)) | ((adv < 0) & (d > low) & (pi_a < mu_a))


def two_point_tv_kl(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact TV(μ, π) and KL(μ‖π) of two-token rows `[..., 2]` in closed form, valid for any finite logits.

    With the half logit gaps a = x₀/2 − x₁/2 and b = y₀/2 − y₁/2 (exact halves, never overflowing):
    μ₀ = σ(2a), log μ₀ = −softplus(−2a), log μ₁ = −softplus(2a) (likewise π with b), so
    KL = 2 · Σ_i μ_i (h(∓b) − h(∓a)) with h(t) = softplus(2t)/2 = max(t, 0) + log1p(e^(−2|t|))/2, finite for
    every finite t. The final doubling overflows to inf only where the true KL exceeds the float64 range.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = x[..., 0] / 2 - x[..., 1] / 2
    b = y[..., 0] / 2 - y[..., 1] / 2

    def h(t: np.ndarray) -> np.ndarray:
        return np.maximum(t, 0.0) + np.log1p(np.exp(-2.0 * np.abs(t))) / 2

    def sigmoid_2t(t: np.ndarray) -> np.ndarray:  # σ(2t) without overflow
        e = np.exp(-2.0 * np.abs(t))
        return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    with np.errstate(over="ignore"):
        mu0, mu1, pi0, pi1 = sigmoid_2t(a), sigmoid_2t(-a), sigmoid_2t(b), sigmoid_2t(-b)
        half_kl = mu0 * (h(-b) - h(-a)) + mu1 * (h(b) - h(a))
        kl_value = 2.0 * half_kl
    # TV = |μ₀ − π₀| = |μ₁ − π₁|: take the pair of smaller masses, which carry no rounding from 1 − m
    tv_value = np.where(a / 2 + b / 2 >= 0, np.abs(mu1 - pi1), np.abs(mu0 - pi0))
    return tv_value, np.maximum(kl_value, 0.0)
