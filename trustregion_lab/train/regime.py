"""The regime map (docs/design.md §9.3): where along the off-policy dose and the engine's numerics does the trust
region matter?

A *dose level* is a setting of the knobs that move an update away from the policy that sampled its data (lr,
staleness k: rollouts from the weights of k steps ago, epochs per rollout batch); its *dose* is measured, not
assumed: the mean over steps of the share of response tokens whose π/μ after the step lies outside [0.8, 1.2]
(``dose`` in the trainer's rows). The protocol, fixed before any run (every run of every phase is reported):

A. calibration (``regime-calibration``): the arm ``ppo`` (outside the comparison) with the matched engine
   ``model-fp32``, seed 0, 300 steps, on each task candidate (``TASK_CANDIDATES``, in order) × each rung of the
   ladder (``LADDER``, in order). The choice is a pure function of that table
   (``trustregion_lab.analysis.regime_map.choose_regime``): per candidate, F = the first rung whose run *failed*
   (final reward ≤ start reward − 0.1), H = the rung before F; the first candidate with F and with H's final
   reward < 0.9 is the task; the map's levels are L0 and the four highest rungs up to and including F.
B. the map (``regime-map``): engines {fp32, bf16, fp8, int4} × the chosen levels × the core arms {pg_is, cispo,
   ppo, dppo_binary_tv}, plus the other arms (``OTHER_ARMS``) on ``model-fp8`` × the levels, 2 seeds, 300 steps;
   a third seed in every cell where an arm's mean final reward differs from pg_is's by ≥ 0.05. Verdicts per cell
   as docs/design.md §9.3 defines them (``analysis.regime_map.regime_cells``).
"""

from __future__ import annotations

from typing import Any

from trustregion_lab.analysis.stability import MATCHED_ENGINE
from trustregion_lab.train.stability import STABILITY_SETTINGS

__all__ = [
    "CORE_ARMS",
    "LADDER",
    "MAP_DOSE_EVERY",
    "MAP_ENGINES",
    "MAP_SEEDS",
    "OTHER_ARMS",
    "OTHER_ARMS_ENGINE",
    "QUICK_SETTINGS",
    "REGIME_LEVELS",
    "REGIME_SETTINGS",
    "REGIME_TASK",
    "TASK_CANDIDATES",
    "THIRD_SEED_CELLS",
    "in_map",
    "label_fields",
    "map_seeds",
    "regime_config",
]

# the map's run settings before a task candidate and a dose level are applied: the stability study's (§7)
# transformer, warm start, batch (16 prompts × 8 answers, 4 mini-batches, Dr.GRPO advantages), 300 steps
# with a larger pool: 1,024 prompts (from 4,096 candidates) instead of 256
REGIME_SETTINGS: dict[str, Any] = {
    **STABILITY_SETTINGS,
    "steps": 300,
    "engine": MATCHED_ENGINE,
    "prompt_pool": 1024,
    "pool_candidates": 4096,
}

# harder than the stability study's pool (sort, 1–12 symbols, 256 prompts at 20–80 % success), which reached
# reward 0.95 by step 100 at lr 1e-4: four times the prompts, solved 5–50 % of the time after the warm start
_HARD_POOL = {"pool_min_success": 0.05, "pool_max_success": 0.5}
TASK_CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sort-hard", {"task": "sort", "min_length": 1, "max_length": 12, **_HARD_POOL}),
    ("sort-long-hard", {"task": "sort", "min_length": 7, "max_length": 23, **_HARD_POOL}),
)
# the rungs of the dose ladder, from the stability study's setting (L0) up; L7 is there in case nothing fails by L6
LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("L0", {"lr": 1e-5, "staleness": 0, "epochs": 1}),
    ("L1", {"lr": 3e-5, "staleness": 0, "epochs": 1}),
    ("L2", {"lr": 1e-4, "staleness": 0, "epochs": 1}),
    ("L3", {"lr": 1e-4, "staleness": 4, "epochs": 1}),
    ("L4", {"lr": 3e-4, "staleness": 4, "epochs": 1}),
    ("L5", {"lr": 1e-3, "staleness": 4, "epochs": 1}),
    ("L6", {"lr": 1e-3, "staleness": 4, "epochs": 2}),
    ("L7", {"lr": 3e-3, "staleness": 8, "epochs": 2}),
)
# the calibration's choice (figures/regime-map/calibration/): the task candidate and the map's dose levels
REGIME_TASK = "sort-hard"
REGIME_LEVELS: tuple[str, ...] = ("L0", "L2", "L3", "L4", "L5")

# regime-map-quick: the stability-quick sizes (smaller batches and pool, 40 steps)
QUICK_SETTINGS: dict[str, Any] = {
    "steps": 40,
    "prompts_per_step": 8,
    "pool_candidates": 512,
    "prompt_pool": 64,
    "eval_prompts": 64,
}

# the map measures the dose (one more forward of the batch) on every 5th step; the calibration on every step
MAP_DOSE_EVERY = 5

CORE_ARMS = ("pg_is", "cispo", "ppo", "dppo_binary_tv")
MAP_ENGINES = ("model-fp32", "model-bf16", "model-fp8", "model-int4")
OTHER_ARMS = ("minirl", "dppo_topk_tv", "ppo_relaxed", "tis", "icepop", "seq_mis", "gspo")
OTHER_ARMS_ENGINE = "model-fp8"  # the deployed engine: the only one the other arms run with


def regime_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's SequenceConfig fields: ``config`` with its labels ``task_candidate`` (default: the chosen task)
    and ``dose_level`` replaced by the fields they stand for (ValueError naming an unknown label)."""
    values = dict(config)
    tasks, rungs = dict(TASK_CANDIDATES), dict(LADDER)
    task = values.pop("task_candidate", REGIME_TASK)
    level = values.pop("dose_level")
    if task not in tasks:
        raise ValueError(f"task_candidate must be one of {list(tasks)}, got {task!r}")
    if level not in rungs:
        raise ValueError(f"dose_level must be one of {list(rungs)}, got {level!r}")
    return {**values, **tasks[task], **rungs[level]}


def label_fields() -> set[str]:
    """The SequenceConfig fields a task candidate or a dose level sets: not parameters of the regime presets
    (a ``--grid lr=...`` would be overridden by the level, so it is refused as an unknown parameter)."""
    return {key for _, fields in (*TASK_CANDIDATES, *LADDER) for key in fields}


# the cells (engine, dose level) the first pass of the map (2 seeds) found separated (docs/design.md §9.3: some
# arm's mean final reward ≥ 0.05 from pg_is's); each gets a third seed when the same command is run again.
# Filled once the first pass is complete; a test keeps them equal to the cells `analysis.regime_map.regime_cells`
# finds separated in the committed figures/regime-map/regime_map.csv restricted to seeds 0 and 1.
THIRD_SEED_CELLS: tuple[tuple[str, str], ...] = ()
MAP_SEEDS = 2


def map_seeds(config: dict[str, Any]) -> int:
    """Seeds of a configuration of the map: 3 in a cell of ``THIRD_SEED_CELLS``, else 2."""
    return MAP_SEEDS + 1 if (config["engine"], config["dose_level"]) in THIRD_SEED_CELLS else MAP_SEEDS


def in_map(config: dict[str, Any]) -> bool:
    """Whether a (variant, engine) pair belongs to the map: a core arm with any engine, another arm with fp8."""
    if config["variant"] in CORE_ARMS:
        return True
    return config["engine"] == OTHER_ARMS_ENGINE
