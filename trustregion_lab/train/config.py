"""Trainer configurations: plain dataclasses, validated on construction; the CLI is generated from them.

Every field carries a ``help`` string in its metadata; ``python -m trustregion_lab.train bandit --help`` and
``... sequence --help`` list them all. Bad values raise ``ValueError``/``TypeError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from trustregion_lab.policies.device import DEVICE_CHOICES
from trustregion_lab.train.engine import check_engine_name
from trustregion_lab.train.variants import resolve_variant

__all__ = ["AGGREGATIONS", "BanditConfig", "SequenceConfig", "TrainConfig"]

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
OPTIMIZERS = ("adam", "sgd")
ADVANTAGE_NORMS = ("std", "mean")
TASKS = ("copy", "reverse", "sort", "digit_sum")
REWARD_MODES = ("exact", "partial")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, *, positive: bool = False, allow_inf: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class TrainConfig:
    """Fields shared by both trainers (GRPO-style groups, several mini-batches per rollout batch)."""

    method: str = _f("ppo", "trust-region variant: a name of trustregion_lab.train.variants.VARIANTS")
    low: float | None = _f(None, "lower threshold (ε_low or δ); default: the variant's")
    high: float | None = _f(None, "upper threshold (ε_high or δ); default: the variant's")
    ratio_cap: float = _f(10.0, "cap C on the importance ratio π/μ in the surrogate")
    agg: str = _f("token-mean", f"loss aggregation, one of {list(AGGREGATIONS)}")
    steps: int = _f(100, "rollout batches (training steps)")
    group_size: int = _f(16, "samples per prompt/context (GRPO group), >= 2")
    num_minibatches: int = _f(4, "optimiser mini-batches per rollout batch and epoch")
    epochs: int = _f(1, "passes over each rollout batch")
    lr: float = _f(1e-3, "learning rate")
    optimizer: str = _f("adam", f"optimiser, one of {list(OPTIMIZERS)}")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (inf = none)")
    adv_norm: str = _f("std", "group advantage: 'std' (R - mean) / (std + 1e-6) or 'mean' (R - mean)")
    engine: str = _f("bf16", "rollout-engine preset of trustregion_lab.mismatch ('none' = exact, μ = π)")
    engine_topk: int = _f(20, "top-K log-probs the engine reports (Top-K masks)")
    staleness: int = _f(0, "rollouts sampled with the weights of this many steps ago (0 = current)")
    seed: int = _f(0, "seed (plain int)")
    device: str = _f("cpu", f"device, one of {list(DEVICE_CHOICES)}")
    bf16: bool = _f(False, "bf16 autocast for the trainer's forward pass (CUDA only)")
    checkpoint_every: int = _f(0, "write a checkpoint every this many steps (0 = never)")
    threads: int = _f(1, "torch CPU threads for the run (0 = leave torch's setting)")

    def __post_init__(self) -> None:
        if self.low is not None:
            _check_float("low", self.low)
        if self.high is not None:
            _check_float("high", self.high)
        resolve_variant(self.method, self.low, self.high)
        _check_float("ratio_cap", self.ratio_cap, positive=True, allow_inf=True)
        _check_choice("agg", self.agg, AGGREGATIONS)
        _check_int("steps", self.steps, 1)
        _check_int("group_size", self.group_size, 2)
        _check_int("num_minibatches", self.num_minibatches, 1)
        _check_int("epochs", self.epochs, 1)
        _check_float("lr", self.lr, positive=True)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_float("max_grad_norm", self.max_grad_norm, positive=True, allow_inf=True)
        _check_choice("adv_norm", self.adv_norm, ADVANTAGE_NORMS)
        check_engine_name(self.engine)
        _check_int("engine_topk", self.engine_topk, 1)
        _check_int("staleness", self.staleness, 0)
        _check_int("seed", self.seed, 0)
        _check_choice("device", self.device, DEVICE_CHOICES)
        if not isinstance(self.bf16, bool):
            raise TypeError(f"bf16 must be a bool, got {self.bf16!r}")
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        _check_int("threads", self.threads, 0)

    @property
    def variant(self):  # -> Variant
        return resolve_variant(self.method, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring nothing: unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(names)}")
        return cls(**values)


@dataclass
class BanditConfig(TrainConfig):
    """Bandit trainer: a tabular softmax policy on ``trustregion_lab/LargeVocabBandit-v0``."""

    vocab_size: int = _f(1000, "bandit vocabulary size V")
    num_contexts: int = _f(64, "number of contexts (states) of the bandit")
    contexts_per_step: int = _f(32, "contexts per rollout batch (each sampled group_size times)")
    num_correct: int = _f(1, "correct tokens per context (verifiable reward)")
    correct_rank_max: int = _f(20, "correct tokens are drawn among initial ranks 2 .. this (1-based)")
    family: str = _f("mixed", "initial logit family of the bandit's LLM-like logit model")
    env_seed: int = _f(0, "seed of the bandit problem (initial logits, correct tokens)")
    lr: float = _f(0.1, "learning rate")
    steps: int = _f(60, "rollout batches (training steps)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("vocab_size", self.vocab_size, 2)
        _check_int("num_contexts", self.num_contexts, 1)
        _check_int("contexts_per_step", self.contexts_per_step, 1)
        _check_int("env_seed", self.env_seed, 0)
        _check_int("num_correct", self.num_correct, 1)
        _check_int("correct_rank_max", self.correct_rank_max, 2)
        if not isinstance(self.family, str):
            raise TypeError(f"family must be a str, got {self.family!r}")


@dataclass
class SequenceConfig(TrainConfig):
    """Sequence trainer: GRPO with the decoder transformer on the token-sequence task."""

    task: str = _f("reverse", f"task, one of {list(TASKS)}")
    vocab_size: int = _f(2000, "token vocabulary size")
    max_length: int = _f(6, "longest input sequence of the task")
    reward_mode: str = _f(
        "exact", f"verifier reward, one of {list(REWARD_MODES)} (0/1 or share of positions right)"
    )
    prompts_per_step: int = _f(32, "prompts per rollout batch (each sampled group_size times)")
    d_model: int = _f(128, "transformer width")
    n_layers: int = _f(2, "transformer layers")
    n_heads: int = _f(4, "attention heads")
    d_ff: int = _f(512, "feed-forward width")
    lr: float = _f(3e-4, "learning rate")
    warm_start_steps: int = _f(300, "supervised warm-start steps (0 = none)")
    warm_start_lr: float = _f(3e-3, "warm-start learning rate")
    warm_start_batch: int = _f(64, "warm-start batch size")
    warm_start_noise: float = _f(0.3, "share of demonstration answer tokens replaced by random tokens")
    cache_dir: str = _f(
        "", "warm-start cache folder ('' = $TRUSTREGION_LAB_CACHE or ~/.cache/trustregion_lab)"
    )
    target_reward: float = _f(0.0, "stop once the step's mean reward reaches this (0 = run all steps)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("task", self.task, TASKS)
        _check_int("vocab_size", self.vocab_size, 2)
        _check_int("max_length", self.max_length, 1)
        _check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        _check_int("prompts_per_step", self.prompts_per_step, 1)
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "warm_start_batch"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warm_start_steps", self.warm_start_steps, 0)
        _check_float("warm_start_lr", self.warm_start_lr, positive=True)
        _check_float("warm_start_noise", self.warm_start_noise)
        if self.warm_start_noise > 1:
            raise ValueError(f"warm_start_noise must be in [0, 1], got {self.warm_start_noise}")
        _check_float("target_reward", self.target_reward)


def field_default(cls: type, name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            return f.default if f.default is not MISSING else None
    raise KeyError(name)
