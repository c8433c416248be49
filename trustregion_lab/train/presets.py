"""Sweep presets of the trainers: ``bandit-train`` and ``sequence-train`` (kind "training").

Each compares trust-region variants (``trustregion_lab.train.variants.VARIANTS``: GRPO ratio clip 0.2/0.2,
clip-higher 0.2/0.28, PG-IS (no region), DPPO Binary-TV/-KL, Top-K TV and exact TV at the paper's thresholds,
and MiniRL, the ratio clip anchored on the recomputed π_old) with the rollout engine off (``engine="none"``:
μ = π at equal weights) and on (a ``trustregion_lab.mismatch`` preset), over seeds. The settings reuse each
rollout batch for several mini-batches and epochs at a large learning rate, so the trust region binds (with one
pass per batch the ratio is 1 and nothing separates the methods; DESIGN §5).

Run with ``python -m trustregion_lab.sweep --preset bandit-train`` (or ``sequence-train``); ``low``/``high``
< 0 mean "the variant's thresholds".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from trustregion_lab.experiment import Preset
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig

__all__ = ["COMPARED_VARIANTS", "PRESETS", "run_bandit_preset", "run_sequence_preset"]

COMPARED_VARIANTS = (
    "ppo",
    "ppo_clip_higher",
    "pg_is",
    "dppo_binary_tv",
    "dppo_binary_kl",
    "dppo_topk_tv",
    "dppo_exact_tv",
    "minirl",
)
# run-level fields that are not experiment parameters
_NOT_PARAMETERS = ("seed", "device", "bf16", "checkpoint_every", "cache_dir", "threads")

BANDIT_SETTINGS: dict[str, Any] = {
    "family": "high_entropy",
    "correct_rank_max": 10,
    "steps": 80,
    "lr": 0.3,
    "num_minibatches": 8,
    "epochs": 2,
    "engine": "moe",
}
SEQUENCE_SETTINGS: dict[str, Any] = {
    "steps": 20,
    "prompts_per_step": 16,
    "group_size": 8,
    "num_minibatches": 4,
    "epochs": 2,
    "lr": 1e-3,
    "engine": "moe",
}


def _defaults(cls: type[TrainConfig], settings: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in _NOT_PARAMETERS:
            continue
        value = settings.get(f.name, f.default)
        values[f.name] = -1.0 if value is None else value  # low/high: < 0 = the variant's own
    return values


def _config(cls: type[TrainConfig], config: dict[str, Any], seed: int) -> TrainConfig:
    values = dict(config)
    for name in ("low", "high"):
        if name in values and values[name] is not None and values[name] < 0:
            values[name] = None
    return cls.from_dict({**values, "seed": int(seed)})


def run_bandit_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """One bandit training run of the sweep: ``config`` holds BanditConfig fields; returns its tidy rows."""
    from trustregion_lab.train.bandit import BanditTrainer

    return BanditTrainer(_config(BanditConfig, config, seed)).train()


def run_sequence_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """One sequence training run of the sweep: ``config`` holds SequenceConfig fields; returns its tidy rows."""
    from trustregion_lab.train.sequence import SequenceTrainer

    return SequenceTrainer(_config(SequenceConfig, config, seed)).train()


PRESETS: list[Preset] = [
    Preset(
        name="bandit-train",
        help="GRPO on the V = 1,000 bandit with a tabular policy: ratio clip vs DPPO masks vs PG-IS vs MiniRL, "
        "rollout engine exact ('none') or mismatched ('moe'); reward and exact TV/KL(μ‖π) per step.",
        run=run_bandit_preset,
        defaults=_defaults(BanditConfig, BANDIT_SETTINGS),
        grid={"method": list(COMPARED_VARIANTS), "engine": ["none", "moe"]},
        seeds=3,
        kind="training",
    ),
    Preset(
        name="sequence-train",
        help="GRPO with the warm-started transformer on 'reverse': the same variants, engine exact vs "
        "mismatched; reward and exact TV/KL(μ‖π) per step.",
        run=run_sequence_preset,
        defaults=_defaults(SequenceConfig, SEQUENCE_SETTINGS),
        grid={"method": list(COMPARED_VARIANTS), "engine": ["none", "moe"]},
        seeds=3,
        kind="training",
    ),
]
