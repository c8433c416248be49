"""``trustregion_lab/TokenSequence-v0``: answer a prompt token by token; a verifier scores the finished answer.

The env wraps ``TokenSequenceTask`` (one verifier for the env and for batched trainers). ``reset`` draws a prompt;
each ``step`` appends one token id (``Discrete(vocab_size)``) to the answer. EOS terminates the episode; reaching
``answer_length`` tokens without EOS truncates it (a format failure, reward −format_penalty). The reward is 0 on
every step but the last, where it is the verifier's score of the whole answer.

Observation: ``MultiDiscrete([vocab_size] * (prompt_length + answer_length))``, int64, the prompt (left-padded,
``PAD … BOS x_1 … x_L SEP``) followed by the answer so far, PAD-filled. ``info`` holds ``"answer_position"`` (the
number of answer tokens so far) and, at the end, ``"target"`` (int64 ``[answer_length]``, the correct answer).

Keywords: ``vocab_size`` (default 2,000), ``task`` (``"copy" | "reverse" | "sort" | "digit_sum"``, default
``"reverse"``), ``max_length`` (default 8), ``min_length``, ``num_symbols``, ``reward_mode`` (``"exact"`` |
``"partial"``), ``format_penalty``, ``render_mode`` (``"ansi"`` shows prompt, answer and reward).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from trustregion_lab.envs._checks import check_token_action
from trustregion_lab.envs.token_sequence import TokenSequenceTask

__all__ = ["TokenSequenceEnv"]


class TokenSequenceEnv(gym.Env[np.ndarray, np.int64]):
    """Autoregressive answer generation over a large vocabulary with a verifiable reward."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        vocab_size: int = 2000,
        task: str = "reverse",
        max_length: int = 8,
        min_length: int = 1,
        num_symbols: int = 10,
        reward_mode: str = "exact",
        format_penalty: float = 0.0,
        scratch_length: int = 0,
        scratch_zipf: float = 2.0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.task = TokenSequenceTask(
            task,
            vocab_size=vocab_size,
            max_length=max_length,
            min_length=min_length,
            num_symbols=num_symbols,
            reward_mode=reward_mode,
            format_penalty=format_penalty,
            scratch_length=scratch_length,
            scratch_zipf=scratch_zipf,
        )
        self.vocab_size = self.task.vocab_size
        self.render_mode = render_mode
        width = self.task.prompt_length + self.task.answer_length
        self.observation_space = spaces.MultiDiscrete(np.full(width, self.vocab_size, dtype=np.int64))
        self.action_space = spaces.Discrete(self.vocab_size)
        self._buffer = np.full(width, self.task.pad_id, dtype=np.int64)
        self._position = 0
        self._done = True
        self._started = False
        self._reward: float | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        prompt = self.task.sample_prompts(self.np_random, 1)[0]
        self._buffer[:] = self.task.pad_id
        self._buffer[: self.task.prompt_length] = prompt
        self._position = 0
        self._done = False
        self._started = True
        self._reward = None
        return self._buffer.copy(), {"answer_position": 0}

    @property
    def prompt(self) -> np.ndarray:
        """int64 ``[prompt_length]`` prompt of the current episode."""
        return self._buffer[: self.task.prompt_length].copy()

    @property
    def answer(self) -> np.ndarray:
        """int64 ``[tokens so far]`` answer of the current episode."""
        start = self.task.prompt_length
        return self._buffer[start : start + self._position].copy()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Append one token: ``action`` is a token id (int, numpy int, or a 0-d integer array/tensor)."""
        if not self._started or self._done:
            raise RuntimeError("step() needs a running episode: call reset() first")
        action = check_token_action(action, self.vocab_size)
        self._buffer[self.task.prompt_length + self._position] = action
        self._position += 1
        terminated = action == self.task.eos_id
        truncated = not terminated and self._position >= self.task.answer_length
        info: dict[str, Any] = {"answer_position": self._position}
        reward = 0.0
        if terminated or truncated:
            prompt = self._buffer[None, : self.task.prompt_length]
            reward = float(self.task.score(prompt, self.answer[None, :])[0])
            info["target"] = self.task.targets(prompt)[0]
            self._done = True
            self._reward = reward
        return self._buffer.copy(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._started:
            return "TokenSequence: not reset\n"
        prompt = self.task.describe_tokens(self.prompt[self.prompt != self.task.pad_id])
        answer = self.task.describe_tokens(self.answer) if self._position else ""
        reward = "pending" if self._reward is None else f"{self._reward:g}"
        return f"task {self.task.task} | prompt: {prompt} | answer: {answer} | reward: {reward}\n"
