"""LLM-like initial next-token distributions: power-law (Zipf) ranks with a per-state temperature.

Every state gets a full next-token distribution over a vocabulary of V ids, built as follows.

1. A random permutation of the vocabulary assigns each token id a rank k = 1 … V (rank 1 = most likely).
2. The ranks follow a Zipf law with a temperature: logit(k) = −(s / T) · ln k + Δ · [k = 1], with s the Zipf
   exponent (default 1.0, the classic word-frequency law), T the state's temperature and Δ ≥ 0 a boost of the
   top token. Each state draws a target entropy H* (nats) from its family, and one of two parameters is solved so
   that the state's entropy equals H*:

   - confident states: T is drawn log-uniformly from the family's ``temperature_range`` (default 0.67 … 0.8, a
     tail exponent s / T of 1.25 … 1.5) and Δ is solved. With q the top-1 probability,
         H(q) = −q ln q − (1 − q) ln(1 − q) + (1 − q) · H_rest,
     where H_rest is the entropy of the Zipf law over ranks 2 … V (independent of Δ). H(q) falls monotonically
     from the unboosted entropy to 0 as q → 1, so q is found by bisection on ln(1 − q) and
     Δ = ln(q / (1 − q)) + ln Z_rest, Z_rest = Σ_{k=2..V} k^(−s/T). The tail stays realistic: a state with top-1
     mass 0.9999 keeps probabilities of order 1e-9 … 1e-12 deep in the tail (a logit range of ≈ 25–30 nats), as
     real LLM logits do, rather than the 1e-50 a plain sharp power law would give.
   - forking states: Δ = 0 and T is solved: the exponent β = s / T of the plain Zipf law with entropy H* is read
     off a cached grid of H(β) for this V (log-linear interpolation over 400 exponents, entropy error < 1 %).
     Their mass sits on a handful of alternatives (top-1 ≈ 0.4–0.85, top-20 ≥ 0.85), like "Wait" / "So" / "But".

The result is returned as normalised log-probabilities (log-sum-exp = 0 up to float32 rounding), float32,
shape ``[num_states, vocab_size]``.

Families (target entropy H* in nats, drawn log-uniformly):

- ``"mixed"`` (default): a share ``forking_share`` = 20 % of the states (an exact count, at random positions) are
  forking states with H* in [0.67, 3.0]; the other 80 % are confident states with H* in [1e-3, 0.67].
- ``"low_entropy"``: every state confident, H* in [1e-3, 0.67].
- ``"high_entropy"``: every state forking, H* in [0.67, 3.0].

Calibration targets and sources (checked by ``tests/test_envs.py`` at V = 32,000 and V = 151,936):

- Entropy quantiles. Wang et al. 2025 (arXiv 2506.01939, "Beyond the 80/20 rule"), Fig. 2(a): in chain-of-thought
  traces most tokens are generated with low entropy, the 80th percentile of token entropy is ≈ 0.67 nats, and
  (as we read the figure) about half of the tokens have entropy below ≈ 0.07 nats. Targets: ``"mixed"``: 80th percentile in
  [0.5, 0.85] nats, median in [0.02, 0.15] nats. ``"low_entropy"``: every state < 0.7 nats, median < 0.05.
  ``"high_entropy"``: every state ≥ 0.6 nats, median in [1.0, 2.0].
- Top-1 mass. The DPPO paper (Qi et al. 2026, arXiv 2602.04879), Fig. 2: many sampled tokens have μ(a) ≈ 1, and
  the tokens PPO clips sit at μ ≈ 0.1–0.15 with high entropy (Fig. 6–7), i.e. next to a top token well below 1.
  Targets: ``"mixed"``: median top-1 mass ≥ 0.97, at least 60 % of states with top-1 mass ≥ 0.9 and at least
  10 % with top-1 mass ≤ 0.75. ``"low_entropy"``: median ≥ 0.99. ``"high_entropy"``: median in [0.5, 0.8].
- Top-20 mass. The DPPO paper's Top-K divergence uses K = 20 (§4.4) as a close approximation of the full
  distribution, which presumes that the top 20 tokens carry most of the mass. Targets: ``"mixed"``: median ≥ 0.99
  and at least 90 % of states ≥ 0.8; ``"low_entropy"``: every state ≥ 0.95; ``"high_entropy"``: median in
  [0.95, 0.995] and every state ≥ 0.8.

``choose_tokens_by_rank`` picks "correct" tokens for the bandit with control of how rare they start: for every
state it draws distinct ranks uniformly from an inclusive 1-based range (rank 1 = the initial mode) and returns the
token ids holding those ranks. With the ``"mixed"`` family (V = 32,000), the token at rank 2 has a median initial
probability ≈ 1e-3 (≈ 0.15 at most, in forking states), the token at rank 100 ≈ 3e-6 (5e-8 … 3e-4).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from trustregion_lab.envs._checks import check_int

__all__ = ["LOGIT_FAMILIES", "LogitFamily", "choose_tokens_by_rank", "llm_like_logits"]


@dataclass(frozen=True)
class LogitFamily:
    """A family of states: the share of forking states and the ranges their parameters are drawn from.

    Entropy ranges are in nats, inclusive, drawn log-uniformly; ``temperature_range`` sets T of the Zipf tail.
    """

    name: str
    forking_share: float
    confident_entropy_range: tuple[float, float]
    forking_entropy_range: tuple[float, float]
    temperature_range: tuple[float, float] = (0.67, 0.8)


LOGIT_FAMILIES: dict[str, LogitFamily] = {
    "mixed": LogitFamily("mixed", 0.2, (1e-3, 0.67), (0.67, 3.0)),
    "low_entropy": LogitFamily("low_entropy", 0.0, (1e-3, 0.67), (0.67, 3.0)),
    "high_entropy": LogitFamily("high_entropy", 1.0, (1e-3, 0.67), (0.67, 3.0)),
}

_BISECTION_STEPS = 80


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size=size))


def _zipf_rest_stats(tail_exponent: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Z_rest = Σ_{k=2..V} k^(−β) and the entropy H_rest of the law over ranks 2 … V, per β. float64 [n]."""
    log_rank = np.log(np.arange(2, vocab_size + 1, dtype=np.float64))
    z_rest = np.empty(tail_exponent.shape[0])
    h_rest = np.empty(tail_exponent.shape[0])
    chunk = max(1, 2_000_000 // max(vocab_size, 1))
    for start in range(0, tail_exponent.shape[0], chunk):
        beta = tail_exponent[start : start + chunk, None]
        weights = np.exp(-beta * log_rank)
        z = weights.sum(axis=1)
        mean_log_rank = (weights * log_rank).sum(axis=1) / z
        z_rest[start : start + chunk] = z
        h_rest[start : start + chunk] = np.log(z) + beta[:, 0] * mean_log_rank
    return z_rest, h_rest


def _head_probability(target_entropy: np.ndarray, z_rest: np.ndarray, h_rest: np.ndarray) -> np.ndarray:
    """Top-1 probability q with H(q) = target (bisection on ln(1 − q)); q = unboosted value if target too high."""
    q_unboosted = 1.0 / (1.0 + z_rest)

    def entropy(log_rest: np.ndarray) -> np.ndarray:
        rest = np.exp(log_rest)
        q = -np.expm1(log_rest)
        return -q * np.log(q) - rest * log_rest + rest * h_rest

    # 1 − q lies in [tiny, 1 − q_unboosted]; bisect on its logarithm.
    log_rest_high = np.log1p(-q_unboosted)
    log_rest_low = np.full_like(log_rest_high, -690.0)
    for _ in range(_BISECTION_STEPS):
        log_rest_mid = 0.5 * (log_rest_low + log_rest_high)
        too_flat = entropy(log_rest_mid) > target_entropy
        log_rest_high = np.where(too_flat, log_rest_mid, log_rest_high)
        log_rest_low = np.where(too_flat, log_rest_low, log_rest_mid)
    q = -np.expm1(0.5 * (log_rest_low + log_rest_high))
    return np.maximum(q, q_unboosted)


@functools.lru_cache(maxsize=8)
def _zipf_entropy_grid(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Entropy of the plain Zipf law p(k) ∝ k^(−β), k = 1 … V, on a log-spaced grid of β. float64 [grid]."""
    exponents = np.geomspace(0.05, 40.0, 400)
    log_rank = np.log(np.arange(1, vocab_size + 1, dtype=np.float64))
    entropies = np.empty_like(exponents)
    chunk = max(1, 4_000_000 // vocab_size)
    for start in range(0, exponents.shape[0], chunk):
        beta = exponents[start : start + chunk, None]
        weights = np.exp(-beta * log_rank)
        z = weights.sum(axis=1)
        entropies[start : start + chunk] = np.log(z) + beta[:, 0] * (weights * log_rank).sum(axis=1) / z
    exponents.setflags(write=False)
    entropies.setflags(write=False)
    return exponents, entropies


def _zipf_exponent_for_entropy(target_entropy: np.ndarray, vocab_size: int) -> np.ndarray:
    """β with H(Zipf_β over V ranks) = target, by interpolation of ln β against H on the cached grid."""
    exponents, entropies = _zipf_entropy_grid(vocab_size)
    # entropies fall as β grows; np.interp needs increasing x.
    return np.exp(np.interp(target_entropy, entropies[::-1], np.log(exponents[::-1])))


def llm_like_logits(
    rng: np.random.Generator,
    num_states: int,
    vocab_size: int,
    *,
    family: str = "mixed",
    zipf_exponent: float = 1.0,
    forking_share: float | None = None,
    return_details: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw LLM-like next-token log-probabilities for ``num_states`` states over ``vocab_size`` tokens.

    Model (see the module docstring): logit(rank k) = −(s / T) · ln k + Δ · [k = 1] over a random permutation of
    the vocabulary, Δ solved so that the state's entropy equals its drawn target; normalised to log-probabilities.

    Args:
        rng: the numpy Generator all randomness comes from (permutations, targets, temperatures).
        num_states: number of states (rows), ≥ 1.
        vocab_size: V, ≥ 2.
        family: ``"mixed"`` (default), ``"low_entropy"`` or ``"high_entropy"`` (see ``LOGIT_FAMILIES``).
        zipf_exponent: s > 0, the exponent of the Zipf law before the temperature.
        forking_share: override the family's share of forking states, in [0, 1].
        return_details: also return a dict with float64 ``[num_states]`` arrays ``target_entropy``,
            ``temperature``, ``head_boost`` and a bool ``forking`` array.

    Returns:
        float32 ``[num_states, vocab_size]`` log-probabilities (and the details dict when asked).
    """
    num_states = check_int("num_states", num_states, 1)
    vocab_size = check_int("vocab_size", vocab_size, 2)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if family not in LOGIT_FAMILIES:
        raise ValueError(f"family must be one of {sorted(LOGIT_FAMILIES)}, got {family!r}")
    if not np.isfinite(zipf_exponent) or zipf_exponent <= 0:
        raise ValueError(f"zipf_exponent must be a finite float > 0, got {zipf_exponent}")
    spec = LOGIT_FAMILIES[family]
    share = spec.forking_share if forking_share is None else float(forking_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"forking_share must lie in [0, 1], got {forking_share}")

    num_forking = round(share * num_states)
    forking = np.zeros(num_states, dtype=bool)
    forking[rng.permutation(num_states)[:num_forking]] = True
    target_entropy = np.where(
        forking,
        _log_uniform(rng, *spec.forking_entropy_range, num_states),
        _log_uniform(rng, *spec.confident_entropy_range, num_states),
    )
    # Confident states: Zipf tail at a drawn temperature plus a solved head boost.
    temperature = _log_uniform(rng, *spec.temperature_range, num_states)
    tail_exponent = zipf_exponent / temperature
    z_rest, h_rest = _zipf_rest_stats(tail_exponent, vocab_size)
    head_prob = _head_probability(target_entropy, z_rest, h_rest)
    head_boost = np.log(head_prob) - np.log1p(-head_prob) + np.log(z_rest)
    # Forking states: a plain Zipf law whose temperature is solved for the target entropy (no boost).
    forking_exponent = _zipf_exponent_for_entropy(target_entropy[forking], vocab_size)
    tail_exponent[forking] = forking_exponent
    temperature[forking] = zipf_exponent / forking_exponent
    head_boost[forking] = 0.0
    z_rest[forking] = _zipf_rest_stats(forking_exponent, vocab_size)[0]
    log_normaliser = np.log(np.exp(head_boost) + z_rest)

    log_rank = np.log(np.arange(1, vocab_size + 1, dtype=np.float64))
    logits = np.empty((num_states, vocab_size), dtype=np.float32)
    chunk = max(1, 2_000_000 // vocab_size)
    for start in range(0, num_states, chunk):
        stop = min(start + chunk, num_states)
        by_rank = -tail_exponent[start:stop, None] * log_rank
        by_rank[:, 0] += head_boost[start:stop]
        by_rank -= log_normaliser[start:stop, None]
        token_of_rank = rng.permuted(np.broadcast_to(np.arange(vocab_size), by_rank.shape), axis=1)
        np.put_along_axis(logits[start:stop], token_of_rank, by_rank.astype(np.float32), axis=1)
    if return_details:
        details = {
            "target_entropy": target_entropy,
            "temperature": temperature,
            "head_boost": head_boost,
            "forking": forking,
        }
        return logits, details
    return logits


def choose_tokens_by_rank(
    rng: np.random.Generator,
    logits: np.ndarray,
    num_tokens: int = 1,
    rank_range: tuple[int, int] = (2, 100),
) -> np.ndarray:
    """Per state, pick ``num_tokens`` distinct token ids whose initial rank lies in ``rank_range``.

    Ranks are 1-based (rank 1 = the largest logit), ``rank_range = (low, high)`` is inclusive, and ranks are
    drawn uniformly without replacement in it; equal logits are ordered by token id. Use it to
    choose the bandit's correct tokens: ``(1, 1)`` makes the initial mode correct, ``(2, 100)`` (default) puts the
    correct token among the plausible-but-unlikely alternatives, ``(1000, V)`` makes it very rare.

    Args:
        rng: numpy Generator for the rank draws.
        logits: ``[num_states, vocab]`` logits or log-probabilities.
        num_tokens: distinct tokens per state, 1 ≤ num_tokens ≤ high − low + 1.
        rank_range: inclusive 1-based ranks (low, high) with 1 ≤ low ≤ high ≤ vocab.

    Returns:
        int64 ``[num_states, num_tokens]`` token ids, ordered by their drawn rank (most likely first).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(
            f"logits must be a float array [num_states, vocab], got {logits.dtype} {logits.shape}"
        )
    num_states, vocab_size = logits.shape
    num_tokens = check_int("num_tokens", num_tokens, 1)
    if len(rank_range) != 2:
        raise ValueError(f"rank_range must be (low, high), got {rank_range!r}")
    low = check_int("rank_range[0]", rank_range[0], 1)
    high = check_int("rank_range[1]", rank_range[1], low)
    if high > vocab_size:
        raise ValueError(
            f"rank_range must satisfy 1 <= low <= high <= vocab ({vocab_size}), got {rank_range}"
        )
    if num_tokens > high - low + 1:
        raise ValueError(
            f"num_tokens ({num_tokens}) must be <= the number of ranks in rank_range {rank_range}"
        )

    ranks = np.empty((num_states, num_tokens), dtype=np.int64)
    for state in range(num_states):
        ranks[state] = np.sort(rng.choice(high - low + 1, size=num_tokens, replace=False)) + low
    token_ids = np.empty((num_states, num_tokens), dtype=np.int64)
    chunk = max(1, 4_000_000 // vocab_size)
    for start in range(0, num_states, chunk):
        block = logits[start : start + chunk]
        if high < vocab_size:
            top = np.argpartition(-block, high - 1, axis=1)[:, :high]
        else:
            top = np.broadcast_to(np.arange(vocab_size), block.shape)
        top_values = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_values), axis=1)
        sorted_ids = np.take_along_axis(top, order, axis=1)
        token_ids[start : start + chunk] = np.take_along_axis(
            sorted_ids, ranks[start : start + chunk] - 1, axis=1
        )
    return token_ids
