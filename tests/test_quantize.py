"""The quantizers of trustregion_lab.policies.quantize against a float64 numpy reference that enumerates the grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustregion_lab.policies.quantize import (
    FP8_MAX,
    fp8_quantize,
    fp8_round,
    int4_dequantize,
    int4_quantize,
)

SEED = 20261206
FLT_MIN = np.finfo(np.float32).tiny

# ---- reference ------------------------------------------------------------------------------------------------
# FP8 formats as (exponent bits, mantissa bits, bias); e4m3fn has no inf and spends exponent 15, mantissa 7 on NaN


def fp8_grid(fmt: str) -> np.ndarray:
    """Every finite non-negative value of the format in increasing order (index = the code's magnitude bits)."""
    ebits, mbits, bias = {"e4m3": (4, 3, 7), "e5m2": (5, 2, 15)}[fmt]
    values = []
    for e in range(2**ebits):
        for m in range(2**mbits):
            if fmt == "e4m3" and e == 2**ebits - 1 and m == 2**mbits - 1:
                continue  # NaN
            if fmt == "e5m2" and e == 2**ebits - 1:
                continue  # inf / NaN
            if e == 0:
                values.append(m / 2**mbits * 2.0 ** (1 - bias))
            else:
                values.append((1 + m / 2**mbits) * 2.0 ** (e - bias))
    grid = np.array(values, dtype=np.float64)
    assert np.all(np.diff(grid) > 0)
    return grid


def ref_fp8_round(x: np.ndarray, fmt: str) -> np.ndarray:
    """Saturate to ±max, then the nearest grid value, ties to the even code; float64."""
    grid = fp8_grid(fmt)
    a = np.minimum(np.abs(x.astype(np.float64)), grid[-1])
    hi = np.clip(np.searchsorted(grid, a, side="left"), 0, len(grid) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    pick = np.where(d_lo < d_hi, lo, hi)
    pick = np.where(d_lo == d_hi, np.where(lo % 2 == 0, lo, hi), pick)
    return np.sign(x) * grid[pick]


def ref_fp8_quantize(x: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Scale per row: float32(amax / fmax) floored at FLT_MIN; q = grid(float32(x / s))."""
    amax = np.abs(x.astype(np.float64)).max(axis=-1, keepdims=True)
    scale = np.maximum((amax / FP8_MAX[fmt]).astype(np.float32), FLT_MIN).astype(np.float64)
    v = (x.astype(np.float64) / scale).astype(np.float32)
    return ref_fp8_round(v, fmt), scale


def ref_int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    n = w.shape[1]
    q = np.zeros_like(w, dtype=np.float64)
    scales = []
    for g0 in range(0, n, group):
        block = w[:, g0 : g0 + group].astype(np.float64)
        s = np.maximum((np.abs(block).max(axis=1) / 7).astype(np.float32), FLT_MIN).astype(np.float64)
        v = (block / s[:, None]).astype(np.float32).astype(np.float64)
        q[:, g0 : g0 + group] = np.clip(np.round(v), -8, 7)  # numpy rounds half to even
        scales.append(s)
    return q, np.stack(scales, axis=1)


# ---- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_grid_has_the_formats_known_landmarks(fmt):
    grid = fp8_grid(fmt)
    assert grid[-1] == FP8_MAX[fmt]
    assert grid[1] == (2.0**-9 if fmt == "e4m3" else 2.0**-16)  # smallest subnormal
    assert len(grid) == (127 if fmt == "e4m3" else 124)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_round_equals_the_reference_on_random_values_ties_and_extremes(fmt):
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    grid = fp8_grid(fmt)
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties (representable in float32)
    near = np.concatenate([mids * (1 + 2.0**-20), mids * (1 - 2.0**-20)])
    random = np.exp(rng.uniform(np.log(1e-9), np.log(4 * grid[-1]), 20000))
    special = np.array([0.0, grid[-1], grid[-1] * 1.01, grid[-1] * 1e3, 3.4e38, FLT_MIN, grid[1] / 2])
    values = np.concatenate([grid, mids, near, random, special]).astype(np.float32)
    values = np.concatenate([values, -values])
    got = fp8_round(torch.from_numpy(values), fmt).numpy().astype(np.float64)
    want = ref_fp8_round(values, fmt)
    np.testing.assert_array_equal(got, want)
    # the claims, read off the reference: saturation, ties to even, subnormals kept
    assert got.max() == grid[-1] and got.min() == -grid[-1]
    tie_lo, tie_hi = grid[:-1], grid[1:]
    tie_out = fp8_round(torch.from_numpy(mids.astype(np.float32)), fmt).numpy()
    even = np.where(np.arange(len(mids)) % 2 == 0, tie_lo, tie_hi)
    np.testing.assert_array_equal(tie_out, even)
    assert fp8_round(torch.tensor([float(grid[1])]), fmt).item() == grid[1]
    assert np.isnan(fp8_round(torch.tensor([float("nan")]), fmt).item())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_quantize_per_row_equals_the_reference_with_zero_and_tiny_rows(fmt):
    rng = np.random.default_rng(SEED + 1)
    print("seed", SEED + 1)
    x = rng.standard_normal((12, 96)) * np.exp(rng.uniform(-6, 6, (12, 1)))
    x[0] = 0.0  # zero row
    x[1] *= 1e-38  # tiny row: amax / fmax is below FLT_MIN (the scale floor)
    x[2, :] = 0.0
    x[2, 5] = -3.0  # one non-zero value: it maps to -fmax exactly
    x[3] = rng.standard_normal(96) * 1e30  # large row
    x = x.astype(np.float32)
    q, s = fp8_quantize(torch.from_numpy(x), fmt, dim=-1)
    want_q, want_s = ref_fp8_quantize(x, fmt)
    assert q.shape == x.shape and s.shape == (12, 1)
    np.testing.assert_array_equal(s.numpy().astype(np.float64), want_s)
    np.testing.assert_array_equal(q.numpy().astype(np.float64), want_q)
    assert (q[0] == 0).all() and s[0, 0] == FLT_MIN
    assert torch.isfinite(q).all() and q.abs().max() <= FP8_MAX[fmt]
    assert q[2, 5] == -FP8_MAX[fmt]
    # relative error of the dequantized normal rows: half a unit in the last place of the format's mantissa
    deq = (q * s).numpy().astype(np.float64)
    rows = slice(3, None)
    rel = np.abs(deq[rows] - x[rows]) / np.abs(x[rows]).max(axis=1, keepdims=True)
    assert rel.max() <= {"e4m3": 2.0**-4, "e5m2": 2.0**-3}[fmt]
    # the tiny row still carries its values (no division by zero, no NaN)
    assert np.all(np.isfinite(deq[1])) and np.abs(deq[1]).max() > 0


def test_fp8_quantize_over_another_axis_is_the_transpose():
    rng = np.random.default_rng(SEED + 2)
    x = torch.from_numpy(rng.standard_normal((7, 33)).astype(np.float32))
    q0, s0 = fp8_quantize(x, "e4m3", dim=0)
    q1, s1 = fp8_quantize(x.T.contiguous(), "e4m3", dim=-1)
    torch.testing.assert_close(q0, q1.T, rtol=0, atol=0)
    torch.testing.assert_close(s0, s1.T, rtol=0, atol=0)


@pytest.mark.parametrize("in_dim", [128, 70])
def test_int4_groups_of_32_equal_the_reference(in_dim):
    rng = np.random.default_rng(SEED + 3)
    print("seed", SEED + 3)
    w = rng.standard_normal((9, in_dim)) * np.exp(rng.uniform(-3, 3, (9, 1)))
    w[0] = 0.0
    w[1, :32] = 1e-39  # a tiny group (subnormal values)
    w[2, 40] = 50.0  # an outlier dominates its own group only
    w = w.astype(np.float32)
    q, s = int4_quantize(torch.from_numpy(w), 32)
    want_q, want_s = ref_int4(w, 32)
    assert s.shape == (9, -(-in_dim // 32))
    np.testing.assert_array_equal(q.numpy().astype(np.float64), want_q)
    np.testing.assert_array_equal(s.numpy().astype(np.float64), want_s)
    assert q.min() >= -8 and q.max() <= 7 and (q == q.round()).all()
    deq = int4_dequantize(q, s, 32).numpy().astype(np.float64)
    want_deq = (want_q * np.repeat(want_s, 32, axis=1)[:, :in_dim]).astype(np.float32)
    np.testing.assert_array_equal(deq, want_deq)
    # error bound: half a step of each group's scale
    err = np.abs(deq - w) - np.repeat(want_s, 32, axis=1)[:, :in_dim] / 2
    assert err.max() <= 1e-6 * np.abs(w).max()
    assert (q[0] == 0).all()


def test_int4_ties_round_to_even():
    # group amax 7 → scale 1: the values 0.5, 1.5, 2.5, -2.5 are exact ties
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -2.5, -0.5, 3.5, 0.0]])
    q, s = int4_quantize(w, 8)
    assert s.item() == 1.0
    np.testing.assert_array_equal(q.numpy(), [[7, 0, 2, 2, -2, 0, 4, 0]])


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="fmt"):
        fp8_round(torch.zeros(3), "e3m4")
    with pytest.raises(TypeError, match="x must be a floating-point"):
        fp8_quantize(np.zeros(3))
    with pytest.raises(ValueError, match=r"w must have shape \[out, in\]"):
        int4_quantize(torch.zeros(3))
    with pytest.raises(ValueError, match="group_size"):
        int4_quantize(torch.zeros(2, 4), 0)
    with pytest.raises(ValueError, match="scale"):
        int4_dequantize(torch.zeros(2, 64), torch.ones(2, 3), 32)
