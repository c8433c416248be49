"""Fake quantization for the deployed-engine emulations: FP8 (e4m3, e5m2) with scales, and INT4 weight-only.

"Fake" means the quantized values are held in float32 (every FP8 or INT4 value is exactly representable there),
so the engine's arithmetic can be written with ordinary float32 kernels and checked against a float64 reference.

FP8 rounding (``fp8_round``): v ↦ the nearest value of the format's finite grid, ties to the even code (round to
nearest even), after saturation: |v| is first clamped to the format's largest finite value (e4m3: 448,
e5m2: 57,344), so nothing overflows to NaN or inf; NaN stays NaN. Subnormals are kept (e4m3: multiples of 2^-9
below 2^-6; e5m2: multiples of 2^-16 below 2^-14). The grid values come from torch's ``float8_e4m3fn`` /
``float8_e5m2`` casts (round-to-nearest-even on the CPU in torch 2.13; the clamp comes first because the e5m2
cast overflows to inf).

Scaled FP8 (``fp8_quantize(x, fmt, dim)``): one scale per slice along ``dim`` (the reduced axis),
    s = max(amax / fmax, FLT_MIN),  amax = max |x| over the slice,  fmax = 448 (e4m3) or 57,344 (e5m2),
    q = fp8_round(fl32(x / s)),
all in float32 (fl32 = rounded to float32); x ≈ q · s. FLT_MIN (≈ 1.18e-38, the smallest normal float32) floors
the scale so a zero slice gives q = 0 and a slice of tiny values never divides by zero or by a subnormal. Weights
take one scale per output channel (row of W `[out, in]`, ``dim=-1``), activations one per token (``dim=-1`` of
`[..., d_in]`): the per-channel / per-token dynamic scaling of W8A8 serving stacks.

INT4 weight-only (``int4_quantize(w, group_size=32)``), symmetric, groups of ``group_size`` consecutive input
columns per output row (the last group shorter when ``in`` is not a multiple):
    s_g = max(amax_g / 7, FLT_MIN),  q = clamp(round_half_even(fl32(w / s_g)), −8, 7),  w ≈ q · s_g,
so |q| ≤ 7 in practice (the clamp to the int4 range [−8, 7] only guards rounding at the edge).

Shapes: x `[..., n]` float32 (any float dtype is upcast first); scales keep the reduced axis with size 1
(``fp8_quantize``) or are `[out, groups]` (``int4_quantize``).
"""

from __future__ import annotations

import torch

from trustregion_lab._validate import check_choice, check_int

__all__ = [
    "FP8_FORMATS",
    "FP8_MAX",
    "fp8_quantize",
    "fp8_round",
    "int4_dequantize",
    "int4_quantize",
]

FP8_FORMATS = ("e4m3", "e5m2")
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
_FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_FLT_MIN = torch.finfo(torch.float32).tiny
INT4_MIN, INT4_MAX = -8, 7


def _float_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}")
    return x.float()


def fp8_round(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """x `[...]` rounded to the FP8 format's grid (saturating, round to nearest even); float32 `[...]` out."""
    fmt = check_choice("fmt", fmt, FP8_FORMATS)
    x = _float_tensor("x", x)
    fmax = FP8_MAX[fmt]
    return x.clamp(-fmax, fmax).to(_FP8_DTYPES[fmt]).float()


def fp8_quantize(x: torch.Tensor, fmt: str = "e4m3", dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled FP8 of x `[...]`, one scale per slice along ``dim`` → (q float32 `[...]`, s float32, dim size 1).

    s = max(amax / fmax, FLT_MIN), q = fp8_round(fl32(x / s)); x ≈ q · s (module docstring).
    """
    fmt = check_choice("fmt", fmt, FP8_FORMATS)
    x = _float_tensor("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (the axis the scale is taken over)")
    check_int("dim", dim, -x.ndim, x.ndim - 1)
    amax = x.abs().amax(dim=dim, keepdim=True)
    scale = (amax / FP8_MAX[fmt]).clamp(min=_FLT_MIN)
    return fp8_round(x / scale, fmt), scale


def int4_quantize(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT4 of w `[out, in]` in groups of ``group_size`` input columns → (q `[out, in]`, s `[out, G]`).

    q holds integers in [−8, 7] as float32; G = ceil(in / group_size); w[:, j] ≈ q[:, j] · s[:, j // group_size].
    """
    w = _float_tensor("w", w)
    if w.ndim != 2:
        raise ValueError(f"w must have shape [out, in], got {tuple(w.shape)}")
    group_size = check_int("group_size", group_size, 1)
    out_dim, in_dim = w.shape
    groups = -(-in_dim // group_size)
    padded = torch.zeros(out_dim, groups * group_size, dtype=torch.float32, device=w.device)
    padded[:, :in_dim] = w
    blocks = padded.view(out_dim, groups, group_size)
    scale = (blocks.abs().amax(dim=-1) / INT4_MAX).clamp(min=_FLT_MIN)
    q = torch.round(blocks / scale[..., None]).clamp(INT4_MIN, INT4_MAX)
    return q.view(out_dim, groups * group_size)[:, :in_dim].contiguous(), scale


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: int = 32) -> torch.Tensor:
    """fl32(q · s) `[out, in]` from ``int4_quantize``'s output (the group of column j is j // group_size)."""
    q, scale = _float_tensor("q", q), _float_tensor("scale", scale)
    group_size = check_int("group_size", group_size, 1)
    if q.ndim != 2 or scale.ndim != 2 or scale.shape != (q.shape[0], -(-q.shape[1] // group_size)):
        raise ValueError(
            f"q must be [out, in] and scale [out, ceil(in / group_size)], got {tuple(q.shape)} and "
            f"{tuple(scale.shape)} with group_size={group_size}"
        )
    return q * scale.repeat_interleave(group_size, dim=1)[:, : q.shape[1]]
