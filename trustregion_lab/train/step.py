"""One training step's optimisation: the equal-weight diagnostics, then epochs × mini-batches of the surrogate.

``update`` is the whole algorithm of a step, CleanRL style: for each epoch, for each mini-batch of rows,
    loss = policy_loss(variant.method, log π(a), log μ(a), Â, ...)   (docs/design.md §2:
           −Â · sg(min(r, C)) · M · log π(a), aggregated by ``config.agg``)
    backward, clip the gradient norm, optimiser step,
and the metrics of every mini-batch are pooled over the step by their denominators.

``start_metrics`` compares μ with π_old, the trainer's own forward at the weights the engine served (the paper's
Fig. 3 metrics, verl's ``rollout_probs_diff_*``), before any update of the step; over response tokens:
    mismatch_mean = mean |π(a) − μ(a)|,  mismatch_max = max (π(a) − μ(a)),  mismatch_min = min (π(a) − μ(a)),
    mismatch_k3_start = mean (r − 1 − log r),  ess_start = (Σ r)² / (n Σ r²),  r = π(a)/μ(a),
    tv_exact_start, kl_exact_start = mean exact TV(μ, π), KL(μ‖π) per state,  entropy = mean H(π_old)
(per state in float32, like the exact TV and KL of float32 logits; means in float64).
With staleness > 0 the engine served older weights and these measure the staleness gap as well.

``after_metrics`` measures the step's off-policy dose (docs/design.md §7): π is the policy after the step's last
mini-batch update (one more no-grad forward over the batch), μ the engine's report, over response tokens:
    dose = share of tokens with r = π(a)/μ(a) outside [0.8, 1.2],  tv_after = mean exact TV(μ, π) per state
(π(a) from float32 logits, r in float64; the exact TV per state in float32, its mean in float64). It includes the
staleness gap and the engine's own mismatch, as the update sees them. The trainer runs it (and its forward) only
on steps that are multiples of ``TrainConfig.dose_every`` (NaN in the other rows).

Each log-softmax over the vocabulary is computed once per step: the trainer's ``prepare`` keeps
log_softmax(rollout_logits) and log_softmax(old_logits) on the batch (``rollout_logp``, ``old_logp``), ``update``
reuses the log-softmax its loss takes for the exact TV/KL, and every exact TV/KL comes from log-probs
(``divergence.exact_tv_kl_logp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from trustregion_lab import divergence
from trustregion_lab.losses import DESIGN_METRICS, policy_loss
from trustregion_lab.train.batch import RolloutBatch
from trustregion_lab.train.config import TrainConfig
from trustregion_lab.train.variants import Variant

__all__ = [
    "AFTER_METRICS",
    "DOSE_BAND",
    "START_METRICS",
    "UPDATE_METRICS",
    "MetricPool",
    "after_metrics",
    "start_metrics",
    "update",
]

START_METRICS = (
    "mismatch_mean",
    "mismatch_max",
    "mismatch_min",
    "mismatch_k3_start",
    "ess_start",
    "tv_exact_start",
    "kl_exact_start",
    "entropy",
)
UPDATE_METRICS = (*DESIGN_METRICS, "tv_exact", "kl_exact", "grad_norm", "grad_norm_max", "loss")
AFTER_METRICS = ("dose", "tv_after")
# the ratio band π(a)/μ(a) inside which a token does not count towards the dose
DOSE_BAND = (0.8, 1.2)
# the denominator each policy_loss metric is pooled with over a step's mini-batches (ess: a plain mean)
_POOLING_WEIGHT = {
    "mask_frac": "adv_tokens",
    "ratio_clip_frac": "adv_tokens",
    "mask_frac_pos": "pos_tokens",
    "mask_frac_neg": "neg_tokens",
    "ratio_cap_frac": "valid_tokens",
    "mismatch_k1": "valid_tokens",
    "mismatch_k3": "valid_tokens",
    "chi2": "valid_tokens",
}
_LOGP_NAMES = {"log_mu": "rollout_logp", "log_pi": "logp"}


class MetricPool:
    """Weighted means (Σ value · weight / Σ weight) and maxima over a step's mini-batches; NaN values and zero
    weights are left out, so a fraction over tokens pools to (total numerator) / (total denominator)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        if not math.isnan(value) and weight > 0:
            self.sums[name] = self.sums.get(name, 0.0) + value * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def max(self, name: str, value: float) -> None:
        if not math.isnan(value):
            self.maxima[name] = max(self.maxima.get(name, -math.inf), value)

    def result(self) -> dict[str, float]:
        """Every name of ``names`` (NaN where nothing was pooled)."""
        out = {name: self.sums[name] / self.weights[name] for name in self.sums}
        out.update(self.maxima)
        return {name: out.get(name, math.nan) for name in self.names}


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(mask.sum())
    return float(values.double()[mask].sum()) / n if n else math.nan


def _log_softmax(logp: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The batch's stored log-softmax when ``prepare`` filled it, else log_softmax(logits) in float32."""
    return logp if logp is not None else torch.log_softmax(logits.float(), -1)


def _states(values: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The states ``flat`` `[n]` (indices into the flattened leading dims) of ``values`` `[..., V]` → `[n, V]`;
    with flat = mask.flatten().nonzero() the same rows in the same order as ``values[mask]``, copied faster."""
    return values.reshape(-1, values.shape[-1]).index_select(0, flat)


def _flat(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of ``mask`` in its flattened order `[n]` (int64)."""
    return mask.reshape(-1).nonzero().squeeze(-1)


@torch.no_grad()
def start_metrics(batch: RolloutBatch) -> dict[str, float]:
    """The step's equal-weight diagnostics (module docstring); needs ``batch.old_logits``/``old_logprob``.

    Reads the step's log-softmaxes ``batch.rollout_logp`` and ``batch.old_logp`` (computed from the logits when
    absent): exact TV/KL and the entropy H(π_old) = −Σ_v p_v log p_v (p = exp(``old_logp``), renormalised) in
    one pass of ``divergence.exact_tv_kl_logp`` over the response states, per state in float32, means in
    float64.
    """
    mask = batch.response_mask
    if batch.old_logits is None or batch.old_logprob is None or not bool(mask.any()):
        return dict.fromkeys(START_METRICS, math.nan)
    lp, lmu = batch.old_logprob.double()[mask], batch.rollout_logprob.double()[mask]
    diff = lp.exp() - lmu.exp()
    log_r = lp - lmu
    w = torch.exp(log_r - log_r.max())  # ESS is scale-free: normalise by the largest ratio
    flat = _flat(mask)
    tv, kl, entropy = divergence.exact_tv_kl_logp(
        _log_softmax(batch.rollout_logp, batch.rollout_logits),
        _log_softmax(batch.old_logp, batch.old_logits),
        mu_rows=flat,
        pi_rows=flat,
        entropy=True,
        names=_LOGP_NAMES,
    )
    return {
        "mismatch_mean": float(diff.abs().mean()),
        "mismatch_max": float(diff.max()),
        "mismatch_min": float(diff.min()),
        "mismatch_k3_start": float((torch.expm1(log_r) - log_r).clamp(min=0).mean()),
        "ess_start": float(w.sum() ** 2 / (w.numel() * (w**2).sum())),
        "tv_exact_start": float(tv.double().mean()),
        "kl_exact_start": float(kl.double().mean()),
        "entropy": float(entropy.double().mean()),
    }


@torch.no_grad()
def after_metrics(batch: RolloutBatch, logits: torch.Tensor) -> dict[str, float]:
    """The step's off-policy dose (module docstring) from π's logits `[B, T, V]` after the step's last update.

    dose = #{response tokens: π(a)/μ(a) < 0.8 or > 1.2} / #response tokens, μ(a) = exp(``rollout_logprob``),
    log π(a) = z_a − logsumexp(z) in float64 from the float32 logits z;
    tv_after = mean over response tokens of the exact TV(μ, π) = ½ Σ_v |μ_v − π_v| from log μ =
    ``batch.rollout_logp`` and log π = z − logsumexp(z) (float32). Only the response positions are read. NaN for a
    batch without response tokens.
    """
    mask = batch.response_mask
    if not bool(mask.any()):
        return dict.fromkeys(AFTER_METRICS, math.nan)
    flat = _flat(mask)
    logits = _states(logits.float(), flat)  # [n, V]
    picked = logits.gather(-1, batch.tokens[mask].unsqueeze(-1)).squeeze(-1)
    lse = torch.logsumexp(logits, -1)
    log_pi = picked.double() - lse.double()
    ratio = torch.exp(log_pi - batch.rollout_logprob[mask].double())
    low, high = DOSE_BAND
    outside = (ratio < low) | (ratio > high)
    log_mu = _log_softmax(batch.rollout_logp, batch.rollout_logits)
    tv, _ = divergence.exact_tv_kl_logp(log_mu, logits.sub_(lse[:, None]), mu_rows=flat, names=_LOGP_NAMES)
    return {"dose": float(outside.double().mean()), "tv_after": float(tv.double().mean())}


def update(
    policy_logits: Callable[[torch.Tensor], torch.Tensor],
    batch: RolloutBatch,
    *,
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    config: TrainConfig,
    variant: Variant,
    rng: np.random.Generator,
) -> dict[str, float]:
    """``config.epochs`` × ``config.num_minibatches`` optimiser steps on one rollout batch (module docstring).

    policy_logits(rows `[b]`) → π_θ's logits `[b, T, V]` at the batch's states, with gradient. Returns the
    pooled UPDATE_METRICS: policy_loss's diagnostics (on the variant's ratio: π/μ, or π/π_old for
    ``ratio="recompute"``), the exact TV/KL(μ‖π) before each update, the mean and largest gradient norm (before
    clipping) and the loss.
    """
    pool = MetricPool(UPDATE_METRICS)
    rollout_logp = _log_softmax(batch.rollout_logp, batch.rollout_logits)
    positions = torch.arange(batch.response_mask.shape[1], device=batch.tokens.device)
    for _ in range(config.epochs):
        for chunk in np.array_split(rng.permutation(batch.num_rows), config.num_minibatches):
            rows = torch.from_numpy(np.sort(chunk)).to(batch.tokens.device)
            mb = batch.rows(rows)
            logits = policy_logits(rows).float()
            logp = torch.log_softmax(logits, -1)  # [b, T, V], also read by the exact TV/KL below
            logprob = logp.gather(-1, mb.tokens.unsqueeze(-1)).squeeze(-1)
            loss, metrics = policy_loss(
                variant.method,
                logprob=logprob,
                rollout_logprob=mb.old_logprob if variant.ratio == "recompute" else mb.rollout_logprob,
                advantages=mb.advantages,
                response_mask=mb.response_mask,
                low=variant.low,
                high=variant.high,
                ratio_cap=variant.ratio_cap,
                agg=variant.agg or config.agg,
                log_ratio_penalty=variant.log_ratio_penalty,
                logits=logits,
                **mb.mask_inputs(variant.anchor),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm))
            optimizer.step()

            for name in DESIGN_METRICS:
                pool.add(
                    name, metrics[name], metrics[_POOLING_WEIGHT[name]] if name in _POOLING_WEIGHT else 1.0
                )
            with torch.no_grad():
                valid = mb.response_mask
                # the mini-batch's response states, in the batch's flattened [B·T] and in its own [b·T]
                in_batch = (rows[:, None] * valid.shape[1] + positions)[valid]
                tv, kl = divergence.exact_tv_kl_logp(
                    rollout_logp, logp.detach(), mu_rows=in_batch, pi_rows=_flat(valid), names=_LOGP_NAMES
                )
                pool.add("tv_exact", float(tv.double().mean()) if tv.numel() else math.nan, tv.numel())
                pool.add("kl_exact", float(kl.double().mean()) if kl.numel() else math.nan, kl.numel())
            pool.add("grad_norm", grad_norm)
            pool.max("grad_norm_max", grad_norm)
            pool.add("loss", float(loss.detach()))
    return pool.result()
