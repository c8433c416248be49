"""The report's figures, drawn only from its written tables (`matplotlib.figure.Figure`, no pyplot).

- ``mask_rates.png``: mask_frac of every summary mask, by anchor (summary.csv);
- ``mismatch_by_step.png``: mean |π − μ|, mean |log π − log μ|, k3 and two mask rates over steps (by_step.csv);
- ``masks_by_mu.png``: share of each μ(a) bucket dropped by PPO only, by Binary TV only, by both (by_mu.csv);
- ``mismatch_by_position.png``: mean |π − μ| and PPO's clip rate by position in the response (by_position.csv);
- ``sequence_is.png``: share of tokens / sequences whose IS weight lies above C, and outside [1/C, C], one panel
  per level on its own axis (sequence_is.csv).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from trustregion_lab._io import atomic_write_with

__all__ = ["DPI", "draw_report_figures"]

DPI = 120
_MU_AXIS = "μ(a): rollout probability of the sampled token"


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    return path


def _spec_label(row: pd.Series) -> str:
    anchor = " (recompute)" if row.get("anchor") == "recompute" else ""
    return f"{row['method']} {row['low']:g}/{row['high']:g}{anchor}"


def plot_mask_rates(summary: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(8, 0.35 * len(summary) + 1.5))
    ax = fig.add_subplot()
    data = summary.assign(mask=summary.apply(_spec_label, axis=1), percent=100 * summary["mask_frac"])
    sns.barplot(data=data, y="mask", x="percent", hue="anchor", dodge=False, ax=ax, orient="h")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2g", fontsize=7)
    ax.set_xlabel("tokens dropped (% of response tokens with Â ≠ 0)")
    ax.set_ylabel("")
    ax.set_title("Mask rate of each trust-region mask on these tokens")
    return fig


def plot_by_step(by_step: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(10, 6.5))
    axes = fig.subplots(2, 2, sharex=True).ravel()
    panels = [
        ("mismatch_mean", "mean |π(a) − μ(a)|", "mean |π(a) − μ(a)| (probability)"),
        ("mismatch_logprob_abs", "mean |log π(a) − log μ(a)|", "mean |log r| (nats)"),
        ("mismatch_k3", "k3 = mean (r − 1 − log r)", "k3 estimate of KL(μ‖π) (nats)"),
    ]
    for ax, (metric, title, ylabel) in zip(axes, panels):
        rows = by_step[by_step["metric"] == metric]
        ax.plot(rows["step"], rows["value"], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if (rows["value"] > 0).all() and len(rows):
            ax.set_yscale("log")
    ax = axes[3]
    masks = by_step[(by_step["metric"] == "mask_frac") & (by_step["anchor"] == "rollout")]
    for (method, low, high), rows in masks.groupby(["method", "low", "high"], sort=False):
        if method in ("ppo", "dppo_binary_tv"):
            ax.plot(
                rows["step"],
                100 * rows["value"],
                marker="o",
                markersize=3,
                label=f"{method} {low:g}/{high:g}",
            )
    ax.set_title("tokens dropped by the mask (rollout anchor)")
    ax.set_ylabel("% of response tokens with Â ≠ 0")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.suptitle("Training–inference mismatch per step", fontsize=11)
    for ax in axes[2:]:
        ax.set_xlabel("step")
    return fig


def plot_by_mu(by_mu: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    cells = by_mu[(by_mu["mu_bucket"] != "all") & (by_mu["sign"] != "all")]
    for ax, (sign, title) in zip(axes, (("pos", "Â > 0"), ("neg", "Â < 0"))):
        rows = cells[cells["sign"] == sign]
        tokens = rows["tokens"].where(rows["tokens"] > 0)
        parts = pd.DataFrame(
            {
                "bucket": rows["mu_bucket"],
                "PPO only": 100 * rows["ppo_only"] / tokens,
                "Binary TV only": 100 * rows["tv_only"] / tokens,
                "both": 100 * rows["both_drop"] / tokens,
            }
        ).melt(id_vars="bucket", var_name="dropped by", value_name="percent")
        sns.barplot(data=parts, x="bucket", y="percent", hue="dropped by", ax=ax)
        ax.set_title(title)
        ax.set_xlabel(_MU_AXIS)
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylabel("% of the bucket's tokens")
    first = by_mu.iloc[0]
    fig.suptitle(
        f"PPO {first['ppo_low']:g}/{first['ppo_high']:g} vs Binary TV {first['tv_low']:g}/{first['tv_high']:g}",
        fontsize=11,
    )
    return fig


def plot_by_position(by_position: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    mean = by_position[by_position["metric"] == "mismatch_mean"]
    axes[0].plot(mean["position_lo"] + 1, mean["value"], marker="o")
    axes[0].set_title("mean |π(a) − μ(a)| by position")
    clip = by_position[(by_position["metric"] == "mask_frac")]
    for (method, low, high), rows in clip.groupby(["method", "low", "high"], sort=False):
        axes[1].plot(
            rows["position_lo"] + 1, 100 * rows["value"], marker="o", label=f"{method} {low:g}/{high:g}"
        )
    axes[1].set_title("tokens dropped (%) by position")
    if axes[1].lines:
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in the response + 1")
    return fig


def plot_sequence_is(sequence_is: pd.DataFrame) -> Figure:
    """One panel per weight level (token, sequence product, sequence geometric mean), each with its own axis:
    their shares differ by orders of magnitude. Bars: share above C, and outside [1/C, C]."""
    levels = [
        (level, title)
        for level, title in (
            ("token", "per token: r_t"),
            ("product", "per sequence: Π r_t"),
            ("geometric", "per sequence: (Π r_t)^(1/n)"),
        )
        if (sequence_is["level"] == level).any()
    ]
    fig = Figure(figsize=(4.0 * len(levels) + 0.5, 4.0))
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    for ax, (level, title) in zip(axes, levels):
        rows = sequence_is[sequence_is["level"] == level]
        data = pd.DataFrame(
            {
                "cap": rows["cap"].map("{:g}".format),
                "above C (an upper cap)": 100 * rows["frac_above"],
                "outside [1/C, C] (two-sided)": 100 * rows["frac_outside"],
            }
        ).melt(id_vars="cap", var_name="touched", value_name="percent")
        sns.barplot(data=data, x="cap", y="percent", hue="touched", ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3g", fontsize=7)
        units = "tokens" if level == "token" else "sequences"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("cap C")
        ax.set_ylabel(f"% of {units}")
        ax.margins(y=0.15)
        top = float(data["percent"].max()) if data["percent"].notna().any() else 0.0
        if top > 0:
            ax.set_ylim(0, top * 1.15)
        else:
            ax.set_ylim(0, 1)
            ax.text(0.5, 0.5, f"no {units[:-1]} beyond any cap", transform=ax.transAxes, ha="center")
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
        elif ax.get_legend() is not None:
            ax.legend(fontsize=7, title=None)
    fig.suptitle("What an importance-weight cap would touch (each panel on its own scale)", fontsize=11)
    return fig


def draw_report_figures(tables: Mapping[str, pd.DataFrame], out: Path) -> list[Path]:
    """Draw every figure whose table has rows into `out` → the PNG paths."""
    plots = [
        ("mask_rates.png", "summary", plot_mask_rates),
        ("mismatch_by_step.png", "by_step", plot_by_step),
        ("masks_by_mu.png", "by_mu", plot_by_mu),
        ("mismatch_by_position.png", "by_position", plot_by_position),
        ("sequence_is.png", "sequence_is", plot_sequence_is),
    ]
    written = []
    for name, table, plot in plots:
        if len(tables[table]):
            written.append(_save(plot(tables[table]), Path(out) / name))
    return written
