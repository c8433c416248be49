"""The conformance kit: the shipped cases equal a regeneration, the project's own masks, losses and divergences
pass, losses written in each framework's style (prime-rl, verl, TRL, SkyRL, slime) pass check_loss while
deliberately wrong variants fail, and bad input is refused with the argument named."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from trustregion_lab import divergence, losses, masks
from trustregion_lab.conformance import (
    DATA_FILE,
    DIVERGENCES,
    FRAMEWORK_RULES,
    V1_FILE,
    WEIGHTS,
    check_divergence,
    check_loss,
    check_mask,
    check_weights,
    generate,
    load_cases,
    methods,
)


def _assert_same(shipped, fresh, path="$"):
    """Structural equality; floats to 1e-12 relative (scipy versions may differ in the last ulps)."""
    assert type(shipped) is type(fresh) or {type(shipped), type(fresh)} <= {int, float}, path
    if isinstance(fresh, dict):
        assert shipped.keys() == fresh.keys(), path
        for key in fresh:
            _assert_same(shipped[key], fresh[key], f"{path}.{key}")
    elif isinstance(fresh, list):
        assert len(shipped) == len(fresh), path
        if fresh and not isinstance(fresh[0], list | dict | str):
            np.testing.assert_allclose(
                np.array(shipped, float), np.array(fresh, float), rtol=1e-12, atol=0, err_msg=path
            )
        else:
            for i, (a, b) in enumerate(zip(shipped, fresh)):
                _assert_same(a, b, f"{path}[{i}]")
    elif isinstance(fresh, float):
        np.testing.assert_allclose(shipped, fresh, rtol=1e-12, err_msg=path)
    else:
        assert shipped == fresh, path


def test_shipped_cases_equal_a_regeneration():
    shipped = json.loads(DATA_FILE.read_text())
    fresh = json.loads(generate.dumps(generate.build_cases()))
    assert shipped["version"] == generate.VERSION
    _assert_same(shipped, fresh)


def test_cases_cover_the_edge_cases_the_kit_promises():
    cases = {case.name: case for case in load_cases()}
    mu = np.concatenate([np.exp(c.inputs["rollout_logprob"]).ravel() for c in cases.values()])
    assert mu.min() < 1e-9 and (1 - mu).min() < 1e-9  # μ(a) → 0 and → 1
    assert any((c.inputs["advantages"] == 0).any() for c in cases.values())
    assert any((~c.inputs["response_mask"]).any() for c in cases.values())  # padding
    sampled_in_set = [(c.inputs["topk_ids"] == c.inputs["token"][..., None]).any(-1) for c in cases.values()]
    assert any(s.all() for s in sampled_in_set) and any((~s).any() for s in sampled_in_set)
    assert (
        (cases["empty_rest"].inputs["topk_ids"].shape[-1]) == cases["empty_rest"].inputs["logits"].shape[-1]
    )
    covered = {m["method"] for c in cases.values() for m in c.masks}
    assert covered == set(masks.METHODS) | set(FRAMEWORK_RULES), "every method needs reference decisions"
    assert covered == set(methods())
    assert {m["anchor"] for c in cases.values() for m in c.masks} == {"rollout", "recompute"}
    recompute = {m["method"] for c in cases.values() for m in c.masks if m["anchor"] == "recompute"}
    assert {"ppo", "dppo_binary_tv", "dual_clip"} <= recompute
    for name in FRAMEWORK_RULES:  # every framework rule drops some tokens and keeps others somewhere
        keep = np.concatenate(
            [
                m["keep"][c.inputs["response_mask"] & (c.inputs["advantages"] != 0)]
                for c in cases.values()
                for m in c.masks
                if m["method"] == name
            ]
        )
        assert keep.any() and (~keep).any(), name
    assert {w["kind"] for c in cases.values() for w in c.weights} == set(WEIGHTS)


def test_every_decision_is_away_from_its_threshold():
    """The generator's tie check, recomputed: no critical value within the margin of its threshold."""
    for case in load_cases():
        x = case.inputs
        for m in case.masks:
            d = {"dppo_binary_tv": "binary_tv", "dppo_binary_kl": "binary_kl", "dppo_topk_tv": "topk_tv"}
            d |= {"dppo_topk_kl": "topk_kl", "dppo_exact_tv": "tv", "dppo_exact_kl": "kl"}
            if m["anchor"] != "rollout" or m["method"] not in d:
                continue
            value = case.expected[d[m["method"]]]
            threshold = np.where(x["advantages"] > 0, m["high"], m["low"])
            live = x["response_mask"] & (x["advantages"] != 0)
            assert np.all(np.abs(value[live] - threshold[live]) > generate.TIE_MARGIN), (
                case.name,
                m["method"],
            )


@pytest.mark.parametrize("quantity", sorted(DIVERGENCES))
def test_project_divergences_pass(quantity):
    fn = {"binary_tv": divergence.binary_tv, "binary_kl": divergence.binary_kl, "topk_tv": divergence.topk_tv}
    fn |= {"topk_kl": divergence.topk_kl, "tv": divergence.tv, "kl": divergence.kl}
    bad = check_divergence(fn[quantity], quantity)
    assert bad.empty, bad.to_string()
    assert bad.attrs["checked"] > 100


@pytest.mark.parametrize("method", sorted(masks.METHODS))
def test_project_masks_pass(method):
    bad = check_mask(functools.partial(masks.trust_region_mask, method), method)
    assert bad.empty, bad.to_string()
    assert bad.attrs["checked"] > 100 and not bad.attrs["skipped"]


def test_project_masks_pass_through_the_verl_adapter_with_torch_tensors():
    def verl_style(old_log_prob, log_prob, advantages, response_mask, low, high):
        assert isinstance(log_prob, torch.Tensor) and log_prob.dtype == torch.float64
        return masks.trust_region_mask(
            "dppo_binary_kl",
            logprob=log_prob,
            rollout_logprob=old_log_prob,
            advantages=advantages,
            low=low,
            high=high,
            response_mask=response_mask,
        )

    bad = check_mask(verl_style, "dppo_binary_kl", adapter="verl", array="torch")
    assert bad.empty, bad.to_string()


def test_verl_style_zero_advantage_rule_is_caught():
    """verl's dppo_tv applies the Â < 0 rule to Â = 0 tokens: the kit flags exactly those tokens."""

    def verl_tv(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
        delta = np.exp(log_prob) - np.exp(old_log_prob)
        keep = np.where(advantages > 0, delta <= clip_ratio_high, delta >= -clip_ratio_low)
        return ~keep & response_mask  # a drop mask

    bad = check_mask(verl_tv, "dppo_binary_tv", adapter="verl", output="drop")
    assert len(bad) > 0
    assert (bad["advantage"] == 0).all() and bad["expected"].all() and not bad["got"].any()


def test_swapped_thresholds_and_clamps_are_caught():
    def swapped(logprob, rollout_logprob, advantages, low, high, response_mask):
        return masks.trust_region_mask(
            "dppo_binary_tv",
            logprob=logprob,
            rollout_logprob=rollout_logprob,
            advantages=advantages,
            low=high,
            high=low,
            response_mask=response_mask,
        )

    bad = check_mask(swapped, "dppo_binary_tv")
    assert len(bad) > 0 and set(zip(bad["low"], bad["high"])) == {(0.1, 0.25)}

    def clamped_kl(rollout_logprob, logprob):  # 1 − p with p clamped at 1 − 1e-7
        mu, pi = np.exp(rollout_logprob), np.minimum(np.exp(logprob), 1 - 1e-7)
        mu_c = np.minimum(mu, 1 - 1e-7)
        return mu * np.log(mu / pi) + (1 - mu_c) * np.log((1 - mu_c) / (1 - pi))

    bad = check_divergence(clamped_kl, "binary_kl")
    assert len(bad) > 0 and (bad["mu"] > 1 - 1e-6).all()


def test_plain_adapter_passes_only_accepted_keywords_and_skips_recompute_without_old_logprob():
    seen = []

    def ppo_rollout_only(logprob, rollout_logprob, advantages, low, high, response_mask):
        seen.append(True)
        return masks.trust_region_mask(
            "ppo",
            logprob=logprob,
            rollout_logprob=rollout_logprob,
            advantages=advantages,
            low=low,
            high=high,
            response_mask=response_mask,
        )

    bad = check_mask(ppo_rollout_only, "ppo")
    assert bad.empty and seen and bad.attrs["skipped"]
    with pytest.raises(ValueError, match="method"):
        check_mask(ppo_rollout_only, "no_such_method")
    with pytest.raises(ValueError, match="adapter"):
        check_mask(ppo_rollout_only, "ppo", adapter="trl")


def test_a_wrong_shape_is_an_error_naming_the_check():
    with pytest.raises(ValueError, match="binary_tv returned shape"):
        check_divergence(lambda rollout_logprob, logprob: rollout_logprob.ravel(), "binary_tv")


# ------------------------------------------------------------------------------------------------------------
# check_loss: the keep mask read from the gradient of losses written in each framework's style (from the
# frameworks' documented behaviour; the kit's names are mapped onto theirs with a small adapter).


def _token_mean(per_token, mask):
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def _prime_rl_loss(trainer_logprobs, inference_logprobs, advantages, loss_mask, ipo_delta=0.1, kl_tau=0.0):
    """prime-rl style: tokens whose probability moved by more than ipo_delta are masked whatever their
    advantage; the rest get −sg(r)·Â·log π (the gradient of −r·Â), summed over kept tokens."""
    ratio = torch.exp(trainer_logprobs - inference_logprobs)
    prob_delta = torch.exp(trainer_logprobs) - torch.exp(inference_logprobs)
    is_masked = prob_delta.abs() > ipo_delta
    keep = loss_mask & ~is_masked
    loss = (-(ratio.detach() * advantages) * trainer_logprobs)[keep].sum()
    log_ratio = trainer_logprobs - inference_logprobs
    loss = loss + kl_tau * (log_ratio[loss_mask] ** 2).sum()  # a KL regularizer on every loss-mask token
    return loss / loss_mask.sum().clamp_min(1), {"is_masked": is_masked[loss_mask].double().mean()}


def _prime_rl_token_mask_loss(
    trainer_logprobs, inference_logprobs, advantages, loss_mask, mask_low, mask_high
):
    ratio = torch.exp(trainer_logprobs - inference_logprobs)
    keep = loss_mask & (ratio >= mask_low) & (ratio <= mask_high)
    return (-ratio * advantages)[keep].sum() / loss_mask.sum().clamp_min(1)


def _verl_policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    cliprange_low=0.2,
    cliprange_high=0.2,
    clip_ratio_c=3.0,
    loss_agg_mode="token-mean",
):
    """verl style: PPO clip with the dual clip on the Â < 0 side, log r clamped to [−20, 20] before exp."""
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)
    clipped = torch.maximum(losses1, losses2)
    lower = torch.minimum(-advantages * clip_ratio_c, clipped)
    per_token = torch.where(advantages < 0, lower, clipped)
    clipfrac = _token_mean(torch.gt(losses2, losses1).double(), response_mask)
    return _token_mean(per_token, response_mask), clipfrac, _token_mean(-log_ratio, response_mask), clipfrac


def _trl_grpo_loss(
    per_token_logps, old_per_token_logps, advantages, completion_mask, epsilon_low, epsilon_high, delta=None
):
    """TRL style (GRPOTrainer's documented loss): coef_2 = clip(r, 1 − ε_low, 1 + ε_high), coef_1 = r capped
    at delta when given, loss = −min(coef_1·Â, coef_2·Â), averaged over completion tokens."""
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    per_token = -torch.min(coef_1 * advantages, coef_2 * advantages)
    return (per_token * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)


def _trl_sequence_mask_loss(
    per_token_logps, old_per_token_logps, sampling_per_token_logps, advantages, completion_mask, cap
):
    """TRL style vLLM correction in "sequence_mask" mode: a sequence whose product ratio old/sampling exceeds
    the cap gets weight 0 (upper side only)."""
    seq_log_ratio = ((old_per_token_logps - sampling_per_token_logps) * completion_mask).sum(-1, keepdim=True)
    weight = torch.exp(seq_log_ratio) * (torch.exp(seq_log_ratio) <= cap)
    coef = torch.exp(per_token_logps - old_per_token_logps)
    per_token = -coef * advantages * weight
    return (per_token * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)


@dataclass
class _SkyRLConfig:
    eps_clip_low: float = 0.2
    eps_clip_high: float = 0.2
    clip_ratio_c: float = 3.0
    policy_loss_type: str = "dual_clip"
    loss_reduction: str = "token_mean"
    use_tis: bool = False
    tis_imp_ratio_cap: float = 2.0


def _skyrl_policy_loss(log_probs, old_log_probs, advantages, config, loss_mask, rollout_logprobs=None):
    """SkyRL style: regular or dual-clip PPO, optional TIS weight min(exp(old − rollout), cap)."""
    ratio = torch.exp(log_probs - old_log_probs)
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - config.eps_clip_low, 1 + config.eps_clip_high) * advantages
    loss = -torch.min(surr1, surr2)
    if config.policy_loss_type == "dual_clip":
        pg_losses3 = -advantages * config.clip_ratio_c
        loss = torch.where(advantages < 0, torch.min(pg_losses3, loss), loss)
    if config.use_tis and rollout_logprobs is not None:
        loss = loss * torch.exp(old_log_probs - rollout_logprobs).clamp(max=config.tis_imp_ratio_cap)
    if config.loss_reduction == "sequence_mean":
        mask = loss_mask.to(loss.dtype)
        return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return _token_mean(loss, loss_mask)


def _slime_policy_loss(ppo_kl, advantages, eps_clip, eps_clip_high, eps_clip_c=None):
    """slime style: per-token losses from ppo_kl = log π_old − log π; dual clip with eps_clip_c."""
    ratio = (-ppo_kl).exp()
    pg_losses1 = -ratio * advantages
    pg_losses2 = -ratio.clamp(1 - eps_clip, 1 + eps_clip_high) * advantages
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    if eps_clip_c is not None:
        pg_losses3 = -eps_clip_c * advantages
        clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
        return torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return clip_pg_losses1


def _sum_of_sample_mean(per_token, mask):
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def test_project_policy_loss_passes_check_loss_for_every_registry_method():
    for method in masks.METHODS:
        bad = check_loss(functools.partial(losses.policy_loss, method), method)
        assert bad.empty, (method, bad.to_string())
        assert bad.attrs["checked"] > 200 and not bad.attrs["skipped"], method


def test_prime_rl_style_ipo_and_token_mask_losses_pass():
    def ipo(logprob, rollout_logprob, advantages, response_mask):
        return _prime_rl_loss(logprob, rollout_logprob, advantages, response_mask, ipo_delta=0.1)

    bad = check_loss(ipo, "ipo", low=0.1, high=0.1)
    assert bad.empty, bad.to_string()
    assert bad.attrs["checked"] > 200
    print(f"prime-rl style IPO, kl_tau 0: {bad.attrs['checked']} tokens, {len(bad)} disagreements")
    # a loss with fixed thresholds must say which ones it implements
    with pytest.raises(ValueError, match=r"low=\.\.\., high="):
        check_loss(ipo, "ipo")

    def token_mask(logprob, rollout_logprob, advantages, response_mask, low, high):
        # prime-rl takes the absolute band [a, b]; the kit passes deviations from 1: a = 1 − low, b = 1 + high
        return _prime_rl_token_mask_loss(
            logprob, rollout_logprob, advantages, response_mask, 1 - low, 1 + high
        )

    assert check_loss(token_mask, "token_mask").empty
    assert check_loss(token_mask, "icepop").empty  # the same rule at IcePop's band [0.5, 5]

    def absolute(logprob, rollout_logprob, advantages, response_mask, low, high):  # bounds not converted
        return _prime_rl_token_mask_loss(logprob, rollout_logprob, advantages, response_mask, low, high)

    assert len(check_loss(absolute, "token_mask")) > 0


def test_prime_rl_style_wrong_variants_fail():
    def ipo_on_ratio(logprob, rollout_logprob, advantages, response_mask):  # |r − 1| instead of |π − μ|
        ratio = torch.exp(logprob - rollout_logprob)
        keep = response_mask & ((ratio - 1).abs() <= 0.1)
        return (-ratio * advantages)[keep].sum()

    bad = check_loss(ipo_on_ratio, "ipo", low=0.1, high=0.1)
    assert len(bad) > 0 and not bad["got"].all()  # it drops tokens that only moved a little mass

    def ipo_with_kl(logprob, rollout_logprob, advantages, response_mask):  # a KL term not multiplied by Â
        return _prime_rl_loss(logprob, rollout_logprob, advantages, response_mask, ipo_delta=0.1, kl_tau=1e-3)

    # the regularizer gives the masked tokens a gradient: read the mask with kl_tau = 0
    bad = check_loss(ipo_with_kl, "ipo", low=0.1, high=0.1)
    print(f"prime-rl style IPO, kl_tau 1e-3: {bad.attrs['checked']} tokens, {len(bad)} disagreements")
    assert len(bad) > 0 and (~bad["expected"] & bad["got"]).all()
    assert (np.abs(bad["pi"] - bad["mu"]) > 0.1).all()
    bad = check_loss(ipo_with_kl, "ipo", low=0.1, high=0.1, include_zero_advantage=True)
    assert (bad["advantage"] == 0).any()  # and Â = 0 tokens get one too, when asked


def test_verl_style_policy_loss_passes_dual_clip_and_differs_from_ppo_only_by_design():
    bad = check_loss(_verl_policy_loss, "dual_clip", adapter="verl")
    assert bad.empty and bad.attrs["checked"] > 300 and not bad.attrs["skipped"], bad.to_string()
    versus_ppo = check_loss(_verl_policy_loss, "ppo", adapter="verl")
    print(
        f"verl style as dual_clip: {bad.attrs['checked']} tokens, {len(bad)} disagreements; as ppo: "
        f"{len(versus_ppo)} disagreements"
    )
    # every difference from plain PPO is the dual clip: Â < 0 tokens with r > 3, anchor μ or π_old
    anchor = np.where(versus_ppo["anchor"] == "recompute", versus_ppo["pi_old"], versus_ppo["mu"])
    assert len(versus_ppo) > 0 and (versus_ppo["advantage"] < 0).all()
    assert (versus_ppo["pi"] / anchor > 3).all() and (versus_ppo["expected"] & ~versus_ppo["got"]).all()


def test_verl_adapter_passes_the_anchor_under_its_own_name_and_rollout_log_probs_when_meaningful():
    seen = []

    def mu_anchored(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        clip_ratio_low,
        clip_ratio_high,
        rollout_log_probs=None,
    ):
        seen.append(rollout_log_probs is not None)
        anchor = old_log_prob if rollout_log_probs is None else rollout_log_probs
        return _verl_policy_loss(
            anchor, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high, clip_ratio_c=1e9
        )[0]

    bad = check_loss(mu_anchored, "ppo", adapter="verl")
    assert bad.empty or (np.abs(np.log(bad["pi"] / bad["mu"])) > 20).all()
    assert any(seen) and not all(seen)  # passed in the μ-anchored cases, not in the recompute ones

    def no_clip(old_log_prob, log_prob, advantages, response_mask):  # keeps every token: rows at drops
        return -(advantages * log_prob).sum()

    rows = check_loss(no_clip, "ppo", adapter="verl", anchor="recompute", low=0.2, high=0.2)
    old = {c.name: c.inputs.get("old_logprob") for c in load_cases()}
    assert len(rows) > 0 and (rows["anchor"] == "recompute").all()
    for _, row in rows.iterrows():  # the anchor's own probability, under its own name
        assert row["pi_old"] == pytest.approx(np.exp(old[row["case"]][row["batch"], row["time"]]), rel=1e-12)


def test_trl_style_losses_pass():
    def grpo(logprob, rollout_logprob, advantages, response_mask, low, high):
        return _trl_grpo_loss(logprob, rollout_logprob, advantages, response_mask, low, high)

    assert check_loss(grpo, "ppo").empty

    def grpo_delta(logprob, rollout_logprob, advantages, response_mask, low, high, clip_ratio_c):
        return _trl_grpo_loss(
            logprob, rollout_logprob, advantages, response_mask, low, high, delta=clip_ratio_c
        )

    bad = check_loss(grpo_delta, "dual_clip")  # TRL's delta is the dual clip's c
    assert bad.empty
    print(f"TRL style with delta: {bad.attrs['checked']} tokens, {len(bad)} disagreements")
    assert check_loss(grpo_delta, "dual_clip", params={"clip_ratio_c": 1.5}).empty  # c from the kit

    def sequence_mask(logprob, rollout_logprob, advantages, response_mask):
        return _trl_sequence_mask_loss(
            logprob, logprob.detach(), rollout_logprob, advantages, response_mask, cap=3.0
        )

    # TRL's sequence mask is one-sided: seq_mis with an empty lower side (R < 1 − 1 never), R ≤ 3 = 1 + 2
    assert check_loss(sequence_mask, "seq_mis", low=1.0, high=2.0).empty
    assert len(check_loss(sequence_mask, "seq_mis", low=0.5, high=1.0)) > 0  # a two-sided band: another rule


def test_trl_style_wrong_variants_fail():
    def no_completion_mask(logprob, rollout_logprob, advantages, response_mask, low, high):
        ones = torch.ones_like(response_mask)
        return _trl_grpo_loss(logprob, rollout_logprob, advantages, ones, low, high)

    assert check_loss(no_completion_mask, "ppo").empty  # padding is excluded by default...
    bad = check_loss(no_completion_mask, "ppo", include_padding=True)  # ...and checked on request
    assert len(bad) > 0 and (~bad["response_mask"]).all() and bad["got"].all()

    def delta_on_both_sides(logprob, rollout_logprob, advantages, response_mask, low, high, clip_ratio_c):
        coef = torch.exp(logprob - rollout_logprob)
        keep = response_mask & (coef <= clip_ratio_c)
        per_token = -torch.min(coef * advantages, torch.clamp(coef, 1 - low, 1 + high) * advantages)
        return (per_token * keep).sum()

    assert check_loss(delta_on_both_sides, "dual_clip").empty  # r > c > 1 + high is clipped anyway for Â > 0
    bad = check_loss(delta_on_both_sides, "dual_clip", params={"clip_ratio_c": 1.1})
    assert len(bad) > 0


def test_skyrl_style_losses_pass_and_a_wrong_sign_fails():
    def skyrl(logprob, rollout_logprob, advantages, response_mask, low, high, clip_ratio_c, old_logprob=None):
        config = _SkyRLConfig(low, high, clip_ratio_c, use_tis=True)
        anchor = rollout_logprob if old_logprob is None else old_logprob
        return _skyrl_policy_loss(logprob, anchor, advantages, config, response_mask, rollout_logprob)

    bad = check_loss(skyrl, "dual_clip")
    assert bad.empty and not bad.attrs["skipped"], bad.to_string()
    print(f"SkyRL style dual clip + TIS: {bad.attrs['checked']} tokens, {len(bad)} disagreements")

    def skyrl_regular(logprob, rollout_logprob, advantages, response_mask, low, high):
        config = _SkyRLConfig(low, high, policy_loss_type="regular", loss_reduction="sequence_mean")
        return _skyrl_policy_loss(logprob, rollout_logprob, advantages, config, response_mask)

    assert check_loss(skyrl_regular, "ppo", anchor="rollout").empty

    def skyrl_product_mask(logprob, rollout_logprob, advantages, response_mask, low, high):
        # its sequence mask compares π_old with μ: with π_old = π (a batch's first step) the kit's π-vs-μ rule
        old = logprob.detach()
        seq = torch.exp(((old - rollout_logprob) * response_mask).sum(-1, keepdim=True))
        in_bounds = ((seq >= 1 - low) & (seq <= 1 + high)).to(logprob.dtype)  # SkyRL's bounds are absolute
        config = _SkyRLConfig(policy_loss_type="regular")
        return _skyrl_policy_loss(logprob, old, advantages * in_bounds, config, response_mask)

    assert check_loss(skyrl_product_mask, "seq_mis").empty

    def clamp_only(
        logprob, rollout_logprob, advantages, response_mask, low, high
    ):  # no min: clips inward too
        ratio = torch.exp(logprob - rollout_logprob)
        return _token_mean(-ratio.clamp(1 - low, 1 + high) * advantages, response_mask)

    bad = check_loss(clamp_only, "ppo")
    assert len(bad) > 0 and (bad["expected"] & ~bad["got"]).all()


def test_slime_style_losses_pass_and_a_misplaced_dual_clip_fails():
    def slime(logprob, rollout_logprob, advantages, response_mask, low, high, clip_ratio_c):
        per_token = _slime_policy_loss(rollout_logprob - logprob, advantages, low, high, clip_ratio_c)
        return _sum_of_sample_mean(per_token, response_mask)

    bad = check_loss(slime, "dual_clip")
    assert bad.empty
    print(
        f"slime style dual clip: {bad.attrs['checked']} tokens, {len(bad)} disagreements, "
        f"{len(bad.attrs['skipped'])} expectations skipped"
    )
    with pytest.raises(TypeError, match="clip_ratio_c"):  # ppo has no c: the kit says what is missing
        check_loss(slime, "ppo")
    bad = check_loss(slime, "ppo", params={"clip_ratio_c": 3.0})
    assert len(bad) > 0 and (bad["advantage"] < 0).all()  # by design: the dual clip drops Â < 0, r > c

    def slime_positive_side(logprob, rollout_logprob, advantages, response_mask, low, high, clip_ratio_c):
        per_token = _slime_policy_loss(rollout_logprob - logprob, -advantages, low, high, clip_ratio_c)
        return -_sum_of_sample_mean(per_token, response_mask)  # dual clip applied where Â > 0

    bad = check_loss(slime_positive_side, "dual_clip")
    assert len(bad) > 0


def test_sequence_rules_in_loss_form_pass():
    def seq_mis(logprob, rollout_logprob, advantages, response_mask, low, high):
        log_r = (logprob - rollout_logprob) * response_mask
        seq = torch.exp(log_r.sum(-1, keepdim=True))
        keep = (seq >= 1 - low) & (seq <= 1 + high)
        return _token_mean(-(torch.exp(logprob - rollout_logprob) * advantages) * keep, response_mask)

    assert check_loss(seq_mis, "seq_mis").empty

    def geo(logprob, rollout_logprob, advantages, response_mask, low, high):
        log_r = (logprob - rollout_logprob) * response_mask
        mean = torch.exp(log_r.sum(-1, keepdim=True) / response_mask.sum(-1, keepdim=True).clamp(min=1))
        keep = (mean >= 1 - low) & (mean <= 1 + high)
        return _token_mean(-(torch.exp(logprob - rollout_logprob) * advantages) * keep, response_mask)

    assert check_loss(geo, "seq_geo_mis").empty
    assert check_loss(geo, "seq_geo_mask").empty  # the former name, an alias
    assert len(check_loss(geo, "seq_mis")) > 0

    def opsm(logprob, rollout_logprob, advantages, response_mask, low, high):
        log_ratio = ((rollout_logprob - logprob) * response_mask).sum(-1, keepdim=True)
        kl = log_ratio / response_mask.sum(-1, keepdim=True).clamp(min=1)
        drop = (advantages < 0) & (kl > low)
        return _token_mean(-(torch.exp(logprob - rollout_logprob) * advantages) * ~drop, response_mask)

    assert check_loss(opsm, "opsm").empty
    assert len(check_loss(opsm, "seq_mis")) > 0


# ------------------------------------------------------------------------------------------------------------
# IS weights, tolerance presets, top-K sentinel column, anchors in check_mask, cases files


def test_is_weights_pass_in_torch_and_wrong_caps_fail():
    def tis(logprob, rollout_logprob, cap):
        return torch.clamp(torch.exp(logprob - rollout_logprob), max=cap)

    def seq_is(logprob, rollout_logprob, response_mask, cap):  # [B]
        return torch.exp(((logprob - rollout_logprob) * response_mask).sum(-1)).clamp(max=cap)

    def seq_geo(logprob, rollout_logprob, response_mask, cap):
        n = response_mask.sum(-1).clamp(min=1)
        return torch.exp(((logprob - rollout_logprob) * response_mask).sum(-1) / n).clamp(max=cap)

    for kind, fn in (("tis", tis), ("seq_is", seq_is), ("seq_geo_is", seq_geo)):
        bad = check_weights(fn, kind, array="torch")
        assert bad.empty and bad.attrs["checked"] > 500, (kind, bad.to_string())
    bad = check_weights(
        lambda logprob, rollout_logprob: np.minimum(np.exp(logprob - rollout_logprob), 2.0), "tis", cap=3.0
    )
    assert len(bad) > 0 and (bad["expected"] > 2.0).all()
    # the sequence weight counts padded tokens: caught
    bad = check_weights(
        lambda logprob, rollout_logprob, cap: seq_is(logprob, rollout_logprob, torch.ones_like(logprob), cap),
        "seq_is",
        array="torch",
    )
    assert len(bad) > 0
    with pytest.raises(ValueError, match="cap"):
        check_weights(lambda logprob, rollout_logprob: logprob, "tis")


def _float32_topk_kl(rollout_topk_logprobs, topk_ids, logits):
    """A correct Top-K KL computed in float32 with the sentinel column (ids −1 → an extra vocabulary column)."""
    lp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float32), -1)
    ids = torch.as_tensor(topk_ids)
    lmu = torch.as_tensor(rollout_topk_logprobs, dtype=torch.float32)
    lpi = lp.gather(-1, ids)
    mu, pi = lmu.exp(), lpi.exp()
    mu_rest = (1 - mu.sum(-1)).clamp(min=1e-30)
    pi_rest = (1 - pi.sum(-1)).clamp(min=1e-30)
    inside = torch.where(mu > 0, mu * (lmu - lpi), torch.zeros_like(mu)).sum(-1)
    return inside + mu_rest * (mu_rest.log() - pi_rest.log())


def test_tolerance_presets_float32():
    def binary_kl_eps(rollout_logprob, logprob):  # the common `+ 1e-8` guard, in float32
        mu = torch.as_tensor(rollout_logprob, dtype=torch.float32).exp()
        pi = torch.as_tensor(logprob, dtype=torch.float32).exp()
        return mu * torch.log(mu / pi + 1e-8) + (1 - mu) * torch.log((1 - mu) / (1 - pi + 1e-8) + 1e-8)

    strict = check_divergence(binary_kl_eps, "binary_kl")
    assert len(strict) > 0
    print("binary KL +1e-8 in float32: max abs error", strict["abs_error"].max())
    # μ(a) → 1 and an empty rest bucket are out of float32 reach (1 − μ rounds to 0): they fail every preset
    loose = check_divergence(binary_kl_eps, "binary_kl", tolerance="float32")
    assert len(loose) < len(strict) and (loose["mu"] > 1 - 1e-6).all()
    cases = [c for c in load_cases() if c.name not in ("mu_to_one", "empty_rest")]  # 1 − Σ → 0
    strict = check_divergence(_float32_topk_kl, "topk_kl", topk_unused="sentinel", cases=cases)
    print("top-K KL in float32: max abs error", strict["abs_error"].max(), "rows", len(strict))
    assert len(strict) > 0
    assert check_divergence(
        _float32_topk_kl, "topk_kl", topk_unused="sentinel", cases=cases, tolerance="float32"
    ).empty
    with pytest.raises(ValueError, match="tolerance"):
        check_divergence(_float32_topk_kl, "topk_kl", tolerance="bfloat16")


def test_sentinel_column_recipe_for_unused_topk_slots():
    def indexing_topk_tv(rollout_topk_logprobs, topk_ids, logits):  # indexes the vocabulary with every id
        lp = torch.log_softmax(torch.as_tensor(logits), -1)
        ids = torch.as_tensor(topk_ids)
        mu, pi = torch.as_tensor(rollout_topk_logprobs).exp(), lp.gather(-1, ids).exp()
        return 0.5 * ((mu - pi).abs().sum(-1) + ((1 - mu.sum(-1)) - (1 - pi.sum(-1))).abs())

    with pytest.raises(RuntimeError):  # id −1 cannot index a vocabulary
        check_divergence(indexing_topk_tv, "topk_tv")
    bad = check_divergence(indexing_topk_tv, "topk_tv", topk_unused="sentinel")
    assert bad.empty, bad.to_string()
    # the sentinel slots carry zero mass: a project function agrees with the rewritten inputs too
    assert check_divergence(divergence.topk_kl, "topk_kl", topk_unused="sentinel").empty
    assert check_mask(
        functools.partial(masks.trust_region_mask, "dppo_topk_tv"), "dppo_topk_tv", topk_unused="sentinel"
    ).empty


def test_plain_adapter_gives_a_function_that_requires_old_logprob_the_rollout_anchor():
    seen = []

    def recompute_only(logprob, old_logprob, advantages, low, high, response_mask):
        seen.append(old_logprob.copy())
        return masks.trust_region_mask(
            "ppo",
            logprob=logprob,
            rollout_logprob=old_logprob,
            advantages=advantages,
            low=low,
            high=high,
            response_mask=response_mask,
        )

    bad = check_mask(recompute_only, "ppo")
    assert bad.empty and not bad.attrs["skipped"]
    rollout_values = {c.inputs["rollout_logprob"].tobytes() for c in load_cases()}
    assert any(s.tobytes() in rollout_values for s in seen)  # μ given as π_old in the μ-anchored cases


def test_cases_v1_stay_readable_and_the_v2_file_is_shipped():
    v1 = load_cases(V1_FILE)
    assert len(v1) == 10 and all(m["params"] == {} for c in v1 for m in c.masks)
    bad = check_mask(functools.partial(masks.trust_region_mask, "ppo"), "ppo", cases=v1)
    assert bad.empty and bad.attrs["checked"] > 100
    assert DATA_FILE.name == "cases_v2.json"
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"cases_v1.json", "cases_v2.json"' in text


def test_generate_is_deterministic_and_its_cli_reports_bad_paths(tmp_path, capsys):
    out = tmp_path / "cases.json"
    assert generate.main(["--out", str(out)]) == 0
    assert generate.main(["--out", str(out), "--check"]) == 0
    assert out.read_text() == DATA_FILE.read_text()
    capsys.readouterr()
    assert generate.main(["--out", str(tmp_path)]) == 2  # a folder
    assert generate.main(["--out", str(out / "x.json")]) == 2  # below a file
    assert generate.main(["--out", str(tmp_path / "missing.json"), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: --out") for line in err)


def test_generate_on_a_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    import errno
    import os

    out = tmp_path / "cases.json"
    out.write_text("old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert generate.main(["--out", str(out)]) == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["cases.json"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]


# ------------------------------------------------------------------------------------------------------------
# bad input: one clear error naming the argument


def _keep_all(logprob, rollout_logprob, advantages, low, high, response_mask):
    return np.ones(logprob.shape, bool)


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        (lambda shape: np.full(shape, np.nan), ValueError, "nan"),
        (lambda shape: np.full(shape, 0.3), ValueError, "0.3"),
        (lambda shape: np.full(shape, "x"), TypeError, "booleans"),
        (lambda shape: np.full(shape, 1 + 0j), TypeError, "booleans"),
    ],
)
def test_check_mask_accepts_only_boolean_masks(result, error, match):
    with pytest.raises(error, match=match):
        check_mask(lambda logprob, rollout_logprob: result(logprob.shape), "none")


def test_check_mask_accepts_zero_one_numbers_and_bfloat16():
    assert check_mask(lambda logprob: np.ones(logprob.shape), "none").empty
    assert check_mask(lambda logprob: torch.ones(logprob.shape, dtype=torch.bfloat16), "none").empty


def test_check_divergence_accepts_bfloat16_and_refuses_complex_and_text():
    def bf16(rollout_logprob, logprob):
        return divergence.binary_tv(rollout_logprob, logprob).to(torch.bfloat16)

    bad = check_divergence(bf16, "binary_tv", array="torch", tolerance="float32", rtol=1e-2)
    assert bad.attrs["checked"] > 100 and len(bad) < bad.attrs["checked"]
    with pytest.raises(TypeError, match="complex"):
        check_divergence(lambda rollout_logprob, logprob: logprob + 0j, "binary_tv")
    with pytest.raises(TypeError, match="complex"):
        check_divergence(lambda rollout_logprob, logprob: torch.as_tensor(logprob) + 0j, "binary_tv")
    with pytest.raises(TypeError, match="real numbers"):
        check_divergence(lambda rollout_logprob, logprob: np.full(logprob.shape, "x"), "binary_tv")
    nan = check_divergence(lambda rollout_logprob, logprob: np.full(logprob.shape, np.nan), "binary_tv")
    assert len(nan) == nan.attrs["checked"]  # a NaN result disagrees everywhere


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rtol": -1e-6}, ValueError, "rtol"),
        ({"atol": -1.0}, ValueError, "atol"),
        ({"rtol": "a"}, TypeError, "rtol"),
        ({"atol": True}, TypeError, "atol"),
        ({"rtol": float("nan")}, ValueError, "rtol"),
        ({"cases": []}, ValueError, "cases is empty"),
        ({"cases": ["x"]}, TypeError, "cases"),
        ({"tolerance": "fp8"}, ValueError, "tolerance"),
        ({"topk_unused": "zero"}, ValueError, "topk_unused"),
    ],
)
def test_check_divergence_names_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_divergence(divergence.binary_tv, "binary_tv", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cases": []}, ValueError, "cases is empty"),
        ({"low": -0.1}, ValueError, "low"),
        ({"high": "a"}, TypeError, "high"),
        ({"params": {"clip_ratio_c": "a"}}, TypeError, "clip_ratio_c"),
        ({"anchor": "old"}, ValueError, "anchor"),
        ({"include_padding": 1}, TypeError, "include_padding"),
        ({"adapter": "trl"}, ValueError, "adapter"),
        ({"array": "numpy"}, ValueError, "array"),
    ],
)
def test_check_loss_names_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_loss(functools.partial(losses.policy_loss, "ppo"), "ppo", **kwargs)


def test_check_loss_refuses_results_that_are_not_a_differentiable_scalar():
    with pytest.raises(TypeError, match="scalar"):
        check_loss(lambda logprob, low, high: logprob, "ppo")
    with pytest.raises(TypeError, match="scalar"):
        check_loss(lambda logprob, low, high: 1.0, "ppo")
    with pytest.raises(ValueError, match="no gradient"):
        check_loss(lambda logprob, low, high: logprob.detach().sum(), "ppo")
    with pytest.raises(ValueError, match="method"):
        check_loss(lambda logprob, low, high: logprob.sum(), "no_such_method")
    with pytest.raises(TypeError, match="fn must be a callable"):
        check_loss("loss", "ppo")


# ------------------------------------------------------------------------------------------------------------
# the kit reads the mask registry: a new method is its registry line plus regenerated cases


def test_a_new_registry_method_gets_reference_decisions_from_its_fields(tmp_path, monkeypatch):
    import dataclasses
    import types

    added = {
        "ppo_relaxed_half": masks.MaskMethod("ratio", min_anchor_prob=0.5),
        "dppo_binary_tv_relaxed": dataclasses.replace(masks.METHODS["dppo_binary_tv"], min_anchor_prob=0.3),
    }
    monkeypatch.setattr(masks, "METHODS", {**masks.METHODS, **added})
    out = tmp_path / "cases.json"
    assert generate.main(["--out", str(out)]) == 0
    cases = load_cases(out)
    for name, base in (("ppo_relaxed_half", "ppo"), ("dppo_binary_tv_relaxed", "dppo_binary_tv")):
        assert name in methods()
        bad = check_mask(functools.partial(masks.trust_region_mask, name), name, cases=cases)
        assert bad.empty and bad.attrs["checked"] > 100, bad.to_string()
        assert len(check_mask(functools.partial(masks.trust_region_mask, base), name, cases=cases)) > 0
        assert check_loss(functools.partial(losses.policy_loss, name), name, cases=cases).empty
    unknown = types.SimpleNamespace(rule="sequence", divergence="", needs=(), min_anchor_prob=0.0)
    monkeypatch.setattr(masks, "METHODS", {**masks.METHODS, "my_sequence_rule": unknown})
    with pytest.raises(ValueError, match=r"my_sequence_rule.*conformance/reference\.py"):
        methods()


def test_framework_rules_as_mask_functions():
    def icepop(logprob, rollout_logprob, low, high):  # numpy, True = keep
        ratio = np.exp(logprob - rollout_logprob)
        return (ratio >= 1 - low) & (ratio <= 1 + high)

    assert len(check_mask(icepop, "icepop")) > 0  # Â = 0 and padded tokens must be kept
    assert check_mask(
        lambda logprob, rollout_logprob, advantages, response_mask, low, high: (
            icepop(logprob, rollout_logprob, low, high) | (advantages == 0) | ~response_mask
        ),
        "icepop",
    ).empty

    def geo_drop(logprob, rollout_logprob, advantages, response_mask, low, high):  # a drop mask, torch
        n = response_mask.sum(-1, keepdim=True).clamp(min=1)
        mean = torch.exp(((logprob - rollout_logprob) * response_mask).sum(-1, keepdim=True) / n)
        return ((mean < 1 - low) | (mean > 1 + high)) & response_mask & (advantages != 0)

    assert check_mask(geo_drop, "seq_geo_mis", output="drop", array="torch").empty
    assert check_mask(geo_drop, "seq_geo_mask", output="drop", array="torch").empty
    bad = check_mask(geo_drop, "seq_mis", output="drop", array="torch")
    assert len(bad) > 0 and (bad["check"] == "seq_mis").all()


@pytest.mark.parametrize("method", sorted(set(masks.CORRECTION_METHODS) & set(methods())))
def test_every_correction_rule_passes_its_conformance_rule(method):
    def fn(logprob, rollout_logprob, advantages, response_mask, low, high, old_logprob):
        return masks.correction_mask(
            method,
            logprob=logprob,
            rollout_logprob=rollout_logprob,
            advantages=advantages,
            response_mask=response_mask,
            low=low,
            high=high,
            old_logprob=old_logprob,
        )

    bad = check_mask(fn, method)
    assert bad.empty and bad.attrs["checked"] > 100, bad.to_string()
    print(f"{method}: {bad.attrs['checked']} decisions, {len(bad)} disagreements")
    loss = functools.partial(losses.policy_loss, method, agg="seq-mean-token-mean")  # the mask read from ∇
    bad = check_loss(loss, method)
    assert bad.empty and bad.attrs["checked"] > 100, bad.to_string()


def test_every_correction_rule_has_a_conformance_rule():
    assert set(masks.CORRECTION_METHODS) <= set(methods())
    assert "seq_geo_mask" not in methods()


@pytest.mark.parametrize("method,high", [("icepop", 5.0), ("seq_mis", 2.0)])
def test_the_cases_tell_the_band_bounds_apart(method, high):
    """The shipped bounds are IcePop r ≤ 5 (high 4) and sequence MIS R ≤ 2 (high 1); a rule one above (r ≤ 6,
    R ≤ 3) disagrees on the shipped cases, and passes when the check is told its bound."""

    def fn(logprob, rollout_logprob, advantages, response_mask):
        return masks.correction_mask(
            method,
            logprob=logprob,
            rollout_logprob=rollout_logprob,
            advantages=advantages,
            response_mask=response_mask,
            low=0.5,
            high=high,
        )

    bad = check_mask(fn, method, anchor="rollout", low=0.5, high=high - 1.0)
    assert len(bad) > 0 and set(bad["case"]) == {"band_edges"}, bad.to_string()
    assert check_mask(fn, method, anchor="rollout", low=0.5, high=high).empty
