"""Trust-region variants: the rows of the trainers' table (docs/design.md §3).

A variant is a mask *method* (a key of ``trustregion_lab.masks.METHODS``) with its thresholds ``low``/``high``,
its *anchor*, its ratio and ratio cap C, and an optional log-ratio penalty c:
    loss = −Â · sg(min(r, C)) · M · log π(a) + c · (log r)²,   M = the method's mask against the anchor.
The anchor is what the mask compares π with: ``"rollout"`` (μ, the engine's log-probs; the paper's §5.2) or
``"recompute"`` (the trainer's recomputed π_old at the step's start; MiniRL and verl's default, the paper's
Fig. 4). The ratio is r = π(a)/μ(a) (``ratio="rollout"``, every variant but one) or π(a)/π_old(a)
(``ratio="recompute"``: verl's DPPO as shipped, which never divides by μ unless its rollout correction is on).
Thresholds follow the paper and its code (docs/design.md §6): PPO/GRPO ε = 0.2 (clip-higher 0.2/0.28), DPPO
δ_TV = 0.15 and δ_KL = 0.05 on both sides, ratio cap 10 in the authors' loss, none for PG-IS, 3 for CISPO (the
paper's Fig. 3 arms).

What frameworks ship (read from their sources):
- ``verl_dppo_tv``: verl's ``dppo_tv`` policy loss (verl-project/verl 1dda039b9c63,
  verl/trainer/ppo/core_algos.py): Binary-TV mask and ratio against ``old_log_probs`` (the recomputed π_old by
  default), δ = the PPO clip ratios (0.2 by default), ratio clamped at ``clip_ratio_c`` = 3.0 (the actor
  config's default, verl/workers/config/actor.py).
- ``prime_rl``: prime-rl's default loss (PrimeIntellect-ai/prime-rl 559b447, src/prime_rl/trainer/rl/loss.py): Binary-TV
  mask against the inference log-probs μ with δ = 0.2 on both sides (``dppo_mask_low/high``), no cap, plus
  ``kl_tau`` = 1e-3 times (log π − log μ)² on every trainable token.
- ``minirl_tis``: the truncated-IS cap 2 is verl's ``rollout_is_threshold`` default (TIS; same verl commit,
  verl/trainer/config/algorithm.py).

The field's remedies for the mismatch (docs/design.md §9; the rules are ``trustregion_lab.masks.CORRECTION_METHODS``,
thresholds as deviations from 1: a band [a, b] is low = 1 − a, high = b − 1), all against μ:
- ``tis``: token-level truncated IS, weight min(π/μ, 2), no mask. The cap 2 is verl's ``decoupled_token_is``
  threshold (volcengine/verl b178a3cd56f5, verl/trainer/config/algorithm.py) and slime's ``--tis-clip`` default
  (THUDM/slime 624b824a898a, slime/utils/arguments.py); both apply it as a factor on their PPO loss.
- ``icepop``: tokens with π/μ outside [0.5, 5] masked, weight π/μ: verl's ``decoupled_token_icepop`` bounds
  0.5 and 5.0 (verl-project/verl 0482624a7838, verl/trainer/config/algorithm.py).
- ``seq_mis``: sequences whose product ratio Π_t π/μ lies outside [0.5, 2] masked, weight the product ratio
  (capped at 2): verl's ``decoupled_seq_is_rs`` (sequence IS threshold 2.0, rejection ``seq_sum_k1`` with
  bounds 0.5_2.0; volcengine/verl b178a3cd56f5, verl/trainer/config/algorithm.py).
- ``seq_mis_geo``: its geometric-mean form, sequences with (Π_t π/μ)^(1/|y|) outside [0.99, 1.01] masked, token
  weights π/μ uncapped as PG-IS. verl's ``decoupled_geo_rs`` (``seq_mean_k1``, same file and commit) defaults to
  the narrower [0.999, 1.001].
- ``gspo``: GSPO, the sequence ratio s = (Π_t π/μ)^(1/|y|) in PPO's clip rule with ε_low = 3e-4,
  ε_high = 4e-4, weight s, aggregated "seq-mean-token-mean": verl's ``compute_policy_loss_gspo`` (which forces
  that aggregation; verl/trainer/ppo/core_algos.py) and its example's clip ratios
  (examples/gspo_trainer/test_gspo_3b_math.sh; volcengine/verl b178a3cd56f5). verl takes the ratio against
  π_old; here, as every other row, against μ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trustregion_lab._validate import check_choice, check_real
from trustregion_lab.losses import AGGREGATIONS
from trustregion_lab.masks import check_any_method

__all__ = ["ANCHORS", "VARIANTS", "Variant", "resolve_variant"]

ANCHORS = ("rollout", "recompute")
DELTA_TV = 0.15
DELTA_KL = 0.05
DEFAULT_RATIO_CAP = 10.0
NO_CAP = math.inf


@dataclass(frozen=True)
class Variant:
    """One row: mask method (a key of ``masks.METHODS`` or ``masks.CORRECTION_METHODS``), thresholds, anchor,
    ratio cap, log-ratio penalty, and ``agg``: the loss aggregation the row requires ("" = the trainer config's)."""

    method: str
    low: float
    high: float
    anchor: str = "rollout"
    ratio_cap: float = DEFAULT_RATIO_CAP
    ratio: str = "rollout"
    log_ratio_penalty: float = 0.0
    description: str = ""
    agg: str = ""  # the loss aggregation this row requires ("" = the trainer config's)

    def __post_init__(self) -> None:
        check_any_method(self.method)
        check_real("low", self.low, minimum=0.0, allow_inf=True)
        check_real("high", self.high, minimum=0.0, allow_inf=True)
        check_choice("anchor", self.anchor, ANCHORS)
        if not check_real("ratio_cap", self.ratio_cap, allow_inf=True) > 0:
            raise ValueError(f"ratio_cap must be > 0 (inf for no cap), got {self.ratio_cap!r}")
        check_choice("ratio", self.ratio, ANCHORS)
        check_real("log_ratio_penalty", self.log_ratio_penalty, minimum=0.0)
        if self.agg:
            check_choice("agg", self.agg, AGGREGATIONS)


VARIANTS: dict[str, Variant] = {
    "pg_is": Variant(
        "none", 0.0, 0.0, ratio_cap=NO_CAP, description="no trust region: importance-sampled PG"
    ),
    "cispo": Variant("none", 0.0, 0.0, ratio_cap=3.0, description="no mask, importance ratio capped at 3"),
    "ppo": Variant("ppo", 0.2, 0.2, description="GRPO/PPO ratio clipping, ε = 0.2"),
    "ppo_clip_higher": Variant("ppo", 0.2, 0.28, description="clip-higher, ε_low = 0.2, ε_high = 0.28"),
    "minirl": Variant(
        "ppo", 0.2, 0.2, anchor="recompute", ratio_cap=NO_CAP, description="ratio clip anchored on π_old"
    ),
    "minirl_tis": Variant(
        "ppo", 0.2, 0.2, anchor="recompute", ratio_cap=2.0, description="MiniRL with truncated IS (cap 2)"
    ),
    "dppo_binary_tv": Variant("dppo_binary_tv", DELTA_TV, DELTA_TV, description="DPPO Binary-TV, δ = 0.15"),
    "dppo_binary_kl": Variant("dppo_binary_kl", DELTA_KL, DELTA_KL, description="DPPO Binary-KL, δ = 0.05"),
    "dppo_binary_kl_recompute": Variant(
        "dppo_binary_kl", DELTA_KL, DELTA_KL, anchor="recompute", description="Binary-KL anchored on π_old"
    ),
    "dppo_topk_tv": Variant("dppo_topk_tv", DELTA_TV, DELTA_TV, description="DPPO Top-K TV, δ = 0.15"),
    "dppo_topk_kl": Variant("dppo_topk_kl", DELTA_KL, DELTA_KL, description="DPPO Top-K KL, δ = 0.05"),
    "dppo_exact_tv": Variant("dppo_exact_tv", DELTA_TV, DELTA_TV, description="DPPO exact TV, δ = 0.15"),
    "dppo_exact_kl": Variant("dppo_exact_kl", DELTA_KL, DELTA_KL, description="DPPO exact KL, δ = 0.05"),
    # the paper's Fig. 5 test: PG-IS plus a mask on Â < 0 tokens with anchor(a) − π(a) > 0.5
    "pg_is_neg_gap": Variant(
        "dppo_binary_tv", 0.5, NO_CAP, ratio_cap=NO_CAP, description="PG-IS + mask Â<0 with μ(a) − π(a) > 0.5"
    ),
    "pg_is_neg_gap_recompute": Variant(
        "dppo_binary_tv",
        0.5,
        NO_CAP,
        anchor="recompute",
        ratio_cap=NO_CAP,
        description="PG-IS + mask Â<0 with π_old(a) − π(a) > 0.5",
    ),
    # the paper's §6 relaxation: no ratio clip for tokens with μ(a) < 0.1
    "ppo_relaxed": Variant("ppo_relaxed", 0.2, 0.2, description="ratio clip lifted where μ(a) < 0.1"),
    "verl_dppo_tv": Variant(
        "dppo_binary_tv",
        0.2,
        0.2,
        anchor="recompute",
        ratio="recompute",
        ratio_cap=3.0,
        description="verl's DPPO-TV as shipped: vs π_old, ratio π/π_old capped at 3",
    ),
    "prime_rl": Variant(
        "dppo_binary_tv",
        0.2,
        0.2,
        ratio_cap=NO_CAP,
        log_ratio_penalty=1e-3,
        description="prime-rl's default: Binary-TV 0.2 vs μ, no cap, 1e-3 (log r)²",
    ),
    # the field's remedies (module docstring): token TIS, IcePop, sequence masked IS and its geometric form, GSPO
    "tis": Variant("none", 0.0, 0.0, ratio_cap=2.0, description="token TIS: weight min(π/μ, 2), no mask"),
    "icepop": Variant(
        "icepop", 0.5, 4.0, ratio_cap=NO_CAP, description="IcePop: mask tokens with π/μ outside [0.5, 5]"
    ),
    "seq_mis": Variant(
        "seq_mis",
        0.5,
        1.0,
        ratio_cap=2.0,
        description="sequence MIS: mask sequences with Π π/μ outside [0.5, 2]",
    ),
    "seq_mis_geo": Variant(
        "seq_geo_mis",
        0.01,
        0.01,
        ratio_cap=NO_CAP,
        description="geometric sequence mask: (Π π/μ)^(1/|y|) outside [0.99, 1.01]",
    ),
    "gspo": Variant(
        "gspo",
        3e-4,
        4e-4,
        ratio_cap=NO_CAP,
        agg="seq-mean-token-mean",
        description="GSPO: sequence ratio (Π π/μ)^(1/|y|) clipped at 1 − 3e-4 / 1 + 4e-4",
    ),
}


def resolve_variant(
    name: str, *, low: float | None = None, high: float | None = None, ratio_cap: float | None = None
) -> Variant:
    """``VARIANTS[name]`` with ``low``, ``high`` and ``ratio_cap`` overridden where given."""
    check_choice("variant", name, VARIANTS)
    changes = {
        k: float(v) for k, v in (("low", low), ("high", high), ("ratio_cap", ratio_cap)) if v is not None
    }
    return replace(VARIANTS[name], **changes)
