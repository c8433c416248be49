"""Sweep presets of the trainers: ``bandit-train``, ``sequence-train`` and the stability study
(``stability``, ``stability-quick``, ``stability-calibration``, ``stability-search``; see
``trustregion_lab.train.stability``).

Each compares trust-region variants (``trustregion_lab.train.variants.VARIANTS``: GRPO ratio clip 0.2/0.2,
clip-higher 0.2/0.28, PG-IS (no region), DPPO Binary-TV/-KL, Top-K TV and exact TV at the paper's thresholds,
and MiniRL, the ratio clip anchored on the recomputed π_old) with the rollout engine off (``engine="none"``:
μ = π at equal weights) and on (a ``trustregion_lab.mismatch`` preset), over seeds. The settings reuse each
rollout batch for several mini-batches and epochs at a large learning rate, so the trust region binds (with one
pass per batch the ratio is 1 and nothing separates the variants; docs/design.md §5).

The parameters are the fields of the trainer's config dataclass (grid key ``variant`` names the variant);
``low``, ``high`` and ``ratio_cap`` None mean "the variant's own" (as in the config). A configuration is validated by
building that dataclass; the figure function of each preset is ``trustregion_lab.plots.PRESET_FIGURES[name]``
(attached by the sweep: `trustregion_lab.plots.training_figures` for the training presets, the ``stability*``
functions of `trustregion_lab.plots.stability` for the study's).

Run with ``python -m trustregion_lab.sweep --preset bandit-train`` (or ``sequence-train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pandas as pd

from trustregion_lab.experiment import Preset
from trustregion_lab.train import regime, stability
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig

__all__ = [
    "COMPARED_VARIANTS",
    "PRESETS",
    "run_bandit_preset",
    "run_sequence_preset",
    "validate_bandit_preset",
    "validate_sequence_preset",
]

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
_NOT_PARAMETERS = ("seed", "device", "bf16", "checkpoint_every", "dose_every", "cache_dir", "threads")

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
        values[f.name] = settings.get(f.name, f.default)  # None (low, high, ratio_cap): the variant's own
    return values


def _config(cls: type[TrainConfig], config: dict[str, Any], seed: int) -> TrainConfig:
    return cls.from_dict({**config, "seed": int(seed)})


def run_bandit_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """One bandit training run of the sweep: ``config`` holds BanditConfig fields; returns its tidy rows."""
    from trustregion_lab.train.bandit import BanditTrainer

    return BanditTrainer(_config(BanditConfig, config, seed)).train()


def run_sequence_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """One sequence training run of the sweep: ``config`` holds SequenceConfig fields; returns its tidy rows."""
    from trustregion_lab.train.sequence import SequenceTrainer

    return SequenceTrainer(_config(SequenceConfig, config, seed)).train()


def _search_config(config: dict[str, Any]) -> dict[str, Any]:
    cells = dict(stability.SEARCH_CELLS)
    values = dict(config)
    label = values.pop("search_cell")
    if label not in cells:
        raise ValueError(f"search_cell must be one of {list(cells)}, got {label!r}")
    return {**values, **cells[label]}


def run_search_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """One cell of the stability search: the study's setting with the cell's single-knob change. The rows carry
    the values the run used (e.g. ``lr`` of the ``lr x3`` cell), so the figures read the change from the table."""
    effective = _search_config(config)
    table = run_sequence_preset(effective, seed)
    for key, value in effective.items():
        if key not in table.columns:
            table[key] = value
    table["search_cell"] = config["search_cell"]
    return table


def validate_search_preset(config: dict[str, Any]) -> None:
    validate_sequence_preset(_search_config(config))


def _regime_defaults(settings: dict[str, Any], task: str, level: str) -> dict[str, Any]:
    """SequenceConfig's parameters over ``settings``, less the fields the labels set, plus the two labels."""
    values = _defaults(SequenceConfig, settings)
    for key in regime.label_fields():
        values.pop(key)
    return {**values, "task_candidate": task, "dose_level": level}


def run_regime_preset(config: dict[str, Any], seed: int, *, dose_every: int = 1) -> pd.DataFrame:
    """One run of the regime map or its calibration: ``config`` holds SequenceConfig fields and the labels
    ``dose_level`` (and ``task_candidate``), replaced by the fields they stand for
    (``trustregion_lab.train.regime.regime_config``). The rows carry the values the run used (task, lr,
    staleness, epochs), so tables and figures read the knobs from the table. ``dose_every``: measure the dose
    every this many steps (a measurement interval, not an experiment parameter: the training is the same)."""
    effective = regime.regime_config(config)
    table = run_sequence_preset({**effective, "dose_every": dose_every}, seed)
    for key in ("task", "min_length", "max_length", "lr", "staleness", "epochs"):
        table[key] = effective[key]
    return table


def run_regime_map_preset(config: dict[str, Any], seed: int) -> pd.DataFrame:
    """A run of ``regime-map``: ``run_regime_preset`` with the dose measured every
    ``regime.MAP_DOSE_EVERY`` steps (the calibration measures it at every step)."""
    return run_regime_preset(config, seed, dose_every=regime.MAP_DOSE_EVERY)


def validate_regime_preset(config: dict[str, Any]) -> None:
    """Build the run's SequenceConfig from its labels (ValueError naming a bad label or field); trains nothing."""
    validate_sequence_preset(regime.regime_config(config))


def validate_bandit_preset(config: dict[str, Any]) -> None:
    """Build the run's BanditConfig (ValueError/TypeError naming the field); trains nothing."""
    _config(BanditConfig, config, 0)


def validate_sequence_preset(config: dict[str, Any]) -> None:
    """Build the run's SequenceConfig (ValueError/TypeError naming the field); trains nothing."""
    _config(SequenceConfig, config, 0)


def _preset(
    name: str,
    help_text: str,
    cls: type[TrainConfig],
    settings: dict[str, Any],
    run: Callable[[dict, int], pd.DataFrame],
    validate: Callable[[dict], None],
    *,
    grid: dict[str, list[Any]] | None = None,
    seeds: int = 3,
) -> Preset:
    return Preset(
        name=name,
        help=help_text,
        run=run,
        defaults=_defaults(cls, settings),
        grid=grid or {"variant": list(COMPARED_VARIANTS), "engine": ["none", "moe"]},
        seeds=seeds,
        validate=validate,
    )


PRESETS: list[Preset] = [
    _preset(
        "bandit-train",
        "GRPO on the V = 1,000 bandit with a tabular policy: ratio clip vs DPPO masks vs PG-IS vs MiniRL, "
        "rollout engine exact ('none') or mismatched ('moe'); reward and exact TV/KL(μ‖π) per step.",
        BanditConfig,
        BANDIT_SETTINGS,
        run_bandit_preset,
        validate_bandit_preset,
    ),
    _preset(
        "sequence-train",
        "GRPO with the warm-started transformer on 'reverse': the same variants, engine exact ('none') vs "
        "mismatched ('moe'); reward and exact TV/KL(μ‖π) per step.",
        SequenceConfig,
        SEQUENCE_SETTINGS,
        run_sequence_preset,
        validate_sequence_preset,
    ),
    *(
        _preset(
            study.name,
            study.help,
            SequenceConfig,
            study.settings,
            run_sequence_preset,
            validate_sequence_preset,
            grid=study.grid,
            seeds=study.seeds,
        )
        for study in stability.STUDIES
    ),
    Preset(
        name="stability-search",
        help="Phase C of the stability protocol: PG-IS and DPPO Binary-TV with the bf16 model engine at the "
        "study's setting and at each single-knob change of it (lr ×3, ×10, Adam ε 1e-15, no grad clip, fp16 "
        "engine, staleness 1, 2 epochs); writes search.csv.",
        run=run_search_preset,
        defaults={**_defaults(SequenceConfig, stability.STABILITY_SETTINGS), "search_cell": "study setting"},
        grid={
            "search_cell": [label for label, _ in stability.SEARCH_CELLS],
            "variant": ["pg_is", "dppo_binary_tv"],
        },
        seeds=1,
        validate=validate_search_preset,
    ),
    Preset(
        name="regime-calibration",
        help="Phase A of the regime map: the dose ladder (L0-L7: lr, staleness, epochs) x the task candidates with "
        "the ppo arm and the matched fp32 engine, seed 0, 300 steps; fixes the task and the map's dose levels.",
        run=run_regime_preset,
        defaults=_regime_defaults(
            {**regime.REGIME_SETTINGS, "variant": "ppo"}, regime.TASK_CANDIDATES[0][0], regime.LADDER[0][0]
        ),
        grid={
            "task_candidate": [label for label, _ in regime.TASK_CANDIDATES],
            "dose_level": [label for label, _ in regime.LADDER],
        },
        seeds=1,
        validate=validate_regime_preset,
    ),
    Preset(
        name="regime-map",
        help="Where the trust region matters: engines fp32/bf16/fp8/int4 x the calibrated dose levels x "
        "pg_is, cispo, ppo, dppo_binary_tv, plus minirl, dppo_topk_tv, ppo_relaxed, tis, icepop, seq_mis and "
        "gspo on the fp8 engine; 2 seeds (3 in the cells where arms separated, once those are known), 300 steps "
        "(resumable; run with --jobs 2 in the background).",
        run=run_regime_map_preset,
        defaults=_regime_defaults(regime.REGIME_SETTINGS, regime.REGIME_TASK, regime.REGIME_LEVELS[0]),
        # cell by cell (a dose level, then an engine, then every arm there), highest dose first, so a map stopped
        # part way holds whole cells
        grid={
            "dose_level": list(reversed(regime.REGIME_LEVELS)),
            "engine": list(regime.MAP_ENGINES),
            "variant": [*regime.CORE_ARMS, *regime.OTHER_ARMS],
        },
        seeds=regime.MAP_SEEDS,
        validate=validate_regime_preset,
        include=regime.in_map,
        seeds_for=regime.map_seeds,
    ),
    Preset(
        name="regime-map-quick",
        help="A short look at the regime map: pg_is, ppo and dppo_binary_tv x the fp32 and fp8 engines x the "
        "lowest and the highest non-failing dose level, one seed, 40 steps of smaller batches.",
        run=run_regime_map_preset,
        defaults=_regime_defaults(
            {**regime.REGIME_SETTINGS, **regime.QUICK_SETTINGS}, regime.REGIME_TASK, regime.REGIME_LEVELS[0]
        ),
        grid={
            "variant": ["pg_is", "ppo", "dppo_binary_tv"],
            "engine": ["model-fp32", regime.OTHER_ARMS_ENGINE],
            "dose_level": [regime.REGIME_LEVELS[0], regime.REGIME_LEVELS[-2]],
        },
        seeds=1,
        validate=validate_regime_preset,
    ),
]
