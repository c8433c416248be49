"""trust_region_mask against the docs/design.md §2 rule table, computed with the float64 references of tests/reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests import reference as ref
from trustregion_lab.masks import METHODS, trust_region_mask


def batch(rng: np.random.Generator, n: int, v: int, move: float):
    """μ/π logits `[n, v]`, a sampled token per row, the K=3 'topk_plus_sampled' set, advantages in {−1, 0, +1}."""
    x = rng.normal(0, 2.0, (n, v))
    y = x + move * rng.normal(0, 1.0, (n, v)) * rng.exponential(1.0, (n, 1))
    lmu, lpi = ref.logprobs(x), ref.logprobs(y)
    a = rng.integers(0, v, n)
    top = np.argsort(-lmu, axis=-1)[:, :3]
    ids = np.concatenate([top, np.where((top == a[:, None]).any(-1), -1, a)[:, None]], axis=-1)
    adv = rng.choice([-1.0, 0.0, 1.0], n)
    return x, y, lmu, lpi, a, ids, adv


def reference_keep(method, x, y, lmu, lpi, a, ids, adv, low, high):
    n = len(a)
    mu_a, pi_a = np.exp(lmu[np.arange(n), a]), np.exp(lpi[np.arange(n), a])
    if method == "none":
        return np.ones(n, dtype=bool)
    if method == "ppo":
        return ~ref.ppo_drop(pi_a / mu_a, adv, low, high)
    if method == "ppo_relaxed":  # the paper's §6: no clip for tokens with μ(a) < 0.1
        return ~(ref.ppo_drop(pi_a / mu_a, adv, low, high) & (mu_a >= 0.1))
    d = {
        "dppo_binary_tv": lambda: ref.binary_tv(np.log(mu_a), np.log(pi_a)),
        "dppo_binary_kl": lambda: ref.binary_kl(np.log(mu_a), np.log(pi_a)),
        "dppo_topk_tv": lambda: ref.topk_tv(x, y, ids),
        "dppo_topk_kl": lambda: ref.topk_kl(x, y, ids),
        "dppo_exact_tv": lambda: ref.tv(x, y),
        "dppo_exact_kl": lambda: ref.kl(x, y),
    }[method]()
    return ~ref.divergence_drop(d, pi_a, mu_a, adv, low, high)


def call(method, x, y, lmu, lpi, a, ids, adv, low, high, **extra):
    n = len(a)
    safe = np.maximum(ids, 0)
    return trust_region_mask(
        method,
        logprob=lpi[np.arange(n), a],
        rollout_logprob=lmu[np.arange(n), a],
        advantages=adv,
        low=low,
        high=high,
        topk_ids=ids,
        rollout_topk_logprobs=np.where(ids >= 0, np.take_along_axis(lmu, safe, -1), -np.inf),
        logits=y,
        rollout_logits=x,
        **extra,
    )


@given(
    seed=st.integers(0, 2**32 - 1),
    method=st.sampled_from(sorted(METHODS)),
    low=st.sampled_from([0.0, 0.02, 0.05, 0.15, 0.2]),
    high=st.sampled_from([0.0, 0.05, 0.15, 0.28]),
    move=st.sampled_from([0.05, 0.5, 2.0]),
)
def test_masks_equal_the_rule_table(seed, method, low, high, move):
    rng = np.random.default_rng(seed)
    args = batch(rng, 64, 7, move)
    got = call(method, *args, low, high)
    want = reference_keep(method, *args, low, high)
    assert got.dtype == np.bool_ and got.shape == (64,)
    np.testing.assert_array_equal(got, want)
    adv = args[-1]
    assert got[adv == 0].all(), "zero-advantage tokens are always kept"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_sign_and_side_case_is_exercised(method):
    """Across a big batch every method meets each (sign of Â, kept/dropped) case it can produce."""
    rng = np.random.default_rng(11)
    args = batch(rng, 4000, 7, 1.0)
    keep = call(method, *args, 0.1, 0.1)
    np.testing.assert_array_equal(keep, reference_keep(method, *args, 0.1, 0.1))
    adv = args[-1]
    for sign in (-1.0, 1.0):
        assert keep[adv == sign].any()
        if method != "none":
            assert (~keep[adv == sign]).any(), f"{method} never drops a token with Â {sign:+}"


def test_paper_section_4_2_examples():
    """μ 1e-4 → π 1e-2: PPO clips (r = 100), Binary TV (0.0099) keeps; μ 0.99 → π 0.80: PPO keeps (r ≈ 0.81), TV masks."""
    lmu = np.log([1e-4, 0.99])
    lpi = np.log([1e-2, 0.80])
    adv = np.array([1.0, -1.0])
    ppo = trust_region_mask("ppo", logprob=lpi, rollout_logprob=lmu, advantages=adv, low=0.2, high=0.2)
    dppo = trust_region_mask(
        "dppo_binary_tv", logprob=lpi, rollout_logprob=lmu, advantages=adv, low=0.15, high=0.15
    )
    np.testing.assert_array_equal(ppo, [False, True])
    np.testing.assert_array_equal(dppo, [True, False])


def test_padded_tokens_are_kept_and_batch_advantages_broadcast():
    lmu = np.log(np.full((2, 3), 0.5))
    lpi = np.log(np.full((2, 3), 0.9))  # r = 1.8: PPO drops every Â > 0 token
    resp = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    keep = trust_region_mask(
        "ppo",
        logprob=lpi,
        rollout_logprob=lmu,
        advantages=np.array([1.0, 2.0]),
        low=0.2,
        high=0.2,
        response_mask=resp,
    )
    np.testing.assert_array_equal(keep, ~resp)


def test_recompute_anchor_moves_the_mask_but_not_the_default():
    """old_logprob anchors the rule on π_old (MiniRL / verl recompute): same π, different verdicts."""
    lmu = np.log([0.5, 0.5])
    old = np.log([0.8, 0.2])
    lpi = np.log([0.85, 0.25])
    adv = np.array([1.0, -1.0])
    kw = {"logprob": lpi, "rollout_logprob": lmu, "advantages": adv, "low": 0.2, "high": 0.2}
    # vs μ: r = 1.7 (Â > 0, dropped) and r = 0.5 (Â < 0, dropped)
    np.testing.assert_array_equal(trust_region_mask("ppo", **kw), [False, False])
    # vs π_old: r = 1.0625 and 1.25: both inside / moving inward -> kept
    np.testing.assert_array_equal(trust_region_mask("ppo", old_logprob=old, **kw), [True, True])


def test_recompute_anchor_for_exact_and_topk_uses_old_logits():
    rng = np.random.default_rng(2)
    x, y, lmu, lpi, a, ids, adv = batch(rng, 200, 6, 1.0)
    old_x = y + 0.01 * rng.normal(size=y.shape)  # π_old close to π, far from μ
    lold = ref.logprobs(old_x)
    n = len(a)
    for method, d in (("dppo_exact_tv", ref.tv(old_x, y)), ("dppo_topk_kl", ref.topk_kl(old_x, y, ids))):
        keep = call(
            method,
            x,
            y,
            lmu,
            lpi,
            a,
            ids,
            adv,
            0.05,
            0.05,
            old_logprob=lold[np.arange(n), a],
            old_logits=old_x,
        )
        want = ~ref.divergence_drop(
            d, np.exp(lpi[np.arange(n), a]), np.exp(lold[np.arange(n), a]), adv, 0.05, 0.05
        )
        np.testing.assert_array_equal(keep, want)
    with pytest.raises(ValueError, match="old_logits"):
        trust_region_mask(
            "dppo_exact_tv", logprob=lpi[:, 0], rollout_logprob=lmu[:, 0], advantages=adv, low=0.1, high=0.1,
            logits=y, old_logprob=lold[:, 0],
        )  # fmt: skip


def test_torch_in_torch_out_and_numpy_agree():
    rng = np.random.default_rng(4)
    _, _, lmu, lpi, a, _, adv = batch(rng, 50, 5, 1.0)
    n = len(a)
    kw = {"low": 0.1, "high": 0.1}
    got_t = trust_region_mask(
        "dppo_binary_kl",
        logprob=torch.tensor(lpi[np.arange(n), a], dtype=torch.float32),
        rollout_logprob=torch.tensor(lmu[np.arange(n), a], dtype=torch.float32),
        advantages=torch.tensor(adv),
        **kw,
    )
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.bool
    got_n = trust_region_mask(
        "dppo_binary_kl",
        logprob=lpi[np.arange(n), a],
        rollout_logprob=lmu[np.arange(n), a],
        advantages=adv,
        **kw,
    )
    np.testing.assert_array_equal(got_t.numpy(), got_n)


def test_bad_inputs_raise_naming_the_argument():
    lp = np.log([0.5, 0.25])
    kw = {"logprob": lp, "rollout_logprob": lp, "advantages": np.ones(2), "low": 0.2, "high": 0.2}
    with pytest.raises(ValueError, match=r"method must be one of .*got 'ppo2'"):
        trust_region_mask("ppo2", **kw)
    with pytest.raises(TypeError, match="method must be a str"):
        trust_region_mask(None, **kw)
    with pytest.raises(ValueError, match="low must be >= 0"):
        trust_region_mask("ppo", **{**kw, "low": -0.1})
    with pytest.raises(ValueError, match="high must be a finite number"):
        trust_region_mask("ppo", **{**kw, "high": math.nan})
    with pytest.raises(ValueError, match="needs topk_ids"):
        trust_region_mask("dppo_topk_tv", **kw)
    with pytest.raises(ValueError, match="needs rollout_logits"):
        trust_region_mask("dppo_exact_kl", **kw, logits=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="logits must have shape"):
        trust_region_mask("dppo_exact_kl", **kw, logits=np.zeros((3, 4)), rollout_logits=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="advantages must have the shape of logprob"):
        trust_region_mask("ppo", **{**kw, "advantages": np.ones(3)})
    with pytest.raises(ValueError, match="advantages must be finite"):
        trust_region_mask("ppo", **{**kw, "advantages": np.array([1.0, np.inf])})
    with pytest.raises(ValueError, match="logprob must be log-probabilities"):
        trust_region_mask("ppo", **{**kw, "logprob": np.array([0.3, -1.0])})
    with pytest.raises(ValueError, match="response_mask must hold only 0/1"):
        trust_region_mask("ppo", **kw, response_mask=np.array([2, 1]))


def test_binary_kl_mask_keeps_confident_tokens_whose_float32_logprob_rounded_to_zero():
    z = torch.full((1000,), -30.0)
    z[0] = 0.0
    lp = torch.log_softmax(z, -1)[:1]  # exactly 0.0 in float32
    keep = trust_region_mask(
        "dppo_binary_kl", logprob=lp, rollout_logprob=torch.tensor([math.log(0.9999)]), advantages=torch.ones(1),
        low=0.05, high=0.05,
    )  # fmt: skip
    assert bool(keep[0])


def test_out_of_range_ids_with_the_recompute_anchor_raise_before_indexing():
    lp = np.log(np.array([0.5, 0.4]))
    with pytest.raises(ValueError, match=r"topk_ids must be token ids in \[0, 4\)"):
        trust_region_mask(
            "dppo_topk_tv", logprob=lp, rollout_logprob=lp, advantages=np.ones(2), low=0.1, high=0.1,
            topk_ids=np.array([[0, 9], [1, 2]]), logits=np.zeros((2, 4)), old_logprob=lp, old_logits=np.zeros((2, 4)),
        )  # fmt: skip


def test_a_registered_method_works_in_masks_losses_and_calibration(monkeypatch):
    """One registry entry is the whole definition: masks, policy_loss's diagnostics and calibration use it."""
    from trustregion_lab import masks
    from trustregion_lab.analysis import calibration, confusion, sampled_tokens
    from trustregion_lab.losses import policy_loss

    def squared_gap(x):  # D = (π(a) − μ(a))², a made-up divergence
        return (x.logprob.double().exp() - x.anchor_logprob.double().exp()) ** 2

    monkeypatch.setitem(masks.METHODS, "dummy_sq", masks.MaskMethod("divergence", squared_gap, "tv"))
    rng = np.random.default_rng(5)
    x, y, lmu, lpi, a, _ids, adv = batch(rng, 500, 7, 1.0)
    n = np.arange(500)
    mu_a, pi_a = np.exp(lmu[n, a]), np.exp(lpi[n, a])
    want = ~ref.divergence_drop((pi_a - mu_a) ** 2, pi_a, mu_a, adv, 0.01, 0.02)
    got = trust_region_mask(
        "dummy_sq", logprob=lpi[n, a], rollout_logprob=lmu[n, a], advantages=adv, low=0.01, high=0.02
    )
    np.testing.assert_array_equal(got, want)
    assert 0 < (~want).sum() < 500
    _, metrics = policy_loss(
        "dummy_sq", logprob=lpi[n, a], rollout_logprob=lmu[n, a], advantages=adv,
        response_mask=np.ones(500, bool), low=0.01, high=0.02,
    )  # fmt: skip
    assert metrics["mask_frac"] == pytest.approx((~want)[adv != 0].mean())
    tokens = sampled_tokens(x, y, a[:, None], adv[:, None])
    c = calibration.batch_critical_thresholds(tokens, confusion.BatchMaskSpec("dummy_sq", 0.0, 0.0))
    outward = ((adv > 0) & (pi_a > mu_a)) | ((adv < 0) & (pi_a < mu_a))
    np.testing.assert_allclose(c[outward], ((pi_a - mu_a) ** 2)[outward], rtol=1e-12)
    assert np.isneginf(c[~outward]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["dppo_exact_tv", "dppo_exact_kl", "dppo_topk_tv", "dppo_topk_kl"])
def test_low_precision_inputs_are_compared_with_the_threshold_in_float64(method, dtype):
    """A divergence just above δ must drop the token whatever the input dtype (docs/design.md §2 numerics)."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2.0, (3000, 9))
    y = x + rng.normal(0, 1.0, (3000, 9))
    xt, yt = torch.tensor(x).to(dtype), torch.tensor(y).to(dtype)
    x64, y64 = xt.double().numpy(), yt.double().numpy()  # the values the low-precision inputs hold
    lmu, lpi = ref.logprobs(x64), ref.logprobs(y64)
    a = np.argmax(np.abs(np.exp(lpi) - np.exp(lmu)), -1)
    n = np.arange(3000)
    ids = np.argsort(-lmu, -1)[:, :3]
    ids = np.where(
        (ids == a[:, None]).any(-1, keepdims=True), ids, np.concatenate([ids[:, :2], a[:, None]], -1)
    )
    lps = torch.tensor(np.take_along_axis(lmu, ids, -1)).to(dtype)  # what a low-precision engine reports
    mu_set, pi_set = np.exp(lps.double().numpy()), np.exp(np.take_along_axis(lpi, ids, -1))
    mu_rest, pi_rest = np.maximum(1 - mu_set.sum(-1), 0.0), np.maximum(1 - pi_set.sum(-1), 0.0)
    d = {
        "dppo_exact_tv": lambda: ref.tv(x64, y64),
        "dppo_exact_kl": lambda: ref.kl(x64, y64),
        "dppo_topk_tv": lambda: 0.5 * (np.abs(mu_set - pi_set).sum(-1) + np.abs(mu_rest - pi_rest)),
        "dppo_topk_kl": lambda: (
            (mu_set * np.log(mu_set / pi_set)).sum(-1) + mu_rest * np.log(mu_rest / pi_rest)
        ),
    }[method]()
    delta = float(np.median(d))  # half the tokens sit above δ, many of them within bf16 rounding of it
    adv = np.where(lpi[n, a] > lmu[n, a], 1.0, -1.0)  # every token moves outward
    got = trust_region_mask(
        method, logprob=torch.tensor(lpi[n, a]).to(dtype), rollout_logprob=torch.tensor(lmu[n, a]).to(dtype),
        advantages=torch.tensor(adv).to(dtype), low=delta, high=delta, topk_ids=torch.tensor(ids),
        rollout_topk_logprobs=lps, logits=yt, rollout_logits=xt,
    )  # fmt: skip
    near = np.abs(d - delta) < 0.01 * delta  # includes every token within low-precision rounding of δ
    assert near.sum() >= 20
    np.testing.assert_array_equal(got.numpy()[near], (d <= delta)[near])


def test_errors_name_the_argument_the_caller_passed():
    lp = np.log([0.5, 0.25, 0.125])
    with pytest.raises(ValueError, match="logprob and rollout_logprob must have the same shape"):
        trust_region_mask(
            "ppo", logprob=lp, rollout_logprob=np.log([0.5] * 4), advantages=np.ones(4), low=0.2, high=0.2
        )
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="old_logits must be finite"):
        trust_region_mask(
            "dppo_exact_tv", logprob=lp, rollout_logprob=lp, advantages=np.ones(3), low=0.1, high=0.1,
            logits=np.zeros((3, 4)), old_logprob=lp, old_logits=bad,
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs old_logits"):
        trust_region_mask(
            "dppo_topk_tv", logprob=lp, rollout_logprob=lp, advantages=np.ones(3), low=0.1, high=0.1,
            topk_ids=np.zeros((3, 1), int), rollout_topk_logprobs=lp[:, None], logits=np.zeros((3, 4)), old_logprob=lp,
        )  # fmt: skip
