"""The logic behind the notebooks' controls: plain functions that a slider or a drop-down calls.

Each function answers one question for one setting of a control, quickly enough (≲ 1 s on 2 cores at the
notebooks' sizes) to follow a slider; the notebooks draw what they return, and the tests call them with several
values. ``controls`` wraps a function in ipywidgets when they are installed.

    token_verdict(mu, pi, advantage, eps, delta_tv, delta_kl)   01: does PPO / Binary TV / Binary KL drop this token?
    token_regions(mu, eps, delta_tv, delta_kl)                  01: the π(a) each rule allows, per μ(a)
    topk_gap(rollout_logits, logits, token, k, rule)            02: Top-K TV of one state against its exact TV
    mismatch_by_mu(trainer_logits, precision, noise, seed)      03: an engine's mismatch by μ(a) bucket
    bandit_curve(table, variant, lr)                            04: one run of a cached bandit table
    matched_delta_at(table, epsilon)                            05: the δ matching ε per mask and entropy bucket
    stability_view(summary, engine, variant)                    06: one arm of the stability study, seed by seed
    regime_view(calibration, level, cells_summary, engine)      06: one rung of the dose ladder (and the map there)

Layer: reads divergence, masks, mismatch and analysis; imports nothing from train, sweep or report (the bandit
table is built by the notebook from ``trustregion_lab.train``), and no lower module imports it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from trustregion_lab import divergence, masks
from trustregion_lab._validate import check_choice, check_int, check_real, check_threshold
from trustregion_lab.mismatch import PRECISIONS, TOPK_RULES, EngineConfig, RolloutEngine, apply_set_rule

__all__ = [
    "MU_BUCKET_EDGES",
    "bandit_curve",
    "controls",
    "matched_delta_at",
    "mismatch_by_mu",
    "regime_view",
    "stability_view",
    "token_regions",
    "token_verdict",
    "topk_gap",
]

MU_BUCKET_EDGES = (0.0, 1e-3, 1e-2, 0.1, 0.5, 0.9, 1.0)
_RULES = {
    "PPO ratio clip": ("ppo", "eps"),
    "Binary TV": ("dppo_binary_tv", "delta_tv"),
    "Binary KL": ("dppo_binary_kl", "delta_kl"),
}


# --- 01: one token against three rules --------------------------------------------------------------------


def token_verdict(
    mu: float,
    pi: float,
    advantage: float = 1.0,
    eps: float = 0.2,
    delta_tv: float = 0.15,
    delta_kl: float = 0.05,
) -> dict[str, Any]:
    """What each rule does with one sampled token: the ratio, |π − μ|, Binary KL, and kept / dropped per rule.

    mu, pi: μ(a), π(a) in (0, 1); advantage: Â (its sign decides which side of the region binds);
    eps: PPO's ε (symmetric); delta_tv, delta_kl: the DPPO thresholds. Returns ratio r = π/μ, binary_tv =
    |π − μ| (Eq. 13), binary_kl = KL(μ‖π) of {a, rest} (Eq. 14), direction ("up" if π > μ, "down", "none") and,
    per rule (keys of ``_RULES``), "kept" or "dropped: <why>" from ``masks.trust_region_mask``.
    """
    mu = check_real("mu", mu, minimum=0.0, maximum=1.0)
    pi = check_real("pi", pi, minimum=0.0, maximum=1.0)
    if not (0.0 < mu < 1.0 and 0.0 < pi < 1.0):
        raise ValueError(f"mu and pi must lie strictly between 0 and 1, got mu={mu}, pi={pi}")
    advantage = check_real("advantage", advantage)
    thresholds = {
        "eps": check_threshold("eps", eps),
        "delta_tv": check_threshold("delta_tv", delta_tv),
        "delta_kl": check_threshold("delta_kl", delta_kl),
    }
    lmu, lpi = np.log([mu]), np.log([pi])
    out: dict[str, Any] = {
        "mu": mu,
        "pi": pi,
        "advantage": advantage,
        "ratio": pi / mu,
        "binary_tv": float(divergence.binary_tv(lmu, lpi)[0]),
        "binary_kl": float(divergence.binary_kl(lmu, lpi)[0]),
        "direction": "up" if pi > mu else ("down" if pi < mu else "none"),
    }
    pushes = "raise" if advantage > 0 else "lower"
    for label, (method, key) in _RULES.items():
        threshold = thresholds[key]
        keep = bool(
            masks.trust_region_mask(
                method,
                logprob=lpi,
                rollout_logprob=lmu,
                advantages=np.array([advantage]),
                low=threshold,
                high=threshold,
            )[0]
        )
        if keep:
            out[label] = "kept"
            continue
        measure = {
            "ppo": f"r = {out['ratio']:.3g} outside [{1 - threshold:.3g}, {1 + threshold:.3g}]",
            "dppo_binary_tv": f"|π − μ| = {out['binary_tv']:.3g} > δ = {threshold:g}",
            "dppo_binary_kl": f"KL = {out['binary_kl']:.3g} > δ = {threshold:g}",
        }[method]
        out[label] = f"dropped: Â would {pushes} π(a) further, and {measure}"
    return out


def _binary_kl_grid(mu: np.ndarray, pi: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return mu * np.log(mu / pi) + (1 - mu) * np.log((1 - mu) / (1 - pi))


def token_regions(
    mu: np.ndarray, eps: float = 0.2, delta_tv: float = 0.15, delta_kl: float = 0.05
) -> pd.DataFrame:
    """The band of π(a) each rule allows around μ(a): columns mu, {ppo,tv,kl}_{low,high} `[len(mu)]`.

    PPO: μ(1 − ε) ≤ π ≤ μ(1 + ε) (capped at 1); Binary TV: μ − δ ≤ π ≤ μ + δ (clipped to [0, 1]); Binary KL:
    the two roots of KL_bin(μ, π) = δ, found by bisection in float64 (0 or 1 where KL stays below δ).
    A token with Â > 0 is dropped above the band's high edge, one with Â < 0 below its low edge.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1 or not np.all((mu > 0) & (mu < 1)):
        raise ValueError("mu must be a 1-D array of probabilities strictly between 0 and 1")
    eps = check_threshold("eps", eps)
    delta_tv = check_threshold("delta_tv", delta_tv)
    delta_kl = check_threshold("delta_kl", delta_kl)

    def kl_root(lo: np.ndarray, hi: np.ndarray, rising_with_pi: bool) -> np.ndarray:
        # KL_bin(μ, ·) is decreasing on (0, μ] and increasing on [μ, 1): bisect the side [lo, hi]
        lo, hi = lo.copy(), hi.copy()
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = _binary_kl_grid(mu, mid) > delta_kl
            if rising_with_pi:
                hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
            else:
                lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    tiny = np.full_like(mu, 1e-300)
    one = np.full_like(mu, 1.0 - 1e-16)
    kl_low = np.where(_binary_kl_grid(mu, tiny) > delta_kl, kl_root(tiny, mu, False), 0.0)
    kl_high = np.where(_binary_kl_grid(mu, one) > delta_kl, kl_root(mu, one, True), 1.0)
    return pd.DataFrame(
        {
            "mu": mu,
            "ppo_low": mu * max(1.0 - eps, 0.0),
            "ppo_high": np.minimum(mu * (1.0 + eps), 1.0),
            "tv_low": np.maximum(mu - delta_tv, 0.0),
            "tv_high": np.minimum(mu + delta_tv, 1.0),
            "kl_low": kl_low,
            "kl_high": kl_high,
        }
    )


# --- 02: Top-K against exact on one state -----------------------------------------------------------------


def topk_gap(
    rollout_logits: np.ndarray, logits: np.ndarray, token: int, k: int, rule: str = "topk_plus_sampled"
) -> dict[str, Any]:
    """One state's Top-K TV under a set rule, next to its Binary and exact TV (paper Eq. 13, 15; exact TV).

    rollout_logits, logits: μ's and π's logits of the state `[V]`; token: the sampled id a; k: K ≥ 1; rule: one
    of ``mismatch.TOPK_RULES``. Returns exact_tv, topk_tv, binary_tv, a_in_set, ids (the reported set, −1 =
    unused slot) and captured = topk_tv / exact_tv. By the data-processing inequality binary ≤ topk ≤ exact
    when a is in the set.
    """
    rollout_logits = np.asarray(rollout_logits, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if rollout_logits.ndim != 1 or rollout_logits.shape != logits.shape:
        raise ValueError(
            "rollout_logits and logits must be 1-D arrays of one state's logits `[V]` of equal size"
        )
    v = rollout_logits.shape[0]
    token = check_int("token", token, minimum=0, maximum=v - 1)
    k = check_int("k", k, minimum=1, maximum=v)
    check_choice("rule", rule, TOPK_RULES)
    log_mu = rollout_logits - np.logaddexp.reduce(rollout_logits)
    log_pi = logits - np.logaddexp.reduce(logits)
    top = torch.from_numpy(np.argsort(-log_mu, kind="stable")[:k][None, :].copy())
    ids = apply_set_rule(top, torch.tensor([token]), rule).numpy()
    lps = np.where(ids >= 0, log_mu[np.maximum(ids, 0)], -np.inf)
    exact = float(divergence.tv(log_mu, log_pi))
    topk = float(divergence.topk_tv(lps, ids, log_pi[None, :])[0])
    binary = float(divergence.binary_tv(log_mu[[token]], log_pi[[token]])[0])
    return {
        "exact_tv": exact,
        "topk_tv": topk,
        "binary_tv": binary,
        "a_in_set": bool((ids == token).any()),
        "ids": ids[0],
        "captured": topk / exact if exact > 0 else float("nan"),
    }


# --- 03: an engine's mismatch by μ(a) -----------------------------------------------------------------------


def mismatch_by_mu(
    trainer_logits: np.ndarray,
    precision: str = "bf16",
    noise: float = 0.0,
    seed: int = 0,
    samples_per_state: int = 1,
    edges: tuple[float, ...] = MU_BUCKET_EDGES,
) -> pd.DataFrame:
    """Sample tokens from an engine (precision, kernel noise σ) and bucket the mismatch by μ(a).

    trainer_logits: π's logits `[S, V]`; precision: a key of ``mismatch.PRECISIONS``; noise: the engine's
    logit_noise σ ≥ 0; seed: the engine's seed; samples_per_state: draws per state (the rows are repeated, so
    each draw also gets its own kernel noise). Rows per μ(a) bucket [lo, hi): tokens, ratio_q05 / ratio_q95
    (5 % / 95 % quantiles of r = π(a)/μ(a)), mean_abs_ratio_dev = mean |r − 1|, mean_binary_tv =
    mean |π(a) − μ(a)|, clip_share = share with |r − 1| > 0.2; the frame's ``attrs["exact_tv"]`` holds the
    mean exact TV(μ, π) over the states.
    """
    check_choice("precision", precision, PRECISIONS)
    noise = check_real("noise", noise, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    samples_per_state = check_int("samples_per_state", samples_per_state, minimum=1)
    x = np.asarray(trainer_logits)
    if x.ndim != 2:
        raise ValueError(f"trainer_logits must be `[S, V]`, got shape {x.shape}")
    x = np.repeat(x, samples_per_state, axis=0) if samples_per_state > 1 else x
    out = RolloutEngine(EngineConfig(precision=precision, logit_noise=noise), seed).sample(x)
    log_pi = x.astype(np.float64) - np.logaddexp.reduce(x.astype(np.float64), axis=-1, keepdims=True)
    rows = np.arange(x.shape[0])
    log_pi_a = log_pi[rows, out.tokens]
    log_mu_a = np.asarray(out.engine_logits, dtype=np.float64)[rows, out.tokens]
    mu_a, ratio = np.exp(log_mu_a), np.exp(log_pi_a - log_mu_a)
    moved = np.asarray(divergence.binary_tv(log_mu_a, log_pi_a))
    records = []
    for lo, hi in itertools.pairwise(edges):
        inside = (mu_a >= lo) & ((mu_a < hi) if hi < 1.0 else (mu_a <= hi))
        r = ratio[inside]
        records.append(
            {
                "mu_lo": lo,
                "mu_hi": hi,
                "bucket": f"[{lo:g}, {hi:g})",
                "tokens": int(inside.sum()),
                "ratio_q05": float(np.quantile(r, 0.05)) if r.size else np.nan,
                "ratio_q95": float(np.quantile(r, 0.95)) if r.size else np.nan,
                "mean_abs_ratio_dev": float(np.abs(r - 1).mean()) if r.size else np.nan,
                "mean_binary_tv": float(moved[inside].mean()) if r.size else np.nan,
                "clip_share": float((np.abs(r - 1) > 0.2).mean()) if r.size else np.nan,
            }
        )
    frame = pd.DataFrame(records)
    frame.attrs["exact_tv"] = float(
        np.mean(divergence.tv(np.asarray(out.engine_logits, dtype=np.float64), log_pi))
    )
    return frame


# --- 04: a cached bandit table ------------------------------------------------------------------------------


def bandit_curve(table: pd.DataFrame, variant: str, lr: float) -> pd.DataFrame:
    """The steps of one (variant, lr) run of a bandit table (columns variant, lr, step, ...), sorted by step.

    table: rows of ``BanditTrainer.train()`` for several variants and learning rates, with an ``lr`` column.
    Raises ValueError naming the variants / learning rates the table holds when (variant, lr) is absent.
    """
    for column in ("variant", "lr", "step"):
        if column not in table.columns:
            raise ValueError(f"table must have a {column!r} column (a bandit training table with lr)")
    variants = sorted(table["variant"].unique())
    check_choice("variant", variant, variants)
    lr = check_real("lr", lr, positive=True)
    of_variant = table[table["variant"] == variant]
    rows = of_variant[np.isclose(of_variant["lr"], lr)]
    if rows.empty:
        known = sorted(of_variant["lr"].unique().tolist())
        raise ValueError(f"lr must be one of {known} (the runs of {variant!r} in the table), got {lr}")
    return rows.sort_values("step").reset_index(drop=True)


# --- 05: iso-mask δ for one ε -------------------------------------------------------------------------------


def matched_delta_at(table: pd.DataFrame, epsilon: float) -> pd.DataFrame:
    """The matched δ of every mask at PPO ε = ``epsilon``, per stratum: rows bucket (``all`` first, then the
    entropy buckets in increasing order), columns the masks; from ``analysis.calibration_table``'s "match" rows.

    epsilon must be one of the table's ε (nearest within 1e-9); ValueError names them otherwise.
    """
    match = table[table["record"] == "match"]
    if match.empty:
        raise ValueError("table has no 'match' rows: pass the frame analysis.calibration_table returns")
    epsilon = check_real("epsilon", epsilon, positive=True)
    rows = match[np.isclose(match["epsilon"], epsilon, rtol=0.0, atol=1e-9)]
    if rows.empty:
        known = ", ".join(f"{e:g}" for e in sorted(match["epsilon"].unique()))
        raise ValueError(f"epsilon must be one of the table's ε ({known}), got {epsilon}")
    wide = rows.pivot_table(index="bucket", columns="mask", values="matched_delta", aggfunc="first")
    order = rows.drop_duplicates("bucket").assign(
        key=lambda f: np.where(f["bucket"] == "all", -np.inf, f["bucket_lo"].astype(float))
    )
    return wide.loc[order.sort_values("key")["bucket"].tolist()]


# --- 06: the stability study, one arm at a time ------------------------------------------------------------


def stability_view(summary: pd.DataFrame, engine: str, variant: str) -> dict[str, Any]:
    """One arm of a stability summary (one row per run: variant, engine, seed, drifted, collapsed, stable,
    mismatch_start, mismatch_end, final_reward, mask_frac_mean, ...): its runs and a sentence.

    Returns runs (the arm's rows), verdict ("stable in 3 of 3 seeds; drifted in 0, collapsed in 0"),
    mismatch_change = mean(mismatch_end / mismatch_start) − 1 (negative: the mismatch fell) and the arm's mean
    final reward and masked share.
    """
    for column in (
        "variant",
        "engine",
        "seed",
        "drifted",
        "collapsed",
        "stable",
        "mismatch_start",
        "mismatch_end",
    ):
        if column not in summary.columns:
            raise ValueError(f"summary must have a {column!r} column (a stability_summary.csv table)")
    check_choice("engine", engine, sorted(summary["engine"].unique()))
    check_choice("variant", variant, sorted(summary["variant"].unique()))
    runs = summary[(summary["engine"] == engine) & (summary["variant"] == variant)].sort_values("seed")
    if runs.empty:
        raise ValueError(f"the summary has no runs of variant {variant!r} with engine {engine!r}")
    flags = {c: runs[c].astype(str).str.lower().eq("true") for c in ("drifted", "collapsed", "stable")}
    n = len(runs)
    verdict = (
        f"{variant} with {engine}: stable in {int(flags['stable'].sum())} of {n} seeds; "
        f"drifted in {int(flags['drifted'].sum())}, collapsed in {int(flags['collapsed'].sum())}"
    )
    change = float((runs["mismatch_end"] / runs["mismatch_start"]).mean() - 1.0)
    return {
        "runs": runs.reset_index(drop=True),
        "verdict": verdict,
        "mismatch_change": change,
        "final_reward": float(runs["final_reward"].mean()) if "final_reward" in runs else float("nan"),
        "mask_frac": float(runs["mask_frac_mean"].mean()) if "mask_frac_mean" in runs else float("nan"),
    }


def regime_view(
    calibration: pd.DataFrame,
    level: str,
    map_summary: pd.DataFrame | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """One rung of the regime map's dose ladder (docs/design.md §9.3) and, when the map's table is given, every
    arm at that rung with one engine.

    calibration: ``regime_calibration.csv`` (one row per calibration run: dose_level, lr, staleness, epochs, dose,
    start_reward, final_reward, failed, ...; with a ``chosen_candidate`` column, the chosen candidate's rows);
    map_summary: ``regime_map.csv`` (one row per run: variant, engine,
    dose_level, seed, final_reward, collapsed) or None. Returns rung (the calibration row), sentence, and with a
    map: arms = per arm, the mean final reward over seeds, its difference from pg_is's in the same cell
    (diff = mean_arm − mean_pg_is) and the number of seeds that collapsed (§7).
    """
    needed = ("dose_level", "lr", "staleness", "epochs", "dose", "start_reward", "final_reward", "failed")
    for column in needed:
        if column not in calibration.columns:
            raise ValueError(f"calibration must have a {column!r} column (a regime_calibration.csv table)")
    if (
        "chosen_candidate" in calibration.columns
    ):  # a calibration of several task candidates: the chosen one's
        chosen = calibration["chosen_candidate"].astype(str).str.lower().eq("true")
        calibration = calibration[chosen] if chosen.any() else calibration
    check_choice("level", level, list(calibration["dose_level"].astype(str)))
    rung = calibration[calibration["dose_level"].astype(str) == level].iloc[0]
    failed = str(rung["failed"]).lower() == "true"
    sentence = (
        f"{level}: lr {rung['lr']:g}, staleness {int(rung['staleness'])}, {int(rung['epochs'])} epoch(s): "
        f"dose {rung['dose']:.2g} (share of tokens with π/μ outside [0.8, 1.2] after the update); ppo with the "
        f"matched engine went from {rung['start_reward']:.2f} to {rung['final_reward']:.2f}"
        + (" and failed" if failed else "")
    )
    out: dict[str, Any] = {"rung": rung, "sentence": sentence, "failed": failed, "arms": None}
    if map_summary is None or map_summary.empty:
        return out
    for column in ("variant", "engine", "dose_level", "seed", "final_reward", "collapsed"):
        if column not in map_summary.columns:
            raise ValueError(f"map_summary must have a {column!r} column (a regime_map.csv table)")
    check_choice("engine", engine, sorted(map_summary["engine"].unique()))
    cell = map_summary[(map_summary["engine"] == engine) & (map_summary["dose_level"].astype(str) == level)]
    if cell.empty:
        return out
    collapsed = cell["collapsed"].astype(str).str.lower().eq("true")
    arms = (
        cell.assign(collapsed=collapsed)
        .groupby("variant")
        .agg(final_reward=("final_reward", "mean"), seeds=("seed", "nunique"), collapsed=("collapsed", "sum"))
    )
    reference = arms["final_reward"].get("pg_is", float("nan"))
    out["arms"] = arms.assign(diff_vs_pg_is=arms["final_reward"] - reference).reset_index()
    return out


# --- widgets ------------------------------------------------------------------------------------------------


def controls(fn: Callable[..., Any], **widgets: Any) -> Any:
    """``ipywidgets.interactive(fn, **widgets)`` (continuous_update off for sliders), or, without ipywidgets,
    ``fn`` called once with each widget's default value (a tuple's first entry, a slider's value).

    The returned object's ``result`` holds fn's return of its first call, so a notebook executed without a
    browser still shows and checks one answer.
    """
    try:
        import ipywidgets
    except ImportError:
        defaults = {name: _default(w) for name, w in widgets.items()}
        print("(install ipywidgets for the live controls; showing the default setting)")
        return _Called(fn(**defaults))
    for w in widgets.values():
        if hasattr(w, "continuous_update"):
            w.continuous_update = False
    return ipywidgets.interactive(fn, **widgets)


class _Called:
    def __init__(self, result: Any) -> None:
        self.result = result

    def _repr_html_(self) -> str:
        return ""


def _default(widget: Any) -> Any:
    if hasattr(widget, "value"):
        return widget.value
    if isinstance(widget, list | tuple):
        return widget[0]
    return widget
