"""Figures of the analysis presets, each drawn from the rows of one analysis in a merged sweep table.

- `plot_estimators` / `estimator_figures`: ``estimators_by_mu.png``, bias and spread of each TV/KL estimate
  by μ(a) bucket.
- `plot_masks` / `mask_figures`: ``masks_by_mu.png``, false- and missed-mask rates by μ(a) bucket and
  advantage sign.
- `plot_calibration` / `calibration_figures`: ``calibration.png``, mask rate against the threshold and the δ
  that matches PPO's mask rate at each ε (the iso-mask curves).
- `plot_vocab_scaling` / `vocab_scaling_figures`: ``vocab_scaling.png``, estimator RMSE and bias against the
  vocabulary size.
- `analysis_suite_figures`: all four, each from the rows of its analysis (the ``default`` preset).
Each ``*_figures`` function also returns the CSV of the rows its figure is drawn from.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from trustregion_lab.plots.common import (
    MIN_TOKENS,
    Outputs,
    bucket_axis,
    bucket_positions,
    drop_axis_legend,
    facet_labels,
    filled,
    legend_below,
)

__all__ = [
    "analysis_suite_figures",
    "calibration_figures",
    "estimator_figures",
    "mask_figures",
    "plot_calibration",
    "plot_estimators",
    "plot_masks",
    "plot_vocab_scaling",
    "vocab_scaling_figures",
]

_ESTIMATOR_LABELS = {
    "ratio_tv": "|r − 1| / 2",
    "binary_tv": "Binary TV",
    "k1": "k1 = −log r",
    "k2": "k2 = ½ (log r)²",
    "k3": "k3 = r − 1 − log r",
    "binary_kl": "Binary KL",
}
_RULE_SHORT = {"topk": "top-K", "topk_plus_sampled": "+sampled", "topk_replace_last": "replace-last"}


def _estimator_label(row: pd.Series) -> str:
    if row["estimator"] in ("topk_tv", "topk_kl"):
        name = "Top-K TV" if row["estimator"] == "topk_tv" else "Top-K KL"
        return f"{name} (K={int(row['k'])}, {_RULE_SHORT.get(row['set_rule'], row['set_rule'])})"
    return _ESTIMATOR_LABELS.get(row["estimator"], row["estimator"])


# --------------------------------------------------------------------------------------------- estimators
def _estimator_selection(table: pd.DataFrame) -> pd.DataFrame:
    """The estimators drawn: all single-sample and Binary ones, Top-K with the paper's +sampled rule."""
    keep = ~table["estimator"].isin(["topk_tv", "topk_kl"]) | (table["set_rule"] == "topk_plus_sampled")
    if not keep[table["estimator"].isin(["topk_tv", "topk_kl"])].any():  # no +sampled rule stored: take any
        keep |= table["estimator"].isin(["topk_tv", "topk_kl"])
    out = table[keep].copy()
    out["label"] = out.apply(_estimator_label, axis=1)
    return out


def plot_estimators(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Bias and standard deviation of the error of each estimate by μ(a) bucket; columns TV | KL.

    Means over seeds of the per-run bias and sqrt(variance). Buckets with < MIN_TOKENS tokens are left out.
    """
    data = table[(table["stratum"] == "mu") & (table["n_tokens"] >= MIN_TOKENS)].copy()
    data["facet"] = facet_labels(data, config_columns)
    data["mu"], bucket_labels = bucket_positions(data)
    data["std"] = np.sqrt(data["variance"].astype(float))
    data = _estimator_selection(data)
    facets = sorted(data["facet"].unique())
    fig = Figure(figsize=(13, 8.5 * len(facets)))
    axes = fig.subplots(2 * len(facets), 2, squeeze=False)
    for f_index, facet in enumerate(facets):
        for col, (target, unit) in enumerate((("tv", "probability mass"), ("kl", "nats"))):
            sub = data[(data["facet"] == facet) & (data["target"] == target)]
            for row, (metric, title) in enumerate(
                (("bias", "bias"), ("std", "standard deviation of the error"))
            ):
                ax = axes[2 * f_index + row, col]
                sns.lineplot(
                    data=sub, x="mu", y=metric, hue="label", marker="o", errorbar=None, ax=ax, sort=True
                )
                bucket_axis(ax, bucket_labels)
                if metric == "bias":
                    ax.set_yscale("symlog", linthresh=1e-4)
                    ax.axhline(0.0, color="black", linewidth=0.8, gid="reference")
                else:
                    ax.set_yscale("log")
                ax.set_ylabel(f"{title}\n({target.upper()}, {unit})")
                prefix = f"{facet}: " if facet else ""
                ax.set_title(f"{prefix}{target.upper()} estimates: {title}", fontsize=10)
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("Single-sample and approximate divergence estimates vs the exact value, by μ(a)", y=1.0)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- masks
def _mask_legend_label(table: pd.DataFrame, mask: str) -> str:
    overall = table[(table["mask"] == mask) & (table["stratum"] == "all") & (table["adv_sign"] == "all")]
    if overall.empty:
        return mask
    row = overall.mean(numeric_only=True)
    return (
        f"{mask}: masks {100 * row['mask_rate']:.2f}% of tokens, false {100 * row['false_mask_rate']:.2f}%, "
        f"missed {100 * row['missed_mask_rate']:.2f}%; grad. mass wrongly dropped "
        f"{100 * row['grad_share_false']:.1f}%, let through {100 * row['grad_share_missed']:.1f}%"
    )


def plot_masks(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """False- and missed-mask rates by μ(a) bucket; rows Â > 0 | Â < 0 (× facets), one hue per mask.

    Rates are shares of the bucket's tokens (means over seeds). The legend gives each mask's overall rates and
    the shares of gradient mass wrongly dropped / let through.
    """
    base = table.copy()
    base["facet"] = facet_labels(base, config_columns)
    facets = sorted(base["facet"].unique())
    many = len(facets) > 1  # then each facet gets its own legend (its own numbers) in a third column
    fig = Figure(figsize=(17 if many else 12, 3.6 * 2 * len(facets) + 1.2))
    axes = fig.subplots(
        2 * len(facets),
        3 if many else 2,
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 0.75] if many else [1, 1]},
    )
    for f_index, facet in enumerate(facets):
        sub = base[base["facet"] == facet]
        labels = {mask: _mask_legend_label(sub, mask) for mask in sub["mask"].unique()}
        data = sub[(sub["stratum"] == "mu") & (sub["n_tokens"] >= MIN_TOKENS)].copy()
        data["mu"], bucket_labels = bucket_positions(data)
        data["mask_label"] = data["mask"].map(labels)
        reference = sorted(
            {
                f"{r.reference}({r.ref_low:.3g}/{r.ref_high:.3g})"
                for r in sub.itertuples()
                if r.method == "ppo"
            }
        )
        for row, (sign, sign_text) in enumerate((("pos", "Â > 0"), ("neg", "Â < 0"))):
            part = data[data["adv_sign"] == sign]
            for col, (metric, what) in enumerate(
                (
                    ("false_mask_rate", "false masks: dropped, exact mask keeps"),
                    ("missed_mask_rate", "missed masks: kept, exact mask drops"),
                )
            ):
                ax = axes[2 * f_index + row, col]
                sns.lineplot(
                    data=part, x="mu", y=metric, hue="mask_label", marker="o", errorbar=None, ax=ax, sort=True
                )
                bucket_axis(ax, bucket_labels)
                ax.set_ylabel(f"{metric.replace('_', ' ')}\n(share of the bucket's tokens)")
                prefix = f"{facet}: " if facet else ""
                ax.set_title(f"{prefix}{sign_text} — {what}", fontsize=10)
                if many and row == 0 and col == 0:
                    handles, texts = ax.get_legend_handles_labels()
                    slot = axes[2 * f_index, 2]
                    slot.legend(
                        handles,
                        [textwrap.fill(t, 60) for t in texts],
                        loc="upper left",
                        fontsize=7,
                        frameon=False,
                        title=f"{facet}\nPPO's reference: {', '.join(reference)}",
                        title_fontsize=7,
                    )
                drop_axis_legend(ax)
        if many:
            axes[2 * f_index, 2].axis("off")
            axes[2 * f_index + 1, 2].axis("off")
    if not many:
        legend_below(fig, axes[0, 0], ncol=1)
        ref_text = f"; PPO's reference: {', '.join(reference)}" if reference else ""
        bottom = 0.04 + 0.025 * len(labels)
    else:
        ref_text, bottom = "", 0.0
    fig.suptitle(
        "Trust-region masks vs the exact-divergence mask at the same threshold, by μ(a)" + ref_text, y=1.0
    )
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


# ----------------------------------------------------------------------------------------- calibration
def plot_calibration(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """(a) mask rate vs threshold; (b, c) δ matching PPO's mask rate at ε for the TV and KL masks (iso-mask
    curves, over all tokens); (d) the exact-TV matched δ within entropy-of-μ buckets. Reference lines: ε = 0.2
    and 0.28 (GRPO, clip-higher), δ_TV = 0.15 (verl, TRL) and 0.2 (SkyRL, prime-rl), δ_KL = 0.05.
    Means over seeds; a varying configuration (e.g. vocab_size) is the line style.
    """
    data = table.copy()
    style_cols = [c for c in config_columns if c not in ("analysis", "seed") and c in data.columns]
    varying = [c for c in style_cols if data[c].nunique() > 1]
    data["config"] = (
        data[varying].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1)
        if varying
        else "all"
    )
    style = "config" if varying else None
    fig = Figure(figsize=(13, 10))
    axes = fig.subplots(2, 2)
    curves = data[(data["record"] == "curve") & (data["stratum"] == "all")]
    ax = axes[0, 0]
    sns.lineplot(data=curves, x="threshold", y="mask_rate", hue="mask", style=style, errorbar=None, ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("threshold: ratio ε for ppo, δ for DPPO (TV: probability mass, KL: nats)")
    ax.set_ylabel("mask rate (share of tokens with Â ≠ 0 dropped)")
    ax.set_title("(a) mask rate against the threshold, all tokens", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    match = data[(data["record"] == "match") & (data["stratum"] == "all")]
    for ax, family, unit, conventions in (
        (
            axes[0, 1],
            "tv",
            "probability mass",
            ((0.15, "δ = 0.15 (verl, TRL)"), (0.2, "δ = 0.2 (SkyRL, prime-rl)")),
        ),
        (axes[1, 0], "kl", "nats", ((0.05, "δ = 0.05 (verl, TRL)"),)),
    ):
        part = match[match["method"].str.endswith(family)]
        sns.lineplot(data=part, x="epsilon", y="matched_delta", hue="mask", style=style, errorbar=None, ax=ax)
        for value, text in conventions:
            ax.axhline(value, color="grey", linestyle=":", linewidth=1, gid="reference")
            ax.text(ax.get_xlim()[0], value, " " + text, fontsize=7, va="bottom", color="dimgrey")
        for eps in (0.2, 0.28):
            ax.axvline(eps, color="grey", linestyle="--", linewidth=0.8, gid="reference")
        ax.set_xlabel("PPO ratio clip ε (dimensionless)")
        ax.set_ylabel(f"matched δ ({family.upper()}, {unit})")
        ax.set_title(
            f"({'b' if family == 'tv' else 'c'}) δ with the mask rate of PPO at ε, {family.upper()} masks",
            fontsize=10,
        )
        ax.legend(fontsize=7, loc="best")
    ax = axes[1, 1]
    by_entropy = data[
        (data["record"] == "match") & (data["stratum"] == "entropy") & (data["method"] == "dppo_exact_tv")
    ]
    sns.lineplot(
        data=by_entropy, x="epsilon", y="matched_delta", hue="bucket", style=style, errorbar=None, ax=ax
    )
    for value in (0.15, 0.2):
        ax.axhline(value, color="grey", linestyle=":", linewidth=1, gid="reference")
        ax.text(ax.get_xlim()[0], value, f" δ = {value:g}", fontsize=7, va="bottom", color="dimgrey")
    for eps in (0.2, 0.28):
        ax.axvline(eps, color="grey", linestyle="--", linewidth=0.8, gid="reference")
    ax.set_xlabel("PPO ratio clip ε (dimensionless)")
    ax.set_ylabel("matched δ for dppo_exact_tv (probability mass)")
    ax.set_title("(d) exact-TV matched δ within entropy-of-μ buckets (nats)", fontsize=10)
    ax.legend(fontsize=7, loc="best", title="entropy of μ (nats)", title_fontsize=7)
    fig.suptitle("Threshold calibration: which δ masks as many tokens as a ratio clip ε?", y=1.0)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- vocab scaling
def plot_vocab_scaling(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """RMSE and bias of each estimate (all tokens) against the vocabulary size; columns TV | KL.

    Lines are means over seeds with a ± 1 s.d. band when several seeds are stored.
    """
    data = _estimator_selection(table[table["stratum"] == "all"].copy())
    fig = Figure(figsize=(12, 8.5))
    axes = fig.subplots(2, 2, squeeze=False)
    for col, (target, unit) in enumerate((("tv", "probability mass"), ("kl", "nats"))):
        sub = data[data["target"] == target]
        for row, (metric, title) in enumerate((("rmse", "RMSE"), ("bias", "bias"))):
            ax = axes[row, col]
            sns.lineplot(data=sub, x="vocab_size", y=metric, hue="label", marker="o", errorbar="sd", ax=ax)
            ax.set_xscale("log", base=2)
            if metric == "rmse":
                ax.set_yscale("log")
            else:
                ax.set_yscale("symlog", linthresh=1e-4)
                ax.axhline(0.0, color="black", linewidth=0.8, gid="reference")
            ax.set_xlabel("vocabulary size V (tokens)")
            ax.set_ylabel(f"{title} ({target.upper()}, {unit})")
            ax.set_title(f"{target.upper()} estimates: {title} vs vocabulary size", fontsize=10)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Estimator error against the vocabulary size (all sampled tokens)", y=1.0)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------- figure functions
def estimator_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "estimators" preset: ``estimators_by_mu.png`` and the μ(a)-bucket rows behind it."""
    table = filled(table)
    return {
        "estimators_by_mu.png": plot_estimators(table, config_columns),
        "estimators_by_mu.csv": filled(table[table["stratum"] == "mu"]),
    }


def mask_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "masks" preset: ``masks_by_mu.png`` and its rows."""
    table = filled(table)
    return {"masks_by_mu.png": plot_masks(table, config_columns), "masks_by_mu.csv": table}


def calibration_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "calibration" preset: ``calibration.png``; its CSV holds the matches and the all-token curves."""
    table = filled(table)
    rows = table[(table["record"] == "match") | (table["stratum"] == "all")]
    return {"calibration.png": plot_calibration(table, config_columns), "calibration.csv": filled(rows)}


def vocab_scaling_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "vocab-scaling" preset: ``vocab_scaling.png`` and its rows."""
    table = filled(table)
    return {"vocab_scaling.png": plot_vocab_scaling(table, config_columns), "vocab_scaling.csv": table}


_SUITE: tuple[tuple[str, Callable[[pd.DataFrame, Sequence[str]], Outputs]], ...] = (
    ("estimators", estimator_figures),
    ("masks", mask_figures),
    ("calibration", calibration_figures),
    ("vocab-scaling", vocab_scaling_figures),
)


def analysis_suite_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "default" preset (one run of each analysis): the four analysis figures, each from the rows of its
    analysis (the table's ``analysis`` column); an analysis without rows draws nothing."""
    outputs: Outputs = {}
    for analysis, figures in _SUITE:
        part = table[table["analysis"] == analysis]
        if not part.empty:
            outputs.update(figures(part, config_columns))
    return outputs
