"""Figures of the analysis presets, each drawn from the rows of one analysis in a merged sweep table.

- `plot_estimators` / `estimator_figures`: ``estimators_by_mu.png``, bias and spread of each TV/KL estimate
  by μ(a) bucket.
- `plot_masks` / `mask_figures`: ``masks_by_mu.png``, false- and missed-mask rates by μ(a) bucket and
  advantage sign.
- the ε ↔ δ calibration figure is in `trustregion_lab.plots.calibration` (``calibration.png``).
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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from trustregion_lab.plots.calibration import calibration_figures
from trustregion_lab.plots.common import (
    MIN_TOKENS,
    Outputs,
    bucket_axis,
    bucket_positions,
    coinciding_note,
    draw_lines,
    drop_axis_legend,
    facet_labels,
    filled,
    legend_below,
    readable_log_axis,
    style_map,
)

__all__ = [
    "analysis_suite_figures",
    "estimator_figures",
    "mask_figures",
    "plot_estimator_bias",
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
    """Relative bias and standard deviation of the error of each estimate by μ(a) bucket; columns TV | KL.

    relative bias = bias / exact_mean: the mean error as a share of the bucket's mean exact divergence (0 =
    unbiased in that bucket, −1 = misses all of it), on a linear axis; the standard deviation of the error
    sqrt(variance) in the divergence's unit, on a log axis. Means over seeds. Buckets with < MIN_TOKENS tokens
    are left out. Each estimate has its own colour, line style and marker; lines that coincide are named.
    """
    data = table[(table["stratum"] == "mu") & (table["n_tokens"] >= MIN_TOKENS)].copy()
    data["facet"] = facet_labels(data, config_columns)
    data["mu"], bucket_labels = bucket_positions(data)
    data["std"] = np.sqrt(data["variance"].astype(float))
    data["relative_bias"] = data["bias"].astype(float) / data["exact_mean"].astype(float)
    data = _estimator_selection(data)
    facets = sorted(data["facet"].unique())
    fig = Figure(figsize=(14, 9 * len(facets)), layout="constrained")
    axes = fig.subplots(2 * len(facets), 2, squeeze=False)
    for f_index, facet in enumerate(facets):
        for col, (target, unit) in enumerate((("tv", "probability mass"), ("kl", "nats"))):
            sub = data[(data["facet"] == facet) & (data["target"] == target)]
            order = list(dict.fromkeys(sub.sort_values(["estimator", "k"])["label"]))
            styles = style_map(order)
            for row, (metric, title, ylabel) in enumerate(
                (
                    (
                        "relative_bias",
                        "relative bias",
                        f"bias / exact {target.upper()}\n(share of the exact value)",
                    ),
                    (
                        "std",
                        "standard deviation of the error",
                        f"s.d. of the error\n({target.upper()}, {unit})",
                    ),
                )
            ):
                ax = axes[2 * f_index + row, col]
                same = draw_lines(ax, sub, "mu", metric, "label", order, styles, dodge=0.05)
                bucket_axis(ax, bucket_labels)
                if metric == "relative_bias":
                    ax.axhline(0.0, color="black", linewidth=0.8, gid="reference")
                else:
                    ax.set_yscale("log")
                    readable_log_axis(ax)
                ax.set_ylabel(ylabel)
                prefix = f"{facet}: " if facet else ""
                note = coinciding_note(same)
                ax.set_title(
                    f"{prefix}{target.upper()} estimates: {title}" + (f"\n{note}" if note else ""),
                    fontsize=10,
                )
                if row == 0:  # the panel below uses the same styles
                    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Single-sample and approximate divergence estimates vs the exact value, by μ(a)")
    return fig


def plot_estimator_bias(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Which estimates are unbiased: the bias of each estimate over all sampled tokens (stratum "all") as a share
    of the mean exact divergence, bias / exact_mean, with its 95 % interval ± 1.96 · bias_se / exact_mean, one
    point per seed; columns TV | KL, one row per value of the varying configuration (e.g. perturbation). An
    unbiased estimate's intervals cover 0 (|r − 1|/2, k1, k3); Binary and Top-K are lower bounds (below 0).
    """
    data = _estimator_selection(table[table["stratum"] == "all"].copy())
    if data.empty:
        raise ValueError("table: expected estimator rows with stratum 'all', found none")
    data["facet"] = facet_labels(data, config_columns)
    scale = data["exact_mean"].astype(float)
    data["relative_bias"] = data["bias"].astype(float) / scale
    data["half_width"] = 1.96 * data["bias_se"].astype(float) / scale
    facets = sorted(data["facet"].unique())
    seeds = sorted(data["seed"].unique()) if "seed" in data.columns else [None]
    fig = Figure(figsize=(13, 4.2 * len(facets) + 1.0), layout="constrained")
    axes = fig.subplots(len(facets), 2, squeeze=False)
    for row, facet in enumerate(facets):
        for col, target in enumerate(("tv", "kl")):
            ax = axes[row, col]
            sub = data[(data["facet"] == facet) & (data["target"] == target)]
            order = list(dict.fromkeys(sub.sort_values(["estimator", "k"])["label"]))
            for i, label in enumerate(order):
                points = sub[sub["label"] == label]
                for j, seed in enumerate(seeds):
                    point = points if seed is None else points[points["seed"] == seed]
                    if point.empty:
                        continue
                    shift = (j - (len(seeds) - 1) / 2) * min(0.12, 0.6 / len(seeds))
                    value, half = float(point["relative_bias"].mean()), float(point["half_width"].mean())
                    covers = abs(value) <= half
                    ax.errorbar(
                        i + shift,
                        value,
                        yerr=half,
                        fmt="o" if covers else "s",
                        color="tab:green" if covers else "tab:red",
                        markersize=5,
                        capsize=3,
                        linewidth=1.2,
                    )
            ax.axhline(0.0, color="black", linewidth=0.8, gid="reference")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.6, len(order) - 0.4)
            ax.set_ylabel(f"bias / exact {target.upper()}\n(share of the exact value)")
            prefix = f"{facet}: " if facet else ""
            ax.set_title(f"{prefix}{target.upper()} estimates over all sampled tokens", fontsize=10)
    handles = [
        Line2D(
            [],
            [],
            color="tab:green",
            marker="o",
            linestyle="",
            label="95 % interval covers 0 (no bias found)",
        ),
        Line2D([], [], color="tab:red", marker="s", linestyle="", label="95 % interval excludes 0 (biased)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    per_seed = f"one point per seed ({len(seeds)} seeds)" if len(seeds) > 1 else "one seed"
    fixed = [
        f"{c}={data[c].iloc[0]}"
        for c in ("perturbation", "engine")
        if c in data.columns and data[c].nunique() == 1
    ]
    setting = f" ({', '.join(fixed)})" if fixed else ""
    fig.suptitle(f"Which estimates are unbiased{setting}? Bias with its 95 % interval, {per_seed}")
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
        data["short"] = data["mask"].str.split("[").str[0]  # the note names masks without their Top-K set
        order = list(dict.fromkeys(data.sort_values("mask")["short"]))
        order = [m for m in dict.fromkeys(sub["mask"].str.split("[").str[0]) if m in order]
        styles = style_map(order)
        legend = {m.split("[")[0]: text for m, text in labels.items()}
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
                same = draw_lines(ax, part, "mu", metric, "short", order, styles, dodge=0.06, labels=legend)
                bucket_axis(ax, bucket_labels)
                ax.set_ylabel(f"{metric.replace('_', ' ')}\n(share of the bucket's tokens)")
                prefix = f"{facet}: " if facet else ""
                note = textwrap.fill(coinciding_note(same), 80)
                ax.set_title(f"{prefix}{sign_text} — {what}" + (f"\n{note}" if note else ""), fontsize=9)
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
def plot_vocab_scaling(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """RMSE and relative bias (bias / exact_mean) of each estimate over all tokens against the vocabulary size;
    columns TV | KL. Lines are means over seeds with a ± 1 s.d. band when several seeds are stored; each
    estimate has its own colour, line style and marker, and one legend per column sits beside the panels.
    """
    data = _estimator_selection(table[table["stratum"] == "all"].copy())
    data["relative_bias"] = data["bias"].astype(float) / data["exact_mean"].astype(float)
    fig = Figure(figsize=(14, 8.5), layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    for col, (target, unit) in enumerate((("tv", "probability mass"), ("kl", "nats"))):
        sub = data[data["target"] == target]
        order = list(dict.fromkeys(sub.sort_values(["estimator", "k"])["label"]))
        styles = style_map(order)
        for row, (metric, title, ylabel) in enumerate(
            (
                ("rmse", "RMSE", f"RMSE ({target.upper()}, {unit})"),
                (
                    "relative_bias",
                    "relative bias",
                    f"bias / exact {target.upper()}\n(share of the exact value)",
                ),
            )
        ):
            ax = axes[row, col]
            for label in order:
                runs = sub[sub["label"] == label]
                stats = runs.groupby("vocab_size")[metric].agg(["mean", "std", "count"])
                style = styles[label]
                ax.plot(
                    stats.index,
                    stats["mean"],
                    label=label,
                    **style,  # colour, line style and marker (style_map)
                    markersize=5,
                )
                if (stats["count"] > 1).any():
                    ax.fill_between(
                        stats.index,
                        stats["mean"] - stats["std"].fillna(0.0),
                        stats["mean"] + stats["std"].fillna(0.0),
                        color=style["color"],
                        alpha=0.12,
                        linewidth=0,
                    )
            ax.set_xscale("log", base=2)
            sizes = sorted(sub["vocab_size"].unique())
            ax.set_xticks(sizes, [f"{int(v):,}" for v in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            if metric == "rmse":
                ax.set_yscale("log")
                readable_log_axis(ax)
            else:
                ax.axhline(0.0, color="black", linewidth=0.8, gid="reference")
            ax.set_xlabel("vocabulary size V (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{target.upper()} estimates: {title} vs vocabulary size", fontsize=10)
            if row == 0:
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    seeds = data["seed"].nunique() if "seed" in data.columns else 1
    band = f"mean over {seeds} seeds, band ± 1 s.d." if seeds > 1 else "one seed"
    fig.suptitle(f"Estimator error against the vocabulary size (all sampled tokens; {band})")
    return fig


# -------------------------------------------------------------------------------------- figure functions
def estimator_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "estimators" preset: ``estimators_by_mu.png`` and the μ(a)-bucket rows behind it;
    ``estimator_bias.png`` (`plot_estimator_bias`) and its all-token rows."""
    table = filled(table)
    return {
        "estimators_by_mu.png": plot_estimators(table, config_columns),
        "estimators_by_mu.csv": filled(table[table["stratum"] == "mu"]),
        "estimator_bias.png": plot_estimator_bias(table, config_columns),
        "estimator_bias.csv": filled(table[table["stratum"] == "all"]),
    }


def mask_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "masks" preset: ``masks_by_mu.png`` and its rows."""
    table = filled(table)
    return {"masks_by_mu.png": plot_masks(table, config_columns), "masks_by_mu.csv": table}


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
