"""Exact TV and KL(μ‖π) over the full vocabulary, from logits `[..., vocab]`, a chunk of rows at a time.

    TV(μ, π) = ½ Σ_v |μ_v − π_v|                 KL(μ‖π) = Σ_v μ_v (log μ_v − log π_v)

with μ = softmax(rollout_logits), π = softmax(logits). `tv`, `kl` and `exact_tv_kl` share one pass.

Numerics:
- Never more than one chunk of rows is materialised at a time (`chunk_elements`, default 2**18 elements ≈ 1 MiB
  in float32, sized for the L2 cache; a handful of such buffers live at once), so N = 4,096 rows at
  V = 262,144 need a few MiB extra, not GiBs. Each chunk: e = exp(x − max x), lse = max + log Σ e, p = e / Σ e;
  TV = ½ Σ |p − q| and KL = Σ p · ((x − max x) − (y − max y)) − (log Σ e_x − log Σ e_y), in the chunk's compute
  dtype. Each logit is shifted by its own row's max first (exact for the tokens that carry mass), and the O(1)
  normaliser term is subtracted last, so logits on a huge offset lose nothing to it.
- Any finite logits are handled. A chunk holding a logit beyond a quarter of its compute dtype's range (|x| >
  8.5e37 in float32, 4.5e307 in float64), where the differences above could overflow, is recomputed in float64
  with the logits quartered (exact scaling): the result is then the float64 value of the given logits, and inf
  only where the true divergence exceeds the output dtype's range (e.g. KL of [1e308, −1e308] against
  [−1e308, 1e308] is 2e308), never NaN.
- dtype=torch.float64 runs the vocabulary pass in float64 (about 2x the float32 time).
- compiled=True runs the per-chunk kernel through `torch.compile` (built on first use, dynamic shapes).

From log-probabilities (`exact_tv_kl_logp`): a caller that already holds log μ and log π (a trainer computes
each log-softmax once per step and reuses it) skips the max shift: per chunk p = exp(log μ), q = exp(log π),
s_p = Σ p, s_q = Σ q (1 up to the rounding of the log-probs), TV = ½ Σ |p/s_p − q/s_q| and
KL = Σ p · (log μ − log π) / s_p − (log s_p − log s_q), with 0 · (anything) = 0 where p = 0 (−inf entries
carry no mass). The renormalisation matters: a float32 log-softmax rounds its per-row normaliser, which shifts
every log-prob of a row by up to an ulp of it, and that shift alone is ~1e-7 nats of KL. About two thirds of
the passes over `[N, V]` of the logit path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from trustregion_lab._arrays import ArrayLike, Converter, check_finite, check_same_shape
from trustregion_lab._validate import check_bool
from trustregion_lab.divergence.common import argument_names, chunk_size

__all__ = ["exact_tv_kl", "exact_tv_kl_logp", "kl", "tv"]


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
    n = argument_names(names, ("rollout_logits", "logits"))
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
    chunk = chunk_size(chunk_elements)
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
    `names`: the caller's names for the arguments in error messages (package docstring).
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


def _logp_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    x_rows: torch.Tensor | None,
    y_rows: torch.Tensor | None,
    *,
    chunk_elements: int,
    cdtype: torch.dtype,
    entropy: bool,
    names: dict[str, str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact TV, KL(μ‖π) and optionally H(π) for log-probs `[N, V]` (module docstring), a chunk of rows at a time.

    ``x_rows`` / ``y_rows``: the rows of x / y to pair (`[n]` int64; None = all, in order), gathered a chunk at a
    time into a workspace, so a masked selection is never copied whole. Returns `[n]` each (None without
    ``entropy``). NaN or +inf inputs give a non-finite TV, which triggers the input check (a ValueError naming
    the argument); −inf entries are zero mass.
    """
    v = x.shape[1]
    n = x.shape[0] if x_rows is None else x_rows.shape[0]
    rows = max(1, min(n, chunk_elements // max(v, 1)))
    tv_out = torch.empty(n, dtype=cdtype, device=x.device)
    kl_out = torch.empty(n, dtype=cdtype, device=x.device)
    h_out = torch.empty(n, dtype=cdtype, device=x.device) if entropy else None
    if n == 0:
        return tv_out, kl_out, h_out
    work = torch.empty((5, rows, v), dtype=cdtype, device=x.device)

    def chunk_of(t: torch.Tensor, index: torch.Tensor | None, start: int, end: int, buffer: torch.Tensor):
        if index is None:
            return t[start:end].to(cdtype)
        if t.dtype != cdtype:
            return t.index_select(0, index[start:end]).to(cdtype)
        return torch.index_select(t, 0, index[start:end], out=buffer)

    for start in range(0, n, rows):
        end = min(n, start + rows)
        p, q, d = work[0, : end - start], work[1, : end - start], work[2, : end - start]
        xc = chunk_of(x, x_rows, start, end, work[3, : end - start])
        yc = chunk_of(y, y_rows, start, end, work[4, : end - start])
        torch.exp(xc, out=p)
        torch.exp(yc, out=q)
        sx, sy = p.sum(-1), q.sum(-1)  # 1 up to the rounding of the given log-probs
        if h_out is not None:  # H(π) = −Σ (q/s_q)(log π − log s_q) = log s_q − Σ q log π / s_q
            torch.mul(q, yc, out=d)
            h_out[start:end] = torch.log(sy) - torch.nansum(d, -1) / sy
        torch.sub(xc, yc, out=d)
        d.mul_(p)  # NaN only where p = 0 meets an infinite log-ratio: a zero term
        kl_out[start:end] = torch.nansum(d, -1) / sx - (torch.log(sx) - torch.log(sy))
        q.mul_((sx / sy)[:, None])
        torch.sub(q, p, out=d).abs_()
        tv_c = d.sum(-1).mul_(0.5).div_(sx)
        tv_out[start:end] = tv_c
        if not bool(torch.isfinite(tv_c).all()):
            for t, name in ((xc, names["log_mu"]), (yc, names["log_pi"])):
                if bool(torch.isnan(t).any()) or bool((t == torch.inf).any()):
                    raise ValueError(
                        f"{name} must hold log-probabilities (finite or -inf); found NaN or +inf"
                    )
    if h_out is not None:
        h_out.clamp_(min=0.0)
    return tv_out.clamp_(0.0, 1.0), kl_out.clamp_(min=0.0), h_out


def _row_index(rows: Any, name: str, count: int, device: torch.device) -> torch.Tensor | None:
    """``rows`` checked as int64 indices `[n]` into ``count`` rows (None passes through)."""
    if rows is None:
        return None
    if not isinstance(rows, torch.Tensor) or rows.ndim != 1 or rows.dtype != torch.int64:
        raise TypeError(f"{name} must be a 1-D int64 torch.Tensor of row indices, got {rows!r}")
    if rows.device != device:
        raise ValueError(f"{name} is on {rows.device}, the log-probs on {device}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= count):
        raise ValueError(
            f"{name} must index the {count} rows of the flattened log-probs, got values in "
            f"[{int(rows.min())}, {int(rows.max())}]"
        )
    return rows


def exact_tv_kl_logp(
    log_mu: ArrayLike,
    log_pi: ArrayLike,
    *,
    mu_rows: torch.Tensor | None = None,
    pi_rows: torch.Tensor | None = None,
    entropy: bool = False,
    chunk_elements: int | None = None,
    dtype: torch.dtype | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[ArrayLike, ...]:
    """Exact TV(μ, π) and KL(μ‖π) from normalised log-probabilities `[..., vocab]` → (`[...]`, `[...]`).

    TV = ½ Σ_v |exp(log μ_v) − exp(log π_v)|,  KL = Σ_v exp(log μ_v) (log μ_v − log π_v)  (terms with μ_v = 0
    are 0; KL is inf where π_v = 0 < μ_v). Each row is renormalised by its Σ exp (module docstring), so rows
    normalised up to rounding give the divergences of the distributions they round, like ``exact_tv_kl`` on the
    same values; pass log-softmax outputs (e.g. ``torch.log_softmax(logits, -1)``), never raw logits (no max
    shift: exp may overflow). −inf entries (zero mass) are allowed; NaN and +inf are a ValueError. The compute
    dtype's exp decides what is zero mass: in float32 a log μ_v below −103.3 (the smallest subnormal) is 0.

    mu_rows, pi_rows: compare only some states, without copying them first: int64 torch indices `[n]` into the
    rows of log_mu / log_pi flattened to `[rows, vocab]` (None = every row, in order; the two counts must
    match), e.g. ``mask.flatten().nonzero().squeeze(-1)`` for the states ``log_mu[mask]``; the results are then
    `[n]` and the two inputs may have different leading shapes. entropy=True appends H(π) = −Σ_v π_v log π_v
    per state (renormalised like the rest) as a third result. Other keywords as in ``tv`` (no compiled path).
    """
    n = argument_names(names, ("log_mu", "log_pi"))
    conv = Converter(dtype)
    x = conv.place(conv.tensor(log_mu, n["log_mu"]).detach())
    y = conv.place(conv.tensor(log_pi, n["log_pi"]).detach())
    entropy = check_bool("entropy", entropy)
    if x.ndim < 1 or x.shape[-1] < 1 or y.ndim < 1:
        raise ValueError(
            f"{n['log_mu']} and {n['log_pi']} must have shape [..., vocab] with vocab >= 1, got {tuple(x.shape)}"
        )
    if mu_rows is None and pi_rows is None:
        check_same_shape(x, n["log_mu"], y, n["log_pi"])
    elif x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{n['log_mu']} and {n['log_pi']} must have the same vocabulary (last) size, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    chunk = chunk_size(chunk_elements)
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    xr = _row_index(mu_rows, "mu_rows", x2.shape[0], x2.device)
    yr = _row_index(pi_rows, "pi_rows", y2.shape[0], y2.device)
    count_x = x2.shape[0] if xr is None else xr.shape[0]
    count_y = y2.shape[0] if yr is None else yr.shape[0]
    if count_x != count_y:
        raise ValueError(
            f"mu_rows and pi_rows must select as many states from {n['log_mu']} as from {n['log_pi']}, got "
            f"{count_x} and {count_y}"
        )
    tv_v, kl_v, h_v = _logp_rows(
        x2, y2, xr, yr, chunk_elements=chunk, cdtype=conv.compute_dtype, entropy=entropy, names=n
    )
    lead = x.shape[:-1] if xr is None and yr is None else (count_x,)
    out = (conv.out(tv_v.reshape(lead)), conv.out(kl_v.reshape(lead)))
    return (*out, conv.out(h_v.reshape(lead))) if h_v is not None else out
