"""trustregion_lab.divergence against the float64 references in tests/reference.py.

Tolerances: float64 inputs rtol 1e-5 with an absolute floor of 1e-12; float32 inputs rtol 1e-4 with an absolute
floor of 64·eps32·(1 + max|logit|) ≈ 8e-6·(1 + max|logit|): the logits themselves carry eps32·|x| of rounding, which
moves every log-probability by that much, so no float32 computation can promise more in absolute terms.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests import reference as ref
from trustregion_lab import divergence as D

EPS32 = float(np.finfo(np.float32).eps)
FAMILIES = ("normal", "wide", "zipf", "spread200", "near_one", "tiny", "one_hot")


def make_pair(
    rng: np.random.Generator, n: int, v: int, family: str, move: float
) -> tuple[np.ndarray, np.ndarray]:
    """μ logits `[n, v]` from a family, π logits = μ logits + a perturbation of size `move`."""
    if family == "normal":
        x = rng.normal(0.0, 1.0, (n, v))
    elif family == "wide":
        x = rng.normal(0.0, 8.0, (n, v))
    elif family == "zipf":  # LLM-like: power-law in rank, random permutation, a temperature
        ranks = np.argsort(rng.random((n, v)), axis=-1) + 1.0
        x = -rng.uniform(0.8, 2.0, (n, 1)) * np.log(ranks) / rng.uniform(0.3, 1.5, (n, 1))
    elif family == "spread200":
        x = rng.uniform(-100.0, 100.0, (n, v))
    elif family == "near_one":  # token 0 has μ within ~1e-7 of 1
        x = rng.normal(0.0, 1.0, (n, v))
        others = np.log(np.exp(x[:, 1:]).sum(-1)) if v > 1 else np.zeros(n)
        x[:, 0] = others + np.log((1 - 5e-8) / 5e-8)
    elif family == "tiny":  # token 0 has μ below 1e-30
        x = rng.normal(0.0, 1.0, (n, v))
        x[:, 0] = x[:, 1:].max(-1) - 75.0 if v > 1 else 0.0
    elif family == "one_hot":
        x = np.zeros((n, v))
        x[np.arange(n), rng.integers(0, v, n)] = 60.0
    else:  # pragma: no cover
        raise AssertionError(family)
    y = x + move * rng.normal(0.0, 1.0, (n, v))
    return x, y


def tol(dtype: np.dtype, *arrays: np.ndarray) -> dict[str, float]:
    if dtype == np.float64:
        return {"rtol": 1e-5, "atol": 1e-12}
    scale = 1.0 + max(float(np.abs(a).max()) for a in arrays)
    return {"rtol": 1e-4, "atol": 64 * EPS32 * scale}


def sampled_tokens(rng: np.random.Generator, lmu: np.ndarray) -> np.ndarray:
    """One token per row drawn from μ (float64 probabilities renormalised)."""
    p = np.exp(lmu - lmu.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    cdf = np.cumsum(p, -1)
    u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(-1), p.shape[1] - 1)


def topk_set(lmu: np.ndarray, a: np.ndarray, k: int) -> np.ndarray:
    """The 'topk_plus_sampled' set rule: K largest μ plus the sampled token, -1 padding when already inside."""
    top = np.argsort(-lmu, axis=-1, kind="stable")[:, :k]
    inside = (top == a[:, None]).any(-1)
    extra = np.where(inside, -1, a)[:, None]
    return np.concatenate([top, extra], axis=-1)


def gather(lp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.where(ids >= 0, np.take_along_axis(lp, np.maximum(ids, 0), -1), -np.inf)


# ----------------------------------------------------------------------------------------------- references


@given(
    seed=st.integers(0, 2**32 - 1),
    v=st.sampled_from([2, 3, 5, 17, 128, 1000, 5000]),
    family=st.sampled_from(FAMILIES),
    move=st.sampled_from([0.0, 1e-4, 0.03, 0.3, 2.0]),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_every_divergence_matches_float64_reference(seed, v, family, move, dtype):
    rng = np.random.default_rng(seed)
    n = 6
    x, y = make_pair(rng, n, v, family, move)
    x, y = x.astype(dtype), y.astype(dtype)
    t = tol(np.dtype(dtype), x, y)

    np.testing.assert_allclose(D.tv(x, y), ref.tv(x, y), **t)
    np.testing.assert_allclose(D.kl(x, y), ref.kl(x, y), **t)
    tv_both, kl_both = D.exact_tv_kl(x, y)
    np.testing.assert_allclose(tv_both, ref.tv(x, y), **t)
    np.testing.assert_allclose(kl_both, ref.kl(x, y), **t)

    lmu, lpi = ref.logprobs(x), ref.logprobs(y)
    a = sampled_tokens(rng, lmu)
    lmu_a = lmu[np.arange(n), a].astype(dtype)
    lpi_a = lpi[np.arange(n), a].astype(dtype)
    tb = {"rtol": t["rtol"], "atol": 1e-12 if dtype == np.float64 else 1e-6}
    np.testing.assert_allclose(D.binary_tv(lmu_a, lpi_a), ref.binary_tv(lmu_a, lpi_a), **tb)
    # where log π(a) rounds to exactly 0 the reference's 1 − π(a) is 0 and its KL inf; the package floors that
    # bucket (LOG_MASS_FLOOR) and must return a finite value instead
    got, want = D.binary_kl(lmu_a, lpi_a), ref.binary_kl(lmu_a, lpi_a)
    assert np.isfinite(got).all() and (got >= 0).all()
    # a rest mass 1 − p below the log-probs' resolution (eps of their dtype) is unknown beyond "< eps": the package
    # floors it there, so those tokens only need the input's own precision (1e-5 absolute in float32)
    eps = np.finfo(dtype).eps
    resolved = np.isfinite(want) & (-lmu_a.astype(np.float64) > eps) & (-lpi_a.astype(np.float64) > eps)
    np.testing.assert_allclose(got[resolved], want[resolved], **tb)
    unresolved = np.isfinite(want) & ~resolved
    assert (np.abs(got[unresolved] - want[unresolved]) <= (1e-5 if dtype != np.float64 else 1e-12)).all()

    k = min(v, 4)
    ids = topk_set(lmu, a, k)
    reported = gather(lmu, ids).astype(dtype)
    np.testing.assert_allclose(D.topk_tv(reported, ids, y), ref.topk_tv(x, y, ids), **t)
    np.testing.assert_allclose(D.topk_kl(reported, ids, y), ref.topk_kl(x, y, ids), **t)


@pytest.mark.parametrize("v", [32_000, 151_936, 262_144])
@pytest.mark.parametrize("family", ["zipf", "spread200", "near_one"])
def test_large_vocabularies_match_reference(v, family):
    rng = np.random.default_rng(v + len(family))
    x, y = make_pair(rng, 3, v, family, 0.05)
    np.testing.assert_allclose(D.tv(x, y), ref.tv(x, y), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(D.kl(x, y), ref.kl(x, y), rtol=1e-5, atol=1e-12)
    lmu = ref.logprobs(x)
    ids = topk_set(lmu, sampled_tokens(rng, lmu), 20)
    np.testing.assert_allclose(
        D.topk_kl(gather(lmu, ids), ids, y), ref.topk_kl(x, y, ids), rtol=1e-5, atol=1e-12
    )
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    np.testing.assert_allclose(D.tv(x32, y32), ref.tv(x32, y32), **tol(np.dtype(np.float32), x32, y32))
    np.testing.assert_allclose(D.kl(x32, y32), ref.kl(x32, y32), **tol(np.dtype(np.float32), x32, y32))


def test_extreme_token_probabilities_binary():
    """μ(a) within 1e-7 of 1, μ(a) below 1e-30, π ≈ μ to 1e-12, identical, and μ(a) = 1: against 50-digit mpmath."""
    mp.mp.dps = 50
    lmu = np.array([math.log1p(-1e-7), math.log1p(-1e-7), -70.0, -70.0, -1e-12, -0.5, 0.0])
    lpi = np.array([math.log1p(-3e-7), math.log1p(-1e-8), -69.0, -75.0, -2e-12, -0.5, -1e-3])

    def exact_tv(a, b):
        return float(abs(mp.exp(mp.mpf(b)) - mp.exp(mp.mpf(a))))

    def exact_kl(a, b):
        mu, pi = mp.exp(mp.mpf(a)), mp.exp(mp.mpf(b))
        rest = 0 if mu == 1 else (1 - mu) * mp.log((1 - mu) / (1 - pi))
        return float(mu * (mp.mpf(a) - mp.mpf(b)) + rest)

    want_tv = [exact_tv(a, b) for a, b in zip(lmu, lpi)]
    want_kl = [exact_kl(a, b) for a, b in zip(lmu, lpi)]
    np.testing.assert_allclose(D.binary_tv(lmu, lpi), want_tv, rtol=1e-9, atol=0)
    # KL between nearly equal Bernoullis is a difference of two ~μ·d terms: float64 keeps ~1e-16/d relative
    np.testing.assert_allclose(D.binary_kl(lmu, lpi), want_kl, rtol=1e-5, atol=1e-22)
    assert D.binary_tv(lmu, lpi)[5] == 0.0 and D.binary_kl(lmu, lpi)[5] == 0.0


def test_single_sample_estimators_match_reference():
    rng = np.random.default_rng(1)
    lmu = -rng.exponential(3.0, 200)
    lpi = np.minimum(lmu + rng.normal(0, 0.5, 200), 0.0)
    r = np.exp(lpi - lmu)
    np.testing.assert_allclose(D.abs_ratio_dev(lmu, lpi), np.abs(r - 1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(D.kl_k1(lmu, lpi), -np.log(r), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(D.kl_k2(lmu, lpi), 0.5 * np.log(r) ** 2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(D.kl_k3(lmu, lpi), r - 1 - np.log(r), rtol=1e-8, atol=1e-15)
    # a ratio of e^200 overflows float32 to inf (the true value does not fit), never NaN
    big = D.abs_ratio_dev(np.float32([-200.0]), np.float32([0.0]))
    assert np.isinf(big).all() and big.dtype == np.float32


# ----------------------------------------------------------------------------------------------- properties


@given(
    seed=st.integers(0, 2**32 - 1),
    v=st.sampled_from([2, 3, 7, 50, 400]),
    family=st.sampled_from(FAMILIES),
    move=st.sampled_from([1e-3, 0.1, 1.0, 5.0]),
    k=st.integers(1, 30),
)
def test_ranges_and_data_processing_inequality(seed, v, family, move, k):
    rng = np.random.default_rng(seed)
    n = 8
    x, y = make_pair(rng, n, v, family, move)
    exact_tv, exact_kl = D.exact_tv_kl(x, y)
    assert ((exact_tv >= 0) & (exact_tv <= 1)).all() and (exact_kl >= 0).all()
    lmu, lpi = ref.logprobs(x), ref.logprobs(y)
    a = sampled_tokens(rng, lmu)
    k = min(k, v)
    ids = topk_set(lmu, a, k)
    btv = D.binary_tv(lmu[np.arange(n), a], lpi[np.arange(n), a])
    bkl = D.binary_kl(lmu[np.arange(n), a], lpi[np.arange(n), a])
    ktv = D.topk_tv(gather(lmu, ids), ids, y)
    kkl = D.topk_kl(gather(lmu, ids), ids, y)

    def le(a: np.ndarray, b: np.ndarray) -> bool:
        # slack for the inputs' rounding: log π(a) ≈ 0 carries ~1e-16 absolute error, which is a relative error
        # of 1e-16/(1 − π(a)) in the rest bucket of the Binary estimate
        return bool((a <= b * (1 + 1e-4) + 1e-12).all())

    # Binary KL reads 1 − π(a) off log π(a); below ~1e-9 that bucket is under the float64 log-prob's resolution
    resolved = -np.expm1(lpi[np.arange(n), a]) > 1e-9
    assert le(btv, ktv) and le(ktv, exact_tv)
    assert le(bkl[resolved], kkl[resolved]) and le(kkl, exact_kl)
    assert ((ktv >= 0) & (ktv <= 1)).all() and (kkl >= 0).all() and (bkl >= 0).all()


@pytest.mark.parametrize("v", [2, 5, 9])
def test_ratio_estimators_are_exact_in_expectation(v):
    """E_{a~μ}|r − 1| = 2·TV, E k1 = E k3 = KL(μ‖π), E (r − 1)² = χ²(π‖μ): by exact enumeration over a."""
    rng = np.random.default_rng(v)
    x, y = make_pair(rng, 4, v, "wide", 0.7)
    lmu, lpi = ref.logprobs(x), ref.logprobs(y)
    mu = np.exp(lmu)
    np.testing.assert_allclose(
        (mu * D.abs_ratio_dev(lmu, lpi)).sum(-1), 2 * D.tv(x, y), rtol=1e-10, atol=1e-15
    )
    np.testing.assert_allclose((mu * D.kl_k1(lmu, lpi)).sum(-1), D.kl(x, y), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose((mu * D.kl_k3(lmu, lpi)).sum(-1), D.kl(x, y), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose((mu * D.abs_ratio_dev(lmu, lpi) ** 2).sum(-1), ref.chi2(x, y), rtol=1e-9)


def test_topk_with_all_ids_is_exact_and_rules_differ_only_in_set():
    rng = np.random.default_rng(3)
    x, y = make_pair(rng, 5, 12, "normal", 0.8)
    lmu = ref.logprobs(x)
    ids = np.tile(np.arange(12), (5, 1))
    np.testing.assert_allclose(D.topk_tv(lmu, ids, y), D.tv(x, y), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(D.topk_kl(lmu, ids, y), D.kl(x, y), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------- kinds, dtypes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_and_numpy_agree_and_dtype_is_kept(dtype):
    rng = np.random.default_rng(5)
    x, y = make_pair(rng, 4, 300, "zipf", 0.2)
    xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
    out_t = D.kl(xt, yt)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == dtype and out_t.shape == (4,)
    if dtype != torch.bfloat16:
        out_n = D.kl(xt.numpy(), yt.numpy())
        assert isinstance(out_n, np.ndarray) and out_n.dtype == xt.numpy().dtype
        np.testing.assert_array_equal(out_n, out_t.numpy())
    lmu = torch.log_softmax(xt.double(), -1)[:, 0].to(dtype)
    lpi = torch.log_softmax(yt.double(), -1)[:, 0].to(dtype)
    assert D.binary_kl(lmu, lpi).dtype == dtype
    assert D.binary_tv(lmu, lpi).dtype == dtype


def test_mixed_precision_inputs_promote_and_leading_dims_are_kept():
    rng = np.random.default_rng(6)
    x, y = make_pair(rng, 6, 50, "normal", 0.3)
    out = D.tv(torch.tensor(x, dtype=torch.bfloat16).reshape(2, 3, 50), torch.tensor(y).reshape(2, 3, 50))
    assert out.dtype == torch.float64 and out.shape == (2, 3)
    single = D.kl(x[0], y[0])
    assert np.ndim(single) == 0
    np.testing.assert_allclose(single, ref.kl(x[:1], y[:1])[0], rtol=1e-10)


def test_zero_dim_and_strided_numpy_inputs_keep_their_shape():
    lmu, lpi = np.array(np.log(0.5)), np.array(np.log(0.4))
    for fn in (D.binary_tv, D.binary_kl, D.abs_ratio_dev, D.kl_k1, D.kl_k2, D.kl_k3):
        out = fn(lmu, lpi)
        assert isinstance(out, np.ndarray) and out.shape == ()
    assert float(D.binary_tv(lmu, lpi)) == pytest.approx(0.1)
    x = np.random.default_rng(0).normal(size=(4, 6))
    np.testing.assert_allclose(D.tv(x[::-1, ::2], x[:, ::2]), ref.tv(x[::-1, ::2], x[:, ::2]), rtol=1e-12)


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(7)
    x, y = make_pair(rng, 37, 1000, "zipf", 0.2)
    full = D.exact_tv_kl(x, y)
    for chunk in (1, 999, 1000, 12_345):
        tv_c, kl_c = D.exact_tv_kl(x, y, chunk_elements=chunk)
        np.testing.assert_allclose(tv_c, full[0], rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(kl_c, full[1], rtol=1e-13, atol=1e-16)


def test_compiled_kernel_matches_eager():
    """The opt-in torch.compile path computes the same numbers as the eager one."""
    rng = np.random.default_rng(8)
    x, y = make_pair(rng, 9, 3000, "zipf", 0.3)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for eager, compiled in zip(D.exact_tv_kl(xt, yt), D.exact_tv_kl(xt, yt, compiled=True)):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="logits must be finite"):
        D.kl(xt, yt.index_fill(1, torch.tensor([3]), float("inf")), compiled=True)
    # a chunk with logits near the float32 range takes the overflow-safe float64 path after the compiled kernel
    hx, hy = (torch.tensor(r, dtype=torch.float32) for r in huge_rows(3e38))
    for eager, compiled in zip(D.exact_tv_kl(hx, hy), D.exact_tv_kl(hx, hy, compiled=True)):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_naming_the_argument():
    x = np.zeros((2, 5))
    with pytest.raises(ValueError, match="same shape"):
        D.tv(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="logits must be finite"):
        D.kl(x, np.where(np.eye(2, 5) > 0, np.nan, 0.0))
    with pytest.raises(ValueError, match="rollout_logits must be finite"):
        D.tv(np.where(np.eye(2, 5) > 0, -np.inf, 0.0), x)
    with pytest.raises(TypeError, match="floating dtype"):
        D.tv(np.zeros((2, 5), dtype=np.int64), x)
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy\.ndarray"):
        D.tv([[0.0, 1.0]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="device"):
        D.tv(torch.zeros(2, 5), torch.zeros(2, 5, device="meta"))
    with pytest.raises(ValueError, match="chunk_elements"):
        D.tv(x, x, chunk_elements=0)
    with pytest.raises(ValueError, match=r"logprob must be log-probabilities \(<= 0\)"):
        D.binary_tv(np.array([-0.1]), np.array([0.5]))
    with pytest.raises(ValueError, match="rollout_logprob must be finite"):
        D.binary_kl(np.array([np.nan]), np.array([-0.5]))
    lp = np.log(np.full((2, 3), 0.2))
    with pytest.raises(ValueError, match=r"topk_ids must be token ids in \[0, 5\)"):
        D.topk_tv(lp, np.array([[0, 1, 5], [0, 1, 2]]), x)
    with pytest.raises(ValueError, match="exceed the vocabulary"):
        D.topk_tv(np.log(np.full((2, 6), 0.1)), np.tile(np.arange(6) % 5, (2, 1)), x)
    with pytest.raises(ValueError, match="must not repeat"):
        D.topk_kl(lp, np.array([[0, 1, 1], [0, 1, 2]]), x)
    with pytest.raises(TypeError, match="integer array of token ids"):
        D.topk_kl(lp, np.zeros((2, 3)), x)
    with pytest.raises(ValueError, match="sum to more than 1"):
        D.topk_kl(np.log(np.full((2, 3), 0.5)), np.array([[0, 1, 2], [0, 1, 2]]), x)
    with pytest.raises(ValueError, match="topk_ids must have shape"):
        D.topk_tv(lp[:1], np.array([[0, 1, 2]]), x)


def test_float32_logprob_rounded_to_zero_gives_a_small_binary_kl():
    """float32 log_softmax returns exactly 0 once 1 − π(a) < ~6e-8; that must not read as an empty bucket."""
    z = torch.full((1000,), -30.0)
    z[0], z[1] = 0.0, math.log(1e-8)
    lp = torch.log_softmax(z, -1)[0]
    assert lp.item() == 0.0
    lmu = torch.tensor(math.log(0.9999), dtype=torch.float32)
    got = float(D.binary_kl(lmu, lp))
    true = float(ref.binary_kl(np.log(0.9999), np.log1p(-1.0000000000093e-8)))  # 1 − π(a) ≈ 1e-8
    # within what float32 can resolve of 1 − π(a) (here 8.2e-4 vs 6.4e-4), and far below δ_KL = 0.05
    assert abs(got - true) < 5e-4 and got < 2e-3


def test_float32_kl_keeps_precision_with_large_logits():
    rng = np.random.default_rng(12)
    x = rng.normal(0, 2.0, (4, 32_000)) + 30.0
    y = x + 0.02 * rng.normal(size=x.shape)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    np.testing.assert_allclose(D.kl(x32, y32), ref.kl(x32, y32), rtol=2e-3)


def test_empty_batches_give_empty_results():
    empty = np.zeros((0, 7))
    assert D.tv(empty, empty).shape == (0,) and D.kl(empty, empty).shape == (0,)
    assert D.topk_tv(np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64), empty).shape == (0,)


# --------------------------------------------------------------------------------- extreme finite logits
# Two-token rows have a closed form (tests/reference.py: two_point_tv_kl) valid for any finite logits.
HUGE = {torch.float64: 1e308, torch.float32: 3e38, torch.bfloat16: 1e38, torch.float16: 6e4}


def huge_rows(h: float) -> tuple[np.ndarray, np.ndarray]:
    """μ and π logit rows `[8, 2]` at ±h: certain vs uniform, opposite certainties, uniform vs certain, a tiny
    μ mass against a π log-prob of −2h, equal rows, and small gaps on a huge common offset."""
    x = [[h, -h], [h, -h], [-h, -h], [0.0, -100.0], [h, h], [h, -h], [-h, -h], [0.0, -1.0]]
    y = [[0.0, 0.0], [-h, h], [h, -h], [h, -h], [h, h], [h, -h], [-h, 0.0], [-h, h]]
    return np.array(x), np.array(y)


@pytest.mark.parametrize("dtype", list(HUGE))
def test_huge_finite_logits_match_the_closed_form(dtype):
    x, y = huge_rows(HUGE[dtype])
    xt, yt = torch.tensor(x).to(dtype), torch.tensor(y).to(dtype)
    want_tv, want_kl = ref.two_point_tv_kl(xt.double().numpy(), yt.double().numpy())
    # asked for float64, the estimate is the float64 value of the given logits; in the input dtype it is that
    # value rounded (inf only where the true value exceeds the dtype's range)
    rtol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    # (TV's absolute error is that of its float64 probabilities, ~1e-16: the tiny row's 3.7e-44 is not resolved)
    for out_dtype, tolerance in ((torch.float64, 1e-12), (None, rtol)):
        tv_both, kl_both = D.exact_tv_kl(xt, yt, dtype=out_dtype)
        for got, want in ((D.tv(xt, yt, dtype=out_dtype), want_tv), (D.kl(xt, yt, dtype=out_dtype), want_kl)):
            assert got.dtype == (out_dtype or dtype)
            assert not torch.isnan(got).any()
            want_t = torch.tensor(want).to(out_dtype or dtype).double().numpy()
            np.testing.assert_allclose(got.double().numpy(), want_t, rtol=tolerance, atol=1e-15)
        torch.testing.assert_close(tv_both, D.tv(xt, yt, dtype=out_dtype), rtol=0, atol=0)
        torch.testing.assert_close(kl_both, D.kl(xt, yt, dtype=out_dtype), rtol=0, atol=0)


def test_huge_logits_in_wide_rows_match_the_reference():
    """±3e38 float32 logits among ordinary ones: the exact divergences equal the float64 reference."""
    rng = np.random.default_rng(21)
    x = rng.normal(0, 3, (5, 40)).astype(np.float32)
    y = (x + rng.normal(0, 0.3, x.shape)).astype(np.float32)
    x[0, 3], y[1, 7], x[2, :4], y[3, 0], y[3, 1] = 3e38, -3e38, -3e38, 3e38, -3e38
    tv64, kl64 = D.exact_tv_kl(x, y, dtype=torch.float64)
    np.testing.assert_allclose(tv64, ref.tv(x, y), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(kl64, ref.kl(x, y), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(D.kl(x, y), ref.kl(x, y).astype(np.float32), rtol=1e-6)
    for chunk in (1, 40, 120):
        np.testing.assert_array_equal(D.kl(x, y, chunk_elements=chunk, dtype=torch.float64), kl64)


def test_topk_of_huge_logits_is_right_or_rejected():
    """Two-token rows with K = 1: the partition {0}, {1} is the whole vocabulary, so Top-K equals the exact
    divergence (closed form), given μ's log-prob of token 0 exactly: −log(1 + e^−(x₀ − x₁))."""
    x, y = huge_rows(3e38)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    x64 = x32.astype(np.float64)
    reported = -np.logaddexp(0.0, -(x64[:, :1] - x64[:, 1:]))
    ids = np.zeros((len(x), 1), dtype=np.int64)
    want_tv, want_kl = ref.two_point_tv_kl(x64, y32.astype(np.float64))
    np.testing.assert_allclose(
        D.topk_kl(reported, ids, y32, dtype=torch.float64), want_kl, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        D.topk_tv(reported, ids, y32, dtype=torch.float64), want_tv, rtol=1e-12, atol=1e-15
    )
    # in float32 the reported log-prob −3.7e-44 of the tiny-mass row is subnormal (precision 1.4e-45): 2 % off
    got32 = D.topk_kl(reported.astype(np.float32), ids, y32)
    with np.errstate(over="ignore"):  # 6e38 does not fit float32: inf, as the estimate must be too
        want32 = want_kl.astype(np.float32)
    np.testing.assert_allclose(got32, want32, rtol=1e-6, atol=1e-6)
    # float64 logits whose row spans more than the float64 range have log-probabilities below −1.8e308
    with pytest.raises(ValueError, match=r"logits .*float64 range"):
        D.topk_kl(np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64), np.array([[1e308, -1e308]]))
    with pytest.raises(ValueError, match=r"old_logits .*float64 range"):
        D.token_logprobs(np.array([[1e308, -1e308]]), np.array([[1]]), names={"logits": "old_logits"})


# ----------------------------------------------------------------- Top-K rest below the input's resolution
SET_RULES = ("topk", "topk_plus_sampled", "topk_replace_last")


def set_rule_ids(lmu: np.ndarray, a: np.ndarray, k: int, rule: str) -> np.ndarray:
    """The engine's reported ids under a set rule (docs/design.md §2); −1 marks an unused slot."""
    if rule == "topk_plus_sampled":
        return topk_set(lmu, a, k)
    top = np.argsort(-lmu, axis=-1, kind="stable")[:, :k]
    if rule == "topk_replace_last":
        missing = ~(top == a[:, None]).any(-1)
        top[missing, -1] = a[missing]
    return top


@pytest.mark.parametrize("rule", SET_RULES)
@pytest.mark.parametrize("v", [2, 3])
def test_float32_topk_with_an_unresolved_rest_stays_within_float32_precision(v, rule):
    """V = 2–3, logits spread over 200, float32: the rest bucket under μ is far below what float32 log-probs
    resolve (≈ 6e-8). The float64 Top-K values are ≈ 1e-26; float32 must stay within 1e-5 of them."""
    rng = np.random.default_rng(100 * v + len(rule))
    n = 300
    x = rng.uniform(-100.0, 100.0, (n, v))
    x[: v + 1] = [np.linspace(100.0, -100.0, v)[np.roll(np.arange(v), i)] for i in range(v + 1)]
    move = rng.choice([0.0, 1e-3, 0.1, 2.0], (n, 1))
    y = x + move * rng.normal(size=(n, v))
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    lmu = ref.logprobs(x32)
    a = sampled_tokens(rng, lmu)
    for k in sorted({v - 1, v}):
        ids = set_rule_ids(lmu, a, k, rule)
        reported = gather(lmu, ids).astype(np.float32)
        got_kl, got_tv = D.topk_kl(reported, ids, y32), D.topk_tv(reported, ids, y32)
        assert got_kl.dtype == np.float32 and np.isfinite(got_kl).all()
        assert np.abs(got_kl - ref.topk_kl(x32, y32, ids)).max() <= 1e-5
        assert np.abs(got_tv - ref.topk_tv(x32, y32, ids)).max() <= 1e-6
        # the same inputs in float64 reach float64 accuracy
        got64 = D.topk_kl(gather(lmu, ids), ids, y32.astype(np.float64))
        np.testing.assert_allclose(got64, ref.topk_kl(x32, y32, ids), rtol=1e-9, atol=1e-12)


def test_topk_with_every_id_has_no_rest_bucket_in_float32():
    rng = np.random.default_rng(31)
    x = rng.uniform(-100.0, 100.0, (50, 3)).astype(np.float32)
    y = (x + rng.normal(0, 0.5, x.shape)).astype(np.float32)
    ids = np.tile(np.array([2, 0, 1]), (50, 1))
    reported = gather(ref.logprobs(x), ids).astype(np.float32)
    assert np.abs(D.topk_kl(reported, ids, y) - ref.kl(x, y)).max() <= 1e-5
    assert np.abs(D.topk_tv(reported, ids, y) - ref.tv(x, y)).max() <= 1e-6


# ------------------------------------------------------------------------------------- output dtype (dtype=)
def test_dtype_float64_computes_from_the_given_values_without_rounding():
    """dtype=torch.float64 returns the float64 value of the estimate for bf16/fp16/fp32 inputs (issue: masks
    compare divergences with their thresholds in float64)."""
    rng = np.random.default_rng(41)
    x, y = make_pair(rng, 6, 300, "zipf", 0.3)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        xt, yt = torch.tensor(x).to(dtype), torch.tensor(y).to(dtype)
        x64, y64 = xt.double().numpy(), yt.double().numpy()
        for fn, want in ((D.tv, ref.tv(x64, y64)), (D.kl, ref.kl(x64, y64))):
            got = fn(xt, yt, dtype=torch.float64)
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-15)
        lmu64, lpi64 = ref.logprobs(x64), ref.logprobs(y64)
        lmu_a = torch.tensor(lmu64[:, 0]).to(dtype)
        lpi_a = torch.tensor(lpi64[:, 0]).to(dtype)
        m64, p64 = lmu_a.double().numpy(), lpi_a.double().numpy()
        for fn, want in (
            (D.binary_tv, ref.binary_tv(m64, p64)),
            (D.abs_ratio_dev, np.abs(np.expm1(p64 - m64))),
            (D.kl_k1, m64 - p64),
            (D.kl_k2, 0.5 * (p64 - m64) ** 2),
            (D.kl_k3, np.expm1(p64 - m64) - (p64 - m64)),
        ):
            got = fn(lmu_a, lpi_a, dtype=torch.float64)
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-300)
        # Binary KL keeps the rest-bucket floor of the inputs' dtype (their resolution), whatever the output
        bkl = D.binary_kl(lmu_a, lpi_a, dtype=torch.float64)
        assert bkl.dtype == torch.float64
        torch.testing.assert_close(bkl.to(dtype), D.binary_kl(lmu_a, lpi_a), rtol=0, atol=0)
        ids = torch.tensor(np.argsort(-lmu64, axis=-1)[:, :5])
        reported = torch.tensor(gather(lmu64, ids.numpy())).to(dtype)
        for fn in (D.topk_tv, D.topk_kl):
            got = fn(reported, ids, yt, dtype=torch.float64)
            assert got.dtype == torch.float64
            # the float64 value of the estimate from the given (rounded) inputs
            torch.testing.assert_close(got, fn(reported.double(), ids, yt.double()), rtol=1e-12, atol=1e-15)


def test_dtype_is_validated_and_numpy_outputs_follow_it():
    x = np.zeros((2, 5), dtype=np.float32)
    out = D.kl(x, x, dtype=torch.float64)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert D.tv(x.astype(np.float64), x.astype(np.float64), dtype=torch.float32).dtype == np.float32
    for bad in ("float64", np.float64, torch.int64, torch.complex64):
        with pytest.raises(TypeError, match="dtype"):
            D.tv(x, x, dtype=bad)
        with pytest.raises(TypeError, match="dtype"):
            D.binary_kl(np.zeros(2), np.zeros(2), dtype=bad)


# ---------------------------------------------------------------------------------------- token_logprobs
def test_token_logprobs_gathers_log_softmax_with_padding():
    rng = np.random.default_rng(51)
    x = rng.normal(0, 3, (2, 3, 50))
    ids = rng.integers(-1, 50, (2, 3, 4))
    want = np.where(ids >= 0, np.take_along_axis(ref.logprobs(x), np.maximum(ids, 0), -1), -np.inf)
    got = D.token_logprobs(x, ids)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    for chunk in (1, 49, 10_000):
        np.testing.assert_array_equal(D.token_logprobs(x, ids, chunk_elements=chunk), got)
    for dtype in (torch.float32, torch.bfloat16):
        xt = torch.tensor(x).to(dtype)
        out = D.token_logprobs(xt, torch.tensor(ids))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        want_t = np.where(
            ids >= 0, np.take_along_axis(ref.logprobs(xt.double().numpy()), np.maximum(ids, 0), -1), -np.inf
        )
        np.testing.assert_allclose(out.numpy(), want_t, rtol=1e-6, atol=1e-6)
    assert D.token_logprobs(np.zeros((0, 5)), np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)


def test_token_logprobs_rejects_bad_input_naming_the_argument():
    x = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, 5\)"):
        D.token_logprobs(x, np.array([[0], [5]]))
    with pytest.raises(ValueError, match=r"topk_ids must be token ids in \[0, 5\)"):
        D.token_logprobs(x, np.array([[0], [-2]]), names={"ids": "topk_ids"})
    with pytest.raises(TypeError, match="ids must be an integer array"):
        D.token_logprobs(x, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="ids must have shape"):
        D.token_logprobs(x, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="old_logits must be finite"):
        D.token_logprobs(
            np.where(np.eye(2, 5) > 0, np.nan, 0.0),
            np.zeros((2, 1), dtype=np.int64),
            names={"logits": "old_logits"},
        )
    with pytest.raises(ValueError, match="names"):
        D.token_logprobs(x, np.zeros((2, 1), dtype=np.int64), names={"rollout_logits": "x"})


def test_names_rename_the_arguments_in_errors():
    x = np.zeros((2, 5))
    bad = np.where(np.eye(2, 5) > 0, np.nan, 0.0)
    with pytest.raises(ValueError, match="old_logits must be finite"):
        D.kl(bad, x, names={"rollout_logits": "old_logits"})
    with pytest.raises(ValueError, match="old_logits and logits must have the same shape"):
        D.tv(np.zeros((2, 4)), x, names={"rollout_logits": "old_logits"})
    with pytest.raises(ValueError, match="old_topk_logprobs must be log-probabilities"):
        D.topk_kl(
            np.full((2, 1), 0.5),
            np.zeros((2, 1), dtype=np.int64),
            x,
            names={"rollout_topk_logprobs": "old_topk_logprobs"},
        )
    with pytest.raises(TypeError, match="names"):
        D.tv(x, x, names=[("logits", "y")])


# -------------------------------------------------------------------------------------- plain arguments
@pytest.mark.parametrize("bad", [1.5, True, "abc", np.float64(8.0)])
def test_chunk_elements_must_be_an_int(bad):
    x = np.zeros((2, 5))
    ids = np.zeros((2, 1), dtype=np.int64)
    lp = np.log(np.full((2, 1), 0.2))
    calls = (
        lambda: D.tv(x, x, chunk_elements=bad),
        lambda: D.kl(x, x, chunk_elements=bad),
        lambda: D.exact_tv_kl(x, x, chunk_elements=bad),
        lambda: D.topk_tv(lp, ids, x, chunk_elements=bad),
        lambda: D.topk_kl(lp, ids, x, chunk_elements=bad),
        lambda: D.token_logprobs(x, ids, chunk_elements=bad),
    )
    for call in calls:
        with pytest.raises(TypeError, match="chunk_elements"):
            call()
    with pytest.raises(TypeError, match="compiled"):
        D.tv(x, x, compiled="yes")


def test_logprobs_requiring_grad_are_checked_without_warnings():
    from trustregion_lab._arrays import check_logprobs

    generator = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(4, 6, generator=generator), -1)[:, 0].clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = check_logprobs(lp, "logprob")
        D.binary_kl(lp.detach() - 0.1, lp)
        D.kl_k3(lp.detach() - 0.1, lp, dtype=torch.float64)
    assert out.requires_grad  # the validated tensor still carries the caller's graph (losses need it)
