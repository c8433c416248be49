"""``trustregion_lab/LargeVocabBandit-v0``: a one-step contextual bandit over an LLM-sized action space.

An episode is one token choice: ``reset`` draws a context id c uniformly from ``Discrete(num_contexts)``; ``step``
takes a token id a in ``Discrete(vocab_size)``, returns the reward of (c, a) and terminates. The observation after
the step is c again. ``info`` of a step holds ``"mean_reward"``: E[reward | c, a] (noise included, see
``bandit_problem``).

The ground truth is on ``env.unwrapped``: ``initial_logits`` ``[num_contexts, V]`` (LLM-like, where a policy
starts), ``correct_tokens`` ``[num_contexts, num_correct]``, ``reward_table`` (table mode) and
``expected_reward(probs)``, the exact expected reward of a policy given as ``[num_contexts, V]`` probabilities.

``LargeVocabBanditVectorEnv`` runs N copies with numpy batch operations (no Python loop over envs in ``step``);
``gymnasium.make_vec("trustregion_lab/LargeVocabBandit-v0", num_envs=N, vectorization_mode="vector_entry_point",
...)`` returns it. Its autoreset mode is ``SAME_STEP``: every step is a real pull, the returned observation is the
next episode's context, and the pulled context is in ``info["final_obs"]`` (the step's own info in
``info["final_info"]``), exactly as ``SyncVectorEnv(..., autoreset_mode=AutoresetMode.SAME_STEP)`` over single
envs reports it. Seeded the same way (``reset(seed=s)`` seeds copy i with s + i), the two agree bit for bit.

Keywords (both classes): ``vocab_size`` (2 ≤ V ≤ ``MAX_VOCAB_SIZE`` = 262,144, default 32,000), ``num_contexts``
(default 16; the problem's arrays, num_contexts × V × 4 bytes, plus 8 more per entry in table mode, must fit in
``MAX_PROBLEM_BYTES`` = 4 GiB), ``reward_mode``
(``"verifiable"`` | ``"table"``), ``num_correct`` (default 1), ``correct_rank_range`` (inclusive 1-based initial
ranks of the correct tokens, at most V; default (2, 100) clipped to V), ``logit_family`` (``"mixed"`` | ``"low_entropy"`` |
``"high_entropy"``), ``reward_noise`` (ε in [0, 1]), ``bernoulli_reward`` (bool), ``reward_table`` (optional
``[num_contexts, V]`` in [0, 1]), ``problem_seed`` (int, fixes the problem), ``render_mode`` (``"ansi"`` or None).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from trustregion_lab.envs._checks import check_token_action
from trustregion_lab.envs.bandit_problem import (
    MAX_VOCAB_SIZE,
    BanditProblem,
    counter_uniform,
    draw_stream_key,
    make_bandit_problem,
    uniform_to_index,
)

__all__ = ["MAX_VOCAB_SIZE", "LargeVocabBanditEnv", "LargeVocabBanditVectorEnv"]


def _problem_from_kwargs(
    vocab_size: int,
    num_contexts: int,
    reward_mode: str,
    num_correct: int,
    correct_rank_range: tuple[int, int] | None,
    logit_family: str,
    reward_noise: float,
    bernoulli_reward: bool,
    reward_table: np.ndarray | None,
    problem_seed: int,
) -> BanditProblem:
    if isinstance(correct_rank_range, list):
        correct_rank_range = tuple(correct_rank_range)
    return make_bandit_problem(
        vocab_size=vocab_size,
        num_contexts=num_contexts,
        reward_mode=reward_mode,
        num_correct=num_correct,
        correct_rank_range=correct_rank_range,
        logit_family=logit_family,
        reward_noise=reward_noise,
        bernoulli_reward=bernoulli_reward,
        reward_table=reward_table,
        problem_seed=problem_seed,
    )


class _BanditGroundTruth:
    """Read-only views of the problem shared by the single and the vector env."""

    problem: BanditProblem

    @property
    def initial_logits(self) -> np.ndarray:
        """float32 ``[num_contexts, vocab_size]`` initial log-probabilities (read-only)."""
        return self.problem.initial_logits

    @property
    def correct_tokens(self) -> np.ndarray:
        """int64 ``[num_contexts, num_correct]`` correct token ids (read-only)."""
        return self.problem.correct_tokens

    @property
    def reward_table(self) -> np.ndarray | None:
        """float64 ``[num_contexts, vocab_size]`` noise-free rewards in table mode, else None (read-only)."""
        return self.problem.reward_table

    def expected_reward(self, probs: np.ndarray, contexts: np.ndarray | None = None) -> np.ndarray:
        """Exact expected reward Σ_a probs[c, a] · E[reward | c, a], float64 ``[n]``; see ``BanditProblem``."""
        return self.problem.expected_reward(probs, contexts)

    def mean_reward(self, contexts: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """E[reward | c, a] for int arrays of contexts and actions, float64."""
        return self.problem.mean_reward(np.asarray(contexts), np.asarray(actions))


class LargeVocabBanditEnv(_BanditGroundTruth, gym.Env[np.int64, np.int64]):
    """One-step bandit: observation = context id, action = token id, reward from the bandit problem."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        vocab_size: int = 32_000,
        num_contexts: int = 16,
        reward_mode: str = "verifiable",
        num_correct: int = 1,
        correct_rank_range: tuple[int, int] | None = None,
        logit_family: str = "mixed",
        reward_noise: float = 0.0,
        bernoulli_reward: bool = False,
        reward_table: np.ndarray | None = None,
        problem_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.problem = _problem_from_kwargs(
            vocab_size,
            num_contexts,
            reward_mode,
            num_correct,
            correct_rank_range,
            logit_family,
            reward_noise,
            bernoulli_reward,
            reward_table,
            problem_seed,
        )
        self.vocab_size = self.problem.vocab_size
        self.num_contexts = self.problem.num_contexts
        self.observation_space = spaces.Discrete(self.num_contexts)
        self.action_space = spaces.Discrete(self.vocab_size)
        self.render_mode = render_mode
        self._stream_key: np.ndarray | None = None  # uint64 [1]
        self._stream_counter = np.zeros(1, dtype=np.uint64)
        self._context: int | None = None
        self._done = False
        self._last: tuple[int, int, float] | None = None

    def _draw(self) -> np.ndarray:
        uniform = counter_uniform(self._stream_key, self._stream_counter)
        self._stream_counter += np.uint64(1)
        return uniform

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict]:
        super().reset(seed=seed)
        if seed is not None or self._stream_key is None:
            self._stream_key = np.array([draw_stream_key(self.np_random)], dtype=np.uint64)
            self._stream_counter = np.zeros(1, dtype=np.uint64)
        self._context = int(uniform_to_index(self._draw(), self.num_contexts)[0])
        self._done = False
        self._last = None
        return np.int64(self._context), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        """One pull: ``action`` is a token id (int, numpy int, or a 0-d integer array/tensor)."""
        if self._context is None or self._done:
            raise RuntimeError("step() needs a fresh episode: call reset() first (each episode is one step)")
        action = check_token_action(action, self.vocab_size)
        contexts = np.array([self._context], dtype=np.int64)
        actions = np.array([action], dtype=np.int64)
        uniform = self._draw() if self.problem.uses_noise_draw else None
        reward = float(self.problem.observed_reward(contexts, actions, uniform)[0])
        mean = float(self.problem.mean_reward(contexts, actions)[0])
        self._done = True
        self._last = (self._context, action, reward)
        return np.int64(self._context), reward, True, False, {"mean_reward": mean}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self._context is None:
            return "LargeVocabBandit: not reset\n"
        if self._last is None:
            return f"context {self._context}: waiting for a token\n"
        context, action, reward = self._last
        correct = self.problem.correct_tokens[context].tolist()
        return f"context {context}: token {action} -> reward {reward:g} (correct tokens {correct})\n"


class LargeVocabBanditVectorEnv(_BanditGroundTruth, VectorEnv):
    """N copies of ``LargeVocabBanditEnv`` stepped with numpy batch operations; autoreset mode SAME_STEP."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int,
        vocab_size: int = 32_000,
        num_contexts: int = 16,
        reward_mode: str = "verifiable",
        num_correct: int = 1,
        correct_rank_range: tuple[int, int] | None = None,
        logit_family: str = "mixed",
        reward_noise: float = 0.0,
        bernoulli_reward: bool = False,
        reward_table: np.ndarray | None = None,
        problem_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode must be None for the vector bandit, got {render_mode!r}")
        self.problem = _problem_from_kwargs(
            vocab_size,
            num_contexts,
            reward_mode,
            num_correct,
            correct_rank_range,
            logit_family,
            reward_noise,
            bernoulli_reward,
            reward_table,
            problem_seed,
        )
        self.num_envs = int(num_envs)
        self.vocab_size = self.problem.vocab_size
        self.num_contexts = self.problem.num_contexts
        self.render_mode = None
        self.single_observation_space = spaces.Discrete(self.num_contexts)
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._stream_keys = np.zeros(self.num_envs, dtype=np.uint64)
        self._stream_counters = np.zeros(self.num_envs, dtype=np.uint64)
        self._keyed = False
        self._contexts = np.zeros(self.num_envs, dtype=np.int64)
        self._all_true = np.ones(self.num_envs, dtype=bool)
        self._all_false = np.zeros(self.num_envs, dtype=bool)

    def _seed_streams(self, seed: int | list[int | None] | None) -> None:
        if seed is None:
            if not self._keyed:
                self._stream_keys[:] = self.np_random.integers(
                    0, np.iinfo(np.uint64).max, size=self.num_envs, dtype=np.uint64, endpoint=True
                )
                self._stream_counters[:] = 0
                self._keyed = True
            return
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer | list | tuple):
            raise TypeError(
                f"seed must be None, an int or a list of num_envs ints/None, got {type(seed).__name__}"
            )
        seeds = (
            [int(seed) + i for i in range(self.num_envs)]
            if isinstance(seed, int | np.integer)
            else list(seed)
        )
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed as a list must have num_envs={self.num_envs} entries, got {len(seeds)}")
        if isinstance(seed, int | np.integer):
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        # Seeding only: copy i's key is the first draw of the generator gymnasium builds from its seed, as in
        # the single env. This is the one per-copy loop; step() and unseeded reset() are batch operations.
        for index, env_seed in enumerate(seeds):
            if env_seed is not None:
                self._stream_keys[index] = draw_stream_key(seeding.np_random(env_seed)[0])
                self._stream_counters[index] = 0
            elif not self._keyed:
                self._stream_keys[index] = draw_stream_key(self.np_random)
                self._stream_counters[index] = 0
        self._keyed = True

    def _draw(self, where: np.ndarray | None = None) -> np.ndarray:
        if where is None:
            uniform = counter_uniform(self._stream_keys, self._stream_counters)
            self._stream_counters += np.uint64(1)
            return uniform
        uniform = counter_uniform(self._stream_keys[where], self._stream_counters[where])
        self._stream_counters[where] += np.uint64(1)
        return uniform

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._seed_streams(seed)
        reset_mask = None if options is None else options.get("reset_mask")
        if reset_mask is None:
            self._contexts = uniform_to_index(self._draw(), self.num_contexts)
        else:
            if not isinstance(reset_mask, np.ndarray) or reset_mask.dtype != np.bool_:
                raise TypeError("options['reset_mask'] must be a numpy bool array [num_envs]")
            if reset_mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] must have shape ({self.num_envs},), got {reset_mask.shape}"
                )
            self._contexts[reset_mask] = uniform_to_index(self._draw(reset_mask), self.num_contexts)
        return self._contexts.copy(), {}

    def _check_actions(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions)
        if not np.issubdtype(actions.dtype, np.integer):
            raise TypeError(
                f"actions must be an integer array [num_envs] of token ids, got dtype {actions.dtype}"
            )
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        if actions.min() < 0 or actions.max() >= self.vocab_size:
            raise ValueError(
                f"actions must be token ids in [0, {self.vocab_size}), got values in [{actions.min()}, {actions.max()}]"
            )
        return actions.astype(np.int64, copy=False)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._keyed:
            raise RuntimeError("step() needs reset() first")
        actions = self._check_actions(actions)
        contexts = self._contexts
        uniform = self._draw() if self.problem.uses_noise_draw else None
        rewards = self.problem.observed_reward(contexts, actions, uniform)
        mean = self.problem.mean_reward(contexts, actions)
        final_obs = np.empty(self.num_envs, dtype=object)
        final_obs[:] = list(contexts)
        infos = {
            "final_obs": final_obs,
            "_final_obs": self._all_true.copy(),
            "final_info": {"mean_reward": mean, "_mean_reward": self._all_true.copy()},
            "_final_info": self._all_true.copy(),
        }
        # SAME_STEP autoreset: every copy terminated, so every copy starts its next episode now.
        self._contexts = uniform_to_index(self._draw(), self.num_contexts)
        return self._contexts.copy(), rewards, self._all_true.copy(), self._all_false.copy(), infos
