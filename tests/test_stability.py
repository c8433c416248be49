"""The stability study's verdicts (docs/design.md §7) against a direct, loop-by-loop reading of the definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustregion_lab.analysis.stability import (
    DPPO_ARMS,
    NO_REGION_ARMS,
    run_stability,
    stability_summary,
    stability_verdict,
)


def reference(reward: np.ndarray, mismatch: np.ndarray, evals: np.ndarray) -> dict:
    """The definitions, written out with plain loops (W = 10, full windows only; blocks of 50 from the end)."""
    n, w = len(reward), 10
    first = min(w, n) - 1
    steps = range(first, n)
    m_med = {t: np.median(mismatch[max(0, t - w + 1) : t + 1]) for t in steps}
    r_first = min(25, n) - 1
    r_steps = range(max(first, r_first), n)
    r_avg = {t: np.mean(reward[max(0, t - 24) : t + 1]) for t in r_steps}
    drift_at, run = None, 0
    for t in steps:
        lowest = min(m_med[s] for s in range(first, t + 1))
        run = run + 1 if (lowest > 0 and m_med[t] >= 2 * lowest) else 0
        if run >= 20:
            drift_at = t - 19
            break
    collapse_at = None
    for t in r_steps:
        level = max(r_avg[s] for s in range(r_steps.start, t + 1)) - 0.05
        if r_avg[t] <= level and t + 50 < n and all(r_avg[s] < level for s in range(t, t + 51)):
            collapse_at = t
            break
    at = [t for t in range(n) if np.isfinite(evals[t])]
    best = -np.inf
    for j in range(2, len(at)):
        smooth = np.mean([evals[at[j - 2]], evals[at[j - 1]], evals[at[j]]])
        best = max(best, smooth)
        if smooth <= best - 0.1:
            collapse_at = at[j] if collapse_at is None else min(collapse_at, at[j])
            break
    if n <= 100:
        blocks = [np.mean(reward)]
    else:
        blocks = [np.mean(reward[e - 100 : e]) for e in range(n, n % 100, -100)][::-1]
    collapsed = collapse_at is not None
    return {
        "drifted": drift_at is not None,
        "drift_step": np.nan if drift_at is None else drift_at + 1,
        "collapsed": collapsed,
        "collapse_step": np.nan if collapse_at is None else collapse_at + 1,
        "stable": not collapsed and blocks[-1] >= max(blocks) - 0.02,
        "peak_reward": max(blocks),
        "final_reward": blocks[-1],
        "mismatch_start": m_med[first],
        "mismatch_peak": max(m_med.values()),
    }


def check(reward, mismatch, evals=None) -> dict:
    reward, mismatch = np.asarray(reward, float), np.asarray(mismatch, float)
    evals = np.full(len(reward), np.nan) if evals is None else np.asarray(evals, float)
    got = run_stability(np.arange(1, len(reward) + 1), reward, mismatch, evals)
    want = reference(reward, mismatch, evals)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, err_msg=key)
    return got


def test_flat_mismatch_and_rising_reward_is_stable():
    got = check(np.linspace(0.3, 0.9, 200), np.full(200, 0.004))
    assert not got["drifted"] and not got["collapsed"] and got["stable"]


def test_a_doubling_that_lasts_20_steps_is_drift_and_15_steps_is_not():
    m = np.full(200, 0.004)
    m[100:125] = 0.009
    got = check(np.full(200, 0.5), m)
    assert got["drifted"] and 100 < got["drift_step"] < 115
    short = np.full(200, 0.004)
    short[100:115] = 0.009
    assert not check(np.full(200, 0.5), short)["drifted"]


def test_a_lasting_drop_is_a_collapse_and_a_dip_that_recovers_is_not():
    r = np.full(200, 0.8)
    r[80:] = 0.6
    got = check(r, np.full(200, 0.004))
    assert got["collapsed"] and not got["stable"] and 80 < got["collapse_step"] <= 90
    dip = np.full(200, 0.8)
    dip[80:110] = 0.6
    got = check(dip, np.full(200, 0.004))
    assert not got["collapsed"] and got["stable"]
    late = np.full(200, 0.8)
    late[170:] = 0.6  # within 50 steps of the end: not confirmed, but the run does not end near its best
    got = check(late, np.full(200, 0.004))
    assert not got["collapsed"] and not got["stable"]
    lucky = np.full(120, 0.4)
    lucky[0] = 0.9  # one lucky first step sets no maximum: only full windows count
    assert not check(lucky, np.full(120, 0.004))["collapsed"]


def test_an_evaluation_drop_of_a_tenth_is_a_collapse_and_one_noisy_evaluation_is_not():
    evals = np.full(200, np.nan)
    evals[::10] = 0.8
    evals[150:] = np.where(np.isfinite(evals[150:]), 0.62, np.nan)
    got = check(np.full(200, 0.7), np.full(200, 0.004), evals)
    assert got["collapsed"] and got["collapse_step"] == 161  # mean of 0.8, 0.62, 0.62 = 0.68 ≤ 0.8 − 0.1
    single = np.full(200, np.nan)
    single[::10] = 0.8
    single[150] = 0.6
    assert not check(np.full(200, 0.7), np.full(200, 0.004), single)["collapsed"]


def test_flat_noisy_runs_are_rarely_called_collapsed_or_unstable():
    """Sampling noise alone (per-step sd 0.06, evaluations of 256 prompts) must not decide the verdicts."""
    rng = np.random.default_rng(7)
    collapsed = unstable = 0
    for _ in range(200):
        reward = 0.6 + rng.normal(0, 0.06, 250)
        evals = np.full(250, np.nan)
        evals[::10] = rng.binomial(256, 0.6, 25) / 256
        got = run_stability(np.arange(1, 251), reward, np.full(250, 0.004), evals)
        collapsed += got["collapsed"]
        unstable += not got["stable"]
    assert collapsed <= 4 and unstable <= 20


def test_an_exact_engine_never_drifts():
    m = np.zeros(200)
    assert not check(np.full(200, 0.5), m)["drifted"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_runs_agree_with_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 260))
    reward = np.clip(np.cumsum(rng.normal(0, 0.03, n)) + 0.5, 0, 1)
    mismatch = np.exp(np.cumsum(rng.normal(0, 0.08, n))) * 1e-3
    evals = np.where(rng.random(n) < 0.1, np.clip(reward + rng.normal(0, 0.08, n), 0, 1), np.nan)
    check(reward, mismatch, evals)


def test_summary_and_verdict_tables():
    rows = []
    for variant in ("pg_is", "cispo", "minirl", "dppo_binary_tv", "dppo_binary_kl"):
        for engine in ("model-bf16", "model-fp32"):
            for seed in range(3):
                bad = variant in ("pg_is", "cispo", "minirl") and engine == "model-bf16"
                m = np.full(120, 0.004)
                r = np.full(120, 0.8)
                if bad:
                    m[40:] = 0.02
                    r[50:] = 0.5
                for step in range(120):
                    rows.append(dict(variant=variant, engine=engine, seed=seed, step=step + 1, reward=r[step],
                                     mismatch_mean=m[step]))  # fmt: skip
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # any row order
    summary = stability_summary(table)
    assert len(summary) == 30
    bad = summary["variant"].isin(["pg_is", "cispo", "minirl"]) & (summary["engine"] == "model-bf16")
    assert summary.loc[bad, "drifted"].all() and summary.loc[bad, "collapsed"].all()
    assert summary.loc[~bad, "stable"].all() and not summary.loc[~bad, "drifted"].any()
    verdict = stability_verdict(summary, "model-bf16", "model-fp32")
    claims = verdict[verdict["variant"].str.startswith("claim")].set_index("variant")["holds"]
    assert claims.all() and claims["claim: reproduced"]
    with pytest.raises(ValueError, match="mismatch_mean"):
        stability_summary(table.drop(columns=["mismatch_mean"]))


def _summary(arms, engines, seeds, *, stable=True, drift_collapse=False) -> pd.DataFrame:
    """A per-run summary (the columns stability_verdict reads), every run alike."""
    return pd.DataFrame(
        [
            dict(variant=v, engine=e, seed=s, drifted=drift_collapse, collapsed=drift_collapse, stable=stable)
            for v in arms
            for e in engines
            for s in range(seeds)
        ]
    )


def _claims(summary: pd.DataFrame) -> pd.Series:
    verdict = stability_verdict(summary, "model-bf16", "model-fp32")
    return verdict[verdict["variant"].str.startswith("claim")].set_index("variant")["holds"]


def test_a_run_too_small_to_judge_reads_na_not_false():
    # stability-quick's shape: three arms, the low-precision engine only, one seed, every run stable
    quick = _claims(_summary(["pg_is", "ppo_clip_higher", "dppo_binary_tv"], ["model-bf16"], 1))
    assert list(quick) == ["n/a"] * 4, quick
    # all arms and both engines, but one seed: still too few seeds to judge
    one_seed = _claims(_summary([*NO_REGION_ARMS, *DPPO_ARMS], ["model-bf16", "model-fp32"], 1))
    assert list(one_seed) == ["n/a"] * 4, one_seed
    # three seeds, but no matched engine: the matched-engine claim alone is n/a
    no_matched = _claims(_summary([*NO_REGION_ARMS, *DPPO_ARMS], ["model-bf16"], 3))
    assert [v for v in no_matched] == [False, True, "n/a", False], no_matched  # a judged claim fails


def test_every_claim_judged_when_all_arms_ran_three_seeds_with_both_engines():
    full = _summary([*NO_REGION_ARMS, *DPPO_ARMS], ["model-bf16", "model-fp32"], 3)
    bad = full["variant"].isin(NO_REGION_ARMS) & (full["engine"] == "model-bf16")
    full.loc[bad, ["drifted", "collapsed"]] = True
    full.loc[bad, "stable"] = False
    claims = _claims(full)
    assert [v is True for v in claims] == [True] * 4, claims
    dppo_fails = full.copy()
    dppo_fails.loc[(dppo_fails["variant"] == "dppo_binary_kl") & (dppo_fails["seed"] == 2), "stable"] = False
    assert list(_claims(dppo_fails)) == [True, False, True, False]
    only_na = full[~((full["variant"] == "cispo") & (full["engine"] == "model-fp32"))]
    assert list(_claims(only_na)) == [True, True, "n/a", "n/a"]
