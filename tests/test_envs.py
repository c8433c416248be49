"""Tests of the environments: registration, check_env, vector = single envs, verifiers, logit-model calibration,
seeded reproducibility and input validation."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import trustregion_lab  # noqa: F401  (registers the environments)
from trustregion_lab.envs import (
    MAX_VOCAB_SIZE,
    LargeVocabBanditVectorEnv,
    TokenSequenceTask,
    choose_tokens_by_rank,
    llm_like_logits,
    make_bandit_problem,
)

BANDIT = "trustregion_lab/LargeVocabBandit-v0"
SEQUENCE = "trustregion_lab/TokenSequence-v0"


# ----------------------------------------------------------------------------------------------- check_env
@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        (BANDIT, {}),
        (BANDIT, {"vocab_size": 2, "num_contexts": 1, "correct_rank_range": (1, 1)}),
        (BANDIT, {"vocab_size": 500, "reward_mode": "table", "bernoulli_reward": True, "reward_noise": 0.1}),
        (SEQUENCE, {}),
        (SEQUENCE, {"task": "digit_sum", "reward_mode": "partial", "format_penalty": 0.5}),
    ],
)
def test_check_env_passes(env_id: str, kwargs: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(env_id, **kwargs).unwrapped)


def test_make_vec_returns_the_numpy_vector_env() -> None:
    env = gym.make_vec(BANDIT, num_envs=3, vectorization_mode="vector_entry_point", vocab_size=64)
    assert isinstance(env.unwrapped, LargeVocabBanditVectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_action_space == gym.spaces.Discrete(64)


# ----------------------------------------------------------------------------------- vector = single envs
def _assert_same_tree(vector: object, sync: object, where: str) -> None:
    if isinstance(sync, tuple):
        assert isinstance(vector, tuple) and len(vector) == len(sync), where
        for index, (left, right) in enumerate(zip(vector, sync)):
            _assert_same_tree(left, right, f"{where}[{index}]")
        return
    if isinstance(sync, dict):
        assert isinstance(vector, dict) and vector.keys() == sync.keys(), f"{where}: keys {vector} vs {sync}"
        for key in sync:
            _assert_same_tree(vector[key], sync[key], f"{where}.{key}")
        return
    vector, sync = np.asarray(vector), np.asarray(sync)
    assert vector.dtype == sync.dtype and vector.shape == sync.shape, f"{where}: {vector!r} vs {sync!r}"
    if sync.dtype == object:
        assert all(type(a) is type(b) and a == b for a, b in zip(vector.tolist(), sync.tolist())), where
    else:
        assert np.array_equal(vector, sync), f"{where}: {vector} vs {sync}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 300, "num_contexts": 5, "correct_rank_range": (1, 3), "num_correct": 2},
        {"vocab_size": 300, "num_contexts": 7, "correct_rank_range": (1, 2), "reward_noise": 0.3},
        {
            "vocab_size": 200,
            "num_contexts": 3,
            "reward_mode": "table",
            "bernoulli_reward": True,
            "reward_noise": 0.2,
        },
    ],
)
def test_vector_env_equals_sync_vector_env_of_single_envs(kwargs: dict) -> None:
    num_envs = 9
    vector = gym.make_vec(BANDIT, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    sync = SyncVectorEnv(
        [lambda: gym.make(BANDIT, **kwargs) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    rng = np.random.default_rng(11)
    correct = vector.unwrapped.correct_tokens
    for reset_call in ({"seed": 5}, {"seed": [3, 1, 4, 1, 5, 9, 2, 6, 5]}, {}):
        _assert_same_tree(vector.reset(**reset_call), sync.reset(**reset_call), f"reset {reset_call}")
        for step in range(12):
            # Half the actions are correct tokens so rewards are not all zero.
            contexts = rng.integers(0, correct.shape[0], size=num_envs)
            actions = np.where(
                rng.random(num_envs) < 0.5,
                correct[contexts, 0],
                rng.integers(0, kwargs["vocab_size"], num_envs),
            )
            _assert_same_tree(vector.step(actions), sync.step(actions), f"step {step} after {reset_call}")
    mask = np.array([True, False] * 4 + [True])
    _assert_same_tree(
        vector.reset(options={"reset_mask": mask}),
        sync.reset(options={"reset_mask": mask.copy()}),
        "reset_mask",
    )


def test_bandit_rewards_follow_the_stated_noise_model() -> None:
    """Empirical mean reward of each (context, action) pair matches E[reward | c, a] = (1 − ε) R + ε (1 − R)."""
    num_envs, eps = 4096, 0.25
    env = gym.make_vec(
        BANDIT,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        vocab_size=50,
        num_contexts=2,
        reward_mode="table",
        bernoulli_reward=True,
        reward_noise=eps,
    )
    table = env.unwrapped.reward_table
    observations, _ = env.reset(seed=0)
    sums, counts = np.zeros((2, 3)), np.zeros((2, 3))
    candidate_actions = np.array([0, 1, int(env.unwrapped.correct_tokens[0, 0])])
    for step in range(12):
        choice = np.full(num_envs, step % 3)
        next_observations, rewards, *_ = env.step(candidate_actions[choice])
        np.add.at(sums, (observations, choice), rewards)
        np.add.at(counts, (observations, choice), 1)
        observations = next_observations
    expected = (1 - eps) * table[:, candidate_actions] + eps * (1 - table[:, candidate_actions])
    standard_error = np.sqrt(expected * (1 - expected) / counts)
    assert np.all(np.abs(sums / counts - expected) < 5 * standard_error + 1e-12)


def test_expected_reward_equals_a_dense_reference() -> None:
    rng = np.random.default_rng(0)
    for kwargs in ({"reward_mode": "verifiable", "num_correct": 3}, {"reward_mode": "table"}):
        env = gym.make(BANDIT, vocab_size=40, num_contexts=4, reward_noise=0.15, **kwargs).unwrapped
        if kwargs["reward_mode"] == "verifiable":
            clean = np.zeros((4, 40))
            for context, tokens in enumerate(env.correct_tokens.tolist()):
                clean[context, tokens] = 1.0
        else:
            clean = np.array(env.reward_table, dtype=np.float64)
        mean = 0.85 * clean + 0.15 * (1.0 - clean)
        probs = rng.dirichlet(np.ones(40), size=4)
        np.testing.assert_allclose(env.expected_reward(probs), (probs * mean).sum(axis=1), rtol=1e-12)
        contexts = rng.integers(0, 4, size=6)
        rows = rng.dirichlet(np.ones(40), size=6)
        np.testing.assert_allclose(
            env.expected_reward(rows, contexts), (rows * mean[contexts]).sum(axis=1), rtol=1e-12
        )
        actions = rng.integers(0, 40, size=6)
        np.testing.assert_allclose(env.mean_reward(contexts, actions), mean[contexts, actions], rtol=1e-12)


def test_bandit_ground_truth_is_exposed_and_read_only() -> None:
    env = gym.make(
        BANDIT, vocab_size=1000, num_contexts=6, num_correct=2, correct_rank_range=(5, 9)
    ).unwrapped
    assert env.initial_logits.shape == (6, 1000) and env.initial_logits.dtype == np.float32
    assert env.correct_tokens.shape == (6, 2) and env.correct_tokens.dtype == np.int64
    ranks = np.argsort(np.argsort(-env.initial_logits, axis=1, kind="stable"), axis=1, kind="stable") + 1
    assert np.all(np.take_along_axis(ranks, env.correct_tokens, axis=1) >= 5)
    assert np.all(np.take_along_axis(ranks, env.correct_tokens, axis=1) <= 9)
    with pytest.raises(ValueError):
        env.initial_logits[0, 0] = 0.0


# ------------------------------------------------------------------------------------------------ verifiers
def _reference_target(task: str, symbols: list[int]) -> list[int]:
    if task == "copy":
        return list(symbols)
    if task == "reverse":
        return symbols[::-1]
    if task == "sort":
        return sorted(symbols)
    return [int(digit) for digit in str(sum(symbols))]


def _reference_score(task: TokenSequenceTask, prompt: list[int], answer: list[int]) -> float:
    """Plain-Python verifier: parse the prompt, compute the target, read the answer up to EOS."""
    symbols = [token - 4 for token in prompt if 4 <= token < 4 + task.num_symbols]
    target = [value + 4 for value in _reference_target(task.task, symbols)]
    if 3 not in answer:
        return -task.format_penalty
    body = answer[: answer.index(3)]
    if task.reward_mode == "exact":
        return 1.0 if body == target else 0.0
    matches = sum(1 for got, want in zip(body, target) if got == want)
    return matches / max(len(body), len(target))


def _prompt(task: TokenSequenceTask, symbols: list[int]) -> np.ndarray:
    pad = task.max_length - len(symbols)
    return np.array([[0] * pad + [1] + [s + 4 for s in symbols] + [2]], dtype=np.int64)


@pytest.mark.parametrize(
    ("task_name", "symbols", "answer", "reward_mode", "expected"),
    [
        ("copy", [3, 1, 4], [7, 5, 8, 3], "exact", 1.0),
        ("reverse", [3, 1, 4], [8, 5, 7, 3], "exact", 1.0),
        ("reverse", [3, 1, 4], [8, 5, 7, 3, 9, 9], "exact", 1.0),  # tokens after EOS are ignored
        ("reverse", [3, 1, 4], [8, 5, 7], "exact", -0.5),  # no EOS: format failure
        ("reverse", [3, 1, 4], [8, 5, 9, 3], "partial", 2 / 3),
        ("reverse", [3, 1, 4], [8, 5, 7, 7, 3], "partial", 3 / 4),  # one token too many
        ("reverse", [3, 1, 4], [8, 5, 7, 7, 3], "exact", 0.0),
        ("sort", [9, 0, 5, 0], [4, 4, 9, 13, 3], "exact", 1.0),
        ("digit_sum", [9, 9, 9, 9, 9, 9, 9, 9], [11, 6, 3], "exact", 1.0),  # 72
        ("digit_sum", [0, 0], [4, 3], "exact", 1.0),  # 0 is "0"
        ("digit_sum", [0, 0], [4, 4, 3], "exact", 0.0),  # no leading zeros
        ("digit_sum", [5, 6], [5, 5, 3], "exact", 1.0),  # 11
        ("copy", [3, 1, 4], [3], "partial", 0.0),
    ],
)
def test_verifier_hand_cases(
    task_name: str, symbols: list[int], answer: list[int], reward_mode: str, expected: float
) -> None:
    task = TokenSequenceTask(
        task_name, vocab_size=100, max_length=8, reward_mode=reward_mode, format_penalty=0.5
    )
    score = task.score(_prompt(task, symbols), np.array([answer], dtype=np.int64))
    assert score.dtype == np.float64 and score[0] == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("task_name", ["copy", "reverse", "sort", "digit_sum"])
@pytest.mark.parametrize("reward_mode", ["exact", "partial"])
def test_verifier_matches_plain_python_reference_on_random_sequences(
    task_name: str, reward_mode: str
) -> None:
    rng = np.random.default_rng([len(task_name), len(reward_mode), ord(task_name[0])])
    task = TokenSequenceTask(
        task_name,
        vocab_size=300,
        max_length=7,
        min_length=1,
        num_symbols=12,
        reward_mode=reward_mode,
        format_penalty=0.25,
    )
    prompts = task.sample_prompts(rng, 400)
    targets = task.targets(prompts)
    # Targets agree with the plain reference too.
    for prompt, target in zip(prompts.tolist(), targets.tolist()):
        symbols = [token - 4 for token in prompt if 4 <= token < 16]
        expected = [value + 4 for value in _reference_target(task_name, symbols)] + [3]
        assert target == expected + [0] * (task.answer_length - len(expected))
    # Answers: exact targets, mutated targets, and random token strings (with and without EOS).
    width = task.answer_length + 2
    answers = rng.integers(0, 300, size=(400, width))
    kind = rng.integers(0, 4, size=400)
    answers[kind <= 1, : task.answer_length] = targets[kind <= 1]
    mutate = (kind == 1) & (rng.random(400) < 0.8)
    positions = rng.integers(0, task.answer_length, size=400)
    answers[mutate, positions[mutate]] = rng.integers(4, 16, size=mutate.sum())
    small = kind == 2
    answers[small] = rng.choice([3, 4, 5, 6, 7], size=(small.sum(), width), p=[0.15, 0.25, 0.2, 0.2, 0.2])
    scores = task.score(prompts, answers)
    reference = [_reference_score(task, p, a) for p, a in zip(prompts.tolist(), answers.tolist())]
    np.testing.assert_array_equal(scores, np.array(reference))
    assert 0 < np.mean(scores == 1.0) < 1  # both right and wrong answers were exercised


def test_token_sequence_env_episode_and_render() -> None:
    env = gym.make(
        SEQUENCE, task="reverse", vocab_size=500, max_length=5, render_mode="ansi", format_penalty=0.5
    )
    observation, info = env.reset(seed=4)
    task = env.unwrapped.task
    prompt = observation[None, : task.prompt_length]
    target = task.targets(prompt)[0]
    assert observation.shape == (task.prompt_length + task.answer_length,)
    assert np.all(observation[task.prompt_length :] == task.pad_id) and info["answer_position"] == 0
    length = int(np.flatnonzero(target == task.eos_id)[0])
    for index in range(length + 1):
        observation, reward, terminated, truncated, info = env.step(target[index])
        assert observation[task.prompt_length + index] == target[index]
        assert (terminated, truncated) == ((index == length), False)
    assert reward == 1.0 and np.array_equal(info["target"], target)
    text = env.render()
    assert "prompt:" in text and "answer:" in text and "reward: 1" in text
    # Never emitting EOS truncates at answer_length with the format penalty.
    env.reset(seed=4)
    for _ in range(task.answer_length):
        _, reward, terminated, truncated, _ = env.step(np.int64(task.symbol_offset))
    assert (terminated, truncated, reward) == (False, True, -0.5)


# ------------------------------------------------------------------------------------- logit-model targets
def _log_sum_exp(log_values: np.ndarray) -> np.ndarray:
    peak = log_values.max(axis=1, keepdims=True)
    return peak[:, 0] + np.log(np.exp(log_values - peak).sum(axis=1))


def _row_statistics(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float64 log-sum-exp, entropy (nats), top-1 and top-20 mass per row, computed in chunks."""
    normaliser, entropy, top1, top20 = [], [], [], []
    for start in range(0, log_probs.shape[0], 50):
        logp = log_probs[start : start + 50].astype(np.float64)
        total = _log_sum_exp(logp)
        logp -= total[:, None]
        p = np.exp(logp)
        normaliser.append(total)
        entropy.append(-(p * logp).sum(axis=1))
        top = -np.partition(-p, 19, axis=1)[:, :20]
        top1.append(top.max(axis=1))
        top20.append(top.sum(axis=1))
    return tuple(np.concatenate(values) for values in (normaliser, entropy, top1, top20))


@pytest.mark.parametrize(("vocab_size", "num_states"), [(32_000, 300), (151_936, 200)])
def test_logit_families_hit_their_stated_calibration_targets(vocab_size: int, num_states: int) -> None:
    rng = np.random.default_rng(vocab_size)
    for family in ("mixed", "low_entropy", "high_entropy"):
        log_probs, details = llm_like_logits(rng, num_states, vocab_size, family=family, return_details=True)
        assert log_probs.shape == (num_states, vocab_size) and log_probs.dtype == np.float32
        normaliser, entropy, top1, top20 = _row_statistics(log_probs)
        np.testing.assert_allclose(normaliser, 0.0, atol=1e-5)
        # Each state reaches its drawn target entropy (closed-form boost or interpolated temperature).
        np.testing.assert_allclose(entropy, details["target_entropy"], rtol=1e-2, atol=1e-4)
        median, q80 = np.quantile(entropy, [0.5, 0.8])
        if family == "mixed":
            assert 0.5 <= q80 <= 0.85 and 0.02 <= median <= 0.15
            assert np.median(top1) >= 0.97 and np.mean(top1 >= 0.9) >= 0.6 and np.mean(top1 <= 0.75) >= 0.1
            assert np.median(top20) >= 0.99 and np.mean(top20 >= 0.8) >= 0.9
            assert details["forking"].sum() == round(0.2 * num_states)
        elif family == "low_entropy":
            assert entropy.max() < 0.7 and median < 0.05
            assert np.median(top1) >= 0.99 and top20.min() >= 0.95
        else:
            assert entropy.min() >= 0.6 and 1.0 <= median <= 2.0
            assert 0.5 <= np.median(top1) <= 0.8 and 0.95 <= np.median(top20) <= 0.995 and top20.min() >= 0.8


def test_choose_tokens_by_rank_matches_a_full_sort() -> None:
    rng = np.random.default_rng(3)
    logits = llm_like_logits(rng, 30, 2_000)
    for rank_range, count in (((1, 1), 1), ((2, 100), 4), ((1_500, 2_000), 3)):
        ids = choose_tokens_by_rank(np.random.default_rng(9), logits, count, rank_range)
        order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")
        rank_of = np.empty_like(order)
        np.put_along_axis(rank_of, order, np.arange(1, 2_001)[None, :].repeat(30, axis=0), axis=1)
        ranks = np.take_along_axis(rank_of, ids, axis=1)
        assert np.all((ranks >= rank_range[0]) & (ranks <= rank_range[1]))
        assert np.all(np.diff(ranks, axis=1) > 0)  # distinct, most likely first
    assert np.array_equal(choose_tokens_by_rank(rng, logits, 1, (1, 1))[:, 0], np.argmax(logits, axis=1))


# ------------------------------------------------------------------------------------------ reproducibility
def test_seeded_runs_replay_bit_for_bit() -> None:
    a = llm_like_logits(np.random.default_rng(5), 20, 3_000)
    assert np.array_equal(a, llm_like_logits(np.random.default_rng(5), 20, 3_000))
    assert not np.array_equal(a, llm_like_logits(np.random.default_rng(6), 20, 3_000))

    def bandit_run(seed: int) -> list:
        env = gym.make(BANDIT, vocab_size=100, num_contexts=50, reward_noise=0.5)
        trace = [env.reset(seed=seed)[0]]
        for action in range(30):
            trace.extend(env.step(action)[:2])
            trace.append(env.reset()[0])
        return trace

    assert bandit_run(7) == bandit_run(7) and bandit_run(7) != bandit_run(8)

    def vector_run(seed: int) -> list:
        env = gym.make_vec(
            BANDIT,
            num_envs=16,
            vectorization_mode="vector_entry_point",
            vocab_size=100,
            num_contexts=50,
            bernoulli_reward=True,
            reward_noise=0.4,
        )
        trace = [env.reset(seed=seed)[0]]
        for action in range(10):
            trace.extend(env.step(np.full(16, action))[:2])
        return [x.tolist() for x in trace]

    assert vector_run(1) == vector_run(1) and vector_run(1) != vector_run(2)

    def sequence_run(seed: int) -> list:
        env = gym.make(SEQUENCE, task="sort", vocab_size=300)
        trace = [env.reset(seed=seed)[0].tolist()]
        trace += [env.reset()[0].tolist() for _ in range(5)]
        return trace

    assert sequence_run(3) == sequence_run(3) and sequence_run(3) != sequence_run(4)
    task = TokenSequenceTask("copy")
    assert np.array_equal(
        task.sample_prompts(np.random.default_rng(2), 64), task.sample_prompts(np.random.default_rng(2), 64)
    )


# ---------------------------------------------------------------------------------------------- bad input
def _bandit_step(action: object) -> None:
    env = gym.make(BANDIT, vocab_size=10, num_contexts=2).unwrapped
    env.reset(seed=0)
    env.step(action)


def _vector_step(actions: object) -> None:
    env = gym.make_vec(
        BANDIT, num_envs=3, vectorization_mode="vector_entry_point", vocab_size=10, num_contexts=2
    )
    env.reset(seed=0)
    env.step(actions)


def _sequence_step(action: object) -> None:
    env = gym.make(SEQUENCE, vocab_size=50).unwrapped
    env.reset(seed=0)
    env.step(action)


_TASK = TokenSequenceTask("reverse", vocab_size=50, max_length=4)
_PROMPTS = _TASK.sample_prompts(np.random.default_rng(0), 2)

BAD_INPUTS = [
    (lambda: gym.make(BANDIT, vocab_size=1), ValueError, "vocab_size"),
    (lambda: gym.make(BANDIT, vocab_size=10.0), TypeError, "vocab_size"),
    (lambda: gym.make(BANDIT, vocab_size=10, num_contexts=0), ValueError, "num_contexts"),
    (lambda: gym.make(BANDIT, vocab_size=10, reward_mode="dense"), ValueError, "reward_mode"),
    (lambda: gym.make(BANDIT, vocab_size=10, reward_noise=1.5), ValueError, "reward_noise"),
    (lambda: gym.make(BANDIT, vocab_size=10, reward_noise=-0.1), ValueError, "reward_noise"),
    (lambda: gym.make(BANDIT, vocab_size=10, correct_rank_range=(3, 20)), ValueError, "correct_rank_range"),
    (lambda: gym.make(BANDIT, vocab_size=10, logit_family="flat"), ValueError, "logit_family"),
    (
        lambda: gym.make(
            BANDIT,
            vocab_size=3,
            num_contexts=1,
            reward_mode="table",
            reward_table=np.array([[0.1, 1.2, 0.0]]),
        ),
        ValueError,
        "reward_table",
    ),
    (lambda: _bandit_step(10), ValueError, "action"),
    (lambda: _bandit_step(-1), ValueError, "action"),
    (lambda: _bandit_step(1.0), TypeError, "action"),
    (lambda: _bandit_step(True), TypeError, "action"),
    (lambda: _vector_step(np.array([0, 1, 10])), ValueError, "actions"),
    (lambda: _vector_step(np.array([0.0, 1.0, 2.0])), TypeError, "actions"),
    (lambda: _vector_step(np.array([0, 1])), ValueError, "actions"),
    (lambda: _sequence_step(50), ValueError, "action"),
    (lambda: _sequence_step("3"), TypeError, "action"),
    (lambda: gym.make(SEQUENCE, task="add"), ValueError, "task"),
    (lambda: gym.make(SEQUENCE, vocab_size=1), ValueError, "vocab_size"),
    (lambda: gym.make(SEQUENCE, vocab_size=10), ValueError, "vocab_size"),
    (lambda: gym.make(SEQUENCE, reward_mode="soft"), ValueError, "reward_mode"),
    (lambda: gym.make(SEQUENCE, max_length=0), ValueError, "max_length"),
    (lambda: gym.make(SEQUENCE, format_penalty=-1.0), ValueError, "format_penalty"),
    (lambda: TokenSequenceTask("digit_sum", num_symbols=5), ValueError, "num_symbols"),
    (lambda: _TASK.score(_PROMPTS, _TASK.targets(_PROMPTS).astype(np.float64)), TypeError, "answers"),
    (lambda: _TASK.score(_PROMPTS, np.full((2, 3), 50)), ValueError, "answers"),
    (lambda: _TASK.score(_PROMPTS[:, 1:], _TASK.targets(_PROMPTS)), ValueError, "prompts"),
    (lambda: _TASK.score(_PROMPTS, _TASK.targets(_PROMPTS)[:1]), ValueError, "answers"),
    (lambda: llm_like_logits(np.random.default_rng(0), 2, 1), ValueError, "vocab_size"),
    (lambda: llm_like_logits(np.random.default_rng(0), 2, 10, family="uniform"), ValueError, "family"),
    (lambda: llm_like_logits(0, 2, 10), TypeError, "rng"),
    (
        lambda: make_bandit_problem(vocab_size=10, num_contexts=2).expected_reward(np.full((2, 10), 1.5)),
        ValueError,
        "probs",
    ),
    (
        lambda: make_bandit_problem(vocab_size=10, num_contexts=2).expected_reward(
            np.ones((2, 10), dtype=int)
        ),
        TypeError,
        "probs",
    ),
    (
        lambda: make_bandit_problem(vocab_size=10, num_contexts=2).expected_reward(np.full((2, 10), np.nan)),
        ValueError,
        "probs",
    ),
]


@pytest.mark.parametrize(("call", "error", "argument"), BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(call, error: type[Exception], argument: str) -> None:
    with pytest.raises(error, match=argument):
        call()


# ------------------------------------------------------------------------------------------- size limits
def test_bandit_vocab_size_above_the_limit_is_refused_with_its_memory() -> None:
    assert MAX_VOCAB_SIZE == 262_144
    make_bandit_problem(vocab_size=MAX_VOCAB_SIZE, num_contexts=1)  # the limit itself is allowed
    for call in (
        lambda: make_bandit_problem(vocab_size=MAX_VOCAB_SIZE + 1, num_contexts=4),
        lambda: gym.make(BANDIT, vocab_size=50_000_000),
        lambda: gym.make_vec(BANDIT, num_envs=2, vectorization_mode="vector_entry_point", vocab_size=10**9),
    ):
        with pytest.raises(ValueError, match=r"vocab_size must be <= 262,144.*(MiB|GiB)"):
            call()


def test_bandit_problem_memory_above_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"num_contexts.*vocab_size.*GiB"):
        make_bandit_problem(vocab_size=MAX_VOCAB_SIZE, num_contexts=100_000)
    with pytest.raises(ValueError, match=r"num_contexts.*vocab_size.*GiB"):
        make_bandit_problem(vocab_size=MAX_VOCAB_SIZE, num_contexts=3_000, reward_mode="table")


def test_correct_rank_range_above_the_vocabulary_names_the_vocabulary_size() -> None:
    with pytest.raises(ValueError, match=r"correct_rank_range.*\(3, 20\).*vocab_size = 10"):
        make_bandit_problem(vocab_size=10, num_contexts=2, correct_rank_range=(3, 20))


# ---------------------------------------------------------------------------------------- torch actions
def test_single_envs_accept_zero_dim_torch_actions_like_the_vector_env() -> None:
    torch = pytest.importorskip("torch")
    for action in (torch.tensor(3), torch.tensor(3, dtype=torch.int32), np.int16(3), np.array(3)):
        env = gym.make(BANDIT, vocab_size=10, num_contexts=2).unwrapped
        env.reset(seed=0)
        reference = gym.make(BANDIT, vocab_size=10, num_contexts=2).unwrapped
        reference.reset(seed=0)
        assert env.step(action) == reference.step(3)
        seq = gym.make(SEQUENCE, vocab_size=50).unwrapped
        seq.reset(seed=0)
        seq_reference = gym.make(SEQUENCE, vocab_size=50).unwrapped
        seq_reference.reset(seed=0)
        got, want = seq.step(action), seq_reference.step(3)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:4] == want[1:4]
    vector = gym.make_vec(BANDIT, num_envs=2, vectorization_mode="vector_entry_point", vocab_size=10)
    vector.reset(seed=0)
    vector.step(torch.tensor([3, 4]))
    for bad, out_of_range, error in (
        (torch.tensor(3.0), torch.tensor(3.0), TypeError),
        (torch.tensor(True), torch.tensor(True), TypeError),
        (torch.tensor([3]), torch.tensor([3]), TypeError),
        (
            torch.tensor(10),
            torch.tensor(50),
            ValueError,
        ),  # outside the bandit's 10 / the sequence env's 50 ids
    ):
        with pytest.raises(error, match="action"):
            _bandit_step(bad)
        with pytest.raises(error, match="action"):
            _sequence_step(out_of_range)


def test_scratchpad_is_skipped_by_the_verifier_and_an_eos_inside_it_fails_the_format():
    task = TokenSequenceTask("reverse", vocab_size=60, max_length=3, scratch_length=4, format_penalty=0.5)
    assert task.answer_length == 4 + 3 + 1 and task.verified_length == 4
    prompts = task._build_prompts(np.array([3, 2]), np.array([[1, 2, 3], [0, 4, 5]]))
    verified = task.targets(prompts)
    free = np.array([[17, 40, 5, 59], [9, 9, 9, 9]])
    assert task.score(prompts, np.concatenate([free, verified], 1)).tolist() == [1.0, 1.0]
    with_eos = free.copy()
    with_eos[1, 2] = task.eos_id
    assert task.score(prompts, np.concatenate([with_eos, verified], 1)).tolist() == [1.0, -0.5]
    assert task.score(prompts, free).tolist() == [-0.5, -0.5]  # nothing after the scratchpad
    shifted = np.concatenate([free[:, :3], verified], 1)  # scratchpad one token short: misread answer
    assert (task.score(prompts, shifted) < 1).all()


def test_scratchpad_demonstrations_follow_the_stated_zipf_law():
    task = TokenSequenceTask("copy", vocab_size=300, max_length=2, scratch_length=6, scratch_zipf=1.5)
    probs = task.scratch_probabilities()
    assert probs[: task.symbol_offset].sum() == 0 and np.isclose(probs.sum(), 1.0)
    ranked = probs[task.scratch_ids_by_rank()]
    np.testing.assert_allclose(ranked[1:] / ranked[:-1], (np.arange(2, 297) / np.arange(1, 296)) ** -1.5)
    rng = np.random.default_rng(0)
    prompts = task.sample_prompts(rng, 20_000)
    demos = task.demonstrations(rng, prompts)
    assert demos.shape == (20_000, task.answer_length)
    np.testing.assert_array_equal(demos[:, 6:], task.targets(prompts))
    counts = np.bincount(demos[:, :6].ravel(), minlength=300) / demos[:, :6].size
    top = task.scratch_ids_by_rank()[:5]
    assert (np.abs(counts[top] - probs[top]) < 4 * np.sqrt(probs[top] / demos[:, :6].size)).all()
    assert (task.score(prompts, demos) == 1.0).all()
    no_scratch = TokenSequenceTask("copy", vocab_size=300, max_length=2)
    np.testing.assert_array_equal(
        no_scratch.demonstrations(rng, prompts[:5]), no_scratch.targets(prompts[:5])
    )
