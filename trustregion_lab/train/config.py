"""Trainer configurations: plain dataclasses, validated on construction; the CLI is generated from them.

Every field carries a ``help`` string in its metadata; ``python -m trustregion_lab.train bandit --help`` and
``... sequence --help`` list them all. Bad values raise ``ValueError``/``TypeError`` naming the field.
A config names a *variant* (a row of ``trustregion_lab.train.variants.VARIANTS``: mask method, thresholds,
anchor, ratio cap); ``low``, ``high`` and ``ratio_cap`` override the variant's own values when set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trustregion_lab._validate import check_bool, check_choice, check_int, check_real
from trustregion_lab.envs.large_vocab_bandit import MAX_VOCAB_SIZE
from trustregion_lab.envs.token_sequence import REWARD_MODES, TASKS, TokenSequenceTask
from trustregion_lab.losses import AGGREGATIONS
from trustregion_lab.mismatch import TOPK_RULES
from trustregion_lab.policies.device import DEVICE_CHOICES
from trustregion_lab.train.batch import ADVANTAGE_NORMS
from trustregion_lab.train.engine import ENGINE_NAMES, ENGINES
from trustregion_lab.train.variants import Variant, resolve_variant

__all__ = ["BanditConfig", "SequenceConfig", "TrainConfig"]

OPTIMIZERS = ("adam", "sgd")
# Each step decodes scratch_length + answer tokens one after another and the trainer attends over all of them;
# 1,024 is 32 times the longest answer of any preset (stability-long: 32 tokens).
MAX_SCRATCH_LENGTH = 1024
# A sequence step holds several float32 arrays of [rows, answer_length, V] (the engine's log μ, π_old, π_θ, its
# gradient, log-softmaxes): 2^27 elements is 512 MiB each. With the defaults and scratch_length=128
# (1.4e8 elements) one step took 104 s and 5.7 GB on 2 shared cores; the largest preset holds 8.2e6.
MAX_STEP_LOGITS = 2**27


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Fields shared by both trainers (GRPO-style groups, several mini-batches per rollout batch)."""

    variant: str = _f("ppo", "trust-region variant: a name of trustregion_lab.train.variants.VARIANTS")
    low: float | None = _f(None, "lower threshold (ε_low or δ)")
    high: float | None = _f(None, "upper threshold (ε_high or δ)")
    ratio_cap: float | None = _f(None, "cap C on the importance ratio π/μ (inf = none)")
    agg: str = _f("token-mean", f"loss aggregation, one of {list(AGGREGATIONS)}")
    steps: int = _f(100, "rollout batches (training steps)")
    group_size: int = _f(16, "samples per prompt/context (GRPO group), >= 2")
    num_minibatches: int = _f(4, "optimiser mini-batches per rollout batch and epoch")
    epochs: int = _f(1, "passes over each rollout batch")
    lr: float = _f(1e-3, "learning rate")
    optimizer: str = _f("adam", f"optimiser, one of {list(OPTIMIZERS)}")
    adam_beta1: float = _f(0.9, "Adam β₁")
    adam_beta2: float = _f(0.999, "Adam β₂")
    adam_eps: float = _f(1e-8, "Adam ε")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (inf = none)")
    adv_norm: str = _f(
        "std", "group advantage: 'std' (R - mean) / (std + 1e-6) (GRPO) or 'mean' R - mean (Dr.GRPO)"
    )
    engine: str = _f("bf16", f"rollout engine, one of {list(ENGINE_NAMES)} ('none' = exact, μ = π)")
    engine_topk: int = _f(20, "top-K log-probs the engine reports (Top-K masks)")
    topk_rule: str = _f("topk_plus_sampled", f"which ids the engine reports, one of {list(TOPK_RULES)}")
    staleness: int = _f(0, "rollouts sampled with the weights of this many steps ago (0 = current)")
    seed: int = _f(0, "seed (plain int)")
    device: str = _f("cpu", f"device, one of {list(DEVICE_CHOICES)}")
    bf16: bool = _f(False, "bf16 autocast for the trainer's forward pass (CUDA only)")
    checkpoint_every: int = _f(0, "write a checkpoint every this many steps (0 = never)")
    dose_every: int = _f(
        1,
        "measure the off-policy dose (dose, tv_after: one extra forward) on steps that are multiples of this "
        "(1 = every step; other steps' rows get NaN)",
    )
    threads: int = _f(1, "torch CPU threads for the run (0 = leave torch's setting)")

    def __post_init__(self) -> None:
        for name in ("low", "high", "ratio_cap"):
            if getattr(self, name) is not None:
                setattr(self, name, check_real(name, getattr(self, name), minimum=0.0, allow_inf=True))
        if self.ratio_cap is not None and not self.ratio_cap > 0:
            raise ValueError(f"ratio_cap must be > 0 (inf for no cap), got {self.ratio_cap!r}")
        resolve_variant(self.variant)
        check_choice("agg", self.agg, AGGREGATIONS)
        check_int("steps", self.steps, 1)
        check_int("group_size", self.group_size, 2)
        check_int("num_minibatches", self.num_minibatches, 1)
        check_int("epochs", self.epochs, 1)
        check_real("lr", self.lr, positive=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= check_real(name, getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        check_real("adam_eps", self.adam_eps, positive=True)
        check_real("max_grad_norm", self.max_grad_norm, positive=True, allow_inf=True)
        check_choice("adv_norm", self.adv_norm, ADVANTAGE_NORMS)
        check_choice("engine", self.engine, tuple(ENGINES))
        check_int("engine_topk", self.engine_topk, 1)
        check_choice("topk_rule", self.topk_rule, TOPK_RULES)
        check_int("staleness", self.staleness, 0)
        check_int("seed", self.seed, 0)
        check_choice("device", self.device, DEVICE_CHOICES)
        check_bool("bf16", self.bf16)
        if self.bf16 and self.device == "cpu":
            raise ValueError(
                "bf16 autocast applies only to CUDA (device='cuda' or 'auto'); on the CPU the trainer computes in "
                "float32 (a bf16 rollout engine is engine='model-bf16' or 'bf16')"
            )
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("dose_every", self.dose_every, 1)
        check_int("threads", self.threads, 0)
        self.check_size()

    def check_size(self) -> None:
        """Constraints between fields (subclasses add theirs)."""

    def check_topk(self, vocab_size: int) -> None:
        """The engine reports at most the whole vocabulary: engine_topk ≤ V."""
        if self.engine_topk > vocab_size:
            raise ValueError(
                f"engine_topk={self.engine_topk} exceeds the vocabulary size V={vocab_size}; the engine reports "
                f"at most V log-probs (use engine_topk <= {vocab_size})"
            )

    @property
    def resolved_variant(self) -> Variant:
        """The variant with this config's overrides of low, high and ratio_cap applied."""
        return resolve_variant(self.variant, low=self.low, high=self.high, ratio_cap=self.ratio_cap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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

    vocab_size: int = _f(1000, f"bandit vocabulary size V (at most {MAX_VOCAB_SIZE:,})")
    num_contexts: int = _f(64, "number of contexts (states) of the bandit")
    contexts_per_step: int = _f(32, "contexts per rollout batch (each sampled group_size times)")
    num_correct: int = _f(1, "correct tokens per context (verifiable reward)")
    correct_rank_max: int = _f(20, "correct tokens are drawn among initial ranks 2 .. this (1-based, <= V)")
    family: str = _f("mixed", "initial logit family of the bandit's LLM-like logit model")
    env_seed: int = _f(0, "seed of the bandit problem (initial logits, correct tokens)")
    lr: float = _f(0.1, "learning rate")
    steps: int = _f(60, "rollout batches (training steps)")

    def check_size(self) -> None:
        check_int("vocab_size", self.vocab_size, 2, MAX_VOCAB_SIZE)
        self.check_topk(self.vocab_size)
        check_int("num_contexts", self.num_contexts, 1)
        check_int("contexts_per_step", self.contexts_per_step, 1)
        check_int("env_seed", self.env_seed, 0)
        check_int("num_correct", self.num_correct, 1)
        check_int("correct_rank_max", self.correct_rank_max, 2, self.vocab_size)
        if not isinstance(self.family, str):
            raise TypeError(f"family must be a str, got {self.family!r}")
        rows = min(self.contexts_per_step, self.num_contexts) * self.group_size
        if self.num_minibatches > rows:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} exceeds the rollout batch's {rows} rows "
                "(min(contexts_per_step, num_contexts) × group_size)"
            )


@dataclass
class SequenceConfig(TrainConfig):
    """Sequence trainer: GRPO with the decoder transformer on the token-sequence task."""

    task: str = _f("reverse", f"task, one of {list(TASKS)}")
    vocab_size: int = _f(2000, "token vocabulary size")
    max_length: int = _f(6, "longest input sequence of the task")
    min_length: int = _f(1, "shortest input sequence of the task")
    num_symbols: int = _f(10, "distinct symbol values of the prompts")
    scratch_length: int = _f(
        0, "free scratchpad tokens before the verified answer (the reward never reads them)"
    )
    scratch_zipf: float = _f(
        2.0, "Zipf exponent of the warm start's scratchpad tokens (smaller = more entropy)"
    )
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
    prompt_pool: int = _f(
        0, "train on a fixed pool of this many prompts at intermediate success (0 = fresh prompts)"
    )
    pool_candidates: int = _f(4096, "candidate prompts scored after the warm start to build the pool")
    pool_samples: int = _f(16, "answers per candidate prompt to estimate its success")
    pool_min_success: float = _f(0.2, "lowest warm-start success rate of a pool prompt")
    pool_max_success: float = _f(0.8, "highest warm-start success rate of a pool prompt")
    eval_every: int = _f(0, "fp32 evaluation on held-out prompts every this many steps (0 = never)")
    eval_prompts: int = _f(
        256, "held-out prompts of each evaluation (from the pool's band when prompt_pool > 0)"
    )
    target_reward: float = _f(0.0, "stop once the step's mean reward reaches this (0 = run all steps)")

    def check_size(self) -> None:
        check_choice("task", self.task, TASKS)
        check_int("vocab_size", self.vocab_size, 2)
        self.check_topk(self.vocab_size)
        check_int("max_length", self.max_length, 1)
        check_int("min_length", self.min_length, 1, self.max_length)
        check_int("num_symbols", self.num_symbols, 2)
        check_int("scratch_length", self.scratch_length, 0, MAX_SCRATCH_LENGTH)
        check_real("scratch_zipf", self.scratch_zipf, positive=True)
        check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        check_int("prompts_per_step", self.prompts_per_step, 1)
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "warm_start_batch", "eval_prompts"):
            check_int(name, getattr(self, name), 1)
        check_int("warm_start_steps", self.warm_start_steps, 0)
        check_real("warm_start_lr", self.warm_start_lr, positive=True)
        check_real("warm_start_noise", self.warm_start_noise, minimum=0.0, maximum=1.0)
        check_int("eval_every", self.eval_every, 0)
        check_int("prompt_pool", self.prompt_pool, 0)
        check_int("pool_candidates", self.pool_candidates, 1)
        check_int("pool_samples", self.pool_samples, 1)
        check_real("pool_min_success", self.pool_min_success, minimum=0.0, maximum=1.0)
        check_real("pool_max_success", self.pool_max_success, minimum=self.pool_min_success, maximum=1.0)
        if self.prompt_pool and self.prompt_pool < self.prompts_per_step:
            raise ValueError(
                f"prompt_pool={self.prompt_pool} is smaller than prompts_per_step={self.prompts_per_step}"
            )
        check_real("target_reward", self.target_reward, minimum=0.0)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        rows = self.prompts_per_step * self.group_size
        if self.num_minibatches > rows:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} exceeds the rollout batch's {rows} rows "
                "(prompts_per_step × group_size)"
            )
        answer_length = TokenSequenceTask(
            self.task,
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            min_length=self.min_length,
            num_symbols=self.num_symbols,
            scratch_length=self.scratch_length,
        ).answer_length
        elements = rows * answer_length * self.vocab_size
        if elements > MAX_STEP_LOGITS:
            raise ValueError(
                f"a step would hold logits of {rows} rows × {answer_length} answer positions × {self.vocab_size} "
                f"tokens = {elements:,} elements (several float32 copies), above the limit of {MAX_STEP_LOGITS:,} "
                "(512 MiB each); lower prompts_per_step, group_size, scratch_length, max_length or vocab_size"
            )
