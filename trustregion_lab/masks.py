"""Trust-region masks: which tokens keep their policy gradient (True = keep). DESIGN §2, paper Eq. 11–12.

Every method answers two questions per token, given the anchor distribution (the rollout μ by default):
    out_up:   is the token outside the region on the side an Â > 0 update pushes it towards (π(a) going up)?
    out_down: likewise for Â < 0 (π(a) going down)?
and the mask drops a token only when its update would push it further out:
    keep = not ((Â > 0 and out_up) or (Â < 0 and out_down)).
Padded tokens (`response_mask` False) and Â = 0 tokens are always kept (they carry no gradient anyway).

Methods (thresholds `low`, `high` are arguments; D is the method's divergence estimate between anchor and π):
    ppo              out_up = r > 1 + high,  out_down = r < 1 − low,  r = π(a)/anchor(a)  (GRPO; clip-higher when
                     high > low)
    dppo_binary_tv   out_up = D > high and π(a) > anchor(a),  out_down = D > low and π(a) < anchor(a)  with
                     D = |π(a) − anchor(a)| (equivalently: π(a) − anchor(a) > high, or < −low)
    dppo_binary_kl, dppo_topk_tv, dppo_topk_kl, dppo_exact_tv, dppo_exact_kl   same rule, D the named estimate
    none             keep everything (PG with importance sampling; CISPO-like)

Anchor (DESIGN §2 "Anchor"; paper §5.2): by default the mask compares π with the rollout μ. Passing `old_logprob`
(the trainer's recomputed π_old, the MiniRL / verl-default "recompute" variant) anchors the mask there instead; the
Top-K and exact methods then need `old_logits` (π_old's full logits) for the anchor distribution.

Adding a method is one function and one line: write `def _my_method(x: MaskInputs, low, high) -> (out_up,
out_down)` (or a divergence estimate wrapped by `_divergence_rule`) and add it to `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trustregion_lab import divergence as div
from trustregion_lab._arrays import (
    ArrayLike,
    Converter,
    check_logprobs,
    check_same_shape,
    check_threshold,
)

__all__ = ["METHODS", "MaskInputs", "outside_region", "trust_region_mask"]


@dataclass(frozen=True)
class MaskInputs:
    """Inputs of one mask evaluation, as float tensors on one device (shapes `[...]` per token)."""

    logprob: torch.Tensor  # log π(a) `[...]`
    anchor_logprob: torch.Tensor  # log anchor(a) `[...]` (rollout μ, or recomputed π_old)
    topk_ids: torch.Tensor | None = None  # `[..., K]`
    anchor_topk_logprobs: torch.Tensor | None = None  # `[..., K]`
    logits: torch.Tensor | None = None  # π's logits `[..., vocab]`
    anchor_logits: torch.Tensor | None = None  # anchor's logits `[..., vocab]`

    def require(self, field: str, method: str, argument: str) -> torch.Tensor:
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"method {method!r} needs {argument}=...")
        return value


Rule = Callable[[MaskInputs, float, float], tuple[torch.Tensor, torch.Tensor]]


def _ppo(x: MaskInputs, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = torch.exp(x.logprob.double() - x.anchor_logprob.double())
    return ratio > 1.0 + high, ratio < 1.0 - low


def _none(x: MaskInputs, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    never = torch.zeros(x.logprob.shape, dtype=torch.bool, device=x.logprob.device)
    return never, never


def _divergence_rule(estimate: Callable[[MaskInputs], torch.Tensor]) -> Rule:
    """DPPO rule (Eq. 11–12): out_up = D > high and π(a) > anchor(a); out_down = D > low and π(a) < anchor(a)."""

    def rule(x: MaskInputs, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
        d = estimate(x)
        up = x.logprob > x.anchor_logprob
        down = x.logprob < x.anchor_logprob
        return (d > high) & up, (d > low) & down

    return rule


# Binary estimates are compared with the threshold in float64 (not after rounding back to a bf16/fp16 input dtype);
# the rest bucket is floored at the resolution of the dtype the log-probs arrived in, as in `divergence.binary_kl`.
def _binary_tv(x: MaskInputs) -> torch.Tensor:
    return div._binary_tv(x.anchor_logprob.double(), x.logprob.double())


def _binary_kl(x: MaskInputs) -> torch.Tensor:
    floor = div.resolution_log_floor(torch.promote_types(x.anchor_logprob.dtype, x.logprob.dtype))
    return div._binary_kl(x.anchor_logprob.double(), x.logprob.double(), floor)


def _topk(fn: Callable[..., torch.Tensor], method: str) -> Callable[[MaskInputs], torch.Tensor]:
    def estimate(x: MaskInputs) -> torch.Tensor:
        ids = x.require("topk_ids", method, "topk_ids")
        lmu = x.require(
            "anchor_topk_logprobs", method, "rollout_topk_logprobs (or old_logits with old_logprob)"
        )
        return fn(lmu, ids, x.require("logits", method, "logits"))

    return estimate


def _exact(fn: Callable[..., torch.Tensor], method: str) -> Callable[[MaskInputs], torch.Tensor]:
    def estimate(x: MaskInputs) -> torch.Tensor:
        anchor = x.require("anchor_logits", method, "rollout_logits (or old_logits with old_logprob)")
        return fn(anchor, x.require("logits", method, "logits"))

    return estimate


METHODS: dict[str, Rule] = {
    "ppo": _ppo,
    "dppo_binary_tv": _divergence_rule(_binary_tv),
    "dppo_binary_kl": _divergence_rule(_binary_kl),
    "dppo_topk_tv": _divergence_rule(_topk(div.topk_tv, "dppo_topk_tv")),
    "dppo_topk_kl": _divergence_rule(_topk(div.topk_kl, "dppo_topk_kl")),
    "dppo_exact_tv": _divergence_rule(_exact(div.tv, "dppo_exact_tv")),
    "dppo_exact_kl": _divergence_rule(_exact(div.kl, "dppo_exact_kl")),
    "none": _none,
}


def check_method(method: object) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {sorted(METHODS)}, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    return method


def _gather_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[ids] (float64) with −inf at unused (−1) slots; logits `[..., V]`, ids `[..., K]`.

    Validates the ids first and works a chunk of rows at a time (never a full `[N, V]` log-softmax).
    """
    v, k = logits.shape[-1], ids.shape[-1]
    if bool((ids < -1).any()) or bool((ids >= v).any()):
        raise ValueError(f"topk_ids must be token ids in [0, {v}) (or -1 for an unused slot)")
    valid = ids >= 0
    lp, _ = div._trainer_logprobs_at(
        logits.reshape(-1, v), ids.reshape(-1, k), valid.reshape(-1, k), div.DEFAULT_CHUNK_ELEMENTS
    )
    return lp.reshape(ids.shape)


def outside_region(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    low: float,
    high: float,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """(out_up, out_down) bool `[...]`: whether each token lies outside the region on the up / down side.

    The building block of `trust_region_mask`, exposed for analysis (e.g. "would PPO clip this token if its
    advantage were positive?"). Arguments as in `trust_region_mask`.
    """
    conv = Converter()
    method = check_method(method)
    low = check_threshold(low, "low")
    high = check_threshold(high, "high")
    lp = conv.tensor(logprob, "logprob")
    lmu = conv.tensor(rollout_logprob, "rollout_logprob")
    opt = {
        "topk_ids": (topk_ids, "int"),
        "rollout_topk_logprobs": (rollout_topk_logprobs, "float"),
        "logits": (logits, "float"),
        "rollout_logits": (rollout_logits, "float"),
        "old_logprob": (old_logprob, "float"),
        "old_logits": (old_logits, "float"),
    }
    t = {name: None if v is None else conv.tensor(v, name, kind=kind) for name, (v, kind) in opt.items()}
    lp, lmu = conv.place(lp), conv.place(lmu)
    t = {name: None if v is None else conv.place(v) for name, v in t.items()}
    check_same_shape(lp, "logprob", lmu, "rollout_logprob")
    lp = check_logprobs(lp, "logprob")
    lmu = check_logprobs(lmu, "rollout_logprob")
    for name in ("logits", "rollout_logits", "old_logits"):
        if t[name] is not None and t[name].shape[:-1] != lp.shape:
            raise ValueError(f"{name} must have shape {(*lp.shape, 'vocab')}, got {tuple(t[name].shape)}")

    if t["old_logprob"] is None:
        if t["old_logits"] is not None:
            raise ValueError("old_logits is only used together with old_logprob (the recompute anchor)")
        anchor_lp, anchor_topk, anchor_logits = lmu, t["rollout_topk_logprobs"], t["rollout_logits"]
    else:
        anchor_lp = t["old_logprob"]
        check_same_shape(anchor_lp, "old_logprob", lp, "logprob")
        anchor_lp = check_logprobs(anchor_lp, "old_logprob")
        anchor_logits = t["old_logits"]
        anchor_topk = None
        if anchor_logits is not None and t["topk_ids"] is not None:
            ids = t["topk_ids"]
            if ids.shape[:-1] != lp.shape:
                raise ValueError(f"topk_ids must have shape {(*lp.shape, 'K')}, got {tuple(ids.shape)}")
            anchor_topk = _gather_logprobs(anchor_logits, ids)

    inputs = MaskInputs(
        logprob=lp,
        anchor_logprob=anchor_lp,
        topk_ids=t["topk_ids"],
        anchor_topk_logprobs=anchor_topk,
        logits=t["logits"],
        anchor_logits=anchor_logits,
    )
    out_up, out_down = METHODS[method](inputs, low, high)
    return conv.out_raw(out_up), conv.out_raw(out_down)


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
    """Bool mask `[...]`, True = the token keeps its gradient (DESIGN §2; paper Eq. 11–12).

    keep = not ((Â > 0 and out_up) or (Â < 0 and out_down)); padded (`response_mask` False) and Â = 0 tokens are
    always True.

    logprob, rollout_logprob: log π(a), log μ(a) `[...]`; advantages: Â `[...]` (or `[batch]` broadcast over a
    trailing time dim); low, high: thresholds ≥ 0 (ratio ε for "ppo", δ for the DPPO methods);
    topk_ids, rollout_topk_logprobs `[..., K]` for the Top-K methods; logits, rollout_logits `[..., vocab]` for the
    exact methods (logits also for Top-K); old_logprob `[...]` (and old_logits `[..., vocab]` for Top-K/exact)
    moves the anchor to the recomputed π_old; response_mask bool `[...]`.
    """
    conv = Converter()
    conv.adopt_device(topk_ids, rollout_topk_logprobs, logits, rollout_logits, old_logprob, old_logits)
    lp = conv.tensor(logprob, "logprob")
    lmu = conv.tensor(rollout_logprob, "rollout_logprob")
    adv = conv.tensor(advantages, "advantages")
    lp, lmu, adv = conv.place(lp), conv.place(lmu), conv.place(adv)
    adv = broadcast_advantages(adv, lp.shape)
    out_up, out_down = outside_region(
        method,
        logprob=lp,
        rollout_logprob=lmu,
        low=low,
        high=high,
        topk_ids=topk_ids,
        rollout_topk_logprobs=rollout_topk_logprobs,
        logits=logits,
        rollout_logits=rollout_logits,
        old_logprob=old_logprob,
        old_logits=old_logits,
    )
    drop = ((adv > 0) & out_up) | ((adv < 0) & out_down)
    if response_mask is not None:
        valid = conv.place(conv.tensor(response_mask, "response_mask", kind="bool"))
        check_same_shape(valid, "response_mask", lp, "logprob")
        drop &= valid
    return conv.out_raw(~drop)


def broadcast_advantages(adv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Advantages `[...]` of the token shape, or `[batch]` broadcast over `[batch, time]`."""
    if not bool(torch.isfinite(adv).all()):
        raise ValueError("advantages must be finite")
    if adv.shape == shape:
        return adv
    if adv.ndim == 1 and len(shape) == 2 and adv.shape[0] == shape[0]:
        return adv[:, None].expand(shape)
    raise ValueError(
        f"advantages must have shape {tuple(shape)} (or [batch] for [batch, time]), got {tuple(adv.shape)}"
    )
