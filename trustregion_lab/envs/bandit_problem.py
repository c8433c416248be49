"""Ground truth of the large-vocabulary bandit, and the counter-based random stream its envs share.

``BanditProblem`` holds everything a trainer or an analysis needs to know exactly:

- ``initial_logits``: float32 ``[num_contexts, vocab_size]`` LLM-like log-probabilities (``logit_model``), the
  distribution a policy starts from;
- ``correct_tokens``: int64 ``[num_contexts, num_correct]``, chosen by initial rank (``choose_tokens_by_rank``);
- ``reward_table``: float64 ``[num_contexts, vocab_size]`` in [0, 1] for ``reward_mode="table"``, else None;
- the reward model. R(c, a) is the noise-free reward: 1 if a is a correct token of context c, else 0
  (``"verifiable"``), or ``reward_table[c, a]`` (``"table"``). With ``reward_noise`` ε and ``bernoulli_reward``:
    * bernoulli_reward: the reward is a 0/1 draw with success probability m(c, a) = (1 − ε) R + ε (1 − R);
    * otherwise: the reward is R, replaced by 1 − R with probability ε (a verifier that errs with probability ε).
  Either way the mean reward is m(c, a) = (1 − ε) R(c, a) + ε (1 − R(c, a)).
- ``expected_reward(probs)`` = Σ_a probs[c, a] · m(c, a) = (1 − 2ε) Σ_a probs·R + ε Σ_a probs, exact, float64.

A problem is fixed by its constructor arguments and ``problem_seed`` (not by the episode seed), so every copy of
the env made with the same keywords faces the same problem; problems are cached and their arrays are read-only.

Episode randomness (the context drawn at reset, the reward noise) comes from a counter-based stream: a 64-bit key
drawn once from the env's ``np_random`` when it is seeded, and a counter. Draw number j is
u = splitmix64(key + (j + 1) · 0x9E3779B97F4A7C15) / 2^64 (the top 53 bits), so N envs with N keys draw in one
numpy operation and the batched env reproduces N single envs bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np

from trustregion_lab.envs._checks import check_int, check_probability
from trustregion_lab.envs.logit_model import LOGIT_FAMILIES, choose_tokens_by_rank, llm_like_logits

__all__ = [
    "MAX_PROBLEM_BYTES",
    "MAX_VOCAB_SIZE",
    "REWARD_MODES",
    "BanditProblem",
    "counter_uniform",
    "draw_stream_key",
    "make_bandit_problem",
    "problem_bytes",
]

REWARD_MODES = ("verifiable", "table")
# docs/design.md §5: V up to 262,144, the size of the largest LLM vocabularies; above it a bandit stops being LLM-like.
MAX_VOCAB_SIZE = 262_144
# The problem's arrays (initial logits, reward table) must fit in this; a trainer holds a few more of that size.
MAX_PROBLEM_BYTES = 4 * 2**30

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def counter_uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1) from (key, counter) pairs: float64 with the shape of the uint64 inputs.

    u = (splitmix64(key + (counter + 1) · γ) >> 11) · 2^−53, γ = 0x9E3779B97F4A7C15 (arithmetic mod 2^64).
    """
    z = keys + (counters + np.uint64(1)) * _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def draw_stream_key(rng: np.random.Generator) -> np.uint64:
    """One 64-bit stream key from a gymnasium ``np_random`` generator."""
    return rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)


def problem_bytes(vocab_size: int, num_contexts: int, reward_mode: str = "verifiable") -> int:
    """Bytes of a problem's arrays: float32 initial logits ``[num_contexts, V]``, plus a float64 reward table of
    the same shape in ``"table"`` mode (the correct-token ids are negligible)."""
    per_entry = 4 + (8 if reward_mode == "table" else 0)
    return int(vocab_size) * int(num_contexts) * per_entry


def _format_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def uniform_to_index(uniform: np.ndarray, size: int) -> np.ndarray:
    """Map uniforms in [0, 1) to int64 indices in [0, size): floor(u · size), clipped against rounding."""
    return np.minimum((uniform * size).astype(np.int64), size - 1)


class BanditProblem:
    """The fixed ground truth of one bandit configuration (see the module docstring). Build with
    ``make_bandit_problem``."""

    def __init__(
        self,
        *,
        initial_logits: np.ndarray,
        correct_tokens: np.ndarray,
        reward_table: np.ndarray | None,
        reward_mode: str,
        reward_noise: float,
        bernoulli_reward: bool,
    ) -> None:
        self.initial_logits = initial_logits
        self.correct_tokens = correct_tokens
        self.reward_table = reward_table
        self.reward_mode = reward_mode
        self.reward_noise = reward_noise
        self.bernoulli_reward = bernoulli_reward
        self.num_contexts, self.vocab_size = initial_logits.shape
        for array in (initial_logits, correct_tokens, reward_table):
            if array is not None:
                array.setflags(write=False)

    @property
    def uses_noise_draw(self) -> bool:
        """Whether a step consumes one draw of the random stream (bernoulli_reward or reward_noise > 0)."""
        return self.bernoulli_reward or self.reward_noise > 0.0

    def clean_reward(self, contexts: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Noise-free R(c, a), float64 with the shape of the int64 ``contexts`` and ``actions``."""
        if self.reward_mode == "verifiable":
            correct = self.correct_tokens[contexts]  # [..., num_correct]
            return (correct == actions[..., None]).any(axis=-1).astype(np.float64)
        return self.reward_table[contexts, actions]

    def mean_reward(self, contexts: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """E[reward | c, a] = (1 − ε) R + ε (1 − R), float64 with the shape of ``contexts``."""
        clean = self.clean_reward(contexts, actions)
        eps = self.reward_noise
        return clean if eps == 0.0 else (1.0 - eps) * clean + eps * (1.0 - clean)

    def observed_reward(
        self, contexts: np.ndarray, actions: np.ndarray, uniform: np.ndarray | None
    ) -> np.ndarray:
        """The reward an env returns, given one uniform draw per step (None when ``uses_noise_draw`` is False)."""
        clean = self.clean_reward(contexts, actions)
        if not self.uses_noise_draw:
            return clean
        eps = self.reward_noise
        if self.bernoulli_reward:
            success = (1.0 - eps) * clean + eps * (1.0 - clean)
            return (uniform < success).astype(np.float64)
        return np.where(uniform < eps, 1.0 - clean, clean)

    def expected_reward(self, probs: np.ndarray, contexts: np.ndarray | None = None) -> np.ndarray:
        """Exact expected reward of a policy: Σ_a probs[i, a] · m(c_i, a), float64 ``[n]``.

        Args:
            probs: ``[num_contexts, vocab]`` action probabilities per context (row c is context c), or
                ``[n, vocab]`` together with ``contexts``; values in [0, 1].
            contexts: optional int ``[n]`` context id of each row of ``probs``.
        """
        probs = np.asarray(probs)
        if not np.issubdtype(probs.dtype, np.floating):
            raise TypeError(f"probs must be a float array [n, vocab], got dtype {probs.dtype}")
        if probs.ndim != 2 or probs.shape[1] != self.vocab_size:
            raise ValueError(f"probs must have shape [n, vocab={self.vocab_size}], got {probs.shape}")
        if contexts is None:
            if probs.shape[0] != self.num_contexts:
                raise ValueError(
                    f"probs must have shape [num_contexts={self.num_contexts}, vocab] when contexts is None, "
                    f"got {probs.shape}"
                )
            contexts = np.arange(self.num_contexts)
        else:
            contexts = np.asarray(contexts)
            if not np.issubdtype(contexts.dtype, np.integer):
                raise TypeError(f"contexts must be an integer array [n], got dtype {contexts.dtype}")
            if contexts.shape != (probs.shape[0],):
                raise ValueError(f"contexts must have shape [n={probs.shape[0]}], got {contexts.shape}")
            if contexts.size and (contexts.min() < 0 or contexts.max() >= self.num_contexts):
                raise ValueError(
                    f"contexts must lie in [0, {self.num_contexts}), got {contexts.min()}..{contexts.max()}"
                )
        if not np.all((probs >= 0.0) & (probs <= 1.0)):
            raise ValueError("probs must hold probabilities in [0, 1] (found values outside or NaN)")
        probs = probs.astype(np.float64, copy=False)
        if self.reward_mode == "verifiable":
            correct = self.correct_tokens[contexts]
            clean = np.take_along_axis(probs, correct, axis=1).sum(axis=1)
        else:
            clean = np.einsum("nv,nv->n", probs, self.reward_table[contexts])
        eps = self.reward_noise
        if eps == 0.0:
            return clean
        return (1.0 - 2.0 * eps) * clean + eps * probs.sum(axis=1)


@functools.lru_cache(maxsize=8)
def _generated_problem(
    vocab_size: int,
    num_contexts: int,
    reward_mode: str,
    num_correct: int,
    correct_rank_range: tuple[int, int],
    logit_family: str,
    reward_noise: float,
    bernoulli_reward: bool,
    problem_seed: int,
) -> BanditProblem:
    rng = np.random.default_rng(problem_seed)
    logits = llm_like_logits(rng, num_contexts, vocab_size, family=logit_family)
    correct = choose_tokens_by_rank(rng, logits, num_correct, correct_rank_range)
    table = None
    if reward_mode == "table":
        table = rng.beta(0.5, 4.0, size=(num_contexts, vocab_size))
        np.put_along_axis(table, correct, 1.0, axis=1)
    return BanditProblem(
        initial_logits=logits,
        correct_tokens=correct,
        reward_table=table,
        reward_mode=reward_mode,
        reward_noise=reward_noise,
        bernoulli_reward=bernoulli_reward,
    )


def make_bandit_problem(
    *,
    vocab_size: int,
    num_contexts: int,
    reward_mode: str = "verifiable",
    num_correct: int = 1,
    correct_rank_range: tuple[int, int] | None = None,
    logit_family: str = "mixed",
    reward_noise: float = 0.0,
    bernoulli_reward: bool = False,
    reward_table: np.ndarray | None = None,
    problem_seed: int = 0,
) -> BanditProblem:
    """Validate a bandit configuration and build (or fetch from the cache) its ``BanditProblem``.

    ``vocab_size`` is at most ``MAX_VOCAB_SIZE`` (262,144) and the problem's arrays (``problem_bytes``) at most
    ``MAX_PROBLEM_BYTES`` (4 GiB); larger requests are refused before anything is allocated, with the memory they
    would take. ``correct_rank_range`` (inclusive, 1-based initial ranks, high ≤ V; default (2, 100) clipped to V)
    sets how rare the correct tokens start. In ``"table"`` mode without ``reward_table`` the table is drawn
    Beta(0.5, 4) (mostly small rewards) and the correct tokens get reward 1. A given ``reward_table`` must be ``[num_contexts, V]`` in
    [0, 1]; its correct tokens are then its per-context argmax ids (``num_correct`` = 1).
    """
    vocab_size = check_int("vocab_size", vocab_size, 2)
    num_contexts = check_int("num_contexts", num_contexts, 1)
    if not isinstance(reward_mode, str) or reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
    size = problem_bytes(vocab_size, num_contexts, reward_mode)
    layout = f"num_contexts={num_contexts:,} × vocab_size={vocab_size:,} × " + (
        "12 bytes (float32 logits, float64 reward table)"
        if reward_mode == "table"
        else "4 bytes (float32 logits)"
    )
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be <= {MAX_VOCAB_SIZE:,} (the largest LLM vocabularies), got {vocab_size:,}; "
            f"its problem alone would take {_format_bytes(size)} ({layout})"
        )
    if size > MAX_PROBLEM_BYTES:
        raise ValueError(
            f"num_contexts and vocab_size are too large together: the problem would take {_format_bytes(size)} "
            f"({layout}), more than the limit of {_format_bytes(MAX_PROBLEM_BYTES)}; use fewer contexts"
        )
    if not isinstance(logit_family, str) or logit_family not in LOGIT_FAMILIES:
        raise ValueError(f"logit_family must be one of {sorted(LOGIT_FAMILIES)}, got {logit_family!r}")
    num_correct = check_int("num_correct", num_correct, 1)
    if correct_rank_range is None:
        correct_rank_range = (min(2, vocab_size), min(100, vocab_size))
    if not isinstance(correct_rank_range, tuple | list) or len(correct_rank_range) != 2:
        raise TypeError(f"correct_rank_range must be a pair (low, high) of ints, got {correct_rank_range!r}")
    low = check_int("correct_rank_range[0]", correct_rank_range[0], 1)
    high = check_int("correct_rank_range[1]", correct_rank_range[1], low)
    if high > vocab_size:
        raise ValueError(
            f"correct_rank_range must satisfy 1 <= low <= high <= vocab_size, got {tuple(correct_rank_range)} "
            f"with vocab_size = {vocab_size}: ranks above the vocabulary do not exist"
        )
    if num_correct > high - low + 1:
        raise ValueError(f"num_correct ({num_correct}) must be <= the number of ranks in correct_rank_range")
    reward_noise = check_probability("reward_noise", reward_noise)
    if not isinstance(bernoulli_reward, bool | np.bool_):
        raise TypeError(f"bernoulli_reward must be a bool, got {type(bernoulli_reward).__name__}")
    problem_seed = check_int("problem_seed", problem_seed, 0)
    if reward_table is None:
        return _generated_problem(
            vocab_size,
            num_contexts,
            reward_mode,
            num_correct,
            (low, high),
            logit_family,
            reward_noise,
            bool(bernoulli_reward),
            problem_seed,
        )
    if reward_mode != "table":
        raise ValueError(
            f"reward_table is only used with reward_mode='table', got reward_mode={reward_mode!r}"
        )
    if not isinstance(reward_table, np.ndarray) or not np.issubdtype(reward_table.dtype, np.floating):
        raise TypeError("reward_table must be a float numpy array [num_contexts, vocab_size]")
    if reward_table.shape != (num_contexts, vocab_size):
        raise ValueError(
            f"reward_table must have shape [num_contexts={num_contexts}, vocab_size={vocab_size}], "
            f"got {reward_table.shape}"
        )
    if not np.all((reward_table >= 0.0) & (reward_table <= 1.0)):
        raise ValueError("reward_table must hold rewards in [0, 1] (found values outside or NaN)")
    rng = np.random.default_rng(problem_seed)
    logits = llm_like_logits(rng, num_contexts, vocab_size, family=logit_family)
    return BanditProblem(
        initial_logits=logits,
        correct_tokens=np.argmax(reward_table, axis=1)[:, None].astype(np.int64),
        reward_table=np.array(reward_table, dtype=np.float64),
        reward_mode=reward_mode,
        reward_noise=reward_noise,
        bernoulli_reward=bool(bernoulli_reward),
    )
