"""Named trust-region variants: a name -> (mask method, low, high, anchor) table for trainers and presets.

Thresholds follow the paper and its reference code (DESIGN §6): PPO/GRPO ε = 0.2 (clip-higher 0.2/0.28);
DPPO δ_TV = 0.15, δ_KL = 0.05 on both sides. ``anchor`` says what the mask compares π with: ``"rollout"``
(μ, the rollout engine's log-probs; the paper's §5.2) or ``"recompute"`` (the trainer's recomputed π_old,
passed to ``policy_loss`` as ``old_logprob=``; MiniRL and verl's default, the paper's Fig. 4). The importance
ratio is π/μ in every variant.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANCHORS", "VARIANTS", "Variant", "resolve_variant"]

ANCHORS = ("rollout", "recompute")

DELTA_TV = 0.15
DELTA_KL = 0.05


@dataclass(frozen=True)
class Variant:
    """One row of the table: the ``trustregion_lab.masks`` method name, its thresholds and its anchor."""

    method: str
    low: float
    high: float
    anchor: str = "rollout"
    description: str = ""


VARIANTS: dict[str, Variant] = {
    "ppo": Variant("ppo", 0.2, 0.2, description="GRPO/PPO ratio clipping, ε = 0.2"),
    "ppo_clip_higher": Variant("ppo", 0.2, 0.28, description="clip-higher, ε_low = 0.2, ε_high = 0.28"),
    "pg_is": Variant("none", 0.0, 0.0, description="no trust region: importance-sampled PG (CISPO-like)"),
    "dppo_binary_tv": Variant("dppo_binary_tv", DELTA_TV, DELTA_TV, description="DPPO Binary-TV, δ = 0.15"),
    "dppo_binary_kl": Variant("dppo_binary_kl", DELTA_KL, DELTA_KL, description="DPPO Binary-KL, δ = 0.05"),
    "dppo_topk_tv": Variant("dppo_topk_tv", DELTA_TV, DELTA_TV, description="DPPO Top-K TV, δ = 0.15"),
    "dppo_topk_kl": Variant("dppo_topk_kl", DELTA_KL, DELTA_KL, description="DPPO Top-K KL, δ = 0.05"),
    "dppo_exact_tv": Variant("dppo_exact_tv", DELTA_TV, DELTA_TV, description="DPPO exact TV, δ = 0.15"),
    "dppo_exact_kl": Variant("dppo_exact_kl", DELTA_KL, DELTA_KL, description="DPPO exact KL, δ = 0.05"),
    "minirl": Variant(
        "ppo", 0.2, 0.2, anchor="recompute", description="MiniRL: ratio clip anchored on recomputed π_old"
    ),
    "dppo_binary_kl_recompute": Variant(
        "dppo_binary_kl",
        DELTA_KL,
        DELTA_KL,
        anchor="recompute",
        description="Binary-KL anchored on π_old (Fig. 4)",
    ),
}
# the plain mask-method name "none" is accepted as an alias of pg_is
_ALIASES = {"none": "pg_is"}


def resolve_variant(name: str, low: float | None = None, high: float | None = None) -> Variant:
    """Look ``name`` up in ``VARIANTS`` (``"none"`` = ``"pg_is"``); ``low``/``high`` override its thresholds."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a variant name (str), got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in VARIANTS:
        raise ValueError(f"method must be one of {sorted([*VARIANTS, *_ALIASES])}, got {name!r}")
    base = VARIANTS[key]
    return Variant(
        base.method,
        base.low if low is None else float(low),
        base.high if high is None else float(high),
        base.anchor,
        base.description,
    )
