"""Token batches for the analyses: states (μ and π logits), the tokens a rollout engine reported, and weights.

A `TokenBatch` holds S states with full logits for the rollout distribution μ (the engine's) and the current
policy π, plus N tokens, each with its state, id, weight, advantage, log μ(a) as reported by the engine, log π(a),
and the Top-K id sets the engine would report under each set rule (docs/design.md §2).

Weights make expectations over a ~ μ exact or Monte Carlo with one code path:
- `enumerate_tokens`: every token of every state, weight μ(a) (exact expectations; small V only).
- `sampled_tokens`: tokens drawn from μ (n per state), weight 1/n each.
In both, the weights of one state's tokens sum to 1, so Σ_i w_i f(i) / S is an (exact or unbiased) estimate of
the state-average of E_{a~μ} f.

`simulated_update` produces a π from the trainer's logits the way a policy-gradient step would: on a softmax over
free logits z, ∇_z log π(a) = e_a − π, so one step with learning rate η on the sampled tokens' advantages Â_i is
    z' = z + η · (1/n) Σ_i Â_i (e_{a_i} − softmax(z)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import log_softmax

from trustregion_lab import divergence as div
from trustregion_lab.mismatch import TOPK_RULES, apply_set_rule

__all__ = [
    "SET_RULES",
    "TokenBatch",
    "enumerate_tokens",
    "reported_topk_sets",
    "sampled_tokens",
    "simulated_update",
    "state_entropy",
    "unique_rows",
]

SET_RULES: tuple[str, ...] = TOPK_RULES
TopKSets = Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TokenBatch:
    """States and tokens for the analyses (numpy arrays; shapes in brackets).

    Attributes:
        rollout_logits: μ's logits (the rollout engine's distribution) `[S, V]`.
        logits: π's logits (the trainer's current policy) `[S, V]`.
        state: the state of each token `[N]` int.
        token: the token id `[N]` int.
        weight: `[N]` float, per state summing to 1 (μ(a) when enumerated, 1/n when sampled).
        advantages: Â `[N]` float.
        rollout_logprob: log μ(a) as the engine reported it `[N]`.
        logprob: log π(a) `[N]`.
        topk_sets: {(set rule, K): (ids `[N, K']` int with −1 padding, log μ at the ids `[N, K']`)}.
    """

    rollout_logits: np.ndarray
    logits: np.ndarray
    state: np.ndarray
    token: np.ndarray
    weight: np.ndarray
    advantages: np.ndarray
    rollout_logprob: np.ndarray
    logprob: np.ndarray
    topk_sets: TopKSets = field(default_factory=dict)

    def __post_init__(self) -> None:
        s, v = self.rollout_logits.shape
        if self.logits.shape != (s, v):
            raise ValueError(f"logits must have shape {(s, v)} like rollout_logits, got {self.logits.shape}")
        n = self.state.shape[0]
        for name in ("token", "weight", "advantages", "rollout_logprob", "logprob"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) like state, got {getattr(self, name).shape}")
        if n and (self.state.min() < 0 or self.state.max() >= s):
            raise ValueError(f"state must hold indices in [0, {s})")
        for key, (ids, lps) in self.topk_sets.items():
            if ids.shape != lps.shape or ids.shape[0] != n:
                raise ValueError(
                    f"topk_sets[{key}] must be two [N={n}, K] arrays, got {ids.shape}, {lps.shape}"
                )

    @property
    def num_states(self) -> int:
        return self.rollout_logits.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.rollout_logits.shape[1]

    def token_logits(self, rows: slice | np.ndarray, which: str = "logits") -> np.ndarray:
        """The `[len(rows), V]` logits of the states of tokens `rows` (``which``: "logits" or "rollout_logits")."""
        return getattr(self, which)[self.state[rows]]

    def exact_divergences(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact TV(μ, π) and KL(μ‖π) per state `[S]` (float64), from `trustregion_lab.divergence`."""
        tv, kl = div.exact_tv_kl(
            np.asarray(self.rollout_logits, np.float64), np.asarray(self.logits, np.float64)
        )
        return np.asarray(tv, np.float64), np.asarray(kl, np.float64)


def unique_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicate tokens by a key: columns `[N]` or `[N, k]` (ints) → (first index of each unique key `[U]`,
    inverse `[N]` with key_i = key_{first[inverse[i]]}). Functions of the key are computed once per unique row."""
    key = np.concatenate([np.asarray(c).reshape(len(c), -1).astype(np.int64) for c in columns], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def state_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy H(p) = −Σ_v p_v log p_v (nats) of softmax(logits) per row: `[S, V]` → `[S]` float64."""
    logp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    return -(np.exp(logp) * logp).sum(-1)


def _top_ids(rollout_logprobs: np.ndarray, k: int) -> np.ndarray:
    """The K most likely ids of each state, largest first: `[S, V]` → int `[S, K]`."""
    s, v = rollout_logprobs.shape
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= v:
        raise ValueError(f"k must be an int in [1, vocab_size={v}], got {k!r}")
    top = (
        np.argpartition(-rollout_logprobs, k - 1, axis=-1)[:, :k] if k < v else np.tile(np.arange(v), (s, 1))
    )
    order = np.argsort(-np.take_along_axis(rollout_logprobs, top, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(top, order, axis=-1)


def reported_topk_sets(
    rollout_logprobs: np.ndarray,
    state: np.ndarray,
    token: np.ndarray,
    k: int,
    rule: str,
    *,
    top_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ids a rollout engine reports for each token, and log μ at them (docs/design.md §2 set rules).

    rollout_logprobs: log μ `[S, V]`; state, token `[N]`. Rules (as `trustregion_lab.mismatch.RolloutEngine`
    reports them): "topk" (the K largest μ; K ids), "topk_plus_sampled" (those plus the sampled token when
    missing; K+1 slots, −1 in the last when not needed), "topk_replace_last" (the sampled token overwrites the
    K-th id when missing; K ids). `top_ids` `[S, K]` may pass the K largest ids per state when already known.
    Returns ids `[N, K']` int64 and log-probs `[N, K']` float64 (−inf at −1 slots).
    """
    top = (_top_ids(rollout_logprobs, k) if top_ids is None else top_ids)[state]  # [N, K], largest first
    ids = apply_set_rule(
        torch.from_numpy(np.ascontiguousarray(top)), torch.from_numpy(np.asarray(token)), rule
    )
    ids = ids.numpy()
    lps = np.where(ids >= 0, rollout_logprobs[state[:, None], np.maximum(ids, 0)], -np.inf)
    return ids.astype(np.int64), lps.astype(np.float64)


def _build(
    rollout_logits: np.ndarray,
    logits: np.ndarray,
    state: np.ndarray,
    token: np.ndarray,
    weight: np.ndarray,
    advantages: np.ndarray,
    topk_sizes: Sequence[int],
    set_rules: Sequence[str],
    rollout_logprob: np.ndarray | None,
) -> TokenBatch:
    rollout_lp_full = log_softmax(np.asarray(rollout_logits, np.float64), axis=-1)
    lp_full = log_softmax(np.asarray(logits, np.float64), axis=-1)
    if rollout_logprob is None:
        rollout_logprob = rollout_lp_full[state, token]
    sets = {}
    for k in topk_sizes:
        top = _top_ids(rollout_lp_full, int(k))
        for rule in set_rules:
            sets[(rule, int(k))] = reported_topk_sets(
                rollout_lp_full, state, token, int(k), rule, top_ids=top
            )
    return TokenBatch(
        rollout_logits=np.asarray(rollout_logits),
        logits=np.asarray(logits),
        state=state.astype(np.int64),
        token=token.astype(np.int64),
        weight=weight.astype(np.float64),
        advantages=np.asarray(advantages, np.float64),
        rollout_logprob=np.asarray(rollout_logprob, np.float64),
        logprob=lp_full[state, token],
        topk_sets=sets,
    )


def _check_pair(rollout_logits: np.ndarray, logits: np.ndarray) -> tuple[int, int]:
    if rollout_logits.ndim != 2 or rollout_logits.shape != logits.shape:
        raise ValueError(
            f"rollout_logits and logits must both have shape [num_states, vocab], got {rollout_logits.shape} "
            f"and {logits.shape}"
        )
    if not (np.all(np.isfinite(rollout_logits)) and np.all(np.isfinite(logits))):
        raise ValueError("rollout_logits and logits must be finite")
    return rollout_logits.shape


def enumerate_tokens(
    rollout_logits: np.ndarray,
    logits: np.ndarray,
    advantages: np.ndarray,
    *,
    topk_sizes: Sequence[int] = (),
    set_rules: Sequence[str] = SET_RULES,
    max_tokens: int = 5_000_000,
) -> TokenBatch:
    """Every token of every state, weighted by μ(a): expectations over a ~ μ become exact sums.

    rollout_logits, logits: `[S, V]`; advantages: `[S, V]` (Â of each (state, token)). N = S·V tokens.
    """
    rollout_logits, logits = np.asarray(rollout_logits), np.asarray(logits)
    s, v = _check_pair(rollout_logits, logits)
    if s * v > max_tokens:
        raise ValueError(f"enumerating S·V = {s * v} tokens exceeds max_tokens={max_tokens}; sample instead")
    advantages = np.asarray(advantages, np.float64)
    if advantages.shape != (s, v):
        raise ValueError(f"advantages must have shape [num_states, vocab] = {(s, v)}, got {advantages.shape}")
    state = np.repeat(np.arange(s), v)
    token = np.tile(np.arange(v), s)
    weight = np.exp(log_softmax(np.asarray(rollout_logits, np.float64), axis=-1)).reshape(-1)
    return _build(
        rollout_logits, logits, state, token, weight, advantages.reshape(-1), topk_sizes, set_rules, None
    )


def sampled_tokens(
    rollout_logits: np.ndarray,
    logits: np.ndarray,
    tokens: np.ndarray,
    advantages: np.ndarray,
    *,
    rollout_logprob: np.ndarray | None = None,
    topk_sizes: Sequence[int] = (),
    set_rules: Sequence[str] = SET_RULES,
) -> TokenBatch:
    """Tokens sampled from μ, n per state, each weighted 1/n.

    rollout_logits, logits: `[S, V]`; tokens, advantages: `[S, n]`; rollout_logprob `[S, n]`: log μ(a) as the
    engine reported it (default: computed from rollout_logits in float64). The Top-K sets of every rule in
    `set_rules` and K in `topk_sizes` are built by `reported_topk_sets`.
    """
    rollout_logits, logits = np.asarray(rollout_logits), np.asarray(logits)
    s, v = _check_pair(rollout_logits, logits)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != s or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens must be an int array [num_states={s}, n], got {tokens.dtype} {tokens.shape}"
        )
    if tokens.min() < 0 or tokens.max() >= v:
        raise ValueError(f"tokens must be ids in [0, {v})")
    n = tokens.shape[1]
    advantages = np.asarray(advantages, np.float64)
    if advantages.shape != tokens.shape:
        raise ValueError(f"advantages must have the shape of tokens {tokens.shape}, got {advantages.shape}")
    if rollout_logprob is not None:
        rollout_logprob = np.asarray(rollout_logprob, np.float64)
        if rollout_logprob.shape != tokens.shape:
            raise ValueError(f"rollout_logprob must have the shape of tokens {tokens.shape}")
        rollout_logprob = rollout_logprob.reshape(-1)
    return _build(
        rollout_logits,
        logits,
        np.repeat(np.arange(s), n),
        tokens.reshape(-1),
        np.full(s * n, 1.0 / n),
        advantages.reshape(-1),
        topk_sizes,
        set_rules,
        rollout_logprob,
    )


def simulated_update(
    logits: np.ndarray, tokens: np.ndarray, advantages: np.ndarray, step_size: float | np.ndarray
) -> np.ndarray:
    """One policy-gradient step on free logits: z' = z + η · (1/n) Σ_i Â_i (e_{a_i} − softmax(z)).

    logits z: `[S, V]`; tokens a_i, advantages Â_i: `[S, n]`; step_size η: float or `[S]` (one per state).
    Returns float64 `[S, V]`.
    """
    z = np.asarray(logits, np.float64)
    s, _v = z.shape
    tokens = np.asarray(tokens)
    advantages = np.asarray(advantages, np.float64)
    if tokens.shape != advantages.shape or tokens.ndim != 2 or tokens.shape[0] != s:
        raise ValueError(f"tokens and advantages must both have shape [num_states={s}, n]")
    eta = np.broadcast_to(np.asarray(step_size, np.float64), (s,))
    if not np.all(np.isfinite(eta)) or np.any(eta < 0):
        raise ValueError("step_size must be finite and >= 0")
    n = tokens.shape[1]
    probs = np.exp(log_softmax(z, axis=-1))
    grad = -probs * advantages.sum(-1, keepdims=True)
    np.add.at(grad, (np.repeat(np.arange(s), n), tokens.reshape(-1)), advantages.reshape(-1))
    return z + (eta / n)[:, None] * grad
