"""Divergences between the rollout policy μ and the trainer's policy π: exact, Binary, Top-K, single-sample.

Conventions (DESIGN §2): μ = rollout engine, π = current trainer policy, KL means KL(μ‖π). Exact divergences take
logits `[..., vocab]`; Binary ones take the sampled token's log-probs `[...]`; Top-K ones take the engine's reported
log-probs and ids `[..., K]` plus the trainer's logits `[..., vocab]`. Every function accepts torch tensors or numpy
arrays and returns the same kind, on the input's device, in the input's float dtype (the wider of two), computing in
float32 or float64 (float64 in → float64 out; the per-token maths of Binary/Top-K/single-sample estimates always
runs in float64, which costs nothing next to a vocabulary pass).

Exact (full vocabulary):
    TV(μ, π) = ½ Σ_v |μ_v − π_v|                 KL(μ‖π) = Σ_v μ_v (log μ_v − log π_v)
Binary (the partition {a, rest}; paper Eq. 13–14):
    TV_bin = |π(a) − μ(a)|
    KL_bin = μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a)))
Top-K (the partition {v ∈ S} ∪ {rest}, S = the ids the engine reported; paper Eq. 15–16):
    TV_K = ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|)
    KL_K = Σ_{v∈S} μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest)
By the data-processing inequality Binary ≤ Top-K ≤ exact whenever the sampled token a is in S.

Single-sample estimators from the sampled token's ratio r = π(a)/μ(a), a ~ μ (paper Eq. 10; Schulman's k1–k3):
    |r − 1|  (E = 2·TV),  k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r  (E k1 = E k3 = KL(μ‖π)).

Numerics and floors:
- Exact TV/KL never materialise more than one chunk of rows at a time (`chunk_elements`, default 2**18 elements
  ≈ 1 MiB in float32, sized for the L2 cache; a handful of such buffers live at once), so N = 4,096 rows at
  V = 262,144 need a few MiB extra, not GiBs. Each chunk: e = exp(x − max x), lse = max + log Σ e, p = e / Σ e;
  TV = ½ Σ |p − q| and KL = Σ p · ((x − y) − (lse_x − lse_y)), in the chunk's compute dtype.
- 1 − p is computed in log space with log1mexp(x) = log(1 − eˣ) (Mächler 2012), never as 1 − exp(x).
- Bucket log-masses (the Binary/Top-K "rest") are floored before logs. A rest mass read off a reported log-prob
  (Binary's 1 − μ(a) and 1 − π(a), Top-K's 1 − Σ_S μ_v) is floored at the resolution of that log-prob's dtype,
  eps/2 (`resolution_log_floor`: ≈ 6e-8 for float32, 1.1e-16 for float64), since a rounded log-prob of exactly 0
  only says the rest is below it. Top-K's π_rest, an exact complement sum from the logits, is floored at
  LOG_MASS_FLOOR = log(2.2e-308) ≈ −708.4 (the smallest normal float64). So an exactly empty bucket gives a KL
  term of 0, and a bucket empty under π but not under μ gives a large finite KL instead of inf/NaN.
- Results carry no gradient (inputs are detached): these are diagnostics and mask criteria, not loss terms.
- |eᵃ − eᵇ| is computed as e^max(a,b) · (−expm1(−|a − b|)): no cancellation when π ≈ μ.
- Reported log-probs may exceed 0 by rounding (up to 32 ulps of 1 in their dtype); such values are treated as 0.
  Larger positive values, NaN and ±inf are rejected with a ValueError.
"""

from __future__ import annotations

import math

import torch

from trustregion_lab._arrays import (
    ArrayLike,
    Converter,
    check_finite,
    check_logprobs,
    check_same_shape,
)

__all__ = [
    "LOG_MASS_FLOOR",
    "abs_ratio_dev",
    "binary_kl",
    "binary_tv",
    "exact_tv_kl",
    "kl",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "log1mexp",
    "topk_kl",
    "topk_tv",
    "tv",
]

LOG_MASS_FLOOR = math.log(torch.finfo(torch.float64).tiny)  # ≈ −708.4
DEFAULT_CHUNK_ELEMENTS = 1 << 18
_LN2 = math.log(2.0)
# Reported top-K probabilities may sum above 1 by rounding in low precision; beyond this they are rejected.
_TOPK_MASS_TOLERANCE = 1e-2


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").

    x > −ln 2: log(−expm1(x));  x ≤ −ln 2: log1p(−exp(x)).  log1mexp(0) = −inf.  Input and output `[...]`.
    """
    return torch.where(x > -_LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _abs_exp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|exp(a) − exp(b)| without cancellation; 0 where both are −inf."""
    hi = torch.maximum(a, b)
    gap = torch.minimum(a, b) - hi  # ≤ 0, or NaN when both are −inf
    out = torch.exp(hi) * torch.expm1(gap).abs()
    return torch.where(torch.isneginf(hi), torch.zeros_like(out), out)


def _floor_log_mass(x: torch.Tensor, floor: float = LOG_MASS_FLOOR) -> torch.Tensor:
    return x.clamp(min=floor)


def resolution_log_floor(dtype: torch.dtype) -> float:
    """log(eps/2) of the dtype a log-probability arrived in: the smallest rest mass 1 − p it can resolve.

    A log-softmax computed in float32 returns exactly 0 once 1 − p < ~6e-8, so a rest bucket read off such a
    log-prob is only known to lie in [0, eps/2]; flooring it there (≈ −16.6 in float32, −36.7 in float64) keeps
    a rounded log π(a) = 0 from turning into a huge Binary KL.
    """
    return max(LOG_MASS_FLOOR, math.log(torch.finfo(dtype).eps / 2))


# --------------------------------------------------------------------------------------------------- exact


def _exact_chunk(xc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TV, KL and an all-finite flag for one chunk of logits `[rows, V]` → (`[rows]`, `[rows]`, `[rows]`).

    Two exponentials per element pair: e = exp(x − max x) gives both Σ e (for log-sum-exp) and p = e / Σ e.
    log p − log q = (x − y) − (lse_x − lse_y). Written so `torch.compile` can fuse it into one kernel.
    Non-finite inputs reach the per-row max (NaN, +inf) or min (−inf): flagged without an isfinite pass.
    """
    mx = xc.amax(-1, keepdim=True)
    my = yc.amax(-1, keepdim=True)
    finite = torch.isfinite(mx + my + xc.amin(-1, keepdim=True) + yc.amin(-1, keepdim=True)).squeeze(-1)
    p = torch.exp(xc - mx)
    q = torch.exp(yc - my)
    sx = p.sum(-1, keepdim=True)
    sy = q.sum(-1, keepdim=True)
    p = p / sx
    q = q / sy
    shift = (mx - my) + (torch.log(sx) - torch.log(sy))  # max logits first: their difference is exact
    kl_rows = ((xc - yc - shift) * p).sum(-1)
    tv_rows = 0.5 * (q - p).abs().sum(-1)
    return tv_rows, kl_rows, finite


_compiled_chunk = None


def _get_compiled_chunk():
    """`_exact_chunk` through `torch.compile` (built on first use; dynamic shapes, so one build per dtype)."""
    global _compiled_chunk
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_exact_chunk, dynamic=True)
    return _compiled_chunk


def _exact_rows(
    x: torch.Tensor, y: torch.Tensor, *, chunk_elements: int, cdtype: torch.dtype, compiled: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact TV and KL(softmax(x) ‖ softmax(y)) for logits `[N, V]`, a chunk of rows at a time → (`[N]`, `[N]`).

    The eager path runs `_exact_chunk`'s arithmetic in three workspace buffers allocated once per call and reused
    for every chunk (`out=` and in-place ops), so memory is touched once, not once per operation and chunk.
    """
    n, v = x.shape
    rows = max(1, min(n, chunk_elements // max(v, 1)))
    tv_out = torch.empty(n, dtype=cdtype, device=x.device)
    kl_out = torch.empty(n, dtype=cdtype, device=x.device)
    if n == 0:
        return tv_out, kl_out
    if compiled:
        fn = _get_compiled_chunk()
        for start in range(0, n, rows):
            xc, yc = x[start : start + rows].to(cdtype), y[start : start + rows].to(cdtype)
            tv_c, kl_c, finite = fn(xc, yc)
            if not bool(finite.all()):
                check_finite(xc, "rollout_logits")
                check_finite(yc, "logits")
            tv_out[start : start + rows] = tv_c
            kl_out[start : start + rows] = kl_c
        return tv_out.clamp_(0.0, 1.0), kl_out.clamp_(min=0.0)

    work = torch.empty((3, rows, v), dtype=cdtype, device=x.device)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        xc, yc = x[start:end].to(cdtype), y[start:end].to(cdtype)
        p, q, d = work[0, : end - start], work[1, : end - start], work[2, : end - start]
        mx, my = xc.amax(-1, keepdim=True), yc.amax(-1, keepdim=True)
        if not bool(torch.isfinite(mx + my + xc.amin(-1, keepdim=True) + yc.amin(-1, keepdim=True)).all()):
            check_finite(xc, "rollout_logits")
            check_finite(yc, "logits")
        torch.sub(xc, mx, out=p).exp_()
        torch.sub(yc, my, out=q).exp_()
        sx, sy = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
        p.div_(sx)
        q.div_(sy)
        shift = (mx - my) + (torch.log(sx) - torch.log(sy))
        torch.sub(xc, yc, out=d).sub_(shift).mul_(p)
        kl_out[start:end] = d.sum(-1)
        torch.sub(q, p, out=d).abs_()
        tv_out[start:end] = d.sum(-1).mul_(0.5)
    return tv_out.clamp_(0.0, 1.0), kl_out.clamp_(min=0.0)


def _exact(
    rollout_logits: ArrayLike, logits: ArrayLike, chunk_elements: int | None, compiled: bool
) -> tuple[Converter, torch.Tensor, torch.Tensor]:
    conv = Converter()
    x = conv.tensor(rollout_logits, "rollout_logits").detach()
    y = conv.tensor(logits, "logits").detach()
    x, y = conv.place(x), conv.place(y)
    check_same_shape(x, "rollout_logits", y, "logits")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"rollout_logits and logits must have shape [..., vocab] with vocab >= 1, got {tuple(x.shape)}"
        )
    chunk = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    if chunk < 1:
        raise ValueError(f"chunk_elements must be a positive integer, got {chunk_elements!r}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, y.shape[-1])
    tv_v, kl_v = _exact_rows(x2, y2, chunk_elements=chunk, cdtype=conv.compute_dtype, compiled=bool(compiled))
    return conv, tv_v.reshape(lead), kl_v.reshape(lead)


def tv(
    rollout_logits: ArrayLike, logits: ArrayLike, *, chunk_elements: int | None = None, compiled: bool = False
) -> ArrayLike:
    """Exact total variation TV(μ, π) = ½ Σ_v |μ_v − π_v| from logits `[..., vocab]` → `[...]`.

    μ = softmax(rollout_logits), π = softmax(logits). Paper Eq. 10 relates it to the ratio: TV = ½ E_{a~μ}|r − 1|.
    Computed a chunk of rows at a time (`chunk_elements` elements, default 2**18), never the whole `[N, V]`.
    compiled=True runs the per-chunk kernel through `torch.compile` (one fused pass; ~20 s to compile once per
    process, about 2x faster after that on CPU).
    """
    conv, out, _ = _exact(rollout_logits, logits, chunk_elements, compiled)
    return conv.out(out)


def kl(
    rollout_logits: ArrayLike, logits: ArrayLike, *, chunk_elements: int | None = None, compiled: bool = False
) -> ArrayLike:
    """Exact KL(μ‖π) = Σ_v μ_v (log μ_v − log π_v) from logits `[..., vocab]` → `[...]` (nats, clamped ≥ 0).

    Chunking and `compiled` as in `tv`.
    """
    conv, _, out = _exact(rollout_logits, logits, chunk_elements, compiled)
    return conv.out(out)


def exact_tv_kl(
    rollout_logits: ArrayLike, logits: ArrayLike, *, chunk_elements: int | None = None, compiled: bool = False
) -> tuple[ArrayLike, ArrayLike]:
    """Both exact TV and KL(μ‖π) in one pass over the logits `[..., vocab]` → (`[...]`, `[...]`).

    The cost of one of them: `tv` and `kl` share the pass and each returns half of it.
    """
    conv, tv_v, kl_v = _exact(rollout_logits, logits, chunk_elements, compiled)
    return conv.out(tv_v), conv.out(kl_v)


# --------------------------------------------------------------------------------------------------- binary


def _token_logprobs(
    rollout_logprob: ArrayLike, logprob: ArrayLike
) -> tuple[Converter, torch.Tensor, torch.Tensor]:
    conv = Converter()
    lmu = conv.tensor(rollout_logprob, "rollout_logprob").detach()
    lpi = conv.tensor(logprob, "logprob").detach()
    lmu, lpi = conv.place(lmu), conv.place(lpi)
    check_same_shape(lmu, "rollout_logprob", lpi, "logprob")
    lmu = check_logprobs(lmu, "rollout_logprob").double()
    lpi = check_logprobs(lpi, "logprob").double()
    return conv, lmu, lpi


def _binary_tv(lmu: torch.Tensor, lpi: torch.Tensor) -> torch.Tensor:
    return _abs_exp_diff(lpi, lmu)


def _binary_kl(lmu: torch.Tensor, lpi: torch.Tensor, log_floor: float) -> torch.Tensor:
    lmu_rest = _floor_log_mass(log1mexp(lmu), log_floor)
    lpi_rest = _floor_log_mass(log1mexp(lpi), log_floor)
    out = torch.exp(lmu) * (lmu - lpi) + torch.exp(lmu_rest) * (lmu_rest - lpi_rest)
    return out.clamp(min=0.0)


def binary_tv(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """Binary TV (paper Eq. 13): |π(a) − μ(a)| from the sampled token's log-probs `[...]` → `[...]`.

    The TV of the two-outcome partition {a, rest}; a lower bound of the exact TV.
    """
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    return conv.out(_binary_tv(lmu, lpi))


def binary_kl(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """Binary KL (paper Eq. 14) from the sampled token's log-probs `[...]` → `[...]`:

    μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a))), with 1 − p from log1mexp and the rest bucket's
    mass floored at the inputs' resolution, eps/2 of their dtype (`resolution_log_floor`): a float32 log π(a) that
    rounded to 0 says only that 1 − π(a) < ~6e-8.
    """
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    return conv.out(_binary_kl(lmu, lpi, resolution_log_floor(conv.out_dtype)))


# --------------------------------------------------------------------------------------------------- top-K


def _trainer_logprobs_at(
    logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """π's log-probs at `ids` `[N, K]` and log π_rest `[N]` from logits `[N, V]` (float64 out).

    The rest bucket is a log-sum-exp over the complement of the set (not 1 − Σ), so it is exact even when the set
    holds nearly all the mass.
    """
    n, v = logits.shape
    rows = max(1, chunk_elements // max(v, 1))
    lp_set = torch.empty(ids.shape, dtype=torch.float64, device=logits.device)
    lp_rest = torch.empty(n, dtype=torch.float64, device=logits.device)
    safe_ids = ids.clamp(min=0)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        xc = logits[start:end]
        if xc.dtype not in (torch.float32, torch.float64):
            xc = xc.float()
        check_finite(xc, "logits")
        lse = torch.logsumexp(xc, dim=-1, keepdim=True)
        lp_set[start:end] = (xc.gather(-1, safe_ids[start:end]) - lse).double()
        in_set = torch.zeros(xc.shape, dtype=torch.int32, device=xc.device)
        in_set.scatter_add_(-1, safe_ids[start:end], valid[start:end].int())
        rest = torch.logsumexp(xc.masked_fill(in_set > 0, -math.inf), dim=-1)
        lp_rest[start:end] = (rest - lse.squeeze(-1)).double()
    lp_set = lp_set.masked_fill(~valid, -math.inf)
    return lp_set, lp_rest


def _topk_inputs(
    rollout_topk_logprobs: ArrayLike, topk_ids: ArrayLike, logits: ArrayLike, chunk_elements: int | None
) -> tuple[Converter, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate Top-K inputs; return (conv, valid, lmu_set, lpi_set, lmu_rest, lpi_rest), float64, rows flattened."""
    conv = Converter()
    lmu = conv.tensor(rollout_topk_logprobs, "rollout_topk_logprobs").detach()
    ids = conv.tensor(topk_ids, "topk_ids", kind="int")
    x = conv.tensor(logits, "logits").detach()
    mu_floor = resolution_log_floor(lmu.dtype)
    lmu, ids, x = conv.place(lmu), conv.place(ids), conv.place(x)
    if x.ndim < 1:
        raise ValueError(f"logits must have shape [..., vocab], got {tuple(x.shape)}")
    v = x.shape[-1]
    if ids.ndim != x.ndim or ids.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"topk_ids must have shape [..., K] matching logits [..., vocab] in its leading dims, "
            f"got {tuple(ids.shape)} and {tuple(x.shape)}"
        )
    check_same_shape(lmu, "rollout_topk_logprobs", ids, "topk_ids")
    k = ids.shape[-1]
    if k < 1:
        raise ValueError("topk_ids must hold at least one id per row (K >= 1)")
    valid = ids >= 0
    if bool((ids < -1).any()) or bool((ids >= v).any()):
        raise ValueError(f"topk_ids must be token ids in [0, {v}) (or -1 for an unused slot)")
    if ids.numel() and int(valid.sum(-1).max()) > v:
        raise ValueError(f"K = {k} ids per row exceed the vocabulary size {v}")
    if k > 1:
        sorted_ids = ids.sort(dim=-1).values
        dup = (sorted_ids[..., 1:] == sorted_ids[..., :-1]) & (sorted_ids[..., 1:] >= 0)
        if bool(dup.any()):
            raise ValueError("topk_ids must not repeat an id within a row")
    lmu_valid = lmu[valid]
    check_logprobs(lmu_valid, "rollout_topk_logprobs")
    lmu = lmu.double().clamp(max=0.0).masked_fill(~valid, -math.inf)

    chunk = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    if chunk < 1:
        raise ValueError(f"chunk_elements must be a positive integer, got {chunk_elements!r}")
    lead = ids.shape[:-1]
    ids2, valid2, lmu2 = ids.reshape(-1, k), valid.reshape(-1, k), lmu.reshape(-1, k)
    lpi2, lpi_rest = _trainer_logprobs_at(x.reshape(-1, v), ids2, valid2, chunk)

    lmu_set_total = torch.logsumexp(lmu2, dim=-1)
    if bool((lmu_set_total > math.log1p(_TOPK_MASS_TOLERANCE)).any()):
        raise ValueError(
            "rollout_topk_logprobs must be log-probabilities of distinct tokens: their probabilities sum to more "
            f"than 1 + {_TOPK_MASS_TOLERANCE:g} in some row"
        )
    # μ's rest is 1 − Σ of reported log-probs: known to their dtype's resolution; π's is an exact complement sum
    lmu_rest = _floor_log_mass(log1mexp(lmu_set_total.clamp(max=0.0)), mu_floor)
    lpi_rest = _floor_log_mass(lpi_rest)
    # A set holding every id leaves no rest bucket: whatever 1 − Σ μ_S rounding left over is not mass.
    full = valid2.sum(-1) == v
    lmu_rest = lmu_rest.masked_fill(full, LOG_MASS_FLOOR)
    lpi_rest = lpi_rest.masked_fill(full, LOG_MASS_FLOOR)
    conv.lead_shape = lead  # type: ignore[attr-defined]
    return conv, valid2, lmu2, lpi2, lmu_rest, lpi_rest


def topk_tv(
    rollout_topk_logprobs: ArrayLike,
    topk_ids: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
) -> ArrayLike:
    """Top-K TV (paper Eq. 15): ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|) → `[...]`.

    rollout_topk_logprobs `[..., K]`: the engine's log μ at the reported ids; topk_ids `[..., K]` int (−1 marks an
    unused slot, e.g. the K+1-th slot of the "topk_plus_sampled" rule when the sampled token is already in the
    top K); logits `[..., vocab]`: the trainer's logits (π). μ_rest = 1 − Σ_S μ_v via log1mexp; π_rest is the
    exact mass of the complement.
    """
    conv, valid, lmu, lpi, lmu_rest, lpi_rest = _topk_inputs(
        rollout_topk_logprobs, topk_ids, logits, chunk_elements
    )
    per_id = _abs_exp_diff(lmu, lpi).masked_fill(~valid, 0.0)
    out = 0.5 * (per_id.sum(-1) + _abs_exp_diff(lmu_rest, lpi_rest))
    return conv.out(out.clamp(0.0, 1.0).reshape(conv.lead_shape))


def topk_kl(
    rollout_topk_logprobs: ArrayLike,
    topk_ids: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
) -> ArrayLike:
    """Top-K KL (paper Eq. 16): Σ_{v∈S} μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest) → `[...]`.

    Arguments as in `topk_tv`. Bucket log-masses are floored at LOG_MASS_FLOOR before the rest term.
    """
    conv, valid, lmu, lpi, lmu_rest, lpi_rest = _topk_inputs(
        rollout_topk_logprobs, topk_ids, logits, chunk_elements
    )
    per_id = (torch.exp(lmu) * (lmu - lpi)).masked_fill(~valid, 0.0)
    out = per_id.sum(-1) + torch.exp(lmu_rest) * (lmu_rest - lpi_rest)
    return conv.out(out.clamp(min=0.0).reshape(conv.lead_shape))


# ------------------------------------------------------------------------------------- single-sample ratio


def abs_ratio_dev(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """|r − 1| with r = π(a)/μ(a), from log-probs `[...]`: the single-sample estimate of 2·TV (paper Eq. 10).

    Computed as |expm1(log π(a) − log μ(a))|. r beyond the output dtype's range gives inf (the true value does not
    fit), never NaN.
    """
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    return conv.out(torch.expm1(lpi - lmu).abs())


def kl_k1(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """k1 = −log r = log μ(a) − log π(a) `[...]`: unbiased for KL(μ‖π) when a ~ μ; single values can be negative."""
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    return conv.out(lmu - lpi)


def kl_k2(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """k2 = ½ (log r)² `[...]`: low-variance, biased estimate of KL(μ‖π) (exact to second order in log r)."""
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    return conv.out(0.5 * (lpi - lmu) ** 2)


def kl_k3(rollout_logprob: ArrayLike, logprob: ArrayLike) -> ArrayLike:
    """k3 = (r − 1) − log r `[...]`: unbiased for KL(μ‖π) when a ~ μ and never negative."""
    conv, lmu, lpi = _token_logprobs(rollout_logprob, logprob)
    log_r = lpi - lmu
    return conv.out((torch.expm1(log_r) - log_r).clamp(min=0.0))
