"""report.md: one page a person reads — what the table holds, the verdicts with what to do about each, the key
numbers, the figures. Built from the written tables and the input counts.

Every verdict is computed from the tables; each is left out when its table lacks the rows it needs:
- trend: mean |π − μ| over the first and the last tenth of the steps (at least one step each), and their ratio;
- PPO vs Binary TV: tokens PPO drops that Binary TV keeps (and the reverse), and where in μ(a) they sit;
- matched δ: the symmetric Binary-TV δ that masks as many tokens as PPO's clip;
- sequence IS: the share of sequences whose product weight lies above 3 (an upper cap, as TRL and truncated IS
  apply it), and outside [1/3, 3] (a two-sided sequence mask);
- the framework's own IS weights (is_weight, TRL's importance_sampling_ratio): the share it zeroed;
- anchors: the mask rate on the rollout vs the recompute anchor; exact TV: the masks' agreement with it;
- π(a) = μ(a) on every token (verl's bypass mode, or one column written twice): the mismatch is not measured;
- log-probs on a bfloat16 / float16 grid: the resolution of a ratio on rare tokens;
- inputs: tokens (each counted once) left out because a log-prob or the advantage was null or non-finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from trustregion_lab.report.names import METRICS

__all__ = ["holds", "render_card", "verdicts"]


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
    todo = " What to do: nothing; a mismatch that holds steady is the engine's floor."
    if ratio >= 1.5:
        word = f"rose {ratio:.1f}×"
        todo = (
            " What to do: look for what drifts with training (precision of the engine or trainer, kernels, "
            "weight sync); watch mismatch_logprob_abs in by_step.csv as a check, and keep a mask that "
            "bounds the mismatch (the DPPO masks) while it rises."
        )
    elif ratio <= 1 / 1.5:
        word = f"fell {1 / ratio:.1f}×" if ratio > 0 else "fell to 0"
        todo = (
            " What to do: nothing urgent; check it is not an artefact of shorter answers (by_position.csv)."
        )
    else:
        word = f"stayed flat (×{ratio:.2f})"
    return (
        f"The mismatch (mean |π(a) − μ(a)|) {word} over the run: {_num(first)} in the first steps, "
        f"{_num(last)} in the last ({steps}).{todo}"
    )


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
            f"{ppo} drops {_pct(t['ppo_only_frac'])} of tokens that {tv} keeps, {_pct(low)} of them with "
            "μ(a) < 0.01. What to do: these are rare tokens whose ratio moves a lot while their probability "
            "barely does; if they carry the learning signal, a divergence mask (dppo_binary_tv) or PPO "
            "relaxed below μ(a) = 0.1 (ppo_relaxed) keeps them."
        )
    else:
        out.append(f"{ppo} drops no token that {tv} keeps.")
    if t["tv_only"]:
        high = cells.loc[cells["mu_lo"] >= 0.5 - 1e-12, "tv_only"].sum() / t["tv_only"]
        out.append(
            f"{tv} drops {_pct(t['tv_only_frac'])} of tokens that {ppo} keeps, {_pct(high)} of them with "
            "μ(a) ≥ 0.5. What to do: these are likely tokens whose probability moved by more than δ; they are "
            "the ones a divergence mask exists to stop, so a switch to it changes which tokens train."
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
        f"{r['matched_delta']:.5g}]). What to do: to switch from PPO's clip to Binary TV at the same mask "
        "rate on these tokens, start from this δ (matched_delta.csv has the other ε and methods)."
    )


def _sequence(sequence_is: pd.DataFrame, framework: str) -> str | None:
    rows = sequence_is[(sequence_is["level"] == "product") & (sequence_is["cap"] == 3.0)]
    if rows.empty:
        return None
    r = rows.iloc[0]
    token = sequence_is[(sequence_is["level"] == "token") & (sequence_is["cap"] == 3.0)].iloc[0]
    who = (
        "TRL's cap (vllm_importance_sampling_clip_max, formerly _cap) acts on this side only unless a "
        "clip_min is set"
        if framework == "trl"
        else "TRL's cap and truncated IS act on this side only"
    )
    return (
        f"A sequence-level IS cap of 3 from above touches {_pct(r['frac_above'])} of sequences (product weight "
        f"above 3; {who}); a two-sided sequence mask at [1/3, 3] would drop {_pct(r['frac_outside'])}. "
        f"Sequences hold {r['mean_length']:.0f} tokens on average with a mean |log r| of "
        f"{_num(token['log_weight_abs_mean'])} per token; per token, {_pct(token['frac_above'])} lie above 3. "
        "What to do: judge a one-sided cap by the share above it; a two-sided mask on long sequences drops "
        "whole sequences for small per-token drifts (the geometric mean in sequence_is.csv does not grow "
        "with length)."
    )


def _is_weight(inputs: Mapping[str, object]) -> str | None:
    n = int(inputs.get("is_weight_tokens", 0) or 0)
    if not n:
        return None
    zero, above = int(inputs.get("is_weight_zero", 0)), int(inputs.get("is_weight_above_1", 0))
    return (
        f"The framework's own importance weights (is_weight) are 0 on {_pct(zero / n)} of {n:,} tokens "
        f"(dropped by its mask mode above its cap) and above 1 on {_pct(above / n)}; the largest is "
        f"{_num(float(inputs.get('is_weight_max', np.nan)))}. What to do: compare with the upper-cap share "
        "above; a cap that zeroes many tokens wastes their samples, truncation keeps them."
    )


def _framework_flag(inputs: Mapping[str, object]) -> str | None:
    n = int(inputs.get("framework_flagged_tokens", 0) or 0)
    if not n:
        return None
    flagged, zero = int(inputs.get("framework_flagged", 0)), int(inputs.get("framework_flagged_zero_adv", 0))
    compared, disagree = int(inputs.get("framework_compared", 0)), int(inputs.get("framework_disagree", 0))
    return (
        f"The framework's own mask flag (prime-rl's is_masked) marks {flagged:,} of {n:,} response tokens "
        f"({_pct(flagged / n)}), {zero:,} of them with Â = 0 (its rule judges those on the Â < 0 side, and its "
        "is_masked/mean averages per sample over every loss token, so it is not the report's mask rate). On "
        f"the {compared:,} tokens with Â ≠ 0 it differs from the report's Binary TV 0.2/0.2 mask (prime-rl's "
        f"default) on {disagree:,}. What to do: if that count is not near 0, the run used other thresholds "
        "or another loss than the default; compare with summary.csv's rows."
    )


def _anchors(summary: pd.DataFrame) -> str | None:
    ppo = summary[(summary["method"] == "ppo") & (summary["low"] == 0.2) & (summary["high"] == 0.2)]
    if set(ppo["anchor"]) != {"rollout", "recompute"}:
        return None
    rate = dict(zip(ppo["anchor"], ppo["mask_frac"]))
    return (
        f"PPO 0.2/0.2 drops {_pct(rate['rollout'])} anchored on the rollout μ and {_pct(rate['recompute'])} "
        "anchored on the recomputed π_old: the recompute anchor does not see the engine's mismatch. "
        "What to do: if the rollout-anchored rate is the larger, the engine mismatch, not the update, is what "
        "the clip reacts to."
    )


def _identical(inputs: Mapping[str, object]) -> str | None:
    pairs = int(inputs.get("finite_logprob_pairs", 0))
    if not pairs or int(inputs.get("identical_logprob", 0)) != pairs:
        return None
    return (
        f"π(a) = μ(a) exactly on all {pairs:,} tokens: the table compares the engine's log-probs with "
        "themselves (verl's bypass mode sets old_log_probs = rollout_log_probs; or one column was written "
        "twice), so every mismatch here is 0 by construction, not measured. What to do: export the "
        "trainer's own log-probs (verl: from_verl(batch, log_prob=...) with π inside the loss, or turn the "
        "bypass off)."
    )


def _grid(inputs: Mapping[str, object]) -> str | None:
    found = []
    for name, label in (("rollout_logprob", "log μ"), ("logprob", "log π")):
        checked = int(inputs.get(f"{name}_checked", 0))
        if checked < 100:
            continue
        for grid, bits, kind in (("bf16", 8, "bfloat16"), ("fp16", 11, "float16")):
            if int(inputs.get(f"{name}_{grid}", 0)) >= 0.99 * checked:
                found.append((label, kind, bits))
                break
    if not found:
        return None
    parts = ", ".join(f"{label} on a {kind} grid" for label, kind, _ in found)
    bits = min(b for _, _, b in found)
    step8 = 8.0 * 2.0 ** (1 - bits)
    return (
        f"The log-probs sit on a low-precision grid ({parts}): {bits} significant bits, so log p is known to "
        f"{step8:g} for |log p| in [8, 16) (μ(a) below 3.4e-4), and a ratio r there moves in steps of "
        f"×{np.exp(step8):.3g}; near PPO's ε = 0.2 such rounding alone can decide the clip on rare tokens. "
        "What to do: compute and export the log-probs in float32 (log_softmax of float32 logits)."
    )


def _null(inputs: Mapping[str, object]) -> str | None:
    n = int(inputs.get("response_tokens", 0))
    null = int(inputs.get("null_any", 0))
    if not null or not n:
        return None
    return (
        f"{null:,} of {n:,} response tokens ({_pct(null / n)}) had a null or non-finite log μ, log π or "
        "advantage and were left out of every statistic that needs it (per-field counts below). What to do: "
        "find where the exporter writes them (−inf log-probs of tokens the engine's top-p / top-k excluded "
        "are the usual cause)."
    )


def verdicts(tables: Mapping[str, pd.DataFrame], inputs: Mapping[str, object]) -> list[str]:
    """Plain sentences computed from the tables, each with what to do (see module docstring)."""
    framework = str(inputs.get("framework") or "")
    out = [_identical(inputs), _trend(tables["by_step"])]
    out += _confusion(tables["by_mu"])
    out += [
        _matched(tables["matched_delta"]),
        _sequence(tables["sequence_is"], framework),
        _is_weight(inputs),
        _framework_flag(inputs),
        _anchors(tables["summary"]),
        _grid(inputs),
        _null(inputs),
    ]
    return [v for v in out if v]


def holds(inputs: Mapping[str, object]) -> str:
    """Which π the table's logprob column holds, what the report then measures, how to export the in-loss π."""
    optional = str(inputs.get("optional_columns") or "")
    framework = str(inputs.get("framework") or "")
    in_loss = (
        "The table's `logprob` is the trainer's π(a) computed in the training forward pass, inside the loss "
        "(prime-rl's trainer_logprobs): the report sees the mismatch between the engine's μ and the π the "
        "loss used, including any staleness of the rollout."
    )
    if "old_logprob" in optional.split(", "):
        return (
            "The table's `logprob` is π(a) inside the loss and `old_logprob` the recomputed π_old before the "
            "update: the rollout anchor measures μ vs π, the recompute anchor π_old vs π (the update's own "
            "movement)."
        )
    if framework == "prime-rl":
        return in_loss
    return (
        "The table's `logprob` is the trainer's π(a) at the weights that generated the batch, taken before "
        "this step's updates (what verl's old_log_probs, TRL's old_per_token_logps and this project's "
        "--export-tokens hold). The report therefore measures the engine mismatch μ vs π_old only: masks a "
        "trainer applies during its update epochs act on π inside the loss and are not seen here, so a "
        "trainer may log a nonzero masked share where this report shows about 0. To measure those, export "
        "π inside the loss: `from_verl(batch, step=..., log_prob=log_prob)` in the policy loss, "
        "`from_trl(inputs, step=..., per_token_logps=per_token_logps)` in `compute_loss`; the table then "
        "also carries `old_logprob`."
    )


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
        "## What this table holds",
        "",
        holds(inputs),
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
    prefixes = ("null_", "zero_", "invalid_", "sft_", "non_rl_")
    counts = {k: v for k, v in inputs.items() if k.startswith(prefixes) and k != "null_any"}
    parts += [
        "## Inputs",
        "",
        "Left out (null or non-finite, per field; a token may count under several) and zero-advantage "
        "response tokens, and records of other losses (SFT) left out: "
        + ", ".join(f"{k} {int(v):,}" for k, v in counts.items())
        + f". Optional columns seen: {inputs.get('optional_columns') or 'none'}.",
        "",
        "Metric names (by_step.csv, by_position.csv): "
        + "; ".join(f"`{k}` = {v}" for k, v in METRICS.items())
        + ".",
        "",
    ]
    return "\n".join(parts)
