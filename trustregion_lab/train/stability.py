"""The stability study (docs/design.md §7): does the trust region matter under a weight-dependent mismatch?

The paper's Fig. 3 sanity test trains on prompts solved 20–80 % of the time at the start, with a bf16 rollout
engine, 4 gradient steps per rollout batch and Dr.GRPO advantages, and finds that the arms without a trust
region (PG-IS, CISPO, MiniRL) let the mismatch mean |π − μ| grow and collapse while DPPO stays stable. The toy
version: the warm-started transformer on a fixed prompt pool at intermediate success (``prompt_pool``), answers
of 10–21 tokens (a scratchpad of 8 free tokens the verifier never reads, then 1–12 verified symbols and EOS; 16
tokens on average over the pool's prompts; the task and learning rate are chosen by the calibration below),
the rollout engine a second implementation of the same model in bf16 (``engine="model-bf16"``: the mismatch
depends on the weights) or in fp32 (``"model-fp32"``, which differs from the trainer only by its decode path:
the matched engine), Dr.GRPO advantages (``adv_norm="mean"``), 4 mini-batches per rollout batch.

The protocol, fixed before any arm's outcome was looked at (every run of every phase is reported):
A. calibration (``stability-calibration``): the regime knobs only, with an arm outside the comparison
   (``ppo``, 0.2/0.2) and the matched engine, one seed: task ∈ {reverse, sort} × lr ∈ {1e-5, 3e-5, 1e-4}, 200
   steps. A setting is *intermediate* when the 10-step mean reward lies in [0.2, 0.8] on at least half the
   steps. The study uses the intermediate setting with the largest lr (the most weight motion, the best chance
   for a weight-dependent mismatch to grow), the task order breaking ties; if none is intermediate, the one
   with the most such steps.
B. the study (``stability``): the paper's arms × {model-bf16, model-fp32} × 3 seeds at that setting, scored
   by ``trustregion_lab.analysis.stability`` (drift, collapse, stable, reproduced as docs/design.md §7 defines).
   A first calibration run was void: the trainer then ignored ``scratch_length`` (a bug, since fixed), so it
   ran without the scratchpad (figures/stability/calibration/calibration_bug_no_scratchpad.csv).
   Outcome (figures/stability/calibration/calibration.csv): ``reverse`` is infeasible with the scratchpad (its
   warm start fails: sampled start reward 0.00, greedy 0.004, so 1 of 1,775 candidate prompts is in band and no
   pool can be built); ``sort`` is not intermediate at any lr (31.5 % of steps at 1e-5, 12.5 % at 3e-5, 6 % at
   1e-4; reward 0.62 → 0.90 over 200 steps at 1e-5), so by the rule the study runs ``sort`` at lr 1e-5, for
   200 steps (the whole preset then fits in about an hour with two workers).
C. the search (``stability-search``): PG-IS and DPPO Binary-TV with the bf16 engine, seed 0, at the study's
   setting and at each single-knob change of it: lr × 3, lr × 10, Adam ε = 1e-15, no gradient clipping, an fp16
   engine, one step of staleness, 2 epochs per rollout batch. Every cell is reported (``search.csv``); a cell
   in which PG-IS drifts or collapses is rerun as phase B at that setting.
D. long answers (``stability-long``), added after B and C found no effect, fixed before its first run: phase B
   with one change, answers of 16–32 tokens (prompts of 7–23 symbols: 8 scratchpad tokens, 7–23 sorted symbols,
   EOS), for the arms the verdict's claims name (PG-IS, CISPO, MiniRL; DPPO Binary-TV/-KL) × both engines × 3
   seeds, scored with the same definitions. Everything else (lr 1e-5, 200 steps, the pool at 20–80 % success)
   is phase B's; no calibration is rerun, because a pool built at 20–80 % starts intermediate by construction.
   Outcome (figures/stability/long/): all 30 runs stable, none drifted or collapsed, with either engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trustregion_lab.analysis.stability import DPPO_ARMS, LOW_PRECISION_ENGINE, MATCHED_ENGINE, NO_REGION_ARMS

__all__ = ["SEARCH_CELLS", "STABILITY_ARMS", "STABILITY_SETTINGS", "STUDIES", "Study"]

STABILITY_ARMS = (
    "pg_is",
    "cispo",
    "ppo_clip_higher",
    "minirl",
    "minirl_tis",
    "dppo_binary_tv",
    "dppo_binary_kl",
)
LOW_PRECISION, MATCHED = LOW_PRECISION_ENGINE, MATCHED_ENGINE  # the study's two rollout engines
STABILITY_SETTINGS: dict[str, Any] = {
    "task": "sort",
    "max_length": 12,
    "scratch_length": 8,
    "steps": 200,
    "prompts_per_step": 16,
    "group_size": 8,
    "num_minibatches": 4,
    "lr": 1e-5,
    "adv_norm": "mean",
    "engine": LOW_PRECISION,
    "warm_start_steps": 600,
    "warm_start_noise": 0.05,
    "prompt_pool": 256,
    "pool_candidates": 2048,
    "pool_samples": 8,
    "eval_every": 10,
    "eval_prompts": 256,
}
# the single-knob changes of phase C, as (label, fields changed)
SEARCH_CELLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("study setting", {}),
    ("lr x3", {"lr": 3 * STABILITY_SETTINGS["lr"]}),
    ("lr x10", {"lr": 10 * STABILITY_SETTINGS["lr"]}),
    ("adam eps 1e-15", {"adam_eps": 1e-15}),
    ("no grad clip", {"max_grad_norm": float("inf")}),
    ("fp16 engine", {"engine": "model-fp16"}),
    ("staleness 1", {"staleness": 1}),
    ("2 epochs", {"epochs": 2}),
)


@dataclass(frozen=True)
class Study:
    """One preset of the study: name, help, settings over SequenceConfig's defaults, grid, seeds (its figures:
    ``trustregion_lab.plots.PRESET_FIGURES[name]``)."""

    name: str
    help: str
    settings: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: int


STUDIES: tuple[Study, ...] = (
    Study(
        "stability",
        "The paper's Fig. 3 on the toy: PG-IS, CISPO, clip-higher, MiniRL, MiniRL-TIS, DPPO Binary-TV/-KL × a bf16 "
        "model engine vs the matched fp32 one × 3 seeds; drift, collapse and stability per run (42 runs: 54 min "
        "with --jobs 2 on 2 idle cores).",
        STABILITY_SETTINGS,
        {"variant": list(STABILITY_ARMS), "engine": [LOW_PRECISION, MATCHED]},
        3,
    ),
    Study(
        "stability-quick",
        "A short look (about 3 minutes on 2 idle cores) at the stability study: PG-IS, clip-higher and DPPO "
        "Binary-TV with the bf16 model engine, one seed, 40 steps of smaller batches.",
        {
            **STABILITY_SETTINGS,
            "steps": 40,
            "prompts_per_step": 8,
            "pool_candidates": 512,
            "prompt_pool": 64,
            "eval_prompts": 64,
        },
        {"variant": ["pg_is", "ppo_clip_higher", "dppo_binary_tv"]},
        1,
    ),
    Study(
        "stability-long",
        "Phase D of the stability protocol: the study with answers of 16–32 tokens (prompts of 7–23 symbols) for "
        "PG-IS, CISPO, MiniRL and DPPO Binary-TV/-KL × both engines × 3 seeds (30 runs: 71 min with --jobs 2 on "
        "2 idle cores).",
        {**STABILITY_SETTINGS, "min_length": 7, "max_length": 23},
        {"variant": [*NO_REGION_ARMS, *DPPO_ARMS], "engine": [LOW_PRECISION, MATCHED]},
        3,
    ),
    Study(
        "stability-calibration",
        "Phase A of the stability protocol: the regime knobs (task × lr) with the ppo arm and the matched engine.",
        {**STABILITY_SETTINGS, "variant": "ppo", "engine": MATCHED, "steps": 200},
        {"task": ["reverse", "sort"], "lr": [1e-5, 3e-5, 1e-4]},
        1,
    ),
)
