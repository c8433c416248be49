"""Top-K TV and KL: the divergence of the partition {v ∈ S} ∪ {rest}, S = the ids the engine reported.

Inputs: the engine's log-probs and ids `[..., K]` (−1 marks an unused slot) and the trainer's logits
`[..., vocab]`. Paper Eq. 15–16:
    TV_K = ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|)
    KL_K = Σ_{v∈S} μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest)
By the data-processing inequality Binary ≤ Top-K ≤ exact whenever the sampled token a is in S.
`token_logprobs(logits, ids)` is the building block: log_softmax(logits) at ids, float64, chunked over rows.

Numerics and floors:
- π_rest is the exact log-mass of the complement of S (a log-sum-exp over the logits outside S with its own
  max, no floor). μ_rest = 1 − Σ_S μ_v is read off the reported log-probs, as (1 − μ_top) − Σ_{others} μ_v with
  1 − μ_top = −expm1(log μ_top), so a tiny rest behind a near-1 top token is kept exactly. The reported values are
  taken at face value, known to their dtype's rounding: they resolve μ_rest to ε_S = eps/2 · Σ_S μ_v |log μ_v|
  (rounding log μ_v to relative eps/2 moves μ_v by that much; half the smallest subnormal for a subnormal log-prob)
  plus the float64 rounding of the sums. When 1 − Σ_S μ_v ≤ ε_S, μ_rest is only known to lie in [0, u] with
  u = max(1 − Σ_S μ_v, 0) + ε_S; the rest term is then the midpoint of the values it takes there (for KL:
  m log(m/π_rest), for TV: |m − π_rest|, m ∈ [0, u]), so its error is at most half that range: ≤ ½ u log(u/π_rest)
  for KL, ≤ ¼ u for TV. E.g. float32 log-probs of two tokens at 0.7 and 0.3 with the rest 200 nats down (true
  Top-K KL ≈ 1e-26) give u ≈ 7e-8 and an error ≤ 7e-6. A set holding every id has no rest bucket (term 0).
- The vocabulary pass (π's log-sum-exp) runs in the compute dtype (float64 with dtype=torch.float64); the
  per-token maths always runs in float64.
- `token_logprobs` and Top-K reject float64 logits whose row spread exceeds the float64 range (their
  log-probabilities are not representable) with a ValueError naming the argument.
- |μ_v − π_v| is computed with `abs_exp_diff` (no cancellation when π ≈ μ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from trustregion_lab._arrays import ArrayLike, Converter, check_finite, check_logprobs, check_same_shape
from trustregion_lab.divergence.common import abs_exp_diff, argument_names, chunk_size

__all__ = ["token_logprobs", "topk_kl", "topk_tv"]

# Reported top-K probabilities may sum above 1 by rounding in low precision; beyond this they are rejected.
_TOPK_MASS_TOLERANCE = 1e-2
_EPS64_HALF = torch.finfo(torch.float64).eps / 2


def _check_logits_and_ids(x: torch.Tensor, ids: torch.Tensor, logits_name: str, ids_name: str) -> None:
    """logits `[..., V]` (V ≥ 1) and ids `[..., K]` with the same leading dims, ids in [0, V) or −1."""
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"{logits_name} must have shape [..., vocab] with vocab >= 1, got {tuple(x.shape)}")
    v = x.shape[-1]
    if ids.ndim != x.ndim or ids.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"{ids_name} must have shape [..., K] matching {logits_name} [..., vocab] in its leading dims, "
            f"got {tuple(ids.shape)} and {tuple(x.shape)}"
        )
    if ids.numel() and (bool((ids < -1).any()) or bool((ids >= v).any())):
        raise ValueError(f"{ids_name} must be token ids in [0, {v}) (or -1 for an unused slot)")


def _logprobs_at(
    logits: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    chunk_elements: int,
    logits_name: str,
    *,
    cdtype: torch.dtype,
    with_rest: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log_softmax(logits) at `ids` `[N, K]` (−inf where not `valid`) and, with_rest, the log-mass of the
    complement of the valid ids `[N]` (−inf when they cover the vocabulary), from logits `[N, V]`; float64 out.

    Per chunk of rows, in the compute dtype `cdtype` (float32 or float64): m = max x, s = Σ exp(x − m); then in
    float64 log p = (x − m) − log s, so the log-probs carry no rounding of the (possibly large) max. The rest is a
    log-sum-exp over the complement with its own max (not 1 − Σ), exact even when the set holds nearly all mass.
    """
    n, v = logits.shape
    rows = max(1, chunk_elements // max(v, 1))
    lp_set = torch.empty(ids.shape, dtype=torch.float64, device=logits.device)
    lp_rest = torch.empty(n, dtype=torch.float64, device=logits.device) if with_rest else None
    safe_ids = ids.clamp(min=0)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        xc = logits[start:end].to(cdtype)
        check_finite(xc, logits_name)
        m = xc.amax(-1, keepdim=True)
        log_s = torch.exp(xc - m).sum(-1, keepdim=True).log_().double()
        m64 = m.double()
        lp_set[start:end] = (xc.gather(-1, safe_ids[start:end]).double() - m64) - log_s
        if lp_rest is not None:
            in_set = torch.zeros(xc.shape, dtype=torch.int32, device=xc.device)
            in_set.scatter_add_(-1, safe_ids[start:end], valid[start:end].int())
            outside = xc.masked_fill(in_set > 0, -math.inf)
            m_rest = outside.amax(-1, keepdim=True)
            shift = torch.where(torch.isfinite(m_rest), m_rest, torch.zeros_like(m_rest))
            log_s_rest = torch.exp(outside - shift).sum(-1, keepdim=True).log_().double()
            lp_rest[start:end] = ((m_rest.double() - m64) + (log_s_rest - log_s)).squeeze(-1)
    lp_set = lp_set.masked_fill(~valid, -math.inf)
    # finite logits give finite log-probs unless a float64 row spans more than the float64 range
    overflow = bool((torch.isneginf(lp_set) & valid).any())
    if lp_rest is not None:
        overflow = overflow or bool((torch.isneginf(lp_rest) & (valid.sum(-1) < v)).any())
    if overflow:
        raise ValueError(
            f"{logits_name} has a row whose values span more than the float64 range (max − min overflows, e.g. "
            "±1e308): its log-probabilities are below −1.8e308 and not representable; check or rescale the logits"
        )
    return lp_set, lp_rest


def token_logprobs(
    logits: ArrayLike,
    ids: ArrayLike,
    *,
    chunk_elements: int | None = None,
    names: Mapping[str, str] | None = None,
) -> ArrayLike:
    """log_softmax(logits) at `ids`: logits `[..., vocab]`, ids `[..., K]` int → float64 `[..., K]`.

    −1 in `ids` marks an unused slot and gives −inf. The ids are validated (integers in [0, vocab) or −1, leading
    dims matching the logits'); the logits must be finite. Works a chunk of rows at a time (`chunk_elements`,
    default 2**18), never a full `[N, vocab]` log-softmax, computed in float64: the float64 log-prob of the given
    logits. `names`: the caller's names for `logits` and `ids` in error messages.
    """
    n = argument_names(names, ("logits", "ids"))
    conv = Converter(torch.float64)
    x = conv.tensor(logits, n["logits"]).detach()
    id_t = conv.tensor(ids, n["ids"], kind="int")
    x, id_t = conv.place(x), conv.place(id_t)
    _check_logits_and_ids(x, id_t, n["logits"], n["ids"])
    chunk = chunk_size(chunk_elements)
    v, k = x.shape[-1], id_t.shape[-1]
    lp, _ = _logprobs_at(
        x.reshape(-1, v),
        id_t.reshape(-1, k),
        (id_t >= 0).reshape(-1, k),
        chunk,
        n["logits"],
        cdtype=torch.float64,
        with_rest=False,
    )
    return conv.out(lp.reshape(id_t.shape))


def _topk_inputs(
    rollout_topk_logprobs: ArrayLike,
    topk_ids: ArrayLike,
    logits: ArrayLike,
    chunk_elements: Any,
    dtype: torch.dtype | None,
    names: Mapping[str, str] | None,
) -> tuple[Converter, torch.Size, dict[str, torch.Tensor]]:
    """Validate Top-K inputs; return (conv, leading shape, parts), float64 parts with rows flattened:

    valid `[N, K]`, lmu / lpi `[N, K]` (−inf at unused slots), lpi_rest `[N]` (π's rest log-mass), unresolved
    `[N]` (μ's rest is at most its resolution ε_S), lmu_rest `[N]` (μ's rest log-mass; where unresolved, the log of
    the upper end u of the interval [0, u] it is known to lie in), full `[N]` (the set holds every id: no rest).
    """
    n = argument_names(names, ("rollout_topk_logprobs", "topk_ids", "logits"))
    conv = Converter(dtype)
    lmu = conv.tensor(rollout_topk_logprobs, n["rollout_topk_logprobs"]).detach()
    ids = conv.tensor(topk_ids, n["topk_ids"], kind="int")
    x = conv.tensor(logits, n["logits"]).detach()
    mu_dtype = lmu.dtype
    lmu, ids, x = conv.place(lmu), conv.place(ids), conv.place(x)
    _check_logits_and_ids(x, ids, n["logits"], n["topk_ids"])
    v = x.shape[-1]
    check_same_shape(lmu, n["rollout_topk_logprobs"], ids, n["topk_ids"])
    k = ids.shape[-1]
    if k < 1:
        raise ValueError(f"{n['topk_ids']} must hold at least one id per row (K >= 1)")
    valid = ids >= 0
    if ids.numel() and int(valid.sum(-1).max()) > v:
        raise ValueError(f"K = {k} ids per row exceed the vocabulary size {v}")
    if k > 1:
        sorted_ids = ids.sort(dim=-1).values
        dup = (sorted_ids[..., 1:] == sorted_ids[..., :-1]) & (sorted_ids[..., 1:] >= 0)
        if bool(dup.any()):
            raise ValueError(f"{n['topk_ids']} must not repeat an id within a row")
    check_logprobs(lmu[valid], n["rollout_topk_logprobs"])
    lmu = lmu.double().clamp(max=0.0).masked_fill(~valid, -math.inf)

    chunk = chunk_size(chunk_elements)
    lead = ids.shape[:-1]
    ids2, valid2, lmu2 = ids.reshape(-1, k), valid.reshape(-1, k), lmu.reshape(-1, k)
    lpi2, lpi_rest = _logprobs_at(
        x.reshape(-1, v), ids2, valid2, chunk, n["logits"], cdtype=conv.compute_dtype, with_rest=True
    )

    # μ's rest 1 − Σ_S μ_v = (1 − μ_top) − Σ_{others} μ_v: 1 − μ_top = −expm1(log μ_top) keeps a tiny rest exact
    mu2 = torch.exp(lmu2)
    top = lmu2.argmax(-1, keepdim=True)
    head_rest = -torch.expm1(lmu2.gather(-1, top).squeeze(-1))
    others = mu2.scatter(-1, top, 0.0).sum(-1)
    rest = head_rest - others
    if bool((rest < -_TOPK_MASS_TOLERANCE).any()):
        raise ValueError(
            f"{n['rollout_topk_logprobs']} must be log-probabilities of distinct tokens: their probabilities sum "
            f"to more than 1 + {_TOPK_MASS_TOLERANCE:g} in some row"
        )
    # what the reported log-probs resolve: rounding log μ_v to its dtype moves μ_v by up to eps/2 · μ_v |log μ_v|
    # (half the smallest subnormal for a subnormal log-prob); the float64 sums above add (K + 1) · eps64/2 of
    # their magnitude
    entropy_part = (mu2 * -lmu2).masked_fill(~valid2, 0.0).sum(-1)
    info = torch.finfo(mu_dtype)
    subnormal_half = info.smallest_normal * info.eps / 2  # absolute precision of a subnormal log-prob
    resolution = (
        info.eps / 2 * entropy_part + k * subnormal_half + (k + 1) * _EPS64_HALF * (head_rest + others)
    )
    full = valid2.sum(-1) == v
    unresolved = (rest <= resolution) & ~full
    # resolved: the rest's log-mass; unresolved: log of the upper end of [0, rest + resolution]
    lmu_rest = torch.where(
        unresolved, torch.log(rest.clamp(min=0.0) + resolution), torch.log(rest.clamp(min=0.0))
    )
    parts = {
        "valid": valid2,
        "lmu": lmu2,
        "lpi": lpi2,
        "lmu_rest": lmu_rest,
        "lpi_rest": lpi_rest,
        "unresolved": unresolved,
        "full": full,
    }
    return conv, lead, parts


def _rest_term(
    parts: dict[str, torch.Tensor], resolved: torch.Tensor, unresolved: torch.Tensor
) -> torch.Tensor:
    """The rest bucket's term: `resolved` where μ_rest is resolved, `unresolved` where not, 0 without a rest."""
    out = torch.where(parts["unresolved"], unresolved, resolved)
    return torch.where(parts["full"], torch.zeros_like(out), out)


def topk_tv(
    rollout_topk_logprobs: ArrayLike,
    topk_ids: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> ArrayLike:
    """Top-K TV (paper Eq. 15): ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|) → `[...]`.

    rollout_topk_logprobs `[..., K]`: the engine's log μ at the reported ids; topk_ids `[..., K]` int (−1 marks an
    unused slot, e.g. the K+1-th slot of the "topk_plus_sampled" rule when the sampled token is already in the
    top K); logits `[..., vocab]`: the trainer's logits (π). μ_rest = 1 − Σ_S μ_v via log1mexp; π_rest is the
    exact mass of the complement. A μ_rest the reported log-probs do not resolve (known only to lie in [0, u]) counts
    as the midpoint of the values |m − π_rest| takes there (module docstring). `dtype`, `names`: as in `tv`.
    """
    conv, lead, parts = _topk_inputs(rollout_topk_logprobs, topk_ids, logits, chunk_elements, dtype, names)
    per_id = abs_exp_diff(parts["lmu"], parts["lpi"]).masked_fill(~parts["valid"], 0.0)
    pi_rest, upper = torch.exp(parts["lpi_rest"]), torch.exp(parts["lmu_rest"])
    # |m − p| over m ∈ [0, u]: [p − u, p] when p ≥ u, else [0, max(p, u − p)]; the midpoint of that range
    midpoint = torch.where(
        pi_rest >= upper, pi_rest - 0.5 * upper, 0.5 * torch.maximum(pi_rest, upper - pi_rest)
    )
    rest = _rest_term(parts, abs_exp_diff(parts["lmu_rest"], parts["lpi_rest"]), midpoint)
    out = 0.5 * (per_id.sum(-1) + rest)
    return conv.out(out.clamp(0.0, 1.0).reshape(lead))


def topk_kl(
    rollout_topk_logprobs: ArrayLike,
    topk_ids: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> ArrayLike:
    """Top-K KL (paper Eq. 16): Σ_{v∈S} μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest) → `[...]`.

    Arguments as in `topk_tv`. A μ_rest the reported log-probs do not resolve (known only to lie in [0, u]) counts as
    the midpoint of the values m log(m/π_rest) takes there, so its error stays within ½ u log(u/π_rest).
    """
    conv, lead, parts = _topk_inputs(rollout_topk_logprobs, topk_ids, logits, chunk_elements, dtype, names)
    lmu, lpi, lmu_rest, lpi_rest = parts["lmu"], parts["lpi"], parts["lmu_rest"], parts["lpi_rest"]
    per_id = (torch.exp(lmu) * (lmu - lpi)).masked_fill(~parts["valid"], 0.0)
    # f(m) = m (log m − log π_rest) on [0, u] (u = e^lmu_rest where unresolved) is convex with f(0) = 0 and its
    # minimum −π_rest/e at m = π_rest/e when that lies inside; the rest term is the midpoint of f's range there
    zero = torch.zeros_like(lpi_rest)
    f_u = torch.where(torch.isneginf(lmu_rest), zero, torch.exp(lmu_rest) * (lmu_rest - lpi_rest))
    f_min = torch.where(lpi_rest - 1.0 <= lmu_rest, -torch.exp(lpi_rest - 1.0), torch.minimum(f_u, zero))
    midpoint = 0.5 * (f_min + torch.maximum(f_u, zero))
    rest = _rest_term(parts, f_u, midpoint)
    out = per_id.sum(-1) + rest
    return conv.out(out.clamp(min=0.0).reshape(lead))
