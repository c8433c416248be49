"""Figures of the training presets, drawn from per-step training tables (one row per run × step).

- `plot_training` / `training_figures`: ``training_curves.png``, reward, exact TV(μ, π) and the masked share
  over training steps, one row of small panels per variant (mean, and a band over seeds when there are
  several), and ``training_summary.csv``
  (`training_summary`: early/final reward and mean divergences per configuration × variant).
The stability study's figures are in `trustregion_lab.plots.stability`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from trustregion_lab.plots.common import Outputs, facet_labels, readable_log_axis, set_by_variant, style_map

__all__ = ["plot_training", "training_figures", "training_summary"]

# ------------------------------------------------------------------------------------------- training
_TRAINING_PANELS = (
    ("reward", "mean reward per sample", False),
    ("tv_exact", "exact TV(μ, π) (probability mass)", True),
    ("mask_frac", "masked share of tokens with Â ≠ 0", False),
)


def plot_training(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Small multiples: one row per variant, one column per quantity (reward, exact TV(μ, π), masked share),
    one colour, line style and marker per value of the varying configuration columns (e.g. engine: mismatch
    on or off), the y axes shared down each column so that the variants compare at a glance.

    Each seed's curve is first smoothed by a rolling mean over W steps (W = steps/16, at least 1); the line is the
    mean over seeds, and with several seeds a band shows their range (min to max) — a band that stays
    positive, so it can be drawn on the log axis that exact TV needs. With one seed no band is drawn.
    """
    data = table.copy()
    data["facet"] = facet_labels(data, config_columns, exclude=set_by_variant(data, config_columns))
    data["facet"] = data["facet"].where(data["facet"] != "", "all runs")
    facets = sorted(data["facet"].unique())
    variants = sorted(data["variant"].unique())
    panels = [p for p in _TRAINING_PANELS if p[0] in data.columns]
    window = max(1, round(data["step"].nunique() / 16))
    keys = [c for c in ("facet", "variant", "seed") if c in data.columns]
    data = data.sort_values([*keys, "step"])
    for metric, _, _ in panels:
        data[metric] = data.groupby(keys)[metric].transform(lambda v: v.rolling(window, min_periods=1).mean())
    seeds = data["seed"].nunique() if "seed" in data.columns else 1
    styles = style_map(facets)
    fig = Figure(figsize=(4.6 * len(panels) + 0.5, 2.1 * len(variants) + 1.4), layout="constrained")
    axes = fig.subplots(len(variants), len(panels), squeeze=False, sharex=True, sharey="col")
    for col, (metric, label, log_scale) in enumerate(panels):
        positive = data[metric][data[metric] > 0]
        use_log = log_scale and len(positive) and positive.max() / max(positive.min(), 1e-300) > 100
        for row, variant in enumerate(variants):
            ax = axes[row, col]
            sub = data[data["variant"] == variant]
            for facet in facets:
                runs = sub[sub["facet"] == facet]
                if runs.empty:
                    continue
                curve = runs.groupby("step")[metric].agg(["mean", "min", "max"])
                style = styles[facet]
                every = max(1, len(curve) // 6)
                ax.plot(
                    curve.index,
                    curve["mean"],
                    label=facet,
                    **style,  # colour, line style and marker (style_map)
                    markevery=(facets.index(facet) * every // len(facets), every),
                    markersize=4,
                    linewidth=1.3,
                )
                if seeds > 1:
                    ax.fill_between(
                        curve.index, curve["min"], curve["max"], color=style["color"], alpha=0.15, linewidth=0
                    )
            if use_log:
                ax.set_yscale("log")
            if row == 0:
                ax.set_title(label, fontsize=10)
            if col == 0:
                ax.set_ylabel(variant, fontsize=10)
            if row == len(variants) - 1:
                ax.set_xlabel("training step (policy updates)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if use_log:
            readable_log_axis(axes[0, col])
    handles, texts = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncol=len(facets), frameon=False)
    band = f"line: mean over {seeds} seeds, band: range over seeds" if seeds > 1 else "one seed"
    smoothing = f", rolling mean over {window} steps" if window > 1 else ""
    fig.suptitle(f"Training curves, one row per variant ({band}{smoothing})")
    return fig


def training_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The training presets: ``training_curves.png`` and ``training_summary.csv``."""
    return {
        "training_curves.png": plot_training(table, config_columns),
        "training_summary.csv": training_summary(table, config_columns),
    }


def training_summary(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The numbers behind the training figure: one row per configuration × variant, averaged over seeds.

    reward_early / reward_final: mean reward over the first / last eighth of the steps; tv_exact_mean,
    kl_exact_mean, mask_frac_mean: means over all steps; tv_exact_max: the largest per-step value; seeds: count.
    """
    own = {"variant", *set_by_variant(table, config_columns)}
    varying = [c for c in config_columns if c in table.columns and c not in own and table[c].nunique() > 1]
    keys = [*varying, "variant"]
    steps = np.sort(table["step"].unique())
    span = max(1, len(steps) // 8)
    early, late = table["step"].isin(steps[:span]), table["step"].isin(steps[-span:])
    out = (
        table.groupby(keys).agg(seeds=("seed", "nunique")) if "seed" in table else table.groupby(keys).size()
    )
    out = pd.DataFrame(out)
    out["reward_early"] = table[early].groupby(keys)["reward"].mean()
    out["reward_final"] = table[late].groupby(keys)["reward"].mean()
    for metric in ("tv_exact", "kl_exact", "mask_frac"):
        if metric in table.columns:
            out[f"{metric}_mean"] = table.groupby(keys)[metric].mean()
    out["tv_exact_max"] = table.groupby(keys)["tv_exact"].max()
    return out.reset_index()
