"""divergence.exact_tv_kl_logp (exact TV and KL from log-probabilities) against a float64 numpy reference.

The reference renormalises the given log-probs in float64 (as the function does, for the rounding of a float32
log-softmax) and applies the definitions: TV = ½ Σ |μ − π|, KL = Σ_{μ_v > 0} μ_v (log μ_v − log π_v), computed in
float64 from the float32 (or float64) inputs. Tolerances as in test_divergence.py: float64 rtol 1e-5 / atol 1e-12; float32 rtol 1e-4
with an absolute floor of 64·eps32·(1 + max|log-prob|) over the finite entries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import reference as ref
from tests.test_divergence import FAMILIES, make_pair
from trustregion_lab import divergence as D
from trustregion_lab.mismatch import EXCLUDED_LOGIT

EPS32 = float(np.finfo(np.float32).eps)


def ref_tv_kl(log_mu: np.ndarray, log_pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 TV and KL of the distributions ∝ exp(log_mu), exp(log_pi); −inf entries are zero mass, and so is
    a mass the inputs' dtype cannot hold (exp(log μ_v) below its smallest subnormal, e.g. log μ_v < −103.3 in
    float32): a float32 computation sees 0 there, so a π_v = 0 beside it gives no infinite KL term."""
    floor = np.log(float(np.finfo(log_mu.dtype).smallest_subnormal))
    a, b = ref.logprobs(log_mu), ref.logprobs(log_pi)
    a = np.where(a < floor, -np.inf, a)
    p, q = np.exp(a), np.exp(b)
    tv = 0.5 * np.abs(p - q).sum(-1)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (a - b), 0.0)
    return np.clip(tv, 0.0, 1.0), np.maximum(terms.sum(-1), 0.0)


def tol(dtype: np.dtype, *arrays: np.ndarray) -> dict[str, float]:
    if dtype == np.float64:
        return {"rtol": 1e-5, "atol": 1e-12}
    scale = 1.0 + max(float(np.abs(a[np.isfinite(a)]).max(initial=0.0)) for a in arrays)
    return {"rtol": 1e-4, "atol": 64 * EPS32 * scale}


def with_excluded(rng: np.random.Generator, logits: np.ndarray, share: float, value: float) -> np.ndarray:
    """A copy of logits `[n, v]` with a random share of each row's tokens (never the largest) set to ``value``."""
    out = logits.copy()
    drop = rng.random(out.shape) < share
    drop[np.arange(out.shape[0]), out.argmax(-1)] = False
    out[drop] = value
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    v=st.sampled_from([2, 3, 17, 128, 2000]),
    family=st.sampled_from(FAMILIES),
    move=st.sampled_from([0.0, 1e-4, 0.03, 0.3, 2.0]),
    excluded=st.sampled_from([None, -np.inf, EXCLUDED_LOGIT]),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_logp_divergences_match_the_float64_reference(seed, v, family, move, excluded, dtype):
    rng = np.random.default_rng(seed)
    x, y = make_pair(rng, 7, v, family, move)
    if excluded is not None:  # top-k/top-p exclusions: in μ, in π, or both
        x = with_excluded(rng, x, 0.3, excluded)
        y = with_excluded(rng, y, 0.3, excluded) if rng.random() < 0.5 else np.where(x == excluded, x, y)
    with np.errstate(invalid="ignore"):
        log_mu, log_pi = ref.logprobs(x).astype(dtype), ref.logprobs(y).astype(dtype)
    want_tv, want_kl = ref_tv_kl(log_mu, log_pi)
    t = tol(np.dtype(dtype), log_mu, log_pi)
    got_tv, got_kl = D.exact_tv_kl_logp(log_mu, log_pi)
    assert got_tv.dtype == dtype and got_kl.dtype == dtype
    np.testing.assert_allclose(got_tv, want_tv, **t)
    finite = np.isfinite(want_kl)
    np.testing.assert_allclose(got_kl[finite], want_kl[finite], **t)
    assert (got_kl[~finite] == np.inf).all()
    # torch in, torch out; chunking changes nothing
    tv_t, kl_t = D.exact_tv_kl_logp(torch.from_numpy(log_mu), torch.from_numpy(log_pi), chunk_elements=v)
    np.testing.assert_array_equal(tv_t.numpy(), got_tv)
    np.testing.assert_array_equal(kl_t.numpy(), got_kl)
    # H(π) on request, against −Σ π log π of the renormalised π
    lpi = ref.logprobs(log_pi)
    with np.errstate(invalid="ignore"):
        want_h = -np.where(lpi > -np.inf, np.exp(lpi) * lpi, 0.0).sum(-1)
    _, _, got_h = D.exact_tv_kl_logp(log_mu, log_pi, entropy=True)
    np.testing.assert_allclose(got_h, want_h, rtol=t["rtol"], atol=t["atol"] * (1 + np.abs(want_h).max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logp_form_agrees_with_the_logit_form(seed):
    """On log_softmax of the same float32 logits, the two forms agree to float32 rounding (LLM-like rows)."""
    print("seed", seed)
    rng = np.random.default_rng([seed, 0x109])
    x, y = make_pair(rng, 64, 2000, "zipf", 0.05)
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    tv_a, kl_a = D.exact_tv_kl(x, y)
    tv_b, kl_b = D.exact_tv_kl_logp(torch.log_softmax(x, -1), torch.log_softmax(y, -1))
    want_tv, want_kl = (
        ref.tv(x.double().numpy(), y.double().numpy()),
        ref.kl(x.double().numpy(), y.double().numpy()),
    )
    for got, other, want in ((tv_b, tv_a, want_tv), (kl_b, kl_a, want_kl)):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.numpy(), other.numpy(), rtol=1e-4, atol=1e-6)


def test_excluded_mass_gives_infinite_kl_and_a_tv_of_its_mass():
    """μ puts mass where π has none (−inf): KL = inf; TV = the mass π moved, computed exactly here."""
    log_mu = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]], dtype=torch.float64))
    log_pi = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    tv, kl = D.exact_tv_kl_logp(log_mu, log_pi)
    assert tv.tolist() == [0.25, 0.0]
    assert kl[0] == np.inf and kl[1] == 0.0


def test_logp_bad_inputs_raise_naming_the_argument():
    good = torch.log_softmax(torch.randn(3, 5), -1)
    bad = good.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="log_pi"):
        D.exact_tv_kl_logp(good, bad)
    with pytest.raises(ValueError, match="rollout_logp"):
        D.exact_tv_kl_logp(bad.clone().fill_(torch.inf), good, names={"log_mu": "rollout_logp"})
    with pytest.raises(ValueError, match="shape"):
        D.exact_tv_kl_logp(good, good[:, :4])
    with pytest.raises(TypeError, match="log_mu"):
        D.exact_tv_kl_logp([[0.0]], good)
    empty_tv, empty_kl = D.exact_tv_kl_logp(good[:0], good[:0])
    assert empty_tv.shape == (0,) and empty_kl.shape == (0,)


def test_rows_off_by_a_constant_are_renormalised():
    """A per-row offset of the log-probs (a float32 log-softmax rounds its normaliser) does not move the result."""
    rng = np.random.default_rng(0x5EED)
    print("seed", 0x5EED)
    x, y = make_pair(rng, 5, 300, "zipf", 0.1)
    log_mu, log_pi = ref.logprobs(x), ref.logprobs(y)
    shift_mu, shift_pi = rng.uniform(-1e-3, 1e-3, (5, 1)), rng.uniform(-1e-3, 1e-3, (5, 1))
    tv, kl = D.exact_tv_kl_logp(log_mu + shift_mu, log_pi + shift_pi)
    want_tv, want_kl = ref_tv_kl(log_mu, log_pi)
    np.testing.assert_allclose(tv, want_tv, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-9, atol=1e-14)


def test_selected_rows_equal_the_rows_copied_first():
    """mu_rows / pi_rows pair states without copying: the same bits as on the gathered copies, chunk by chunk."""
    rng = np.random.default_rng(0x2015)
    print("seed", 0x2015)
    x, y = make_pair(rng, 24, 50, "zipf", 0.2)
    log_mu = torch.log_softmax(torch.from_numpy(x).float(), -1).reshape(4, 6, 50)
    log_pi = torch.log_softmax(torch.from_numpy(y).float(), -1)[:10]  # other leading shape
    mu_rows = torch.from_numpy(rng.integers(0, 24, 7))
    pi_rows = torch.from_numpy(rng.integers(0, 10, 7))
    got = D.exact_tv_kl_logp(
        log_mu, log_pi, mu_rows=mu_rows, pi_rows=pi_rows, entropy=True, chunk_elements=120
    )
    copied = D.exact_tv_kl_logp(log_mu.reshape(-1, 50)[mu_rows], log_pi[pi_rows], entropy=True)
    for a, b in zip(got, copied, strict=True):
        assert a.shape == (7,)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    want_tv, want_kl = ref_tv_kl(log_mu.reshape(-1, 50)[mu_rows].numpy(), log_pi[pi_rows].numpy())
    np.testing.assert_allclose(got[0].numpy(), want_tv, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), want_kl, rtol=1e-4, atol=1e-6)
    only_mu = D.exact_tv_kl_logp(log_mu.reshape(-1, 50), log_pi[:7], mu_rows=mu_rows)
    torch.testing.assert_close(only_mu[0], D.exact_tv_kl_logp(log_mu.reshape(-1, 50)[mu_rows], log_pi[:7])[0])


def test_bad_rows_raise_naming_them():
    log_mu = torch.log_softmax(torch.randn(6, 5), -1)
    with pytest.raises(TypeError, match="mu_rows"):
        D.exact_tv_kl_logp(log_mu, log_mu, mu_rows=torch.tensor([0, 1], dtype=torch.int32), pi_rows=None)
    with pytest.raises(ValueError, match="pi_rows"):
        D.exact_tv_kl_logp(log_mu, log_mu, mu_rows=torch.tensor([0]), pi_rows=torch.tensor([6]))
    with pytest.raises(ValueError, match="as many states"):
        D.exact_tv_kl_logp(log_mu, log_mu, mu_rows=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="vocabulary"):
        D.exact_tv_kl_logp(log_mu, log_mu[:, :4], mu_rows=torch.arange(6))
