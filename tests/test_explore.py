"""explore: the functions behind the notebooks' controls answer as their control moves.

Each test calls a function with several settings of its control and asserts the direction of the change, with
independent float64 numpy where a value can be recomputed (seeds fixed and named in each test).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax

from trustregion_lab import explore
from trustregion_lab.analysis import BatchMaskSpec, calibration_table, make_token_batch
from trustregion_lab.envs.logit_model import llm_like_logits

# --- 01 -----------------------------------------------------------------------------------------------------


def test_token_verdict_moves_a_token_across_the_ratio_band_and_the_tv_region() -> None:
    # a rare token doubling: PPO drops it (r = 2), Binary TV keeps it (moved 0.001 of mass)
    rare = explore.token_verdict(0.001, 0.002, advantage=1.0)
    assert rare["PPO ratio clip"].startswith("dropped") and rare["Binary TV"] == "kept"
    np.testing.assert_allclose(rare["ratio"], 2.0, rtol=1e-12)
    np.testing.assert_allclose(rare["binary_tv"], 0.001, rtol=1e-9)
    # a likely token dropping 0.19: PPO keeps it (r = 0.81), Binary TV drops it for Â < 0 only
    likely_neg = explore.token_verdict(0.99, 0.80, advantage=-1.0)
    likely_pos = explore.token_verdict(0.99, 0.80, advantage=1.0)
    assert likely_neg["PPO ratio clip"] == "kept" and likely_neg["Binary TV"].startswith("dropped")
    assert "lower" in likely_neg["Binary TV"]
    assert likely_pos["Binary TV"] == "kept", "an Â > 0 token that fell is moving back: never dropped"
    # sliding π(a) up from μ(a) = 0.3 (Â > 0): PPO drops from π > 0.36, Binary TV from π > 0.45
    mu = 0.3
    verdicts = {pi: explore.token_verdict(mu, pi, 1.0) for pi in (0.31, 0.37, 0.44, 0.46)}
    assert [v["PPO ratio clip"] == "kept" for v in verdicts.values()] == [True, False, False, False]
    assert [v["Binary TV"] == "kept" for v in verdicts.values()] == [True, True, True, False]
    kl = mu * np.log(mu / 0.46) + (1 - mu) * np.log((1 - mu) / 0.54)
    np.testing.assert_allclose(verdicts[0.46]["binary_kl"], kl, rtol=1e-9)


def test_token_verdict_zero_advantage_keeps_everything() -> None:
    v = explore.token_verdict(0.001, 0.9, advantage=0.0)
    assert all(v[label] == "kept" for label in ("PPO ratio clip", "Binary TV", "Binary KL"))


@pytest.mark.parametrize(("mu", "pi"), [(0.0, 0.5), (0.5, 1.0), (1.5, 0.2)])
def test_token_verdict_rejects_probabilities_outside_the_open_interval(mu: float, pi: float) -> None:
    with pytest.raises(ValueError, match="mu"):
        explore.token_verdict(mu, pi)


def test_token_regions_edges_are_where_the_rules_flip() -> None:
    rng = np.random.default_rng(3)  # seed 3
    mu = np.exp(rng.uniform(np.log(1e-5), np.log(0.95), 40))
    for eps, d_tv, d_kl in ((0.2, 0.15, 0.05), (0.1, 0.3, 0.01)):
        reg = explore.token_regions(mu, eps, d_tv, d_kl)
        np.testing.assert_allclose(reg["ppo_high"], np.minimum(mu * (1 + eps), 1), rtol=1e-12)
        np.testing.assert_allclose(reg["tv_low"], np.maximum(mu - d_tv, 0), rtol=1e-12)
        # KL edges: KL_bin(μ, edge) = δ where the edge is inside (0, 1), and the band contains μ
        inside = (reg["kl_high"] < 1.0).to_numpy()
        hi = reg["kl_high"].to_numpy()[inside]
        m = mu[inside]
        kl = m * np.log(m / hi) + (1 - m) * np.log((1 - m) / (1 - hi))
        np.testing.assert_allclose(kl, d_kl, rtol=1e-6)
        assert np.all(reg["kl_low"] <= mu) and np.all(mu <= reg["kl_high"])
        # the verdict agrees with the edges just outside the band
        for j in (0, 17, 39):
            edge = reg.loc[j, "tv_high"]
            if edge < 0.999:
                assert explore.token_verdict(mu[j], edge + 1e-6, 1.0, eps, d_tv, d_kl)["Binary TV"] != "kept"
    wider = explore.token_regions(mu, eps=0.4)
    assert np.all(wider["ppo_high"] >= explore.token_regions(mu, eps=0.2)["ppo_high"])


# --- 02 -----------------------------------------------------------------------------------------------------


def _state(seed: int, vocab: int = 512) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu_logits = rng.normal(0.0, 2.0, vocab)
    pi_logits = mu_logits + rng.normal(0.0, 0.5, vocab)
    return mu_logits, pi_logits


def test_topk_gap_grows_with_k_to_the_exact_tv() -> None:
    mu_logits, pi_logits = _state(11)  # seed 11
    mu, pi = np.exp(log_softmax(mu_logits)), np.exp(log_softmax(pi_logits))
    exact = 0.5 * np.abs(mu - pi).sum()
    token = int(np.argsort(-mu)[40])  # a token outside the top 20
    values = [
        explore.topk_gap(mu_logits, pi_logits, token, k, "topk_plus_sampled") for k in (1, 5, 20, 100, 512)
    ]
    tvs = [v["topk_tv"] for v in values]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(tvs)), "Top-K TV must grow as K grows"
    for v in values:
        np.testing.assert_allclose(v["exact_tv"], exact, rtol=1e-9)
        assert v["binary_tv"] <= v["topk_tv"] + 1e-12 <= exact + 2e-12 and v["a_in_set"]
    np.testing.assert_allclose(tvs[-1], exact, rtol=1e-9)
    # the set written out: top-20 of μ plus the sampled token
    ids = np.append(np.argsort(-mu)[:20], token)
    rest = abs((1 - mu[ids].sum()) - (1 - pi[ids].sum()))
    np.testing.assert_allclose(tvs[2], 0.5 * (np.abs(mu[ids] - pi[ids]).sum() + rest), rtol=1e-9)


def test_topk_gap_rule_decides_whether_the_sampled_token_is_in_the_set() -> None:
    mu_logits, pi_logits = _state(12)  # seed 12
    token = int(np.argsort(-mu_logits)[100])
    plain = explore.topk_gap(mu_logits, pi_logits, token, 5, "topk")
    plus = explore.topk_gap(mu_logits, pi_logits, token, 5, "topk_plus_sampled")
    replace = explore.topk_gap(mu_logits, pi_logits, token, 5, "topk_replace_last")
    assert not plain["a_in_set"] and plus["a_in_set"] and replace["a_in_set"]
    assert len(plus["ids"]) == 6 and len(replace["ids"]) == 5 and token in replace["ids"]
    assert plus["topk_tv"] >= plus["binary_tv"] - 1e-12
    with pytest.raises(ValueError, match="rule"):
        explore.topk_gap(mu_logits, pi_logits, token, 5, "top")
    with pytest.raises(ValueError, match="k"):
        explore.topk_gap(mu_logits, pi_logits, token, 0)


# --- 03 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_logits() -> np.ndarray:
    return llm_like_logits(np.random.default_rng(5), 128, 1024)  # seed 5


def test_mismatch_by_mu_orders_the_precisions_and_grows_with_noise(trainer_logits: np.ndarray) -> None:
    tv = {
        p: explore.mismatch_by_mu(trainer_logits, p, 0.0, seed=0).attrs["exact_tv"]
        for p in ("fp32", "fp16", "bf16")
    }
    assert tv["fp32"] < 1e-6 < tv["fp16"] < tv["bf16"]
    noisy = [
        explore.mismatch_by_mu(trainer_logits, "bf16", s, seed=0).attrs["exact_tv"] for s in (0.0, 0.03, 0.1)
    ]
    assert noisy[0] < noisy[1] < noisy[2]


def test_mismatch_by_mu_buckets_count_every_draw_and_the_ratio_spreads_at_low_mu(
    trainer_logits: np.ndarray,
) -> None:
    frame = explore.mismatch_by_mu(trainer_logits, "bf16", 0.1, seed=1, samples_per_state=4)
    assert frame["tokens"].sum() == 4 * trainer_logits.shape[0]
    assert list(frame["mu_lo"]) == sorted(frame["mu_lo"])
    spread = (frame["ratio_q95"] - frame["ratio_q05"]).to_numpy()
    filled = frame["tokens"].to_numpy() >= 20
    low, high = spread[filled][0], spread[filled][-1]
    assert low > high, "the ratio spreads more for rare tokens than for likely ones"
    with pytest.raises(ValueError, match="precision"):
        explore.mismatch_by_mu(trainer_logits, "fp64")


# --- 04 -----------------------------------------------------------------------------------------------------


def test_bandit_curve_selects_one_run_and_names_what_exists() -> None:
    table = pd.DataFrame(
        {
            "variant": ["ppo"] * 4 + ["pg_is"] * 2,
            "lr": [0.3, 0.3, 1.0, 1.0, 0.3, 0.3],
            "step": [1, 0, 0, 1, 0, 1],
            "reward": [0.2, 0.1, 0.3, 0.5, 0.0, 0.4],
        }
    )
    run = explore.bandit_curve(table, "ppo", 1.0)
    assert run["step"].tolist() == [0, 1] and run["reward"].tolist() == [0.3, 0.5]
    assert explore.bandit_curve(table, "ppo", 0.3)["reward"].tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match=r"lr must be one of \[0.3\]"):
        explore.bandit_curve(table, "pg_is", 1.0)
    with pytest.raises(ValueError, match="variant"):
        explore.bandit_curve(table, "cispo", 0.3)


# --- 05 -----------------------------------------------------------------------------------------------------


def test_matched_delta_at_rises_with_epsilon_and_sorts_buckets_numerically() -> None:
    batch = make_token_batch(
        0, num_states=48, vocab_size=512, samples_per_state=8, step_size=1.0, topk_sizes=()
    )
    table = calibration_table(
        batch,
        (BatchMaskSpec("dppo_binary_tv", 0.0, 0.0),),
        thresholds=tuple(np.round(np.arange(0.0, 0.5001, 0.005), 3)),
        epsilons=(0.05, 0.2, 0.4),
    )
    at = {e: explore.matched_delta_at(table, e) for e in (0.05, 0.2, 0.4)}
    assert at[0.2].index[0] == "all"
    entropy = table[(table["record"] == "match") & (table["stratum"] == "entropy")]
    order = entropy.drop_duplicates("bucket").sort_values("bucket_lo")["bucket"].tolist()
    assert at[0.2].index[1:].tolist() == [b for b in order if b in at[0.2].index]
    col = "dppo_binary_tv"
    assert at[0.05].loc["all", col] <= at[0.2].loc["all", col] <= at[0.4].loc["all", col]
    with pytest.raises(ValueError, match="epsilon must be one of"):
        explore.matched_delta_at(table, 0.3)


# --- 06 -----------------------------------------------------------------------------------------------------


def test_stability_view_counts_the_seeds() -> None:
    summary = pd.DataFrame(
        {
            "variant": ["pg_is"] * 3 + ["dppo_binary_tv"] * 3,
            "engine": ["model-bf16"] * 6,
            "seed": [0, 1, 2] * 2,
            "drifted": [True, True, False, False, False, False],
            "collapsed": [True, False, False, False, False, False],
            "stable": [False, False, True, True, True, True],
            "mismatch_start": [0.004] * 6,
            "mismatch_end": [0.016, 0.012, 0.004, 0.003, 0.003, 0.003],
            "final_reward": [0.1, 0.5, 0.8, 0.8, 0.8, 0.8],
        }
    )
    pg = explore.stability_view(summary, "model-bf16", "pg_is")
    tv = explore.stability_view(summary, "model-bf16", "dppo_binary_tv")
    assert (
        "stable in 1 of 3" in pg["verdict"]
        and "drifted in 2" in pg["verdict"]
        and "collapsed in 1" in pg["verdict"]
    )
    assert "stable in 3 of 3" in tv["verdict"]
    np.testing.assert_allclose(pg["mismatch_change"], np.mean([4.0, 3.0, 1.0]) - 1, rtol=1e-12)
    assert tv["mismatch_change"] < 0 < pg["mismatch_change"]
    with pytest.raises(ValueError, match="engine"):
        explore.stability_view(summary, "model-fp8", "pg_is")


# --- widgets ------------------------------------------------------------------------------------------------


def test_controls_calls_the_function_once_with_the_defaults() -> None:
    calls = []

    def f(x: float = 0.0, name: str = "") -> float:
        calls.append((x, name))
        return x * 2

    panel = explore.controls(f, x=(1.0, 3.0), name=["a", "b"])
    assert len(calls) == 1 and panel.result == 2 * calls[0][0]


def _calibration(rng) -> pd.DataFrame:
    levels = [f"L{i}" for i in range(5)]
    dose = np.sort(rng.uniform(1e-4, 0.2, size=5))
    final = np.array([0.8, 0.9, 0.7, 0.4, 0.01])
    return pd.DataFrame(
        {
            "dose_level": levels,
            "lr": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
            "staleness": [0, 0, 0, 4, 4],
            "epochs": 1,
            "dose": dose,
            "start_reward": 0.5,
            "final_reward": final,
            "failed": final <= 0.4,
        }
    )


def test_regime_view_walks_the_ladder(rng) -> None:
    calibration = _calibration(rng)
    views = [explore.regime_view(calibration, level) for level in calibration["dose_level"]]
    assert [v["rung"]["dose"] for v in views] == list(calibration["dose"])
    assert [v["failed"] for v in views] == [False, False, False, True, True]
    assert "staleness 4" in views[3]["sentence"] and views[3]["sentence"].endswith("and failed")
    assert views[0]["arms"] is None
    with pytest.raises(ValueError, match="level must be one of"):
        explore.regime_view(calibration, "L9")
    with pytest.raises(ValueError, match="'dose' column"):
        explore.regime_view(calibration.drop(columns="dose"), "L0")


def test_regime_view_reads_the_map_cell_against_pg_is(rng) -> None:
    calibration = _calibration(rng)
    rows = []
    for engine in ("model-fp32", "model-fp8"):
        for level in ("L0", "L3"):
            for arm, base in (("pg_is", 0.3), ("ppo", 0.6)):
                for seed in range(2):
                    reward = base + rng.uniform(-0.05, 0.05)
                    rows.append((arm, engine, level, seed, reward, arm == "pg_is" and level == "L3"))
    summary = pd.DataFrame(
        rows, columns=["variant", "engine", "dose_level", "seed", "final_reward", "collapsed"]
    )
    view = explore.regime_view(calibration, "L3", summary, "model-fp8")
    arms = view["arms"].set_index("variant")
    cell = summary[(summary["engine"] == "model-fp8") & (summary["dose_level"] == "L3")]
    expected = cell.groupby("variant")["final_reward"].mean()
    np.testing.assert_allclose(arms["final_reward"], expected.loc[arms.index])
    assert arms.loc["ppo", "diff_vs_pg_is"] == pytest.approx(expected["ppo"] - expected["pg_is"])
    assert arms.loc["pg_is", "collapsed"] == 2 and arms.loc["ppo", "collapsed"] == 0
    assert explore.regime_view(calibration, "L1", summary, "model-fp8")["arms"] is None  # no map cell there
    with pytest.raises(ValueError, match="engine must be one of"):
        explore.regime_view(calibration, "L3", summary, "model-int4")


def test_regime_view_reads_the_chosen_candidates_rung(rng) -> None:
    first, chosen = _calibration(rng), _calibration(rng)
    table = pd.concat(
        [first.assign(chosen_candidate=False), chosen.assign(chosen_candidate=True)], ignore_index=True
    )
    view = explore.regime_view(table, "L2")
    assert view["rung"]["dose"] == chosen.loc[2, "dose"] != first.loc[2, "dose"]
