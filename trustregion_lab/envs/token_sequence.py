"""Numpy-batched token-sequence tasks with a verifier: copy, reverse, sort and digit sum.

``TokenSequenceTask`` is the one verifier of the project's sequence tasks. A trainer uses it directly (sample a
batch of prompts, sample answers from a policy, score them) and ``TokenSequence-v0`` wraps it as a gymnasium env.

Vocabulary layout (``vocab_size`` = V ids, V ≥ 4 + num_symbols):

- 0 = PAD, 1 = BOS, 2 = SEP, 3 = EOS (``pad_id``, ``bos_id``, ``sep_id``, ``eos_id``);
- 4 … 4 + num_symbols − 1: the task symbols; symbol value v ∈ {0 … num_symbols − 1} has id 4 + v
  (``symbol_offset`` = 4). For ``digit_sum`` the values are decimal digits (num_symbols ≥ 10, prompts use 0 … 9);
- 4 + num_symbols … V − 1: ids the task never uses. With V in the thousands most of the vocabulary is unused, so
  an untrained policy spreads its mass over a long tail of wrong ids, as an LLM does.

Prompt, ``int64 [n, prompt_length]`` with ``prompt_length = max_length + 2``, left-padded so the answer always
starts at the same position:  PAD … PAD BOS x_1 … x_L SEP  with L ∈ [min_length, max_length] drawn uniformly and
x_i uniform symbols.

Answer: ``scratch_length`` free tokens (a scratchpad the verifier never reads, 0 by default), then the answer
tokens followed by EOS. ``answer_length`` is the longest answer including the scratchpad and EOS:
scratch_length + max_length + 1 for copy / reverse / sort, and scratch_length + (number of decimal digits of
9 · max_length) + 1 for digit_sum.

Scratchpad: like the reasoning text of an LLM's response, it keeps entropy in stretches the reward ignores.
Demonstrations (``demonstrations``, for the supervised warm start) fill it with i.i.d. tokens from a Zipf law over
every non-special id: P(the id of rank k) ∝ k^(−scratch_zipf), ranks in a fixed pseudo-random order of the ids
(entropy ≈ 1.6 nats per token at exponent 2 and V = 2,000). An EOS inside the scratchpad is a format failure.

Tasks, with x the prompt symbol values: ``copy`` → x; ``reverse`` → x reversed; ``sort`` → x sorted ascending;
``digit_sum`` → the decimal digits of Σ x_i, most significant first (no leading zeros; the sum 0 is "0").

Scoring, ``score(prompts, answers) -> float64 [n]``: the first scratch_length tokens are skipped, and the rest is
read up to its first EOS. An answer without EOS there (or with an EOS inside the scratchpad) is a format failure
and scores −format_penalty. Otherwise, with y the tokens before EOS and t the target:

- ``reward_mode="exact"`` (default): 1.0 if y == t (same length, same ids), else 0.0.
- ``reward_mode="partial"``: (number of positions i < min(|y|, |t|) with y_i = t_i) / max(|y|, |t|), so extra or
  missing tokens cost credit and only an exact answer scores 1.
"""

from __future__ import annotations

import numpy as np

from trustregion_lab._validate import check_real
from trustregion_lab.envs._checks import check_int

__all__ = ["REWARD_MODES", "TASKS", "TokenSequenceTask"]

TASKS = ("copy", "reverse", "sort", "digit_sum")
REWARD_MODES = ("exact", "partial")
_SCRATCH_ORDER_SEED = 0x5C7A7C4


def _check_token_array(name: str, array: object, vocab_size: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy integer array [n, length], got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be a numpy integer array [n, length], got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, length], got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(
            f"{name} must hold token ids in [0, {vocab_size}), got values in [{array.min()}, {array.max()}]"
        )
    return array.astype(np.int64, copy=False)


class TokenSequenceTask:
    """A batched sequence task: sample prompts, build targets, score answers (see the module docstring).

    Args:
        task: ``"copy" | "reverse" | "sort" | "digit_sum"``.
        vocab_size: V ≥ 4 + num_symbols.
        max_length: longest prompt (number of symbols), ≥ 1.
        min_length: shortest prompt, 1 ≤ min_length ≤ max_length.
        num_symbols: distinct symbol values, ≥ 2 (≥ 10 for digit_sum, whose prompts use the digits 0 … 9).
        reward_mode: ``"exact"`` (0/1) or ``"partial"`` (share of positions right).
        format_penalty: ≥ 0; an answer without EOS scores −format_penalty.
        scratch_length: ≥ 0 free tokens before the verified answer (module docstring).
        scratch_zipf: > 0, the Zipf exponent of the demonstrations' scratchpad tokens.
    """

    pad_id: int = 0
    bos_id: int = 1
    sep_id: int = 2
    eos_id: int = 3
    symbol_offset: int = 4

    def __init__(
        self,
        task: str,
        vocab_size: int = 2000,
        max_length: int = 8,
        min_length: int = 1,
        num_symbols: int = 10,
        reward_mode: str = "exact",
        format_penalty: float = 0.0,
        scratch_length: int = 0,
        scratch_zipf: float = 2.0,
    ) -> None:
        if not isinstance(task, str) or task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not isinstance(reward_mode, str) or reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        self.max_length = check_int("max_length", max_length, 1)
        self.min_length = check_int("min_length", min_length, 1)
        if self.min_length > self.max_length:
            raise ValueError(f"min_length must be <= max_length ({self.max_length}), got {self.min_length}")
        self.num_symbols = check_int("num_symbols", num_symbols, 10 if task == "digit_sum" else 2)
        self.vocab_size = check_int("vocab_size", vocab_size, 2)
        if self.vocab_size < self.symbol_offset + self.num_symbols:
            raise ValueError(
                f"vocab_size must be >= {self.symbol_offset + self.num_symbols} "
                f"(4 special ids + num_symbols), got {self.vocab_size}"
            )
        if isinstance(format_penalty, bool) or not isinstance(format_penalty, int | float | np.floating):
            raise TypeError(f"format_penalty must be a float >= 0, got {type(format_penalty).__name__}")
        if not np.isfinite(format_penalty) or format_penalty < 0:
            raise ValueError(f"format_penalty must be a finite float >= 0, got {format_penalty}")
        self.task = task
        self.reward_mode = reward_mode
        self.format_penalty = float(format_penalty)
        self.scratch_length = check_int("scratch_length", scratch_length, 0)
        self.scratch_zipf = check_real("scratch_zipf", scratch_zipf, positive=True)
        self.prompt_length = self.max_length + 2
        if task == "digit_sum":
            self._sum_digits = len(str(9 * self.max_length))
            self.verified_length = self._sum_digits + 1
        else:
            self.verified_length = self.max_length + 1
        self.answer_length = self.scratch_length + self.verified_length
        # The largest symbol value a prompt uses (digits for digit_sum).
        self._prompt_symbols = 10 if task == "digit_sum" else self.num_symbols

    def __repr__(self) -> str:
        return (
            f"TokenSequenceTask(task={self.task!r}, vocab_size={self.vocab_size}, max_length={self.max_length}, "
            f"min_length={self.min_length}, num_symbols={self.num_symbols}, reward_mode={self.reward_mode!r}, "
            f"format_penalty={self.format_penalty}, scratch_length={self.scratch_length}, "
            f"scratch_zipf={self.scratch_zipf})"
        )

    # ------------------------------------------------------------------ prompts and targets
    def sample_prompts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` prompts: int64 ``[n, prompt_length]``, PAD … BOS x_1 … x_L SEP (left-padded)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        n = check_int("n", n, 0)
        lengths = rng.integers(self.min_length, self.max_length + 1, size=n)
        values = rng.integers(0, self._prompt_symbols, size=(n, self.max_length))
        return self._build_prompts(lengths, values)

    def _build_prompts(self, lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
        n = lengths.shape[0]
        slot = np.arange(self.max_length)
        first = (self.max_length - lengths)[:, None]
        prompts = np.full((n, self.prompt_length), self.pad_id, dtype=np.int64)
        body = np.where(slot >= first, values + self.symbol_offset, self.pad_id)
        prompts[:, 1 : self.max_length + 1] = body
        prompts[np.arange(n), self.max_length - lengths] = self.bos_id
        prompts[:, -1] = self.sep_id
        return prompts

    def prompt_symbols(self, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Symbol values of the prompts, left-aligned: (int64 ``[n, max_length]`` padded with −1, lengths ``[n]``)."""
        prompts = self._check_prompts(prompts)
        body = prompts[:, 1 : self.max_length + 1] - self.symbol_offset
        is_symbol = (body >= 0) & (body < self.num_symbols)
        lengths = is_symbol.sum(axis=1)
        source = np.clip(
            (self.max_length - lengths)[:, None] + np.arange(self.max_length), 0, self.max_length - 1
        )
        values = np.take_along_axis(body, source, axis=1)
        values = np.where(np.arange(self.max_length) < lengths[:, None], values, -1)
        return values, lengths

    def _check_prompts(self, prompts: object) -> np.ndarray:
        prompts = _check_token_array("prompts", prompts, self.vocab_size)
        if prompts.shape[1] != self.prompt_length:
            raise ValueError(
                f"prompts must have shape [n, prompt_length={self.prompt_length}], got {prompts.shape}"
            )
        body = prompts[:, 1 : self.max_length + 1] - self.symbol_offset
        is_symbol = (body >= 0) & (body < self.num_symbols)
        lengths = is_symbol.sum(axis=1)
        well_formed = (
            (prompts[:, -1] == self.sep_id)
            & (lengths >= self.min_length)
            & (is_symbol == (np.arange(self.max_length) >= (self.max_length - lengths)[:, None])).all(axis=1)
            & (prompts[np.arange(prompts.shape[0]), self.max_length - lengths] == self.bos_id)
        )
        if not well_formed.all():
            bad = int(np.flatnonzero(~well_formed)[0])
            raise ValueError(
                f"prompts row {bad} is not of the form PAD… BOS symbols… SEP: {prompts[bad].tolist()}"
            )
        return prompts

    def target_values(self, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target symbol values, left-aligned: (int64 ``[n, verified_length − 1]`` padded with −1, lengths ``[n]``)."""
        values, lengths = self.prompt_symbols(prompts)
        n = values.shape[0]
        width = self.verified_length - 1
        slot = np.arange(self.max_length)
        if self.task == "copy":
            return values, lengths
        if self.task == "reverse":
            source = np.clip(lengths[:, None] - 1 - slot, 0, self.max_length - 1)
            reversed_values = np.take_along_axis(values, source, axis=1)
            return np.where(slot < lengths[:, None], reversed_values, -1), lengths
        if self.task == "sort":
            big = np.where(values < 0, np.iinfo(np.int64).max, values)
            sorted_values = np.sort(big, axis=1)
            return np.where(slot < lengths[:, None], sorted_values, -1), lengths
        # digit_sum
        total = np.where(values < 0, 0, values).sum(axis=1)
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        digits = (total[:, None] // powers) % 10  # [n, width], leading zeros
        num_digits = np.maximum(1, np.floor(np.log10(np.maximum(total, 1))).astype(np.int64) + 1)
        source = np.clip((width - num_digits)[:, None] + np.arange(width), 0, width - 1)
        aligned = np.take_along_axis(digits, source, axis=1)
        result = np.where(np.arange(width) < num_digits[:, None], aligned, -1)
        return result.reshape(n, width), num_digits

    def targets(self, prompts: np.ndarray) -> np.ndarray:
        """The verified answers (after the scratchpad): int64 ``[n, verified_length]``, the ids, EOS, then PAD."""
        values, lengths = self.target_values(prompts)
        n = values.shape[0]
        out = np.full((n, self.verified_length), self.pad_id, dtype=np.int64)
        width = values.shape[1]
        out[:, :width] = np.where(values >= 0, values + self.symbol_offset, self.pad_id)
        out[np.arange(n), lengths] = self.eos_id
        return out

    def scratch_ids_by_rank(self) -> np.ndarray:
        """The non-special ids in the fixed order of their scratchpad rank (rank 1 first): int64 ``[V − 4]``."""
        ids = np.arange(self.symbol_offset, self.vocab_size, dtype=np.int64)
        return np.random.default_rng(_SCRATCH_ORDER_SEED).permutation(ids)

    def scratch_probabilities(self) -> np.ndarray:
        """P(id) of a demonstration's scratchpad token: float64 ``[V]`` (0 for the special ids)."""
        ranks = np.arange(1, self.vocab_size - self.symbol_offset + 1, dtype=np.float64)
        weights = ranks ** (-self.scratch_zipf)
        probs = np.zeros(self.vocab_size)
        probs[self.scratch_ids_by_rank()] = weights / weights.sum()
        return probs

    def demonstrations(self, rng: np.random.Generator, prompts: np.ndarray) -> np.ndarray:
        """Correct answers as a demonstrator writes them: int64 ``[n, answer_length]``, a scratchpad of
        ``scratch_length`` Zipf tokens (module docstring) drawn from ``rng``, then ``targets(prompts)``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        verified = self.targets(prompts)
        if self.scratch_length == 0:
            return verified
        cdf = np.cumsum(self.scratch_probabilities())
        u = rng.random((verified.shape[0], self.scratch_length)) * cdf[-1]
        scratch = np.minimum(np.searchsorted(cdf, u, side="right"), self.vocab_size - 1)
        return np.concatenate([scratch.astype(np.int64), verified], axis=1)

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Verifier reward of each answer: float64 ``[n]`` (rules in the module docstring).

        Args:
            prompts: int64 ``[n, prompt_length]`` as made by ``sample_prompts``.
            answers: integer ``[n, m]`` token ids (m ≥ 1), read up to the first EOS; tokens after it are ignored.
        """
        prompts = self._check_prompts(prompts)
        answers = _check_token_array("answers", answers, self.vocab_size)
        if answers.shape[0] != prompts.shape[0] or answers.shape[1] < 1:
            raise ValueError(
                f"answers must have shape [n={prompts.shape[0]}, m >= 1] to match prompts, got {answers.shape}"
            )
        scratch_ok = ~(answers[:, : self.scratch_length] == self.eos_id).any(axis=1)
        answers = answers[:, self.scratch_length :]
        if answers.shape[1] == 0:  # nothing after the scratchpad: a format failure
            return np.full(prompts.shape[0], -self.format_penalty)
        n, m = answers.shape
        target_values, target_lengths = self.target_values(prompts)
        is_eos = answers == self.eos_id
        has_eos = is_eos.any(axis=1)
        answer_lengths = np.where(has_eos, is_eos.argmax(axis=1), m)
        width = max(m, target_values.shape[1])
        target_ids = np.full((n, width), -1, dtype=np.int64)
        target_ids[:, : target_values.shape[1]] = np.where(
            target_values >= 0, target_values + self.symbol_offset, -1
        )
        answer_ids = np.full((n, width), -2, dtype=np.int64)
        answer_ids[:, :m] = answers
        slot = np.arange(width)
        before_end = slot < np.minimum(answer_lengths, target_lengths)[:, None]
        matches = ((answer_ids == target_ids) & before_end).sum(axis=1)
        if self.reward_mode == "exact":
            reward = ((matches == target_lengths) & (answer_lengths == target_lengths)).astype(np.float64)
        else:
            reward = matches / np.maximum(answer_lengths, target_lengths)
        return np.where(has_eos & scratch_ok, reward, -self.format_penalty)

    # ------------------------------------------------------------------ display
    def describe_tokens(self, tokens: np.ndarray) -> str:
        """Readable form of a 1-D token array: symbols as values, specials as <pad> <bos> <sep> <eos>, others #id."""
        names = {self.pad_id: "<pad>", self.bos_id: "<bos>", self.sep_id: "<sep>", self.eos_id: "<eos>"}
        words = []
        for token in np.asarray(tokens).ravel().tolist():
            if token in names:
                words.append(names[token])
            elif self.symbol_offset <= token < self.symbol_offset + self.num_symbols:
                words.append(str(token - self.symbol_offset))
            else:
                words.append(f"#{token}")
        return " ".join(words)
