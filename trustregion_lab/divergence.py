"""Divergences between the rollout policy μ and the trainer's policy π: exact, Binary, Top-K, single-sample.

Conventions (docs/design.md §2): μ = rollout engine, π = current trainer policy, KL means KL(μ‖π). Exact divergences take
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

Keywords shared by the public functions:
- `dtype` (every divergence and estimator): the float dtype of the result, default the inputs' (the wider of two).
  dtype=torch.float64 returns the float64 value of the estimate from the given inputs, never a value rounded to a
  narrower input dtype first: exact TV/KL then run their vocabulary pass in float64 (about 2x the float32 time);
  Top-K likewise runs its vocabulary pass (π's log-sum-exp) in float64; Binary and single-sample estimates and
  Top-K's per-token maths compute in float64 anyway. Masks use it to compare an estimate with its threshold in
  float64.
- `chunk_elements` (exact and Top-K, `token_logprobs`): an int ≥ 1, elements per chunk of rows (default 2**18).
- `names` (exact and Top-K, `token_logprobs`): a mapping from this function's argument names to the names its
  error messages should use, e.g. names={"rollout_logits": "old_logits"} when the caller passes its own π_old.

Building blocks for other modules:
- `token_logprobs(logits, ids)`: log_softmax(logits) at ids `[..., K]` (−inf at −1 slots), float64, chunked over
  rows; the ids are validated.
- `resolution_log_floor(dtype)`: log(eps/2) of a dtype, the floor `binary_kl` puts under its rest buckets
  (callers need not apply it: `binary_kl` picks it from its inputs' dtype).
- `log1mexp(x)` = log(1 − eˣ); `LOG_MASS_FLOOR` = log of the smallest normal float64.

Numerics and floors:
- Exact TV/KL never materialise more than one chunk of rows at a time (`chunk_elements`, default 2**18 elements
  ≈ 1 MiB in float32, sized for the L2 cache; a handful of such buffers live at once), so N = 4,096 rows at
  V = 262,144 need a few MiB extra, not GiBs. Each chunk: e = exp(x − max x), lse = max + log Σ e, p = e / Σ e;
  TV = ½ Σ |p − q| and KL = Σ p · ((x − max x) − (y − max y)) − (log Σ e_x − log Σ e_y), in the chunk's compute
  dtype. Each logit is shifted by its own row's max first (exact for the tokens that carry mass), and the O(1)
  normaliser term is subtracted last, so logits on a huge offset lose nothing to it.
- Any finite logits are handled. A chunk holding a logit beyond a quarter of its compute dtype's range (|x| >
  8.5e37 in float32, 4.5e307 in float64), where the differences above could overflow, is recomputed in float64
  with the logits quartered (exact scaling): the result is then the float64 value of the given logits, and inf
  only where the true divergence exceeds the output dtype's range (e.g. KL of [1e308, −1e308] against
  [−1e308, 1e308] is 2e308), never NaN. `token_logprobs` and Top-K reject float64 logits whose row spread exceeds
  the float64 range (their log-probabilities are not representable) with a ValueError naming the argument.
- 1 − p is computed in log space with log1mexp(x) = log(1 − eˣ) (Mächler 2012), never as 1 − exp(x).
- Binary KL floors its rest buckets 1 − μ(a) and 1 − π(a) at the resolution of the log-probs' dtype, eps/2
  (`resolution_log_floor`: ≈ 6e-8 for float32, 1.1e-16 for float64), since a rounded log-prob of exactly 0 only
  says the rest is below it.
- Top-K: π_rest is the exact log-mass of the complement of S (a log-sum-exp over the logits outside S with its own
  max, no floor). μ_rest = 1 − Σ_S μ_v is read off the reported log-probs, as (1 − μ_top) − Σ_{others} μ_v with
  1 − μ_top = −expm1(log μ_top), so a tiny rest behind a near-1 top token is kept exactly. The reported values are
  taken at face value, known to their dtype's rounding: they resolve μ_rest to ε_S = eps/2 · Σ_S μ_v |log μ_v|
  (rounding log μ_v to relative eps/2 moves μ_v by that much; half the smallest subnormal for a subnormal log-prob)
  plus the float64 rounding of the sums. When 1 − Σ_S μ_v ≤ ε_S, μ_rest is only known to lie in [0, u] with
  u = max(1 − Σ_S μ_v, 0) + ε_S; the rest term is then the midpoint of the values it takes there (for KL:
  m log(m/π_rest), for TV: |m − π_rest|, m ∈ [0, u]), so its error is at most half that range: ≤ ½ u log(u/π_rest)
  for KL, ≤ ¼ u for TV. E.g. float32 log-probs of two tokens at 0.7 and 0.3 with the rest 200 nats down (true
  Top-K KL ≈ 1e-26) give u ≈ 7e-8 and an error ≤ 7e-6. A set holding every id has no rest bucket (term 0).
- Results carry no gradient (inputs are detached): these are diagnostics and mask criteria, not loss terms.
- |eᵃ − eᵇ| is computed as e^max(a,b) · (−expm1(−|a − b|)): no cancellation when π ≈ μ.
- Reported log-probs may exceed 0 by rounding (up to 32 ulps of 1 in their dtype); such values are treated as 0.
  Larger positive values, NaN and ±inf are rejected with a ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from trustregion_lab._arrays import (
    ArrayLike,
    Converter,
    check_finite,
    check_logprobs,
    check_same_shape,
)
from trustregion_lab._validate import check_bool, check_int

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
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
    "resolution_log_floor",
    "token_logprobs",
    "topk_kl",
    "topk_tv",
    "tv",
]

LOG_MASS_FLOOR = math.log(torch.finfo(torch.float64).tiny)  # ≈ −708.4
DEFAULT_CHUNK_ELEMENTS = 1 << 18
_LN2 = math.log(2.0)
# Reported top-K probabilities may sum above 1 by rounding in low precision; beyond this they are rejected.
_TOPK_MASS_TOLERANCE = 1e-2
_EPS64_HALF = torch.finfo(torch.float64).eps / 2


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


# ------------------------------------------------------------------------------------------ plain arguments


def _argument_names(names: Mapping[str, str] | None, arguments: tuple[str, ...]) -> dict[str, str]:
    """The name each argument goes by in error messages: its own, or the caller's from `names`."""
    if names is None:
        return {a: a for a in arguments}
    if not isinstance(names, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise TypeError(
            "names must be a mapping from argument names to the names errors should use, "
            f"e.g. {{{arguments[0]!r}: 'old_logits'}}, got {names!r}"
        )
    unknown = sorted(set(names) - set(arguments))
    if unknown:
        raise ValueError(
            f"names has keys {unknown} that are not arguments here; expected some of {list(arguments)}"
        )
    return {a: names.get(a, a) for a in arguments}


def _chunk_size(chunk_elements: Any) -> int:
    if chunk_elements is None:
        return DEFAULT_CHUNK_ELEMENTS
    return check_int("chunk_elements", chunk_elements, minimum=1)


# --------------------------------------------------------------------------------------------------- exact


def _exact_chunk(xc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TV, KL and the largest |logit| of each row for one chunk of logits `[rows, V]` → three `[rows]`.

    Two exponentials per element pair: e = exp(x − max x) gives both Σ e (for log-sum-exp) and p = e / Σ e.
    log p − log q = ((x − max x) − (y − max y)) − (log Σ e_x − log Σ e_y); the last term is subtracted from the
    row sum, as Σ p = 1. The row scale is NaN/inf for non-finite rows (flagged without an isfinite pass) and tells
    the caller when a chunk needs the overflow-safe path. Written so `torch.compile` can fuse it into one kernel.
    """
    mx = xc.amax(-1, keepdim=True)
    my = yc.amax(-1, keepdim=True)
    scale = torch.maximum(
        torch.maximum(mx.abs(), xc.amin(-1, keepdim=True).abs()),
        torch.maximum(my.abs(), yc.amin(-1, keepdim=True).abs()),
    ).squeeze(-1)
    a = xc - mx
    b = yc - my
    p = torch.exp(a)
    q = torch.exp(b)
    sx = p.sum(-1, keepdim=True)
    sy = q.sum(-1, keepdim=True)
    p = p / sx
    q = q / sy
    kl_rows = ((a - b) * p).sum(-1) - (torch.log(sx) - torch.log(sy)).squeeze(-1)
    tv_rows = 0.5 * (q - p).abs().sum(-1)
    return tv_rows, kl_rows, scale


def _exact_chunk_into(
    xc: torch.Tensor, yc: torch.Tensor, work: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_exact_chunk` in three preallocated `[rows, V]` buffers (`out=` and in-place ops)."""
    p, q, d = work[0], work[1], work[2]
    mx, my = xc.amax(-1, keepdim=True), yc.amax(-1, keepdim=True)
    scale = torch.maximum(
        torch.maximum(mx.abs(), xc.amin(-1, keepdim=True).abs()),
        torch.maximum(my.abs(), yc.amin(-1, keepdim=True).abs()),
    ).squeeze(-1)
    torch.sub(xc, mx, out=p)
    torch.sub(yc, my, out=q)
    torch.sub(p, q, out=d)
    p.exp_()
    q.exp_()
    sx, sy = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
    p.div_(sx)
    q.div_(sy)
    d.mul_(p)
    kl_rows = d.sum(-1) - (torch.log(sx) - torch.log(sy)).squeeze(-1)
    torch.sub(q, p, out=d).abs_()
    tv_rows = d.sum(-1).mul_(0.5)
    return tv_rows, kl_rows, scale


def _exact_chunk_huge(xc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TV and KL of a chunk `[rows, V]` holding logits near the dtype's range, in float64 → (`[rows]`, `[rows]`).

    x − max x may overflow to −inf, which is right for p (e^−huge = 0). The log-ratio is carried quartered,
    g/4 = (x/4 − max x/4) − (y/4 − max y/4), which cannot overflow for finite float64 logits; KL = 4 Σ p g/4 − c
    overflows to inf only where the true value exceeds float64.
    """
    x, y = xc.double(), yc.double()
    mx, my = x.amax(-1, keepdim=True), y.amax(-1, keepdim=True)
    p = torch.exp(x - mx)
    q = torch.exp(y - my)
    sx, sy = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
    p = p / sx
    q = q / sy
    quarter_gap = (0.25 * x - 0.25 * mx) - (0.25 * y - 0.25 * my)
    kl_rows = 4.0 * (quarter_gap * p).sum(-1) - (torch.log(sx) - torch.log(sy)).squeeze(-1)
    tv_rows = 0.5 * (q - p).abs().sum(-1)
    return tv_rows, kl_rows


_compiled_chunk = None


def _get_compiled_chunk():
    """`_exact_chunk` through `torch.compile` (built on first use; dynamic shapes, so one build per dtype)."""
    global _compiled_chunk
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_exact_chunk, dynamic=True)
    return _compiled_chunk


def _exact_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_elements: int,
    cdtype: torch.dtype,
    compiled: bool,
    names: dict[str, str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact TV and KL(softmax(x) ‖ softmax(y)) for logits `[N, V]`, a chunk of rows at a time → (`[N]`, `[N]`).

    The eager path runs the chunk arithmetic in three workspace buffers allocated once per call and reused for
    every chunk, so memory is touched once, not once per operation and chunk. A chunk whose largest |logit|
    exceeds a quarter of the compute dtype's range is recomputed by `_exact_chunk_huge`.
    """
    n, v = x.shape
    rows = max(1, min(n, chunk_elements // max(v, 1)))
    tv_out = torch.empty(n, dtype=cdtype, device=x.device)
    kl_out = torch.empty(n, dtype=cdtype, device=x.device)
    if n == 0:
        return tv_out, kl_out
    safe_scale = torch.finfo(cdtype).max / 4
    fn = _get_compiled_chunk() if compiled else None
    work = None if compiled else torch.empty((3, rows, v), dtype=cdtype, device=x.device)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        xc, yc = x[start:end].to(cdtype), y[start:end].to(cdtype)
        if fn is not None:
            tv_c, kl_c, scale = fn(xc, yc)
        else:
            tv_c, kl_c, scale = _exact_chunk_into(xc, yc, work[:, : end - start])
        largest = float(scale.max())
        if not math.isfinite(largest):
            check_finite(xc, names["rollout_logits"])
            check_finite(yc, names["logits"])
        if largest > safe_scale:
            tv_c, kl_c = _exact_chunk_huge(x[start:end], y[start:end])
        tv_out[start:end] = tv_c
        kl_out[start:end] = kl_c
    return tv_out.clamp_(0.0, 1.0), kl_out.clamp_(min=0.0)


def _exact(
    rollout_logits: ArrayLike,
    logits: ArrayLike,
    chunk_elements: Any,
    compiled: Any,
    dtype: torch.dtype | None,
    names: Mapping[str, str] | None,
) -> tuple[Converter, torch.Tensor, torch.Tensor]:
    n = _argument_names(names, ("rollout_logits", "logits"))
    conv = Converter(dtype)
    x = conv.tensor(rollout_logits, n["rollout_logits"]).detach()
    y = conv.tensor(logits, n["logits"]).detach()
    x, y = conv.place(x), conv.place(y)
    check_same_shape(x, n["rollout_logits"], y, n["logits"])
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"{n['rollout_logits']} and {n['logits']} must have shape [..., vocab] with vocab >= 1, "
            f"got {tuple(x.shape)}"
        )
    chunk = _chunk_size(chunk_elements)
    compiled = check_bool("compiled", compiled)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, y.shape[-1])
    tv_v, kl_v = _exact_rows(
        x2, y2, chunk_elements=chunk, cdtype=conv.compute_dtype, compiled=compiled, names=n
    )
    return conv, tv_v.reshape(lead), kl_v.reshape(lead)


def tv(
    rollout_logits: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
    compiled: bool = False,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> ArrayLike:
    """Exact total variation TV(μ, π) = ½ Σ_v |μ_v − π_v| from logits `[..., vocab]` → `[...]`.

    μ = softmax(rollout_logits), π = softmax(logits). Paper Eq. 10 relates it to the ratio: TV = ½ E_{a~μ}|r − 1|.
    Computed a chunk of rows at a time (`chunk_elements` elements, default 2**18), never the whole `[N, V]`.
    compiled=True runs the per-chunk kernel through `torch.compile` (one fused pass; ~20 s to compile once per
    process, about 2x faster after that on CPU). `dtype`: the result's float dtype (float64 computes in float64);
    `names`: the caller's names for the arguments in error messages (module docstring).
    """
    conv, out, _ = _exact(rollout_logits, logits, chunk_elements, compiled, dtype, names)
    return conv.out(out)


def kl(
    rollout_logits: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
    compiled: bool = False,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> ArrayLike:
    """Exact KL(μ‖π) = Σ_v μ_v (log μ_v − log π_v) from logits `[..., vocab]` → `[...]` (nats, clamped ≥ 0).

    Keywords as in `tv`. inf only where the true value exceeds the output dtype's range.
    """
    conv, _, out = _exact(rollout_logits, logits, chunk_elements, compiled, dtype, names)
    return conv.out(out)


def exact_tv_kl(
    rollout_logits: ArrayLike,
    logits: ArrayLike,
    *,
    chunk_elements: int | None = None,
    compiled: bool = False,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Both exact TV and KL(μ‖π) in one pass over the logits `[..., vocab]` → (`[...]`, `[...]`).

    The cost of one of them: `tv` and `kl` share the pass and each returns half of it. Keywords as in `tv`.
    """
    conv, tv_v, kl_v = _exact(rollout_logits, logits, chunk_elements, compiled, dtype, names)
    return conv.out(tv_v), conv.out(kl_v)


# --------------------------------------------------------------------------------------------------- binary


def _sampled_logprobs(
    rollout_logprob: ArrayLike, logprob: ArrayLike, dtype: torch.dtype | None
) -> tuple[Converter, torch.Tensor, torch.Tensor]:
    conv = Converter(dtype)
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


def binary_tv(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """Binary TV (paper Eq. 13): |π(a) − μ(a)| from the sampled token's log-probs `[...]` → `[...]`.

    The TV of the two-outcome partition {a, rest}; a lower bound of the exact TV. `dtype`: the result's dtype.
    """
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(_binary_tv(lmu, lpi))


def binary_kl(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """Binary KL (paper Eq. 14) from the sampled token's log-probs `[...]` → `[...]`:

    μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a))), with 1 − p from log1mexp and the rest bucket's
    mass floored at the inputs' resolution, eps/2 of their dtype (`resolution_log_floor`): a float32 log π(a) that
    rounded to 0 says only that 1 − π(a) < ~6e-8. The floor follows the inputs' dtype, not `dtype` (the result's).
    """
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(_binary_kl(lmu, lpi, resolution_log_floor(conv.input_dtype)))


# --------------------------------------------------------------------------------------------------- top-K


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
    n = _argument_names(names, ("logits", "ids"))
    conv = Converter(torch.float64)
    x = conv.tensor(logits, n["logits"]).detach()
    id_t = conv.tensor(ids, n["ids"], kind="int")
    x, id_t = conv.place(x), conv.place(id_t)
    _check_logits_and_ids(x, id_t, n["logits"], n["ids"])
    chunk = _chunk_size(chunk_elements)
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
    n = _argument_names(names, ("rollout_topk_logprobs", "topk_ids", "logits"))
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

    chunk = _chunk_size(chunk_elements)
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
    per_id = _abs_exp_diff(parts["lmu"], parts["lpi"]).masked_fill(~parts["valid"], 0.0)
    pi_rest, upper = torch.exp(parts["lpi_rest"]), torch.exp(parts["lmu_rest"])
    # |m − p| over m ∈ [0, u]: [p − u, p] when p ≥ u, else [0, max(p, u − p)]; the midpoint of that range
    midpoint = torch.where(
        pi_rest >= upper, pi_rest - 0.5 * upper, 0.5 * torch.maximum(pi_rest, upper - pi_rest)
    )
    rest = _rest_term(parts, _abs_exp_diff(parts["lmu_rest"], parts["lpi_rest"]), midpoint)
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


# ------------------------------------------------------------------------------------- single-sample ratio


def abs_ratio_dev(
    rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None
) -> ArrayLike:
    """|r − 1| with r = π(a)/μ(a), from log-probs `[...]`: the single-sample estimate of 2·TV (paper Eq. 10).

    Computed as |expm1(log π(a) − log μ(a))|. r beyond the output dtype's range gives inf (the true value does not
    fit), never NaN. `dtype`: the result's float dtype (default the inputs').
    """
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(torch.expm1(lpi - lmu).abs())


def kl_k1(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k1 = −log r = log μ(a) − log π(a) `[...]`: unbiased for KL(μ‖π) when a ~ μ; single values can be negative."""
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(lmu - lpi)


def kl_k2(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k2 = ½ (log r)² `[...]`: low-variance, biased estimate of KL(μ‖π) (exact to second order in log r)."""
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    return conv.out(0.5 * (lpi - lmu) ** 2)


def kl_k3(rollout_logprob: ArrayLike, logprob: ArrayLike, *, dtype: torch.dtype | None = None) -> ArrayLike:
    """k3 = (r − 1) − log r `[...]`: unbiased for KL(μ‖π) when a ~ μ and never negative."""
    conv, lmu, lpi = _sampled_logprobs(rollout_logprob, logprob, dtype)
    log_r = lpi - lmu
    return conv.out((torch.expm1(log_r) - log_r).clamp(min=0.0))
