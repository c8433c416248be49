"""The one policy-gradient surrogate every method shares, and its diagnostics (docs/design.md §2).

    loss_t = −Â_t · sg(min(r_t, ratio_cap)) · M_t · log π(a_t),     r_t = π(a_t)/μ(a_t),  sg = stop-gradient

M_t is the trust-region mask of `trustregion_lab.masks` (paper Eq. 11–12). For a method of
``masks.CORRECTION_METHODS`` (IcePop, sequence-level masked IS, GSPO: docs/design.md §9) M_t is that method's
mask and r_t in the weight is replaced by the method's importance weight (the token ratio, the sequence's
product R = Π_t r_t, or its geometric mean G = R^(1/n)), still as sg(min(·, C)). Its gradient is the masked,
importance-sampled policy gradient −Â · min(r, C) · M · ∇log π; for method "ppo" (with r below the cap) it equals the
gradient of PPO's clipped objective −min(r Â, clip(r, 1 − low, 1 + high) Â), since PPO's min selects the
clipped (constant) branch exactly when the ratio rule of the mask drops the token.

Aggregations over valid (response) tokens, with n_t = valid tokens of sequence t:
    "token-mean"           Σ_{seq,t} loss / Σ n_t
    "seq-mean-token-sum"   mean over sequences with n_t > 0 of Σ_t loss
    "seq-mean-token-mean"  mean over sequences with n_t > 0 of (Σ_t loss) / n_t
The last axis is time; leading axes index sequences (a 1-D input is one sequence). Sums are taken in float32, or
float64 for float64 inputs, whatever the input dtype (a float16 sum over thousands of tokens overflows).

``log_ratio_penalty`` c > 0 adds c · (log π(a) − log μ(a))² to every valid token's loss (masked or not), the
penalty prime-rl's default loss carries (its ``kl_tau``); 0 by default.

Metrics (floats; every method reports the same names; a metric whose denominator is empty is NaN):
    over tokens with response_mask and Â ≠ 0 (the ones that carry gradient):
      mask_frac        dropped / tokens;   mask_frac_pos, mask_frac_neg: the same among Â > 0 / Â < 0
      ratio_clip_frac  share the PPO ratio rule (ε = `ratio_clip`) on r = π/μ would drop, for every method and
                       anchor (also the recompute ones): comparable with mask_frac and across methods
    over all response tokens:
      ratio_cap_frac   share with r > ratio_cap
      mismatch_k1      mean(log μ − log π)           mismatch_k3   mean(r − 1 − log r)
      chi2             mean((r − 1)²)               ess           (Σ r)² / (n Σ r²)  (1 = on-policy)
      ratio_mean, ratio_max, valid_tokens (count of response tokens), adv_tokens (count with Â ≠ 0),
      pos_tokens, neg_tokens (counts with Â > 0 / Â < 0): the denominators, so callers can pool mini-batches
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trustregion_lab._arrays import ArrayLike, Converter, check_logprobs, check_same_shape
from trustregion_lab._validate import check_choice, check_real, check_threshold
from trustregion_lab.masks import (
    CORRECTION_METHODS,
    broadcast_advantages,
    check_any_method,
    correction_log_stat,
    correction_log_weight,
    correction_outside,
    outside_region,
)

__all__ = ["AGGREGATIONS", "DESIGN_METRICS", "METRIC_NAMES", "aggregate", "policy_loss"]

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
# the diagnostics docs/design.md §2 names, which every method reports; then extras and the denominators behind them
DESIGN_METRICS = (
    "mask_frac",
    "mask_frac_pos",
    "mask_frac_neg",
    "ratio_clip_frac",
    "ratio_cap_frac",
    "mismatch_k1",
    "mismatch_k3",
    "chi2",
    "ess",
)
METRIC_NAMES = (
    *DESIGN_METRICS,
    "ratio_mean",
    "ratio_max",
    "valid_tokens",
    "adv_tokens",
    "pos_tokens",
    "neg_tokens",
)
DEFAULT_RATIO_CLIP = (0.2, 0.2)


def aggregate(per_token: torch.Tensor, valid: torch.Tensor, agg: str) -> torch.Tensor:
    """Reduce a per-token loss `[..., time]` over valid tokens (bool `[..., time]`) with one of AGGREGATIONS.

    Computed in float32 (float64 for a float64 input) whatever the input dtype; returns that dtype.
    """
    check_choice("agg", agg, AGGREGATIONS)
    if per_token.dtype != torch.float64:
        per_token = per_token.float()
    per_token = per_token * valid.to(per_token.dtype)
    if agg == "token-mean":
        return per_token.sum() / valid.sum().clamp(min=1).to(per_token.dtype)
    seq_sum = per_token.reshape(-1, per_token.shape[-1]).sum(-1)
    n_t = valid.reshape(-1, valid.shape[-1]).sum(-1)
    nonempty = n_t > 0
    if agg == "seq-mean-token-mean":
        seq_sum = seq_sum / n_t.clamp(min=1).to(per_token.dtype)
    return (seq_sum * nonempty.to(per_token.dtype)).sum() / nonempty.sum().clamp(min=1).to(per_token.dtype)


def _frac(num: torch.Tensor, den: torch.Tensor) -> float:
    d = int(den.sum())
    return float(num.sum()) / d if d else math.nan


def _mean(x: torch.Tensor, where: torch.Tensor) -> float:
    n = int(where.sum())
    return float(x[where].sum()) / n if n else math.nan


def policy_loss(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    advantages: ArrayLike,
    response_mask: ArrayLike,
    low: float,
    high: float,
    ratio_cap: float = 10.0,
    agg: str = "token-mean",
    ratio_clip: tuple[float, float] | None = None,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
    log_ratio_penalty: float = 0.0,
) -> tuple[ArrayLike, dict[str, float]]:
    """The masked, capped importance-sampling surrogate of docs/design.md §2 → (scalar loss, metrics).

    logprob: log π(a) `[..., time]` (a torch tensor with grad for training); rollout_logprob: log μ(a), same shape;
    advantages: Â, same shape or `[batch]` for `[batch, time]`; response_mask: bool, same shape (False = padding);
    low, high: mask thresholds (ratio ε for "ppo", δ for DPPO methods); ratio_cap: C in min(r, C) (> 0, may be
    inf); agg: one of AGGREGATIONS; ratio_clip: the (low, high) ε of the PPO rule behind `ratio_clip_frac`
    (default: low/high for "ppo", else 0.2/0.2); log_ratio_penalty: c ≥ 0 of the c · (log r)² term (module
    docstring). The remaining keyword arguments are passed to the mask, see
    `trustregion_lab.masks.trust_region_mask`. The loss is float32 (float64 for float64 inputs).
    method may also name a `masks.CORRECTION_METHODS` rule (low, high: the band or clip around 1; the sequences
    are the rows of `[..., time]`); such a rule reads only ``old_logprob`` (its anchor) of those keywords.
    """
    method = check_any_method(method)
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    cap = check_real("ratio_cap", ratio_cap, positive=True, allow_inf=True)
    check_choice("agg", agg, AGGREGATIONS)
    if ratio_clip is None:
        ratio_clip = (low, high) if method == "ppo" else DEFAULT_RATIO_CLIP
    if not isinstance(ratio_clip, tuple | list) or len(ratio_clip) != 2:
        raise TypeError(f"ratio_clip must be a (low, high) pair, got {ratio_clip!r}")
    clip_low = check_threshold("ratio_clip[0]", ratio_clip[0])
    clip_high = check_threshold("ratio_clip[1]", ratio_clip[1])
    penalty = check_real("log_ratio_penalty", log_ratio_penalty, minimum=0.0)

    conv = Converter()
    conv.adopt_device(topk_ids, rollout_topk_logprobs, logits, rollout_logits, old_logprob, old_logits)
    lp = conv.tensor(logprob, "logprob")
    lmu = conv.tensor(rollout_logprob, "rollout_logprob")
    adv = conv.tensor(advantages, "advantages")
    resp = conv.tensor(response_mask, "response_mask", kind="bool")
    lp, lmu, adv, resp = conv.place(lp), conv.place(lmu), conv.place(adv), conv.place(resp)
    if lp.ndim < 1:
        raise ValueError(f"logprob must have shape [..., time], got a scalar {tuple(lp.shape)}")
    check_same_shape(lp, "logprob", lmu, "rollout_logprob")
    check_same_shape(lp, "logprob", resp, "response_mask")
    adv = broadcast_advantages(adv, lp.shape)
    lp_const = check_logprobs(lp.detach(), "logprob")
    lmu = check_logprobs(lmu, "rollout_logprob")

    extra: dict[str, Any] = {
        "topk_ids": topk_ids,
        "rollout_topk_logprobs": rollout_topk_logprobs,
        "logits": logits,
        "rollout_logits": rollout_logits,
        "old_logprob": old_logprob,
        "old_logits": old_logits,
    }
    extra = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
    with torch.no_grad():
        log_r = lp_const.double() - lmu.double()
        if method in CORRECTION_METHODS:  # the field's remedies: token bands and sequence-level rules
            entry = CORRECTION_METHODS[method]
            old = extra["old_logprob"]
            if old is None:
                log_anchor_r = log_r
            else:
                old = check_logprobs(conv.place(conv.tensor(old, "old_logprob")), "old_logprob")
                check_same_shape(old, "old_logprob", lp, "logprob")
                log_anchor_r = lp_const.double() - old.double()
            up, down = correction_outside(entry, correction_log_stat(entry, log_anchor_r, resp), low, high)
            log_weight = correction_log_weight(entry, log_r, resp)
        else:
            up, down = outside_region(
                method, logprob=lp_const, rollout_logprob=lmu, low=low, high=high, **extra
            )
            log_weight = log_r
        # PPO's rule on the importance ratio r = π/μ, whatever the method's anchor: one yardstick for every row
        clip_up, clip_down = outside_region(
            "ppo", logprob=lp_const, rollout_logprob=lmu, low=clip_low, high=clip_high
        )
        pos, neg = resp & (adv > 0), resp & (adv < 0)
        keep = ~((pos & up) | (neg & down))
        ratio = torch.exp(log_r)
        weight = torch.exp(log_weight).clamp(max=cap)
        # zero (not 0 · inf = NaN) where a token carries no gradient: padding, Â = 0, masked, or r = inf uncapped
        cdtype = torch.float64 if lp.dtype == torch.float64 else torch.float32
        coef = torch.where(keep & (pos | neg), -adv.double() * weight, 0.0).to(cdtype)

    per_token = coef * lp.to(cdtype)
    if penalty > 0:
        log_r2 = torch.where(resp, lp.to(cdtype) - lmu.to(cdtype), 0.0) ** 2
        per_token = per_token + penalty * log_r2
    loss = aggregate(per_token, resp, agg)

    with torch.no_grad():
        gets_grad = pos | neg
        dropped = ~keep
        clip_drop = (pos & clip_up) | (neg & clip_down)
        rm1 = torch.expm1(log_r)
        n_resp = int(resp.sum())
        if n_resp:
            lr = log_r[resp]
            w = torch.exp(lr - lr.max())  # ESS is scale-free: normalise by the max ratio to avoid overflow
            ess = float(w.sum() ** 2 / (n_resp * (w**2).sum()))
            ratio_max = float(ratio[resp].max())
        else:
            ess = ratio_max = math.nan
        metrics = {
            "mask_frac": _frac(dropped & gets_grad, gets_grad),
            "mask_frac_pos": _frac(dropped & pos, pos),
            "mask_frac_neg": _frac(dropped & neg, neg),
            "ratio_clip_frac": _frac(clip_drop, gets_grad),
            "ratio_cap_frac": _frac((ratio > cap) & resp, resp),
            "mismatch_k1": _mean(-log_r, resp),
            "mismatch_k3": _mean((rm1 - log_r).clamp(min=0.0), resp),
            "chi2": _mean(rm1**2, resp),
            "ess": ess,
            "ratio_mean": _mean(ratio, resp),
            "ratio_max": ratio_max,
            "valid_tokens": float(n_resp),
            "adv_tokens": float(int(gets_grad.sum())),
            "pos_tokens": float(int(pos.sum())),
            "neg_tokens": float(int(neg.sum())),
        }
    return (loss if conv.saw_torch else conv.out_raw(loss.detach())), metrics
