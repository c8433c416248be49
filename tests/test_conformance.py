"""The conformance kit: the shipped cases equal a regeneration, the project's own masks and divergences pass,
and typical small implementation differences are caught."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from trustregion_lab import divergence, masks
from trustregion_lab.conformance import (
    DATA_FILE,
    DIVERGENCES,
    check_divergence,
    check_mask,
    generate,
    load_cases,
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
    methods = {m["method"] for c in cases.values() for m in c.masks}
    assert methods == set(masks.METHODS), "every mask method of the registry needs reference decisions"
    assert {m["anchor"] for c in cases.values() for m in c.masks} == {"rollout", "recompute"}


def test_every_decision_is_away_from_its_threshold():
    """The generator's tie check, recomputed: no critical value within the margin of its threshold."""
    for case in load_cases():
        x = case.inputs
        for m in case.masks:
            if m["anchor"] != "rollout" or m["method"] in ("none", "ppo", "ppo_relaxed"):
                continue
            d = {"dppo_binary_tv": "binary_tv", "dppo_binary_kl": "binary_kl", "dppo_topk_tv": "topk_tv"}
            d |= {"dppo_topk_kl": "topk_kl", "dppo_exact_tv": "tv", "dppo_exact_kl": "kl"}
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
