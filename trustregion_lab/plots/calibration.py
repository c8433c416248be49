"""The ε ↔ δ calibration figure (the ``calibration`` preset; docs/design.md §2.8), drawn from the rows of the
calibration analysis in a merged sweep table.

- `plot_calibration` / `calibration_figures`: ``calibration.png``, mask rate against the threshold and the δ
  that matches PPO's mask rate at each ε (the iso-mask curves), with the CSV of the rows it is drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from trustregion_lab.plots.common import (
    Outputs,
    filled,
    readable_log_axis,
    style_map,
)

__all__ = ["calibration_figures", "plot_calibration"]


_MASK_ORDER = ("ppo", "dppo_binary_tv", "dppo_exact_tv", "dppo_binary_kl", "dppo_exact_kl")


def _curve_lines(
    ax, data: pd.DataFrame, x: str, y: str, by: str, order: Sequence[str], styles, configs
) -> None:
    """One line per (value of ``by``, configuration): colour from ``styles``, line style from the configuration
    when several are drawn (else the value's own); means over seeds."""
    dashes = ("-", "--", ":", "-.")
    for name in order:
        for c_index, config in enumerate(configs):
            part = data[(data[by] == name) & (data["config"] == config)]
            if part.empty:
                continue
            curve = part.groupby(x)[y].mean().sort_index()
            style = styles[name]
            label = name if len(configs) == 1 else f"{name}, {config}"
            linestyle = style["linestyle"] if len(configs) == 1 else dashes[c_index % len(dashes)]
            ax.plot(curve.index, curve.to_numpy(), label=label, color=style["color"], linestyle=linestyle)


def _conventions(ax, values: Sequence[tuple[float, str]], epsilons: bool) -> None:
    for value, text in values:
        ax.axhline(value, color="grey", linestyle=":", linewidth=1, gid="reference")
        ax.text(ax.get_xlim()[0], value, " " + text, fontsize=7, va="bottom", color="dimgrey")
    if epsilons:
        for eps in (0.2, 0.28):
            _vline(ax, eps, f"ε = {eps:g}")


def _vline(ax, x: float, text: str) -> None:
    """A dashed reference line at ``x`` with its value written at the top of the axes."""
    ax.axvline(x, color="grey", linestyle="--", linewidth=0.8, gid="reference")
    ax.text(
        x,
        1.0,
        text,
        transform=ax.get_xaxis_transform(),
        fontsize=7,
        color="dimgrey",
        ha="center",
        va="bottom",
    )


def plot_calibration(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Top row, one threshold per axis: the mask rate against (a) PPO's ratio clip ε, (b) δ of the TV masks,
    (c) δ of the KL masks; bottom row: (d, e) the δ matching PPO's mask rate at ε for the TV and KL masks
    (iso-mask curves, over all tokens), (f) the exact-TV matched δ within entropy-of-μ buckets. Reference lines:
    ε = 0.2 and 0.28 (GRPO, clip-higher), δ_TV = 0.15 (verl, TRL) and 0.2 (SkyRL, prime-rl), δ_KL = 0.05.
    Means over seeds; each mask keeps its colour in every panel; a varying configuration (e.g. vocab_size) is
    the line style.
    """
    data = table.copy()
    style_cols = [c for c in config_columns if c not in ("analysis", "seed") and c in data.columns]
    varying = [c for c in style_cols if data[c].nunique() > 1]
    data["config"] = (
        data[varying].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1)
        if varying
        else "all"
    )
    configs = sorted(data["config"].unique())
    masks = [m for m in _MASK_ORDER if (data["mask"] == m).any()]
    masks += sorted(set(data["mask"].dropna().unique()) - set(masks) - {""})
    styles = style_map(masks)
    fig = Figure(figsize=(17, 10), layout="constrained")
    axes = fig.subplots(2, 3)
    curves = data[(data["record"] == "curve") & (data["stratum"] == "all")]
    rate_label = "mask rate (share of tokens with Â ≠ 0 dropped)"
    for ax, letter, family, xlabel, conventions in (
        (axes[0, 0], "a", "ppo", "PPO ratio clip ε (dimensionless)", ()),
        (axes[0, 1], "b", "tv", "δ of the TV masks (probability mass)", (0.15, 0.2)),
        (axes[0, 2], "c", "kl", "δ of the KL masks (nats)", (0.05,)),
    ):
        names = [
            m for m in masks if (m == "ppo") == (family == "ppo") and (family == "ppo" or m.endswith(family))
        ]
        part = curves[curves["mask"].isin(names)]
        if family == "ppo":  # the ε axis starts where PPO's band has any width
            part = part[part["threshold"] > 0]
        _curve_lines(ax, part, "threshold", "mask_rate", "mask", names, styles, configs)
        ax.set_yscale("log")
        readable_log_axis(ax)
        symbol = "ε" if family == "ppo" else "δ"
        for value in (0.2, 0.28) if family == "ppo" else conventions:
            _vline(ax, value, f"{symbol} = {value:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(rate_label)
        what = "PPO's ratio clip" if family == "ppo" else f"the {family.upper()} masks"
        ax.set_title(f"({letter}) mask rate of {what} against its threshold", fontsize=10, pad=14)
        ax.legend(fontsize=8, loc="upper right")
    match = data[(data["record"] == "match") & (data["stratum"] == "all")]
    for ax, letter, family, unit, conventions in (
        (
            axes[1, 0],
            "d",
            "tv",
            "probability mass",
            ((0.15, "δ = 0.15 (verl, TRL)"), (0.2, "δ = 0.2 (SkyRL, prime-rl)")),
        ),
        (axes[1, 1], "e", "kl", "nats", ((0.05, "δ = 0.05 (verl, TRL)"),)),
    ):
        names = [m for m in masks if m != "ppo" and m.endswith(family)]
        part = match[match["method"].isin(names)]
        _curve_lines(ax, part, "epsilon", "matched_delta", "method", names, styles, configs)
        _conventions(ax, conventions, epsilons=True)
        ax.set_xlabel("PPO ratio clip ε (dimensionless)")
        ax.set_ylabel(f"matched δ ({family.upper()}, {unit})")
        ax.set_title(
            f"({letter}) δ with the mask rate of PPO at ε, {family.upper()} masks", fontsize=10, pad=14
        )
        ax.legend(fontsize=8, loc="lower right" if family == "tv" else "upper left")
    ax = axes[1, 2]
    by_entropy = data[
        (data["record"] == "match") & (data["stratum"] == "entropy") & (data["method"] == "dppo_exact_tv")
    ]
    buckets = (
        list(dict.fromkeys(by_entropy.sort_values("bucket_lo")["bucket"]))
        if "bucket_lo" in by_entropy
        else (sorted(by_entropy["bucket"].unique()))
    )
    _curve_lines(ax, by_entropy, "epsilon", "matched_delta", "bucket", buckets, style_map(buckets), configs)
    _conventions(ax, ((0.15, "δ = 0.15"), (0.2, "δ = 0.2")), epsilons=True)
    ax.set_xlabel("PPO ratio clip ε (dimensionless)")
    ax.set_ylabel("matched δ for dppo_exact_tv (probability mass)")
    ax.set_title("(f) exact-TV matched δ within entropy-of-μ buckets", fontsize=10, pad=14)
    ax.legend(fontsize=8, loc="upper left", title="entropy of μ (nats)", title_fontsize=8)
    fig.suptitle("Threshold calibration: which δ masks as many tokens as a ratio clip ε?")
    return fig


# ---------------------------------------------------------------------------------------- vocab scaling
def calibration_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The "calibration" preset: ``calibration.png``; its CSV holds the matches and the all-token curves."""
    table = filled(table)
    rows = table[(table["record"] == "match") | (table["stratum"] == "all")]
    return {"calibration.png": plot_calibration(table, config_columns), "calibration.csv": filled(rows)}
