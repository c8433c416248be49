"""Independent float64 numpy/scipy references for the core numerics (DESIGN §2), written from the definitions.

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
    """DESIGN §2 'ppo': drop if Â > 0 and r > 1 + high, or Â < 0 and r < 1 − low."""
    return ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - low))


def divergence_drop(
    d: np.ndarray, pi_a: np.ndarray, mu_a: np.ndarray, adv: np.ndarray, low: float, high: float
):
    """DESIGN §2 DPPO rule: drop if Â > 0, D > high, π(a) > μ(a); or Â < 0, D > low, π(a) < μ(a)."""
    return ((adv > 0) & (d > high) & (pi_a > mu_a)) | ((adv < 0) & (d > low) & (pi_a < mu_a))
