"""policy_loss: gradients against hand/textbook forms, aggregations and metrics against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests import reference as ref
from trustregion_lab.losses import AGGREGATIONS, policy_loss
from trustregion_lab.masks import METHODS, trust_region_mask


def sequence_batch(seed: int, b: int = 6, t: int = 9, v: int = 11, move: float = 0.6):
    """Trainer logits z (leaf, float64) `[b, t, v]`, rollout logits, sampled tokens, Â per sequence, padding."""
    rng = np.random.default_rng(seed)
    mu_logits = rng.normal(0, 1.5, (b, t, v))
    z = torch.tensor(mu_logits + move * rng.normal(size=(b, t, v)), requires_grad=True)
    tokens = rng.integers(0, v, (b, t))
    adv = rng.normal(size=b)
    adv[0] = 0.0
    lengths = rng.integers(1, t + 1, b)
    lengths[1] = 0  # an empty sequence
    resp = np.arange(t)[None, :] < lengths[:, None]
    return rng, mu_logits, z, tokens, adv, resp


def token_logprobs(logits: torch.Tensor, tokens: np.ndarray) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(tokens)[..., None]).squeeze(-1)


def reference_aggregate(per_token: torch.Tensor, resp: np.ndarray, agg: str) -> torch.Tensor:
    m = torch.as_tensor(resp, dtype=per_token.dtype)
    if agg == "token-mean":
        return (per_token * m).sum() / m.sum()
    rows = [i for i in range(resp.shape[0]) if resp[i].any()]
    per_seq = [
        (per_token[i] * m[i]).sum() / (m[i].sum() if agg == "seq-mean-token-mean" else 1.0) for i in rows
    ]
    return torch.stack(per_seq).mean()


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28), (0.05, 0.4)])
def test_ppo_gradient_equals_the_clipped_objective(agg, clip):
    """∇ of the shared surrogate with method "ppo" = ∇ of −min(r Â, clip(r, 1 − low, 1 + high) Â) (autograd)."""
    _, mu_logits, z, tokens, adv, resp = sequence_batch(1)
    lmu = token_logprobs(torch.tensor(mu_logits), tokens)
    lp = token_logprobs(z, tokens)
    loss, _ = policy_loss(
        "ppo", logprob=lp, rollout_logprob=lmu, advantages=torch.tensor(adv), response_mask=torch.tensor(resp),
        low=clip[0], high=clip[1], ratio_cap=math.inf, agg=agg,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, z)

    r = torch.exp(token_logprobs(z, tokens) - lmu)
    a = torch.tensor(adv)[:, None]
    textbook = -torch.minimum(r * a, r.clamp(1 - clip[0], 1 + clip[1]) * a)
    (want,) = torch.autograd.grad(reference_aggregate(textbook, resp, agg), z)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradient_is_the_masked_capped_is_policy_gradient(method):
    """∇_z loss = Σ_t −Â_t · min(r_t, C) · M_t · (onehot(a_t) − softmax(z_t)) / n, computed by hand in float64."""
    _, mu_logits, z, tokens, adv, resp = sequence_batch(2, move=1.0)
    b, t, v = mu_logits.shape
    lmu_full = ref.logprobs(mu_logits)
    lpi_full = ref.logprobs(z.detach().numpy())
    lmu = np.take_along_axis(lmu_full, tokens[..., None], -1)[..., 0]
    lpi = np.take_along_axis(lpi_full, tokens[..., None], -1)[..., 0]
    ids = np.argsort(-lmu_full, axis=-1)[..., :3]
    topk_lp = np.take_along_axis(lmu_full, ids, -1)
    cap, low, high = 2.0, 0.1, 0.15
    loss, _ = policy_loss(
        method, logprob=token_logprobs(z, tokens), rollout_logprob=torch.tensor(lmu), advantages=torch.tensor(adv),
        response_mask=torch.tensor(resp), low=low, high=high, ratio_cap=cap, topk_ids=torch.tensor(ids),
        rollout_topk_logprobs=torch.tensor(topk_lp), logits=z.detach(), rollout_logits=torch.tensor(mu_logits),
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, z)

    keep = trust_region_mask(
        method, logprob=lpi, rollout_logprob=lmu, advantages=np.broadcast_to(adv[:, None], (b, t)), low=low,
        high=high, topk_ids=ids, rollout_topk_logprobs=topk_lp, logits=lpi_full, rollout_logits=mu_logits,
    )  # fmt: skip
    coef = -adv[:, None] * np.minimum(np.exp(lpi - lmu), cap) * keep * resp / resp.sum()
    onehot = np.eye(v)[tokens]
    want = coef[..., None] * (onehot - np.exp(lpi_full))
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-9, atol=1e-13)


def test_metrics_match_numpy_with_stated_denominators():
    _, mu_logits, z, tokens, adv, resp = sequence_batch(3, b=40, t=12, move=0.8)
    adv[5:9] = 0.0
    lmu = np.take_along_axis(ref.logprobs(mu_logits), tokens[..., None], -1)[..., 0]
    lpi = np.take_along_axis(ref.logprobs(z.detach().numpy()), tokens[..., None], -1)[..., 0]
    low, high, cap = 0.15, 0.15, 3.0
    _, m = policy_loss(
        "dppo_binary_tv", logprob=lpi, rollout_logprob=lmu, advantages=adv, response_mask=resp, low=low, high=high,
        ratio_cap=cap,
    )  # fmt: skip

    a = np.broadcast_to(adv[:, None], resp.shape)
    pos, neg = resp & (a > 0), resp & (a < 0)
    grad_tok = pos | neg
    r = np.exp(lpi - lmu)
    drop = (
        ref.divergence_drop(np.abs(np.exp(lpi) - np.exp(lmu)), np.exp(lpi), np.exp(lmu), a, low, high) & resp
    )
    clip = ref.ppo_drop(r, a, 0.2, 0.2) & resp
    rr = r[resp]
    want = {
        "mask_frac": drop[grad_tok].mean(),
        "mask_frac_pos": drop[pos].mean(),
        "mask_frac_neg": drop[neg].mean(),
        "ratio_clip_frac": clip[grad_tok].mean(),
        "ratio_cap_frac": (rr > cap).mean(),
        "mismatch_k1": np.mean(-np.log(rr)),
        "mismatch_k3": np.mean(rr - 1 - np.log(rr)),
        "chi2": np.mean((rr - 1) ** 2),
        "ess": rr.sum() ** 2 / (len(rr) * (rr**2).sum()),
        "ratio_mean": rr.mean(),
        "ratio_max": rr.max(),
        "valid_tokens": resp.sum(),
        "adv_tokens": grad_tok.sum(),
        "pos_tokens": pos.sum(),
        "neg_tokens": neg.sum(),
    }
    assert set(m) == set(want)
    for name, value in want.items():
        assert m[name] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    assert 0 < m["mask_frac"] < 1 and m["ratio_clip_frac"] > 0  # the batch exercises both rules


def test_padded_and_zero_advantage_tokens_never_count():
    """Garbage-free padding: changing padded tokens' log-probs or Â = 0 tokens changes neither loss nor metrics."""
    lmu = np.log(np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    lpi = np.log(np.array([[0.9, 0.5, 0.01], [0.9, 0.9, 0.9]]))
    resp = np.array([[True, True, False], [True, True, True]])
    adv = np.array([1.0, 0.0])
    base = policy_loss(
        "ppo", logprob=lpi, rollout_logprob=lmu, advantages=adv, response_mask=resp, low=0.2, high=0.2
    )
    lpi2 = lpi.copy()
    lpi2[0, 2] = np.log(0.99)
    other = policy_loss(
        "ppo", logprob=lpi2, rollout_logprob=lmu, advantages=adv, response_mask=resp, low=0.2, high=0.2
    )
    assert base[1]["mask_frac"] == other[1]["mask_frac"] == 0.5  # 1 of the 2 Â ≠ 0 response tokens
    assert base[1]["adv_tokens"] == 2 and base[1]["valid_tokens"] == 5
    assert math.isnan(base[1]["mask_frac_neg"])  # no Â < 0 token: undefined, not 0
    assert float(base[0]) == float(other[0])


def test_ratio_clip_frac_uses_the_rollout_ratio_even_with_a_recompute_anchor():
    lp = np.log(np.full(4, 0.5))
    lmu = np.log(
        np.array([0.3, 0.3, 0.7, 0.7])
    )  # r = 1.67 (Â > 0) and 0.71 (Â < 0): PPO's rule drops all four
    kw = {"logprob": lp, "rollout_logprob": lmu, "advantages": np.array([1.0, 1.0, -1.0, -1.0])}
    kw |= {"response_mask": np.ones(4, bool), "low": 0.2, "high": 0.2}
    _, plain = policy_loss("ppo", **kw)
    _, recompute = policy_loss(
        "ppo", **kw, old_logprob=lp
    )  # anchored on π_old = π: the mask keeps everything
    assert plain["mask_frac"] == plain["ratio_clip_frac"] == 1.0
    assert recompute["mask_frac"] == 0.0 and recompute["ratio_clip_frac"] == 1.0


def test_numpy_in_numpy_out_and_dtypes():
    lp = np.log(np.array([[0.3, 0.6]]))
    loss, m = policy_loss(
        "none", logprob=lp, rollout_logprob=lp, advantages=np.array([1.0]), response_mask=np.ones((1, 2), bool),
        low=0.2, high=0.2,
    )  # fmt: skip
    assert isinstance(loss, np.ndarray) and loss.dtype == np.float64 and loss.shape == ()
    assert float(loss) == pytest.approx(-(np.log(0.3) + np.log(0.6)) / 2)
    assert m["ess"] == pytest.approx(1.0) and m["mismatch_k1"] == 0.0
    t32 = torch.tensor(lp, dtype=torch.float32, requires_grad=True)
    loss32, _ = policy_loss(
        "ppo", logprob=t32, rollout_logprob=t32.detach(), advantages=torch.ones(1), response_mask=torch.ones(1, 2),
        low=0.2, high=0.2,
    )  # fmt: skip
    assert loss32.dtype == torch.float32 and loss32.requires_grad


def test_bad_inputs_raise_naming_the_argument():
    lp = np.log(np.full((2, 3), 0.5))
    kw = {
        "logprob": lp,
        "rollout_logprob": lp,
        "advantages": np.ones(2),
        "response_mask": np.ones((2, 3), bool),
    }
    kw |= {"low": 0.2, "high": 0.2}
    with pytest.raises(ValueError, match=r"agg must be one of .*got 'mean'"):
        policy_loss("ppo", **kw, agg="mean")
    with pytest.raises(ValueError, match="method must be one of"):
        policy_loss("grpo", **kw)
    with pytest.raises(ValueError, match="ratio_cap must be > 0"):
        policy_loss("ppo", **kw, ratio_cap=0.0)
    with pytest.raises(ValueError, match="ratio_cap must be > 0"):
        policy_loss("ppo", **kw, ratio_cap=-1.0)
    with pytest.raises(ValueError, match="high must be >= 0"):
        policy_loss("ppo", **{**kw, "high": -0.2})
    with pytest.raises(ValueError, match="response_mask must have the same shape"):
        policy_loss("ppo", **{**kw, "response_mask": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="response_mask must hold only 0/1"):
        policy_loss("ppo", **{**kw, "response_mask": np.full((2, 3), 0.5)})
    with pytest.raises(ValueError, match="rollout_logprob must be finite"):
        policy_loss("ppo", **{**kw, "rollout_logprob": np.full((2, 3), np.nan)})
    with pytest.raises(TypeError, match=r"ratio_clip must be a \(low, high\) pair"):
        policy_loss("ppo", **kw, ratio_clip=0.2)


def test_uncapped_infinite_ratio_on_a_padded_token_does_not_poison_the_loss():
    lp = np.array([[-0.5, -1.0, 0.0]])
    lmu = np.array([[-0.6, -1.1, -1000.0]])  # r = e^1000 = inf at the padded position
    loss, m = policy_loss(
        "ppo", logprob=lp, rollout_logprob=lmu, advantages=np.array([[1.0, -1.0, 0.0]]),
        response_mask=np.array([[True, True, False]]), low=0.2, high=0.2, ratio_cap=math.inf,
    )  # fmt: skip
    assert np.isfinite(loss) and m["valid_tokens"] == 2


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_half_precision_log_probs_are_reduced_in_float32(agg):
    torch.manual_seed(0)
    lp = torch.empty(2, 4096).uniform_(1e-5, 1e-3).log()
    kw = dict(
        advantages=torch.full((2,), 2.0),
        response_mask=torch.ones(2, 4096, dtype=torch.bool),
        low=0.2,
        high=0.2,
    )
    want, _ = policy_loss("ppo", logprob=lp.double(), rollout_logprob=lp.double(), **kw, agg=agg)
    got, _ = policy_loss("ppo", logprob=lp.half(), rollout_logprob=lp.half(), **kw, agg=agg)
    assert torch.isfinite(got) and got.dtype == torch.float32
    np.testing.assert_allclose(float(got), float(want), rtol=2e-3)  # float16 inputs carry 1e-3 relative error


def test_log_ratio_penalty_gradient_matches_numpy():
    """prime-rl's extra term: loss += c · (log π(a) − log μ(a))² on every valid token, masked or not."""
    rng = np.random.default_rng(3)
    lp_np = np.log(rng.uniform(0.05, 0.9, (3, 5)))
    lmu = np.log(rng.uniform(0.05, 0.9, (3, 5)))
    adv = rng.normal(size=(3, 5))
    valid = rng.random((3, 5)) < 0.8
    lp = torch.tensor(lp_np, requires_grad=True)
    c = 0.3
    loss, _ = policy_loss(
        "dppo_binary_tv", logprob=lp, rollout_logprob=torch.tensor(lmu), advantages=torch.tensor(adv),
        response_mask=torch.tensor(valid), low=0.2, high=0.2, ratio_cap=math.inf, log_ratio_penalty=c,
    )  # fmt: skip
    loss.backward()
    pi, mu = np.exp(lp_np), np.exp(lmu)
    keep = ~ref.divergence_drop(np.abs(pi - mu), pi, mu, adv, 0.2, 0.2)
    want = (-adv * np.exp(lp_np - lmu) * keep + 2 * c * (lp_np - lmu)) * valid / valid.sum()
    np.testing.assert_allclose(lp.grad.numpy(), want, rtol=1e-10, atol=1e-12)


def test_zero_advantage_token_with_an_infinite_uncapped_ratio_does_not_poison_the_loss():
    lp = torch.tensor([[-0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    lmu = torch.tensor([[-0.6, -1000.0]], dtype=torch.float64)  # r = e^1000 = inf on a valid Â = 0 token
    loss, _ = policy_loss(
        "none", logprob=lp, rollout_logprob=lmu, advantages=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        response_mask=torch.ones(1, 2, dtype=torch.bool), low=0.0, high=0.0, ratio_cap=math.inf,
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all() and lp.grad[0, 1] == 0


RECOMPUTE_THRESHOLDS = {
    "ppo": (0.1, 0.2),
    "ppo_relaxed": (0.1, 0.2),
    "dppo_binary_tv": (0.05, 0.1),
    "dppo_binary_kl": (0.02, 0.03),
    "dppo_topk_tv": (0.05, 0.1),
    "dppo_topk_kl": (0.02, 0.03),
    "dppo_exact_tv": (0.05, 0.1),
    "dppo_exact_kl": (0.02, 0.03),
}


def _anchor_drop(method, low, high, adv, lpi, lold, pi_logits, old_logits, ids):
    """The docs/design.md §2 drop rule with π_old as the anchor, from the definitions in float64 numpy."""
    pi_a, old_a = np.exp(lpi), np.exp(lold)
    if method.startswith("ppo"):
        drop = ref.ppo_drop(pi_a / old_a, adv, low, high)
        return drop & (old_a >= 0.1) if method == "ppo_relaxed" else drop
    shape = lpi.shape
    flat_old, flat_pi = (
        old_logits.reshape(-1, old_logits.shape[-1]),
        pi_logits.reshape(-1, pi_logits.shape[-1]),
    )
    d = {
        "dppo_binary_tv": lambda: np.abs(pi_a - old_a),
        "dppo_binary_kl": lambda: ref.binary_kl(lold, lpi),
        "dppo_topk_tv": lambda: ref.topk_tv(flat_old, flat_pi, ids.reshape(-1, ids.shape[-1])).reshape(shape),
        "dppo_topk_kl": lambda: ref.topk_kl(flat_old, flat_pi, ids.reshape(-1, ids.shape[-1])).reshape(shape),
        "dppo_exact_tv": lambda: ref.tv(flat_old, flat_pi).reshape(shape),
        "dppo_exact_kl": lambda: ref.kl(flat_old, flat_pi).reshape(shape),
    }[method]()
    return ref.divergence_drop(d, pi_a, old_a, adv, low, high)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("method", sorted(RECOMPUTE_THRESHOLDS))
def test_recompute_anchor_gradient_equals_the_hand_formula(rng, method, agg):
    """∂loss/∂log π(a_t) = −Â_t · min(r_t, C) · M_t / denominator, r = π/μ, M the mask against π_old (float64).

    π_old and μ are drawn apart, so the anchor decides: some tokens the π_old mask drops the μ mask keeps and
    the other way round; masked tokens get exactly zero gradient.
    """
    b, t, v, k = 16, 10, 7, 3
    old_logits = rng.normal(0, 1.5, (b, t, v))
    pi_logits = old_logits + 0.8 * rng.normal(size=(b, t, v))
    mu_logits = old_logits + 0.8 * rng.normal(size=(b, t, v))
    tokens = rng.integers(0, v, (b, t))
    adv = rng.normal(size=b)
    adv[0] = 0.0
    lengths = rng.integers(1, t + 1, b)
    lengths[1] = 0
    resp = np.arange(t)[None, :] < lengths[:, None]
    pick = lambda logits: np.take_along_axis(ref.logprobs(logits), tokens[..., None], -1)[..., 0]  # noqa: E731
    lpi, lold, lmu = pick(pi_logits), pick(old_logits), pick(mu_logits)
    ids = np.argsort(-ref.logprobs(mu_logits), axis=-1)[..., :k]  # the engine reports μ's top-K
    low, high = RECOMPUTE_THRESHOLDS[method]
    cap = 1.5

    logprob = torch.tensor(lpi, requires_grad=True)
    loss, _ = policy_loss(
        method, logprob=logprob, rollout_logprob=torch.tensor(lmu), advantages=torch.tensor(adv),
        response_mask=torch.tensor(resp), low=low, high=high, ratio_cap=cap, agg=agg,
        old_logprob=torch.tensor(lold), old_logits=torch.tensor(old_logits), logits=torch.tensor(pi_logits),
        topk_ids=torch.tensor(ids), rollout_topk_logprobs=torch.tensor(np.take_along_axis(ref.logprobs(mu_logits), ids, -1)),
        rollout_logits=torch.tensor(mu_logits),
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logprob)

    a = np.broadcast_to(adv[:, None], (b, t))
    drop = _anchor_drop(method, low, high, a, lpi, lold, pi_logits, old_logits, ids)
    keep = ~drop & resp
    n_t = resp.sum(1)
    if agg == "token-mean":
        denominator = np.full((b, t), resp.sum(), dtype=np.float64)
    else:
        sequences = (n_t > 0).sum()
        per_row = n_t if agg == "seq-mean-token-mean" else np.ones(b)
        denominator = np.broadcast_to((sequences * np.maximum(per_row, 1))[:, None], (b, t))
    want = -a * np.minimum(np.exp(lpi - lmu), cap) * keep / denominator
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-10, atol=1e-14)

    gets_grad = resp & (a != 0)
    drop_mu = _anchor_drop(method, low, high, a, lpi, lmu, pi_logits, mu_logits, ids)
    assert (drop & gets_grad).any() and (~drop & gets_grad).any()  # tokens masked by the anchor, and kept
    assert (drop != drop_mu)[gets_grad].any()  # the π_old anchor differs from the μ anchor on this batch
    assert (np.exp(lpi - lmu) > cap)[keep & gets_grad].any()  # the cap binds on kept tokens
    assert np.all(grad.numpy()[drop & gets_grad] == 0.0)
