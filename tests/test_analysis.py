"""trustregion_lab.analysis against direct float64 numpy computations written here from the definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustregion_lab import masks
from trustregion_lab.analysis import (
    BatchMaskSpec,
    batch_critical_thresholds,
    calibration_table,
    enumerate_tokens,
    estimator_report,
    make_token_batch,
    mask_confusion,
    mask_rate,
    matched_threshold,
    mu_buckets,
    reported_topk_sets,
    sample_from_logits,
    sampled_tokens,
    simulated_update,
)
from trustregion_lab.analysis.presets import ANALYSIS_DEFAULTS, matched_ppo_reference, run_analysis
from trustregion_lab.mismatch import EngineConfig, RolloutEngine


# ------------------------------------------------------------------------------------------- references
def _logp(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _random_pair(rng: np.random.Generator, s: int, v: int, scale: float = 1.0):
    mu_logits = rng.normal(size=(s, v)) * 2.0
    pi_logits = mu_logits + scale * rng.normal(size=(s, v))
    return mu_logits, pi_logits


def _reference_estimates(mu_logits, pi_logits, state, token):
    """Per-token estimates written from docs/design.md §2 / §1 in plain numpy float64."""
    lmu, lpi = _logp(mu_logits), _logp(pi_logits)
    mu, pi = np.exp(lmu), np.exp(lpi)
    m_a, p_a = mu[state, token], pi[state, token]
    r = p_a / m_a
    return {
        "ratio_tv": np.abs(r - 1) / 2,
        "binary_tv": np.abs(p_a - m_a),
        "k1": np.log(m_a) - np.log(p_a),
        "k2": 0.5 * np.log(r) ** 2,
        "k3": r - 1 - np.log(r),
        "binary_kl": m_a * np.log(m_a / p_a) + (1 - m_a) * np.log((1 - m_a) / (1 - p_a)),
    }


def _reference_tv_kl(mu_logits, pi_logits):
    lmu, lpi = _logp(mu_logits), _logp(pi_logits)
    mu, pi = np.exp(lmu), np.exp(lpi)
    return 0.5 * np.abs(mu - pi).sum(-1), (mu * (lmu - lpi)).sum(-1)


def _reference_topk_tv(mu_logits, pi_logits, state, ids):
    mu, pi = np.exp(_logp(mu_logits)), np.exp(_logp(pi_logits))
    out = np.empty(len(state))
    for i, (s, row) in enumerate(zip(state, ids)):
        chosen = [v for v in row if v >= 0]
        rest = np.setdiff1d(np.arange(mu.shape[1]), chosen)
        out[i] = 0.5 * (
            np.abs(mu[s, chosen] - pi[s, chosen]).sum() + abs(mu[s, rest].sum() - pi[s, rest].sum())
        )
    return out


def _row(table: pd.DataFrame, **where) -> pd.Series:
    sel = np.ones(len(table), bool)
    for key, value in where.items():
        sel &= (table[key] == value).to_numpy()
    assert sel.sum() == 1, where
    return table[sel].iloc[0]


# -------------------------------------------------------------------------------------- estimator report
def test_enumerated_expectations_are_exact_on_v5():
    """V = 5: every token enumerated with weight μ(a); |r − 1|/2, k1, k3 are unbiased, exactly."""
    rng = np.random.default_rng(11)
    s, v = 4, 5
    mu_logits, pi_logits = _random_pair(rng, s, v)
    batch = enumerate_tokens(mu_logits, pi_logits, rng.normal(size=(s, v)), topk_sizes=(2,))
    report = estimator_report(batch)
    tv_ref, kl_ref = _reference_tv_kl(mu_logits, pi_logits)
    for name in ("ratio_tv", "k1", "k3"):
        row = _row(report, estimator=name, stratum="all")
        assert abs(row["bias"]) < 1e-12, name
        exact_ref = tv_ref.mean() if name == "ratio_tv" else kl_ref.mean()
        assert row["exact_mean"] == pytest.approx(exact_ref, rel=1e-12, abs=1e-15)

    # bias, variance and MSE of every estimator against a direct enumeration
    state = np.repeat(np.arange(s), v)
    token = np.tile(np.arange(v), s)
    mu = np.exp(_logp(mu_logits)).reshape(-1)
    refs = _reference_estimates(mu_logits, pi_logits, state, token)
    for name, values in refs.items():
        target = tv_ref if "tv" in name else kl_ref
        err = values - target[state]
        bias = (mu * err).sum() / s
        variance = (mu * (err - bias) ** 2).sum() / s
        row = _row(report, estimator=name, stratum="all")
        assert row["bias"] == pytest.approx(bias, rel=1e-9, abs=1e-13), name
        assert row["variance"] == pytest.approx(variance, rel=1e-9, abs=1e-13), name
        assert row["mse"] == pytest.approx(bias**2 + variance, rel=1e-9, abs=1e-13), name
    # E_{a~μ} (r − 1)² = χ²(π‖μ): the variance of |r − 1| comes from it
    chi2 = (np.exp(_logp(pi_logits)) ** 2 / np.exp(_logp(mu_logits))).sum(-1) - 1
    second_moment = (mu * (2 * refs["ratio_tv"]) ** 2).sum() / s
    assert second_moment == pytest.approx(chi2.mean(), rel=1e-9)


def test_binary_and_topk_are_lower_bounds_and_topk_matches_reference():
    rng = np.random.default_rng(12)
    s, v = 3, 6
    mu_logits, pi_logits = _random_pair(rng, s, v)
    batch = enumerate_tokens(mu_logits, pi_logits, rng.normal(size=(s, v)), topk_sizes=(1, 3))
    report = estimator_report(batch)
    for name in ("binary_tv", "binary_kl", "topk_tv", "topk_kl"):
        assert (report.loc[(report.estimator == name) & (report.stratum == "all"), "bias"] <= 1e-12).all(), (
            name
        )
    state, token = batch.state, batch.token
    mu = np.exp(_logp(mu_logits))
    tv_ref, _ = _reference_tv_kl(mu_logits, pi_logits)
    for rule in ("topk", "topk_plus_sampled", "topk_replace_last"):
        ids, _ = batch.topk_sets[(rule, 3)]
        values = _reference_topk_tv(mu_logits, pi_logits, state, ids)
        err = values - tv_ref[state]
        bias = (mu[state, token] * err).sum() / s
        row = _row(report, estimator="topk_tv", set_rule=rule, k=3, stratum="all")
        assert row["bias"] == pytest.approx(bias, rel=1e-9, abs=1e-13)


def test_report_by_mu_bucket_matches_weighted_groupby_on_sampled_tokens():
    rng = np.random.default_rng(13)
    s, v, n = 20, 40, 16
    mu_logits, pi_logits = _random_pair(rng, s, v, scale=0.5)
    mu_logits[:, 0] += 6.0  # a confident head, so tokens spread over several decades of μ(a)
    tokens = sample_from_logits(rng, mu_logits, n)
    batch = sampled_tokens(mu_logits, pi_logits, tokens, rng.normal(size=(s, n)))
    report = estimator_report(batch)
    state = np.repeat(np.arange(s), n)
    token = tokens.reshape(-1)
    values = _reference_estimates(mu_logits, pi_logits, state, token)["binary_tv"]
    tv_ref, _ = _reference_tv_kl(mu_logits, pi_logits)
    err = values - tv_ref[state]
    mu_a = np.exp(_logp(mu_logits))[state, token]
    edges = np.array([0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99, 1.0])
    bucket = np.clip(np.searchsorted(edges, mu_a, side="right") - 1, 0, len(edges) - 2)
    labels = mu_buckets().labels
    rows = report[(report.estimator == "binary_tv") & (report.stratum == "mu")]
    assert set(rows["bucket"]) == {labels[b] for b in np.unique(bucket)}
    for b in np.unique(bucket):
        e = err[bucket == b]
        row = _row(rows, bucket=labels[b])
        assert row["n_tokens"] == len(e)
        assert row["bias"] == pytest.approx(e.mean(), rel=1e-9, abs=1e-14)
        assert row["variance"] == pytest.approx(e.var(), rel=1e-8, abs=1e-14)
        assert row["bias_se"] == pytest.approx(np.sqrt(e.var() / len(e)), rel=1e-8, abs=1e-14)


# ------------------------------------------------------------------------------------------ mask confusion
def _reference_drop(method, lmu, lpi, adv, low, high, d=None):
    r = np.exp(lpi - lmu)
    if method == "ppo":
        return ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - low))
    return ((adv > 0) & (d > high) & (lpi > lmu)) | ((adv < 0) & (d > low) & (lpi < lmu))


def test_mask_confusion_matches_direct_rule_and_gradient_mass():
    rng = np.random.default_rng(14)
    s, v, n = 30, 25, 12
    mu_logits, pi_logits = _random_pair(rng, s, v, scale=0.6)
    tokens = sample_from_logits(rng, mu_logits, n)
    adv = rng.normal(size=(s, n))
    adv[0, :3] = 0.0  # Â = 0 tokens are left out of every denominator
    batch = sampled_tokens(mu_logits, pi_logits, tokens, adv)
    specs = [
        BatchMaskSpec("ppo", 0.2, 0.28),
        BatchMaskSpec("dppo_binary_tv", 0.1, 0.1),
        BatchMaskSpec("dppo_binary_kl", 0.02, 0.02),
    ]
    table = mask_confusion(batch, specs, ppo_reference=(0.12, 0.12), ratio_cap=10.0)

    state = np.repeat(np.arange(s), n)
    token = tokens.reshape(-1)
    a = adv.reshape(-1)
    lmu_full, lpi_full = _logp(mu_logits), _logp(pi_logits)
    lmu, lpi = lmu_full[state, token], lpi_full[state, token]
    tv_ref, kl_ref = _reference_tv_kl(mu_logits, pi_logits)
    est = _reference_estimates(mu_logits, pi_logits, state, token)
    pi = np.exp(lpi_full)
    grad = np.empty(len(state))
    for i, (st, tk) in enumerate(zip(state, token)):
        e = np.zeros(v)
        e[tk] = 1.0
        grad[i] = abs(a[i]) * min(np.exp(lpi[i] - lmu[i]), 10.0) * np.linalg.norm(e - pi[st])
    valid = a != 0
    for spec, d, ref_d, ref_th in (
        (specs[0], None, tv_ref[state], (0.12, 0.12)),
        (specs[1], est["binary_tv"], tv_ref[state], (0.1, 0.1)),
        (specs[2], est["binary_kl"], kl_ref[state], (0.02, 0.02)),
    ):
        drop = _reference_drop(spec.method, lmu, lpi, a, spec.low, spec.high, d)
        ref_drop = _reference_drop("dppo", lmu, lpi, a, *ref_th, ref_d)
        for sign, members in (("all", valid), ("pos", a > 0), ("neg", a < 0)):
            row = _row(table, mask=spec.label, stratum="all", adv_sign=sign)
            assert row["n_tokens"] == members.sum()
            assert row["mask_rate"] == pytest.approx(drop[members].mean(), abs=1e-12)
            assert row["false_mask_rate"] == pytest.approx((drop & ~ref_drop)[members].mean(), abs=1e-12)
            assert row["missed_mask_rate"] == pytest.approx((~drop & ref_drop)[members].mean(), abs=1e-12)
            total = grad[valid].sum()
            assert row["grad_share_false"] == pytest.approx(
                grad[members & drop & ~ref_drop].sum() / total, abs=1e-12
            )
            assert row["grad_share_missed"] == pytest.approx(
                grad[members & ~drop & ref_drop].sum() / total, abs=1e-12
            )


def test_exact_and_topk_masks_agree_with_trust_region_mask_token_by_token():
    """The analysis evaluates DPPO masks once per distinct key; the result must equal a per-token call."""
    from trustregion_lab.analysis import token_mask

    rng = np.random.default_rng(15)
    s, v, n = 12, 30, 10
    mu_logits, pi_logits = _random_pair(rng, s, v, scale=0.8)
    tokens = sample_from_logits(rng, mu_logits, n)
    batch = sampled_tokens(mu_logits, pi_logits, tokens, rng.normal(size=(s, n)), topk_sizes=(4,))
    state = batch.state
    for spec in (
        BatchMaskSpec("dppo_exact_tv", 0.1, 0.15),
        BatchMaskSpec("dppo_exact_kl", 0.05, 0.05),
        BatchMaskSpec("dppo_topk_tv", 0.1, 0.1, "topk_plus_sampled", 4),
    ):
        extra = {"logits": pi_logits[state]}
        if spec.method.startswith("dppo_topk"):
            ids, lps = batch.topk_sets[(spec.set_rule, spec.k)]
            extra.update(topk_ids=ids, rollout_topk_logprobs=lps)
        else:
            extra["rollout_logits"] = mu_logits[state]
        direct = masks.trust_region_mask(
            spec.method,
            logprob=batch.logprob,
            rollout_logprob=batch.rollout_logprob,
            advantages=batch.advantages,
            low=spec.low,
            high=spec.high,
            **extra,
        )
        np.testing.assert_array_equal(token_mask(batch, spec), np.asarray(direct))


# --------------------------------------------------------------------------------------------- calibration
def test_critical_thresholds_reproduce_trust_region_mask():
    rng = np.random.default_rng(16)
    s, v, n = 15, 20, 8
    mu_logits, pi_logits = _random_pair(rng, s, v, scale=0.7)
    tokens = sample_from_logits(rng, mu_logits, n)
    batch = sampled_tokens(mu_logits, pi_logits, tokens, rng.normal(size=(s, n)), topk_sizes=(3,))
    for spec in (
        BatchMaskSpec("ppo", 0, 0),
        BatchMaskSpec("dppo_binary_tv", 0, 0),
        BatchMaskSpec("dppo_binary_kl", 0, 0),
        BatchMaskSpec("dppo_exact_tv", 0, 0),
        BatchMaskSpec("dppo_topk_kl", 0, 0, "topk", 3),
    ):
        c = batch_critical_thresholds(batch, spec)
        for t in rng.uniform(0.0, 0.5, size=3):
            kept = np.asarray(
                masks.trust_region_mask(
                    spec.method,
                    logprob=batch.logprob,
                    rollout_logprob=batch.rollout_logprob,
                    advantages=batch.advantages,
                    low=t,
                    high=t,
                    logits=pi_logits[batch.state],
                    rollout_logits=mu_logits[batch.state],
                    **(
                        {
                            "topk_ids": batch.topk_sets[("topk", 3)][0],
                            "rollout_topk_logprobs": batch.topk_sets[("topk", 3)][1],
                        }
                        if spec.method.startswith("dppo_topk")
                        else {}
                    ),
                )
            )
            np.testing.assert_array_equal(c > t, ~kept, err_msg=f"{spec.method} at {t}")


def test_mask_rate_and_matched_threshold_against_brute_force():
    rng = np.random.default_rng(17)
    critical = np.where(rng.random(300) < 0.3, -np.inf, rng.exponential(0.1, 300))
    weight = rng.random(300)
    thresholds = np.linspace(0, 0.5, 11)
    brute = [(weight * (critical > t)).sum() / weight.sum() for t in thresholds]
    np.testing.assert_allclose(mask_rate(critical, weight, thresholds), brute, rtol=1e-12)
    for target in (0.05, 0.2, 0.5):
        delta, reachable = matched_threshold(critical, weight, target)
        rate_at = (weight * (critical > delta)).sum() / weight.sum()
        assert rate_at <= target + 1e-12
        below = np.nextafter(delta, -np.inf)
        if delta > 0:
            assert (weight * (critical > below)).sum() / weight.sum() > target
        assert reachable == ((weight * (critical > 0)).sum() / weight.sum() >= target)


def test_calibration_table_matched_delta_equalises_mask_rates():
    batch = make_token_batch(3, num_states=24, vocab_size=256, samples_per_state=16, topk_sizes=(4,))
    table = calibration_table(batch, epsilons=(0.1, 0.2))
    match = table[(table.record == "match") & (table.stratum == "all")]
    valid = batch.advantages != 0
    w = np.where(valid, batch.weight, 0.0)
    ppo_c = batch_critical_thresholds(batch, BatchMaskSpec("ppo", 0, 0))
    for row in match.itertuples():
        target = (w * (ppo_c > row.epsilon)).sum() / w.sum()
        assert row.ppo_mask_rate == pytest.approx(target, abs=1e-12)
        c = batch_critical_thresholds(batch, BatchMaskSpec(row.method, 0, 0))
        assert (w * (c > row.matched_delta)).sum() / w.sum() <= target + 1e-12


# ------------------------------------------------------------------------------------------ token batches
def test_reported_sets_match_the_rollout_engine():
    rng = np.random.default_rng(18)
    logits = rng.normal(size=(64, 50)).astype(np.float32) * 3
    for rule in ("topk", "topk_plus_sampled", "topk_replace_last"):
        engine = RolloutEngine(EngineConfig(precision="fp32", topk=5, topk_rule=rule), seed=4)
        out = engine.sample(logits)
        log_mu = np.asarray(out.engine_logits, np.float64)
        ids, lps = reported_topk_sets(log_mu, np.arange(64), np.asarray(out.tokens), 5, rule)
        np.testing.assert_array_equal(ids, np.asarray(out.topk_ids))
        valid = ids >= 0
        np.testing.assert_allclose(lps[valid], np.asarray(out.topk_logprobs, np.float64)[valid], atol=1e-6)


def test_simulated_update_matches_a_direct_loop():
    rng = np.random.default_rng(19)
    z = rng.normal(size=(3, 7))
    tokens = rng.integers(0, 7, size=(3, 4))
    adv = rng.normal(size=(3, 4))
    eta = np.array([0.5, 1.0, 2.0])
    expected = z.copy()
    for s in range(3):
        p = np.exp(_logp(z[s]))
        g = np.zeros(7)
        for a, w in zip(tokens[s], adv[s]):
            e = np.zeros(7)
            e[a] = 1
            g += w * (e - p)
        expected[s] += eta[s] * g / 4
    np.testing.assert_allclose(simulated_update(z, tokens, adv, eta), expected, rtol=1e-12, atol=1e-12)


def test_sample_from_logits_has_the_right_frequencies():
    rng = np.random.default_rng(20)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05, 0.0 + 1e-300]]))
    tokens = sample_from_logits(rng, logits, 40_000)[0]
    freq = np.bincount(tokens, minlength=5) / tokens.size
    p = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / tokens.size) + 1e-12)


def test_make_token_batch_is_reproducible_and_seed_dependent():
    kwargs = {"num_states": 8, "vocab_size": 128, "samples_per_state": 4, "topk_sizes": (3,)}
    a, b, c = make_token_batch(5, **kwargs), make_token_batch(5, **kwargs), make_token_batch(6, **kwargs)
    for name in ("logits", "rollout_logits", "token", "advantages", "rollout_logprob"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.token, c.token)


def test_run_analysis_tables_are_tidy_and_reproducible():
    config = dict(ANALYSIS_DEFAULTS, num_states=8, vocab_size=128, samples_per_state=8, topk_sizes="3")
    config["scaling_vocab_sizes"] = "64+128"
    for analysis in ("estimators", "masks", "calibration", "vocab-scaling"):
        one = run_analysis(dict(config, analysis=analysis), 0)
        two = run_analysis(dict(config, analysis=analysis), 0)
        pd.testing.assert_frame_equal(one, two)
        assert (one["analysis"] == analysis).all()
    scaling = run_analysis(dict(config, analysis="vocab-scaling"), 0)
    assert sorted(scaling["vocab_size"].unique()) == [64, 128]


def test_bad_inputs_raise_with_clear_messages():
    with pytest.raises(ValueError, match="method"):
        BatchMaskSpec("clip_everything", 0.2, 0.2)
    with pytest.raises(ValueError, match="set_rule"):
        BatchMaskSpec("dppo_topk_tv", 0.2, 0.2)
    with pytest.raises(ValueError, match="mu"):
        mu_buckets().assign(np.array([1.5]))
    with pytest.raises(ValueError, match="advantages"):
        enumerate_tokens(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="analysis"):
        run_analysis(dict(ANALYSIS_DEFAULTS, analysis="nope"), 0)
    with pytest.raises(ValueError, match="topk_sizes"):
        run_analysis(dict(ANALYSIS_DEFAULTS, topk_sizes="five"), 0)


def _reference_matched_ppo(batch, ppo_low: float, ppo_high: float) -> tuple[float, float]:
    """Per side, the smallest δ ≥ 0 at which the exact-TV rule drops no more (weighted) tokens than PPO at ε.

    Written from the definitions in float64: PPO drops Â > 0 tokens with r − 1 > ε_high and Â < 0 tokens with
    1 − r > ε_low (r = π(a)/μ(a)); exact TV drops Â > 0 tokens with TV(μ, π) > δ and π(a) > μ(a), Â < 0 tokens
    with TV > δ and π(a) < μ(a). Rates are compared with a 1e-12 slack; δ is searched over 0 and every TV.
    """
    lmu, lpi = _logp(batch.rollout_logits), _logp(batch.logits)
    tv = (0.5 * np.abs(np.exp(lmu) - np.exp(lpi)).sum(-1))[batch.state]
    pi_a, mu_a = np.exp(batch.logprob), np.exp(batch.rollout_logprob)
    r = pi_a / mu_a
    out = []
    for sign, eps in ((-1.0, ppo_low), (1.0, ppo_high)):
        side = np.sign(batch.advantages) == sign
        w = batch.weight[side]
        if w.sum() == 0:
            out.append(0.0)
            continue
        ppo_drop = (sign * (r - 1.0))[side] > eps
        target = w[ppo_drop].sum() / w.sum()
        outward = (pi_a > mu_a if sign > 0 else pi_a < mu_a)[side]
        d = tv[side]
        for delta in sorted({0.0, *d[outward & (d > 0)].tolist()}):
            if w[outward & (d > delta)].sum() / w.sum() <= target + 1e-12:
                out.append(delta)
                break
    return out[0], out[1]


@pytest.mark.parametrize(("ppo_low", "ppo_high"), [(0.2, 0.2), (0.1, 0.3)])
def test_matched_ppo_reference_equals_a_direct_search(fresh_seed, ppo_low, ppo_high):
    batch = make_token_batch(
        fresh_seed, num_states=24, vocab_size=256, samples_per_state=16, topk_sizes=(4,), step_size=2.0
    )
    low, high = matched_ppo_reference(batch, ppo_low, ppo_high)
    want_low, want_high = _reference_matched_ppo(batch, ppo_low, ppo_high)
    assert low == pytest.approx(want_low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(want_high, rel=1e-9, abs=1e-15)
    assert low > 0 and high > 0  # PPO drops tokens on both sides of this batch: the match is not trivial
    if ppo_low != ppo_high:  # each side uses its own ε: with the sides swapped the answer changes
        assert (low, high) != _reference_matched_ppo(batch, ppo_high, ppo_low)
