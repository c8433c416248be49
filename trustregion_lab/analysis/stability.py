"""The stability study's verdicts, computed from training tables (docs/design.md §7).

Input: a tidy training table with one row per (variant, engine, seed, step) and the columns ``reward``,
``mismatch_mean`` (m = mean |π(a) − μ(a)| over the step's response tokens, at equal weights before the step's
first update) and optionally ``eval_reward_sampled`` (the fp32 evaluation on held-out prompts, NaN on steps
without one). Per run, with W = 10 steps (smoothed quantities exist from step W on: full windows only, so one
lucky early step cannot set a maximum; the reward's window is longer, see r̃):
    m̃_t      = median of m over steps t − W + 1 .. t (the "10-step median")
    r̃_t      = mean of the training reward over steps t − 24 .. t (25 steps: one step's reward, a mean over
               16 prompts × 8 answers, has a noise of ≈ 0.06 in the study, so a 10-step mean would move its
               running maximum by ≈ 0.05, the whole collapse threshold; 25 steps leave ≈ 0.03)
    ẽ_j      = mean of the last 3 evaluations (the evaluation smoothed like the reward)
    drift    : m̃_t ≥ 2 · min_{W ≤ s ≤ t} m̃_s > 0 on ≥ 20 consecutive steps
    collapse : r̃_t ≤ max_{W ≤ s ≤ t} r̃_s − 0.05 and r̃ stays below that level for the next 50 steps (a drop
               within 50 steps of the end is not confirmed), or ẽ falls ≥ 0.1 below its maximum so far;
               collapse_step = the first step either holds (NaN when none)
    stable   : never collapses, and final_reward ≥ peak_reward − 0.02, where the steps are cut into blocks of 100
               counted back from the last step, final_reward = the mean reward of the last block and
               peak_reward = the largest block mean (block means, not running maxima of short windows, so that
               the 0.02 margin is not used up by noise)
    mismatch_start = m̃ at step W;  mismatch_peak = max m̃;  mismatch_end = m̃ at the last step;
    drift_step = the first step of the first qualifying stretch (NaN when none); and, when the table has them,
    the means over the run's steps of mask_frac, ratio_clip_frac, entropy and grad_norm_max (``*_mean``)
A verdict per arm counts the seeds that drifted, collapsed and stayed stable; the paper's claim is *reproduced*
when the no-trust-region arms (``pg_is``, ``cispo``, ``minirl``) both drift and collapse in ≥ 2 of 3 seeds with the
low-precision engine, every DPPO arm is stable in every seed there, and the no-trust-region arms are stable in
every seed with the engine that matches the trainer. A claim is judged only when every arm it names ran with its
engine in at least CLAIM_SEEDS = 3 seeds (the seeds the claims are stated for); otherwise it reads "n/a" (not
False): a run of one seed, without the matched engine, or without some of the named arms cannot refute it.
"reproduced" is False when a judged claim fails, n/a when none fails but one is n/a, True when all hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "CALIBRATION_WINDOW",
    "CLAIM_SEEDS",
    "DPPO_ARMS",
    "NOT_JUDGED",
    "NO_REGION_ARMS",
    "SUMMARY_COLUMNS",
    "run_stability",
    "stability_summary",
    "stability_verdict",
]

WINDOW = 10
DRIFT_FACTOR = 2.0
DRIFT_STEPS = 20
COLLAPSE_DROP = 0.05
RECOVERY_STEPS = 50
EVAL_DROP = 0.1
EVAL_WINDOW = 3
STABLE_MARGIN = 0.02
REWARD_WINDOW = 25
CALIBRATION_WINDOW = 10  # the protocol's phase A rule: a setting's 10-step mean reward lies in [0.2, 0.8]
BLOCK = 100
CLAIM_SEEDS = 3  # a claim is judged only when each arm it names has this many seeds
NOT_JUDGED = "n/a"  # the verdict of a claim the runs are too few to judge
NO_REGION_ARMS = ("pg_is", "cispo", "minirl")
DPPO_ARMS = ("dppo_binary_tv", "dppo_binary_kl")
LOW_PRECISION_ENGINE, MATCHED_ENGINE = "model-bf16", "model-fp32"  # the study's engines (train/engine.py)
SUMMARY_COLUMNS = (
    "drifted",
    "collapsed",
    "stable",
    "peak_reward",
    "final_reward",
    "mismatch_start",
    "mismatch_peak",
    "mismatch_end",
    "collapse_step",
    "drift_step",
    "steps",
)
# descriptive means over a run's steps, added when the table has them: does the region bind at all?
DESCRIPTIVE = ("mask_frac", "ratio_clip_frac", "entropy", "grad_norm_max")


def _first_stretch(flags: np.ndarray, length: int) -> int:
    """Index of the first run of ≥ ``length`` consecutive True values (−1 when none)."""
    count = 0
    for i, flag in enumerate(flags):
        count = count + 1 if flag else 0
        if count >= length:
            return i - length + 1
    return -1


def _block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Means of consecutive blocks of ``block`` values counted back from the end (a shorter first block dropped
    unless it is the only one)."""
    n = len(values)
    if n <= block:
        return np.array([np.nanmean(values)])
    cut = n % block
    return np.nanmean(values[cut:].reshape(-1, block), axis=1)


def run_stability(
    steps: np.ndarray, reward: np.ndarray, mismatch: np.ndarray, eval_reward: np.ndarray
) -> dict:
    """The module docstring's quantities for one run (arrays `[n_steps]`, in step order; eval NaN where none)."""
    n = len(steps)
    start = min(WINDOW, n) - 1  # the first step with a full window (or the last step of a short run)
    m_med = pd.Series(mismatch).rolling(WINDOW, min_periods=1).median().to_numpy()[start:]
    r_avg = (
        pd.Series(reward)
        .rolling(REWARD_WINDOW, min_periods=1)
        .mean()
        .to_numpy()[max(start, min(REWARD_WINDOW, n) - 1) :]
    )
    r_start = n - len(r_avg)
    blocks = _block_means(np.asarray(reward, np.float64), BLOCK)
    out: dict = {"steps": n, "peak_reward": float(blocks.max()), "final_reward": float(blocks[-1])}
    out["mismatch_start"] = float(m_med[0])
    out["mismatch_end"] = float(m_med[-1])
    out["mismatch_peak"] = float(np.nanmax(m_med)) if np.isfinite(m_med).any() else np.nan
    running_min = np.fmin.accumulate(m_med)
    # a mismatch that is exactly 0 (an exact engine) never drifts: 0 ≥ 2 · 0 is not a doubling
    drift_at = _first_stretch((m_med >= DRIFT_FACTOR * running_min) & (running_min > 0), DRIFT_STEPS)
    out["drifted"] = drift_at >= 0
    out["drift_step"] = float(steps[start + drift_at]) if drift_at >= 0 else np.nan

    collapse_at = -1
    running_max = np.fmax.accumulate(r_avg)
    for t in range(len(r_avg)):
        level = running_max[t] - COLLAPSE_DROP
        later = r_avg[t : t + RECOVERY_STEPS + 1]
        if r_avg[t] <= level and t + RECOVERY_STEPS < len(r_avg) and bool((later < level).all()):
            collapse_at = r_start + t
            break
    evals = np.asarray(eval_reward, np.float64)
    at = np.flatnonzero(np.isfinite(evals))
    if len(at) >= EVAL_WINDOW:
        smooth = pd.Series(evals[at]).rolling(EVAL_WINDOW).mean().to_numpy()[EVAL_WINDOW - 1 :]
        dropped = smooth <= np.maximum.accumulate(smooth) - EVAL_DROP
        if dropped.any():
            first = int(at[EVAL_WINDOW - 1 + int(np.argmax(dropped))])
            collapse_at = first if collapse_at < 0 else min(collapse_at, first)
    out["collapsed"] = collapse_at >= 0
    out["collapse_step"] = float(steps[collapse_at]) if collapse_at >= 0 else np.nan
    out["stable"] = (not out["collapsed"]) and out["final_reward"] >= out["peak_reward"] - STABLE_MARGIN
    return out


def stability_summary(
    table: pd.DataFrame, keys: Sequence[str] = ("variant", "engine", "seed")
) -> pd.DataFrame:
    """One row per run (``keys``) with SUMMARY_COLUMNS (module docstring)."""
    missing = sorted({"step", "reward", "mismatch_mean", *keys} - set(table.columns))
    if missing:
        raise ValueError(f"the training table lacks columns {missing}")
    rows = []
    for key, run in table.sort_values([*keys, "step"]).groupby(list(keys), sort=False):
        evals = (
            run["eval_reward_sampled"] if "eval_reward_sampled" in run else pd.Series(np.nan, index=run.index)
        )
        stats = run_stability(
            run["step"].to_numpy(),
            run["reward"].to_numpy(np.float64),
            run["mismatch_mean"].to_numpy(np.float64),
            evals.to_numpy(np.float64),
        )
        extra = {f"{c}_mean": float(run[c].mean()) for c in DESCRIPTIVE if c in run}
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **stats, **extra})
    extras = [f"{c}_mean" for c in DESCRIPTIVE if c in table.columns]
    return pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS, *extras])


def stability_verdict(summary: pd.DataFrame, low_precision: str, matched: str) -> pd.DataFrame:
    """Per (variant, engine): seeds, and how many drifted, collapsed, stayed stable; plus one row per claim.

    low_precision: the engine of the mismatched runs (e.g. ``"model-bf16"``); matched: the engine that matches
    the trainer. The claim rows (``variant`` = "claim: ...") hold ``holds``: True, False, or "n/a" when the runs
    cannot judge the claim (an arm it names missing with that engine, or fewer than CLAIM_SEEDS seeds).
    """
    both = summary.assign(drifted_and_collapsed=summary["drifted"] & summary["collapsed"])
    counts = (
        both.groupby(["variant", "engine"])
        .agg(
            seeds=("seed", "nunique"),
            drifted=("drifted", "sum"),
            collapsed=("collapsed", "sum"),
            drifted_and_collapsed=("drifted_and_collapsed", "sum"),
            stable=("stable", "sum"),
        )
        .reset_index()
    )

    def arm(variant: str, engine: str) -> pd.Series | None:
        row = counts[(counts["variant"] == variant) & (counts["engine"] == engine)]
        return None if row.empty else row.iloc[0]

    def all_arms(names: Sequence[str], engine: str, test) -> bool | str:
        rows = [arm(v, engine) for v in names]
        if any(r is None or r["seeds"] < CLAIM_SEEDS for r in rows):
            return NOT_JUDGED
        return all(bool(test(r)) for r in rows)

    claims: dict[str, bool | str] = {
        "no-region arms drift and collapse in >= 2 of 3 seeds (low precision)": all_arms(
            NO_REGION_ARMS, low_precision, lambda r: r["drifted_and_collapsed"] >= 2
        ),
        "DPPO arms stable in every seed (low precision)": all_arms(
            DPPO_ARMS, low_precision, lambda r: r["stable"] == r["seeds"]
        ),
        "no-region arms stable in every seed (matched engine)": all_arms(
            NO_REGION_ARMS, matched, lambda r: r["stable"] == r["seeds"]
        ),
    }
    values = list(claims.values())
    claims["reproduced"] = False if False in values else (NOT_JUDGED if NOT_JUDGED in values else True)
    claim_rows = pd.DataFrame(
        {"variant": [f"claim: {k}" for k in claims], "holds": pd.Series(list(claims.values()), dtype=object)}
    )
    out = pd.concat([counts, claim_rows], ignore_index=True)
    count_columns = ["seeds", "drifted", "collapsed", "drifted_and_collapsed", "stable"]
    return out.astype({c: "Int64" for c in count_columns})  # counts stay integers beside the claim rows
