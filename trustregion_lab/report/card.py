"""report.md: one page a person reads — the verdicts, the key numbers, the figures. Built from the written tables.

Every verdict is computed from the tables; each is left out when its table lacks the rows it needs:
- trend: mean |π − μ| over the first and the last tenth of the steps (at least one step each), and their ratio;
- PPO vs Binary TV: tokens PPO drops that Binary TV keeps (and the reverse), and where in μ(a) they sit;
- matched δ: the symmetric Binary-TV δ that masks as many tokens as PPO's clip;
- sequence IS: the share of sequences whose product weight lies outside [1/3, 3];
- anchors: the mask rate on the rollout vs the recompute anchor; exact TV: the masks' agreement with it;
- inputs: tokens left out because a log-prob or the advantage was null or non-finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from trustregion_lab.report.names import METRICS

__all__ = ["render_card", "verdicts"]


def _pct(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    value = 100 * x
    return f"{value:.1f} %" if value >= 0.1 or value == 0 else f"{value:.2g} %"


def _num(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def _trend(by_step: pd.DataFrame) -> str | None:
    rows = by_step[by_step["metric"] == "mismatch_mean"].dropna(subset=["value"]).sort_values("step")
    if len(rows) < 2:
        return None
    tenth = max(1, len(rows) // 10)
    first, last = rows["value"].iloc[:tenth].mean(), rows["value"].iloc[-tenth:].mean()
    steps = f"steps {rows['step'].iloc[0]}–{rows['step'].iloc[-1]}"
    if first <= 0:
        return f"The mismatch (mean |π(a) − μ(a)|) went from {_num(first)} to {_num(last)} over {steps}."
    ratio = last / first
    if ratio >= 1.5:
        word = f"rose {ratio:.1f}×"
    elif ratio <= 1 / 1.5:
        word = f"fell {1 / ratio:.1f}×"
    else:
        word = f"stayed flat (×{ratio:.2f})"
    return f"The mismatch (mean |π(a) − μ(a)|) {word} over the run: {_num(first)} in the first steps, {_num(last)} in the last ({steps})."


def _confusion(by_mu: pd.DataFrame) -> list[str]:
    total = by_mu[(by_mu["mu_bucket"] == "all") & (by_mu["sign"] == "all")]
    cells = by_mu[(by_mu["mu_bucket"] != "all") & (by_mu["sign"] == "all")]
    if total.empty or not total["tokens"].iloc[0]:
        return []
    t = total.iloc[0]
    ppo, tv = f"PPO {t['ppo_low']:g}/{t['ppo_high']:g}", f"Binary TV {t['tv_low']:g}/{t['tv_high']:g}"
    out = []
    if t["ppo_only"]:
        low = cells.loc[cells["mu_hi"] <= 0.01 + 1e-12, "ppo_only"].sum() / t["ppo_only"]
        out.append(
            f"{ppo} drops {_pct(t['ppo_only_frac'])} of tokens that {tv} keeps, {_pct(low)} of them with μ(a) < 0.01."
        )
    else:
        out.append(f"{ppo} drops no token that {tv} keeps.")
    if t["tv_only"]:
        high = cells.loc[cells["mu_lo"] >= 0.5 - 1e-12, "tv_only"].sum() / t["tv_only"]
        out.append(
            f"{tv} drops {_pct(t['tv_only_frac'])} of tokens that {ppo} keeps, {_pct(high)} of them with μ(a) ≥ 0.5."
        )
    if "tv_agree_exact" in total and np.isfinite(t.get("tv_agree_exact", np.nan)):
        out.append(
            f"Against the exact-TV mask at δ = {t['tv_low']:g}: Binary TV agrees on {_pct(t['tv_agree_exact'])} "
            f"of tokens, {ppo} on {_pct(t['ppo_agree_exact'])}."
        )
    return out


def _matched(matched: pd.DataFrame) -> str | None:
    rows = matched[
        (matched["method"] == "dppo_binary_tv") & (matched["ppo_low"] == 0.2) & (matched["ppo_high"] == 0.2)
    ]
    if rows.empty or not np.isfinite(rows["matched_delta"].iloc[0]):
        return None
    r = rows.iloc[0]
    if not r["reachable"]:
        return f"PPO 0.2/0.2 drops {_pct(r['ppo_mask_frac'])}; Binary TV drops fewer even at δ = 0."
    return (
        f"Binary TV with δ = {r['matched_delta']:.3g} drops as many tokens as PPO's ε = 0.2 "
        f"({_pct(r['ppo_mask_frac'])}; the smallest such δ lies in ({r['matched_delta_lo']:.5g}, "
        f"{r['matched_delta']:.5g}])."
    )


def _sequence(sequence_is: pd.DataFrame) -> str | None:
    rows = sequence_is[(sequence_is["level"] == "product") & (sequence_is["cap"] == 3.0)]
    if rows.empty:
        return None
    r = rows.iloc[0]
    token = sequence_is[(sequence_is["level"] == "token") & (sequence_is["cap"] == 3.0)].iloc[0]
    return (
        f"A sequence-level IS cap of 3 would touch {_pct(r['frac_outside'])} of sequences (product weight outside "
        f"[1/3, 3]; {_pct(r['frac_above'])} above 3), with {r['mean_length']:.0f} tokens per sequence and a mean "
        f"|log r| of {_num(token['log_weight_abs_mean'])} per token; the same cap per token touches "
        f"{_pct(token['frac_outside'])} of tokens."
    )


def _anchors(summary: pd.DataFrame) -> str | None:
    ppo = summary[(summary["method"] == "ppo") & (summary["low"] == 0.2) & (summary["high"] == 0.2)]
    if set(ppo["anchor"]) != {"rollout", "recompute"}:
        return None
    rate = dict(zip(ppo["anchor"], ppo["mask_frac"]))
    return (
        f"PPO 0.2/0.2 drops {_pct(rate['rollout'])} anchored on the rollout μ and {_pct(rate['recompute'])} "
        "anchored on the recomputed π_old: the recompute anchor does not see the engine's mismatch."
    )


def verdicts(tables: Mapping[str, pd.DataFrame], inputs: Mapping[str, object]) -> list[str]:
    """Plain sentences computed from the tables (see module docstring)."""
    out = [_trend(tables["by_step"])]
    out += _confusion(tables["by_mu"])
    out += [_matched(tables["matched_delta"]), _sequence(tables["sequence_is"]), _anchors(tables["summary"])]
    n = int(inputs.get("response_tokens", 0))
    null = max(int(inputs.get(k, 0)) for k in ("null_rollout_logprob", "null_logprob", "null_advantage"))
    if null:
        out.append(
            f"Up to {null:,} of {n:,} response tokens ({_pct(null / n)}) had a null or non-finite log-prob or "
            "advantage and were left out of every statistic that needs it (counts below)."
        )
    return [v for v in out if v]


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_card(
    tables: Mapping[str, pd.DataFrame], inputs: Mapping[str, object], figures: Sequence[str]
) -> str:
    """The text of report.md."""
    summary = tables["summary"]
    cols = ["method", "low", "high", "anchor", "mask_frac", "mask_frac_pos", "mask_frac_neg", "tokens"]
    extra = ["agree_exact_tv"] if summary["agree_exact_tv"].notna().any() else []
    parts = [
        "# Trust-region report card",
        "",
        f"Source: `{inputs.get('path')}` ({inputs.get('format')}; {inputs.get('files')} file(s), "
        f"{inputs.get('steps')} step(s), {inputs.get('sequences')} sequence(s), "
        f"{int(inputs.get('response_tokens', 0)):,} response tokens).",
        "",
        "## Verdicts",
        "",
        *[f"- {v}" for v in verdicts(tables, inputs)],
        "",
        "## Mask rates (response tokens with Â ≠ 0)",
        "",
        _markdown(summary[cols + extra]),
        "",
    ]
    for name in figures:
        parts += [f"![{name}]({name})", ""]
    if inputs.get("notes"):
        parts += ["## Notes", "", f"- {inputs['notes']}", ""]
    counts = {k: v for k, v in inputs.items() if k.startswith(("null_", "zero_", "invalid_"))}
    parts += [
        "## Inputs",
        "",
        "Left out (null or non-finite) and zero-advantage response tokens: "
        + ", ".join(f"{k} {int(v):,}" for k, v in counts.items())
        + f". Optional columns seen: {inputs.get('optional_columns') or 'none'}.",
        "",
        "Metric names (by_step.csv, by_position.csv): "
        + "; ".join(f"`{k}` = {v}" for k, v in METRICS.items())
        + ".",
        "",
    ]
    return "\n".join(parts)
