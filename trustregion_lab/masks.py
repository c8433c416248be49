"""Trust-region masks: which tokens keep their policy gradient (True = keep). docs/design.md §2, paper Eq. 11–12.

One registry, ``METHODS``: each entry (a ``MaskMethod``) is one definition of a method, consumed unchanged by
``trust_region_mask``, by ``losses.policy_loss``'s diagnostics and by ``analysis.calibration``. An entry holds
    estimate   the quantity the rule reads per token: D, a divergence estimate between the anchor and π, for the
               DPPO methods (computed in float64); the ratio r = π(a)/anchor(a) for the ratio rule;
    rule       how D becomes a *critical threshold* per side: the value c at which the token flips, so that it
               lies outside the region on the side an Â > 0 update pushes it to iff c_up > high, and on the
               side an Â < 0 update pushes it to iff c_down > low (c = −∞: never outside);
                 "ratio":       c_up = r − 1,  c_down = 1 − r
                 "divergence":  c_up = D if π(a) > anchor(a) else −∞,  c_down = D if π(a) < anchor(a) else −∞
                 "none":        c_up = c_down = −∞
    min_anchor_prob  tokens with anchor(a) below it are never outside (the paper's §6 relaxation);
and the drop rule every method shares: drop = (Â > 0 and c_up > high) or (Â < 0 and c_down > low).
Padded tokens (``response_mask`` False) and Â = 0 tokens are always kept (they carry no gradient anyway).
Critical thresholds are float64, so a divergence is compared with its threshold in float64 whatever the input
dtype.

Methods (thresholds ``low``/``high`` are arguments: ratio ε for the ratio rule, δ for the DPPO methods):
    ppo              ratio rule on r = π(a)/anchor(a) (GRPO; clip-higher when high > low)
    ppo_relaxed      ppo, but tokens with anchor(a) < 0.1 are never clipped (paper §6, α = 0.1)
    dppo_binary_tv   D = |π(a) − anchor(a)|   (so: drop if Â > 0 and π(a) − anchor(a) > high, or Â < 0 and
                     π(a) − anchor(a) < −low)
    dppo_binary_kl   D = Binary KL (Eq. 14);  dppo_topk_tv / dppo_topk_kl: Top-K TV / KL (Eq. 15–16);
    dppo_exact_tv / dppo_exact_kl: exact TV / KL(anchor‖π) from full logits
    none             keep everything (PG with importance sampling; CISPO-like)

Anchor (docs/design.md §2 "Anchor"; paper §5.2): by default the mask compares π with the rollout μ. Passing
``old_logprob`` (the trainer's recomputed π_old, the MiniRL / verl-default "recompute" variant) anchors the mask
there instead; the Top-K and exact methods then need ``old_logits`` (π_old's full logits) for the anchor.

Adding a method is one entry: ``METHODS["my_method"] = MaskMethod("divergence", estimate=my_estimate)`` with
``my_estimate(x: MaskInputs) -> D`` (float64, shape of ``x.logprob``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trustregion_lab import divergence as div
from trustregion_lab._arrays import ArrayLike, Converter, check_finite, check_logprobs, check_same_shape
from trustregion_lab._validate import check_choice, check_threshold

__all__ = [
    "METHODS",
    "RULES",
    "MaskInputs",
    "MaskMethod",
    "broadcast_advantages",
    "check_method",
    "critical_thresholds",
    "outside_region",
    "trust_region_mask",
]

RULES = ("ratio", "divergence", "none")


@dataclass(frozen=True)
class MaskInputs:
    """Inputs of one mask evaluation, as tensors on one device (shapes `[...]` per token)."""

    logprob: torch.Tensor  # log π(a) `[...]`
    anchor_logprob: torch.Tensor  # log anchor(a) `[...]` (rollout μ, or recomputed π_old)
    topk_ids: torch.Tensor | None = None  # `[..., K]`
    anchor_topk_logprobs: torch.Tensor | None = None  # `[..., K]`
    logits: torch.Tensor | None = None  # π's logits `[..., vocab]`
    anchor_logits: torch.Tensor | None = None  # anchor's logits `[..., vocab]`
    anchor_name: str = "rollout"  # "rollout" or "old": names the arguments in error messages

    def require(self, field: str, method: str) -> torch.Tensor:
        value = getattr(self, field)
        if value is None:
            rollout = {
                "topk_ids": "topk_ids",
                "anchor_topk_logprobs": "rollout_topk_logprobs",
                "logits": "logits",
                "anchor_logits": "rollout_logits",
            }[field]
            if self.anchor_name == "old" and field.startswith("anchor"):
                needs = "old_logits (the anchor's full logits) together with old_logprob"
                if field == "anchor_topk_logprobs":
                    needs += " and topk_ids"
            else:
                needs = f"{rollout}=..."
            raise ValueError(f"method {method!r} needs {needs}")
        return value


Estimate = Callable[[MaskInputs], torch.Tensor]


@dataclass(frozen=True)
class MaskMethod:
    """One mask method: its estimate, its rule (→ critical thresholds) and what it needs (module docstring).

    rule: "ratio" | "divergence" | "none"; estimate: D(x) `[...]` float64 (divergence rule); divergence: "tv",
    "kl" or "" (the family of D, for choosing an exact reference); needs: the MaskInputs fields it reads beyond
    the log-probs; min_anchor_prob: tokens with anchor(a) below it are never outside; description: one line.
    """

    rule: str
    estimate: Estimate | None = None
    divergence: str = ""
    needs: tuple[str, ...] = ()
    min_anchor_prob: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        if self.rule == "divergence" and self.estimate is None:
            raise ValueError("a method with the divergence rule needs an estimate")

    def critical(
        self, x: MaskInputs, estimate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_up, c_down) float64 `[...]` (module docstring); ``estimate`` may pass a precomputed D."""
        lp, alp = x.logprob.double(), x.anchor_logprob.double()
        never = torch.full(lp.shape, -math.inf, dtype=torch.float64, device=lp.device)
        if self.rule == "none":
            return never, never.clone()
        if self.rule == "ratio":
            ratio = torch.exp(lp - alp)
            up, down = ratio - 1.0, 1.0 - ratio
        else:
            d = (self.estimate(x) if estimate is None else estimate).double()
            up, down = torch.where(lp > alp, d, never), torch.where(lp < alp, d, never)
        if self.min_anchor_prob > 0:
            exempt = alp < math.log(self.min_anchor_prob)
            up, down = up.masked_fill(exempt, -math.inf), down.masked_fill(exempt, -math.inf)
        return up, down


def _binary_tv(x: MaskInputs) -> torch.Tensor:
    return div.binary_tv(x.anchor_logprob, x.logprob, dtype=torch.float64)


def _binary_kl(x: MaskInputs) -> torch.Tensor:
    return div.binary_kl(x.anchor_logprob, x.logprob, dtype=torch.float64)


def _topk(fn: Callable[..., torch.Tensor], method: str) -> Estimate:
    def estimate(x: MaskInputs) -> torch.Tensor:
        ids = x.require("topk_ids", method)
        lmu = x.require("anchor_topk_logprobs", method)
        names = (
            {"rollout_topk_logprobs": "log_softmax(old_logits) at topk_ids"}
            if x.anchor_name == "old"
            else None
        )
        return fn(lmu, ids, x.require("logits", method), dtype=torch.float64, names=names)

    return estimate


def _exact(fn: Callable[..., torch.Tensor], method: str) -> Estimate:
    def estimate(x: MaskInputs) -> torch.Tensor:
        names = {"rollout_logits": "old_logits"} if x.anchor_name == "old" else None
        anchor = x.require("anchor_logits", method)
        return fn(anchor, x.require("logits", method), dtype=torch.float64, names=names)

    return estimate


METHODS: dict[str, MaskMethod] = {
    "ppo": MaskMethod("ratio", description="PPO/GRPO ratio clip"),
    "ppo_relaxed": MaskMethod(
        "ratio", min_anchor_prob=0.1, description="ratio clip lifted for tokens with anchor(a) < 0.1 (§6)"
    ),
    "dppo_binary_tv": MaskMethod("divergence", _binary_tv, "tv", description="Binary TV |π(a) − μ(a)|"),
    "dppo_binary_kl": MaskMethod("divergence", _binary_kl, "kl", description="Binary KL (Eq. 14)"),
    "dppo_topk_tv": MaskMethod(
        "divergence",
        _topk(div.topk_tv, "dppo_topk_tv"),
        "tv",
        needs=("topk_ids", "anchor_topk_logprobs", "logits"),
        description="Top-K TV (Eq. 15)",
    ),
    "dppo_topk_kl": MaskMethod(
        "divergence",
        _topk(div.topk_kl, "dppo_topk_kl"),
        "kl",
        needs=("topk_ids", "anchor_topk_logprobs", "logits"),
        description="Top-K KL (Eq. 16)",
    ),
    "dppo_exact_tv": MaskMethod(
        "divergence",
        _exact(div.tv, "dppo_exact_tv"),
        "tv",
        needs=("anchor_logits", "logits"),
        description="exact TV",
    ),
    "dppo_exact_kl": MaskMethod(
        "divergence",
        _exact(div.kl, "dppo_exact_kl"),
        "kl",
        needs=("anchor_logits", "logits"),
        description="exact KL",
    ),
    "none": MaskMethod("none", description="no mask (PG-IS)"),
}


def check_method(method: object) -> str:
    return check_choice("method", method, METHODS)


def _mask_inputs(
    conv: Converter,
    entry: MaskMethod,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    topk_ids: ArrayLike | None,
    rollout_topk_logprobs: ArrayLike | None,
    logits: ArrayLike | None,
    rollout_logits: ArrayLike | None,
    old_logprob: ArrayLike | None,
    old_logits: ArrayLike | None,
) -> MaskInputs:
    """Validate every input under its own argument name and build the MaskInputs of the chosen anchor."""
    lp = conv.place(conv.tensor(logprob, "logprob"))
    lmu = conv.place(conv.tensor(rollout_logprob, "rollout_logprob"))
    check_same_shape(lp, "logprob", lmu, "rollout_logprob")
    lp, lmu = check_logprobs(lp, "logprob"), check_logprobs(lmu, "rollout_logprob")
    opt = {
        "topk_ids": (topk_ids, "int"),
        "rollout_topk_logprobs": (rollout_topk_logprobs, "float"),
        "logits": (logits, "float"),
        "rollout_logits": (rollout_logits, "float"),
        "old_logprob": (old_logprob, "float"),
        "old_logits": (old_logits, "float"),
    }
    t = {
        name: None if v is None else conv.place(conv.tensor(v, name, kind=kind))
        for name, (v, kind) in opt.items()
    }
    for name in ("logits", "rollout_logits", "old_logits"):
        if t[name] is not None and t[name].shape[:-1] != lp.shape:
            raise ValueError(f"{name} must have shape {(*lp.shape, 'vocab')}, got {tuple(t[name].shape)}")
    for name in ("topk_ids", "rollout_topk_logprobs"):
        if t[name] is not None and t[name].shape[:-1] != lp.shape:
            raise ValueError(f"{name} must have shape {(*lp.shape, 'K')}, got {tuple(t[name].shape)}")
    if t["old_logprob"] is None:
        if t["old_logits"] is not None:
            raise ValueError("old_logits is only used together with old_logprob (the recompute anchor)")
        return MaskInputs(
            lp, lmu, t["topk_ids"], t["rollout_topk_logprobs"], t["logits"], t["rollout_logits"]
        )
    alp = t["old_logprob"]
    check_same_shape(alp, "old_logprob", lp, "logprob")
    alp = check_logprobs(alp, "old_logprob")
    anchor_topk = None
    if t["old_logits"] is not None and t["topk_ids"] is not None and "anchor_topk_logprobs" in entry.needs:
        anchor_topk = div.token_logprobs(
            t["old_logits"], t["topk_ids"], names={"logits": "old_logits", "ids": "topk_ids"}
        )
    return MaskInputs(lp, alp, t["topk_ids"], anchor_topk, t["logits"], t["old_logits"], anchor_name="old")


def _critical(
    conv: Converter, method: str, *inputs: ArrayLike | None
) -> tuple[MaskInputs, torch.Tensor, torch.Tensor]:
    """Validate the inputs (``_mask_inputs`` order) for ``method``; return them and the critical thresholds."""
    entry = METHODS[check_method(method)]
    conv.adopt_device(*inputs[2:])
    x = _mask_inputs(conv, entry, *inputs)
    up, down = entry.critical(x)
    return x, up, down


def critical_thresholds(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """(c_up, c_down) float64 `[...]`: the threshold at which each token flips on each side (module docstring).

    A token is outside the region on the up side iff c_up > high, on the down side iff c_down > low. Arguments
    as in ``trust_region_mask``.
    """
    conv = Converter()
    _, up, down = _critical(
        conv,
        method,
        logprob,
        rollout_logprob,
        topk_ids,
        rollout_topk_logprobs,
        logits,
        rollout_logits,
        old_logprob,
        old_logits,
    )
    return conv.out_raw(up), conv.out_raw(down)


def outside_region(
    method: str, *, low: float, high: float, **inputs: ArrayLike | None
) -> tuple[ArrayLike, ArrayLike]:
    """(out_up, out_down) bool `[...]`: whether each token lies outside the region on the up / down side.

    out_up = c_up > high, out_down = c_down > low (``critical_thresholds``); the building block of
    ``trust_region_mask``, exposed for analysis ("would PPO clip this token if its advantage were positive?").
    """
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    up, down = critical_thresholds(method, **inputs)
    return up > high, down > low


def trust_region_mask(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    advantages: ArrayLike,
    low: float,
    high: float,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
    response_mask: ArrayLike | None = None,
) -> ArrayLike:
    """Bool mask `[...]`, True = the token keeps its gradient (docs/design.md §2; paper Eq. 11–12).

    keep = not ((Â > 0 and c_up > high) or (Â < 0 and c_down > low)); padded (``response_mask`` False) and
    Â = 0 tokens are always True.

    logprob, rollout_logprob: log π(a), log μ(a) `[...]`; advantages: Â `[...]` (or `[batch]` broadcast over a
    trailing time dim); low, high: thresholds ≥ 0 (ratio ε for the ratio rule, δ for the DPPO methods);
    topk_ids, rollout_topk_logprobs `[..., K]` for the Top-K methods; logits, rollout_logits `[..., vocab]` for
    the exact methods (logits also for Top-K); old_logprob `[...]` (and old_logits `[..., vocab]` for Top-K and
    exact) moves the anchor to the recomputed π_old; response_mask bool `[...]`.
    """
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    conv = Converter()
    x, up, down = _critical(
        conv,
        method,
        logprob,
        rollout_logprob,
        topk_ids,
        rollout_topk_logprobs,
        logits,
        rollout_logits,
        old_logprob,
        old_logits,
    )
    adv = broadcast_advantages(conv.place(conv.tensor(advantages, "advantages")), x.logprob.shape)
    drop = ((adv > 0) & (up > high)) | ((adv < 0) & (down > low))
    if response_mask is not None:
        valid = conv.place(conv.tensor(response_mask, "response_mask", kind="bool"))
        check_same_shape(valid, "response_mask", x.logprob, "logprob")
        drop &= valid
    return conv.out_raw(~drop)


def broadcast_advantages(adv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Advantages `[...]` of the token shape, or `[batch]` broadcast over `[batch, time]`."""
    if adv.shape == shape:
        check_finite(adv, "advantages")
        return adv
    if adv.ndim == 1 and len(shape) == 2 and adv.shape[0] == shape[0]:
        check_finite(adv, "advantages")
        return adv[:, None].expand(shape)
    raise ValueError(
        f"advantages must have the shape of logprob {tuple(shape)} (or [batch] for [batch, time]), "
        f"got {tuple(adv.shape)}"
    )
