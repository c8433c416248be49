"""The field's remedies (masks.CORRECTION_METHODS and their variants): masks, statistics and gradients against
float64 numpy / textbook references, and one training step for each new variant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustregion_lab.losses import policy_loss
from trustregion_lab.masks import CORRECTION_METHODS, correction_mask, sequence_statistic
from trustregion_lab.train import VARIANTS, SequenceConfig, SequenceTrainer
from trustregion_lab.train.variants import Variant

SEED = 917
NEW_VARIANTS = ("tis", "icepop", "seq_mis", "seq_mis_geo", "gspo")


def _batch(rng: np.random.Generator, b: int = 24, t: int = 9, spread: float = 0.3):
    """log π, log μ `[b, t]` (some extreme), advantages `[b]` with zeros, a response mask with padding."""
    lmu = np.log(rng.uniform(1e-6, 1.0, (b, t)))
    lmu[0, 0] = math.log(1e-300)  # extreme: μ(a) ≈ 0
    lpi = np.minimum(lmu + rng.normal(0, spread, (b, t)) * rng.uniform(0, 1, (b, 1)), 0.0)
    lpi[1, :] = lmu[1, :]  # an on-policy row: every statistic is exactly 1
    adv = rng.choice([-1.0, 0.0, 1.0, 2.0], b)
    lengths = rng.integers(0, t + 1, b)
    lengths[2] = 0  # an empty row
    resp = np.arange(t)[None, :] < lengths[:, None]
    return lpi, lmu, adv, resp


def ref_stat(method: str, lpi, lanchor, resp) -> np.ndarray:
    log_r = lpi - lanchor
    entry = CORRECTION_METHODS[method]
    if entry.level == "token":
        return np.exp(log_r)
    total = np.where(resp, log_r, 0.0).sum(1, keepdims=True)
    if entry.sequence_stat == "geometric":
        total = total / np.maximum(resp.sum(1, keepdims=True), 1)
    return np.broadcast_to(np.exp(total), log_r.shape)


def ref_keep(method: str, lpi, lanchor, adv, resp, low, high) -> np.ndarray:
    stat = ref_stat(method, lpi, lanchor, resp)
    a = np.broadcast_to(adv[:, None], stat.shape)
    up, down = stat > 1 + high, stat < 1 - low
    if CORRECTION_METHODS[method].sides == "both":
        drop = (a != 0) & (up | down)
    else:
        drop = ((a > 0) & up) | ((a < 0) & down)
    return ~(drop & resp)


THRESHOLDS = {"icepop": (0.5, 4.0), "seq_mis": (0.5, 1.0), "seq_geo_mis": (0.01, 0.01), "gspo": (3e-4, 4e-4)}


@pytest.mark.parametrize("method", sorted(CORRECTION_METHODS))
@pytest.mark.parametrize("spread", [0.01, 0.3, 2.0])
def test_correction_masks_equal_the_float64_reference(method, spread):
    rng = np.random.default_rng([SEED, int(spread * 100)])
    print("seed", SEED, spread)
    lpi, lmu, adv, resp = _batch(rng, spread=spread)
    low, high = THRESHOLDS[method]
    got = correction_mask(
        method, logprob=lpi, rollout_logprob=lmu, advantages=adv, low=low, high=high, response_mask=resp
    )
    want = ref_keep(method, lpi, lmu, adv, resp, low, high)
    assert got.dtype == np.bool_ and got.shape == lpi.shape
    np.testing.assert_array_equal(got, want)
    assert got[~resp].all() and got[adv == 0].all() and got[1].all()
    stat = sequence_statistic(method, logprob=lpi, rollout_logprob=lmu, response_mask=resp)
    np.testing.assert_allclose(stat, ref_stat(method, lpi, lmu, resp), rtol=1e-12)
    if CORRECTION_METHODS[method].level == "sequence":  # one decision per sequence (among its Â ≠ 0 tokens)
        for row in range(len(adv)):
            assert len(set(got[row, resp[row]].tolist())) <= 1


def test_every_rule_drops_somewhere_and_bands_ignore_the_sign():
    rng = np.random.default_rng(SEED + 1)
    lpi, lmu, adv, resp = _batch(rng, b=400, spread=1.0)
    for method, (low, high) in THRESHOLDS.items():
        keep = correction_mask(
            method, logprob=lpi, rollout_logprob=lmu, advantages=adv, low=low, high=high, response_mask=resp
        )
        for sign in (-1.0, 1.0):
            rows = adv == sign
            assert (~keep[rows]).any(), (method, sign)
        assert keep[rows].any(), method
    # a band drops the token whatever Â's sign; the signed GSPO rule only on the side the update pushes to
    lpi1, lmu1 = np.log([[0.9]]), np.log([[0.1]])  # r = 9 (above the IcePop band)
    for a, icepop_keeps, ppo_like_keeps in ((1.0, False, False), (-1.0, False, True)):
        kw = dict(logprob=lpi1, rollout_logprob=lmu1, advantages=np.array([a]))
        assert correction_mask("icepop", low=0.5, high=4.0, **kw)[0, 0] == icepop_keeps
        assert correction_mask("gspo", low=3e-4, high=4e-4, **kw)[0, 0] == ppo_like_keeps


def test_old_logprob_moves_the_anchor_and_torch_keeps_its_kind():
    rng = np.random.default_rng(SEED + 2)
    lpi, lmu, adv, resp = _batch(rng, spread=0.5)
    old = np.minimum(lpi + rng.normal(0, 0.05, lpi.shape), 0.0)
    got = correction_mask(
        "seq_mis", logprob=torch.tensor(lpi), rollout_logprob=torch.tensor(lmu), advantages=torch.tensor(adv),
        low=0.5, high=1.0, response_mask=torch.tensor(resp), old_logprob=torch.tensor(old),
    )  # fmt: skip
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), ref_keep("seq_mis", lpi, old, adv, resp, 0.5, 1.0))


def test_bad_inputs_name_the_argument():
    x = np.log(np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="method"):
        correction_mask("ppo", logprob=x, rollout_logprob=x, advantages=np.ones(2), low=0.2, high=0.2)
    with pytest.raises(ValueError, match="response_mask"):
        correction_mask(
            "gspo",
            logprob=x,
            rollout_logprob=x,
            advantages=np.ones(2),
            low=0.1,
            high=0.1,
            response_mask=np.ones(3),
        )
    with pytest.raises(ValueError, match="method"):
        Variant("seq_mis_typo", 0.5, 1.0)
    with pytest.raises(ValueError, match="agg"):
        Variant("gspo", 3e-4, 4e-4, agg="mean")


def _loss_grad(method, lpi_z, tokens, lmu, adv, resp, low, high, cap, agg):
    z = lpi_z.clone().requires_grad_(True)
    logprob = torch.log_softmax(z, -1).gather(-1, tokens[..., None])[..., 0]
    loss, metrics = policy_loss(
        method, logprob=logprob, rollout_logprob=lmu, advantages=adv, response_mask=resp, low=low, high=high,
        ratio_cap=cap, agg=agg,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, z)
    return grad, metrics


def _sequence_problem(seed: int, b: int = 12, t: int = 6, v: int = 7, spread: float = 0.02):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    mu_z = z + spread * torch.randn(b, t, v, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, v, (b, t), generator=g)
    lmu = torch.log_softmax(mu_z, -1).gather(-1, tokens[..., None])[..., 0]
    adv = torch.tensor(np.random.default_rng(seed).choice([-1.0, 1.0, 0.5, 0.0], b))
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    resp = torch.arange(t)[None, :] < lengths[:, None]
    return z, tokens, lmu, adv, resp


@pytest.mark.parametrize("spread", [0.002, 0.05])
def test_gspo_gradient_equals_the_textbook_sequence_objective(spread):
    """−(1/G) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i), s_i = exp(mean_t log π/μ): autograd, float64."""
    z, tokens, lmu, adv, resp = _sequence_problem(SEED + 3, spread=spread)
    low, high = 3e-4, 4e-4
    got, _ = _loss_grad("gspo", z, tokens, lmu, adv, resp, low, high, math.inf, "seq-mean-token-mean")

    zz = z.clone().requires_grad_(True)
    lp = torch.log_softmax(zz, -1).gather(-1, tokens[..., None])[..., 0]
    n = resp.sum(1)
    s = torch.exp(torch.where(resp, lp - lmu, 0.0).sum(1) / n)
    obj = torch.minimum(s * adv, s.clamp(1 - low, 1 + high) * adv)
    (want,) = torch.autograd.grad(-obj.mean(), zz)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    clipped = ((adv > 0) & (s > 1 + high)) | ((adv < 0) & (s < 1 - low))
    assert clipped.any() and (~clipped & (adv != 0)).any()  # both branches exercised


def test_seq_mis_gradient_equals_the_masked_sequence_is_gradient():
    """∇ of −(1/G) Σ_i M_i A_i R_i with R_i = Π_t π/μ and M_i = [R_i ∈ [0.5, 2]] (seq-mean-token-sum)."""
    z, tokens, lmu, adv, resp = _sequence_problem(SEED + 4, spread=0.4)
    got, metrics = _loss_grad("seq_mis", z, tokens, lmu, adv, resp, 0.5, 1.0, 2.0, "seq-mean-token-sum")
    zz = z.clone().requires_grad_(True)
    lp = torch.log_softmax(zz, -1).gather(-1, tokens[..., None])[..., 0]
    big_r = torch.exp(torch.where(resp, lp - lmu, 0.0).sum(1))
    kept = ((big_r >= 0.5) & (big_r <= 2.0)).detach()
    (want,) = torch.autograd.grad(-(kept * adv * big_r).mean(), zz)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert (~kept & (adv != 0)).any() and (kept & (adv != 0)).any()
    rows = (adv != 0)[:, None] & resp
    assert metrics["mask_frac"] == pytest.approx(float((~kept[:, None] & rows).sum() / rows.sum()))


@pytest.mark.parametrize(
    "method,low,high,cap", [("icepop", 0.5, 4.0, math.inf), ("seq_geo_mis", 0.01, 0.01, 10.0)]
)
def test_token_weighted_rules_give_the_masked_token_is_gradient(method, low, high, cap):
    """∇_z = Σ_t −Â · min(r_t, C) · M_t · (onehot − softmax) / n_tokens with M_t from the numpy reference."""
    z, tokens, lmu, adv, resp = _sequence_problem(SEED + 5, spread=0.8 if method == "icepop" else 0.05)
    got, _ = _loss_grad(method, z, tokens, lmu, adv, resp, low, high, cap, "token-mean")
    lpi_full = torch.log_softmax(z, -1).numpy()
    lpi = np.take_along_axis(lpi_full, tokens.numpy()[..., None], -1)[..., 0]
    keep = ref_keep(method, lpi, lmu.numpy(), adv.numpy(), resp.numpy(), low, high)
    assert (~keep).any()
    a = adv.numpy()[:, None]
    coef = -a * np.minimum(np.exp(lpi - lmu.numpy()), cap) * keep * resp.numpy() / resp.numpy().sum()
    want = coef[..., None] * (np.eye(z.shape[-1])[tokens.numpy()] - np.exp(lpi_full))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-13)


def test_new_variants_are_registered_with_their_thresholds():
    assert VARIANTS["tis"].method == "none" and VARIANTS["tis"].ratio_cap == 2.0
    band = {
        name: (1 - VARIANTS[name].low, 1 + VARIANTS[name].high)
        for name in ("icepop", "seq_mis", "seq_mis_geo")
    }
    assert band == {"icepop": (0.5, 5.0), "seq_mis": (0.5, 2.0), "seq_mis_geo": (0.99, 1.01)}
    assert (VARIANTS["gspo"].low, VARIANTS["gspo"].high) == (3e-4, 4e-4)
    assert VARIANTS["gspo"].agg == "seq-mean-token-mean"


@pytest.mark.parametrize("variant", NEW_VARIANTS)
def test_one_training_step_of_each_new_variant(tmp_path, variant):
    config = SequenceConfig(
        variant=variant, task="copy", vocab_size=40, max_length=3, d_model=32, n_layers=1, n_heads=2, d_ff=64,
        prompts_per_step=4, group_size=4, num_minibatches=2, epochs=2, steps=2, warm_start_steps=30,
        warm_start_batch=32, engine="model-fp8", lr=3e-3, reward_mode="partial", cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    before = [p.detach().clone() for p in SequenceTrainer(config).policy.parameters()]
    trainer = SequenceTrainer(config)
    table = trainer.train()
    assert len(table) == 2 and (table["variant"] == variant).all()
    assert (table["method"] == VARIANTS[variant].method).all()
    for name in ("loss", "mask_frac", "grad_norm", "mismatch_mean"):
        assert np.isfinite(table[name]).all(), name
    assert ((table["mask_frac"] >= 0) & (table["mask_frac"] <= 1)).all() and (table["grad_norm"] > 0).all()
    moved = any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters(), strict=True))
    assert moved
    again = SequenceTrainer(config).train()
    cols = ["loss", "mask_frac", "reward", "grad_norm"]
    assert again[cols].equals(table[cols])  # bit for bit
