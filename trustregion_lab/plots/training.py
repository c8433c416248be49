"""Figures of the training presets, drawn from per-step training tables (one row per run × step).

- `plot_training` / `training_figures`: ``training_curves.png``, reward, exact TV(μ, π) and the masked share
  over training steps (mean and a band over seeds, one hue per variant), and ``training_summary.csv``
  (`training_summary`: early/final reward and mean divergences per configuration × variant).
The stability study's figures are in `trustregion_lab.plots.stability`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from trustregion_lab.plots.common import Outputs, drop_axis_legend, facet_labels, set_by_variant

__all__ = ["plot_training", "training_figures", "training_summary"]

# ------------------------------------------------------------------------------------------- training
_TRAINING_PANELS = (
    ("reward", "mean reward per sample", False),
    ("tv_exact", "exact TV(μ, π) (probability mass)", True),
    ("mask_frac", "masked share of tokens with Â ≠ 0", False),
)


def plot_training(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Reward, exact TV(μ, π) and the masked share over steps, one hue per variant, one column per value of the
    varying configuration columns (e.g. engine: mismatch on or off).

    Each seed's curve is first smoothed by a rolling mean over W steps (W = steps/16, at least 1); the line is the
    mean over seeds and the band the range (min to max) over seeds — a band that stays positive, so it can be
    drawn on the log axis that exact TV needs.
    """
    data = table.copy()
    data["facet"] = facet_labels(data, config_columns, exclude=set_by_variant(data, config_columns))
    facets = sorted(data["facet"].unique())
    panels = [p for p in _TRAINING_PANELS if p[0] in data.columns]
    window = max(1, round(data["step"].nunique() / 16))
    keys = [c for c in ("facet", "variant", "seed") if c in data.columns]
    data = data.sort_values([*keys, "step"])
    for metric, _, _ in panels:
        data[metric] = data.groupby(keys)[metric].transform(lambda v: v.rolling(window, min_periods=1).mean())
    fig = Figure(figsize=(5.5 * len(facets) + 1, 4.2 * len(panels)))
    axes = fig.subplots(len(panels), len(facets), squeeze=False)
    for col, facet in enumerate(facets):
        sub = data[data["facet"] == facet]
        for row, (metric, label, log_scale) in enumerate(panels):
            ax = axes[row, col]
            sns.lineplot(data=sub, x="step", y=metric, hue="variant", errorbar=("pi", 100), ax=ax)
            if log_scale:
                positive = sub[metric][sub[metric] > 0]
                if len(positive) and positive.max() / max(positive.min(), 1e-300) > 100:
                    ax.set_yscale("log")
            ax.set_xlabel("training step (policy updates)")
            ax.set_ylabel(label)
            ax.set_title(facet or "all runs", fontsize=10)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="best")
            else:
                drop_axis_legend(ax)
    smoothing = f", rolling mean over {window} steps" if window > 1 else ""
    fig.suptitle(f"Training curves: mean over seeds (line) and range over seeds (band){smoothing}", y=1.0)
    fig.tight_layout()
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
