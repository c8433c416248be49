"""Figures drawn only from stored sweep tables: ``python -m trustregion_lab.plots RESULTS_DIR``.

Reads ``RESULTS_DIR/table.csv`` (and ``sweep.json`` when present, for the names of the configuration columns)
and writes PNG figures (dpi 120) into ``RESULTS_DIR/figures`` or ``--figures-dir``, each analysis figure with a
CSV of the rows it is drawn from (``<figure>.csv``, the numbers behind the picture):

- ``estimators_by_mu.png``: bias and spread of each TV/KL estimate by μ(a) bucket (rows with analysis
  "estimators").
- ``masks_by_mu.png``: false- and missed-mask rates by μ(a) bucket and advantage sign (analysis "masks").
- ``calibration.png``: mask rate against the threshold, and the δ that matches PPO's mask rate at each ε
  (the iso-mask curves; analysis "calibration").
- ``vocab_scaling.png``: estimator RMSE and bias against the vocabulary size (analysis "vocab-scaling").
- ``training_curves.png``: reward and exact TV(μ, π) over training steps, mean and a band over seeds, one hue per
  method (tables with step / reward / tv_exact columns, presets of kind "training").

Configuration columns that vary within a table (e.g. ``perturbation`` or ``engine``) become facets.
Every figure is a `matplotlib.figure.Figure` built without pyplot, so drawing needs no display.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = [
    "draw_figures",
    "main",
    "plot_calibration",
    "plot_estimators",
    "plot_masks",
    "plot_training",
    "plot_vocab_scaling",
]

DPI = 120
MIN_TOKENS = 20  # buckets with fewer tokens are not drawn (their statistics are noise)
_NOT_FACETS = {
    "analysis",
    "seed",
    "preset",
    "run_id",
    "version",
    "git_commit",
    "method",
    "vocab_size",
    "scaling_vocab_sizes",
}
_ESTIMATOR_LABELS = {
    "ratio_tv": "|r − 1| / 2",
    "binary_tv": "Binary TV",
    "k1": "k1 = −log r",
    "k2": "k2 = ½ (log r)²",
    "k3": "k3 = r − 1 − log r",
    "binary_kl": "Binary KL",
}
_RULE_SHORT = {"topk": "top-K", "topk_plus_sampled": "+sampled", "topk_replace_last": "replace-last"}
_MU_AXIS = "μ(a): rollout probability of the sampled token"


# ------------------------------------------------------------------------------------------------ helpers
def _config_columns(table: pd.DataFrame, results_dir: Path | None) -> list[str]:
    """Configuration columns: the preset's parameters from sweep.json, else none."""
    if results_dir is not None and (results_dir / "sweep.json").exists():
        manifest = json.loads((results_dir / "sweep.json").read_text())
        names = list(manifest.get("defaults", manifest.get("base", {})))
        return [name for name in names if name in table.columns]
    return []


def _facet_labels(
    table: pd.DataFrame, config_columns: Sequence[str], exclude: Sequence[str] = ()
) -> pd.Series:
    """One label per row naming the values of the configuration columns that vary ("" when none vary)."""
    varying = [
        c
        for c in config_columns
        if c not in _NOT_FACETS
        and c not in exclude
        and c in table.columns
        and table[c].nunique(dropna=False) > 1
    ]
    if not varying:
        return pd.Series("", index=table.index)
    return table[varying].astype(str).apply(lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def _bucket_positions(data: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Evenly spaced x positions for the μ(a) buckets (ordered by their lower edge) and their tick labels."""
    order = data[["bucket_lo", "bucket"]].drop_duplicates().sort_values("bucket_lo")
    position = {label: i for i, label in enumerate(order["bucket"])}
    return data["bucket"].map(position), list(order["bucket"])


def _bucket_axis(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_xlabel(_MU_AXIS + " (bucket)")


def _estimator_label(row: pd.Series) -> str:
    if row["estimator"] in ("topk_tv", "topk_kl"):
        name = "Top-K TV" if row["estimator"] == "topk_tv" else "Top-K KL"
        return f"{name} (K={int(row['k'])}, {_RULE_SHORT.get(row['set_rule'], row['set_rule'])})"
    return _ESTIMATOR_LABELS.get(row["estimator"], row["estimator"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save(fig: Figure | pd.DataFrame, path: Path) -> Path:
    """Save a PNG (a Figure) or a CSV (a DataFrame) via a temporary file and a rename: nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if isinstance(fig, pd.DataFrame):
            fig.to_csv(tmp, index=False)
        else:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _legend_below(fig: Figure, ax, ncol: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, -0.02))


def _drop_axis_legend(ax) -> None:
    if ax.get_legend() is not None:
        ax.get_legend().remove()


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
    data["facet"] = _facet_labels(data, config_columns)
    data["mu"], bucket_labels = _bucket_positions(data)
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
                _bucket_axis(ax, bucket_labels)
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
    base["facet"] = _facet_labels(base, config_columns)
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
        data["mu"], bucket_labels = _bucket_positions(data)
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
                _bucket_axis(ax, bucket_labels)
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
                _drop_axis_legend(ax)
        if many:
            axes[2 * f_index, 2].axis("off")
            axes[2 * f_index + 1, 2].axis("off")
    if not many:
        _legend_below(fig, axes[0, 0], ncol=1)
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


# ------------------------------------------------------------------------------------------- training
_TRAINING_PANELS = (
    ("reward", "mean reward per sample", False),
    ("tv_exact", "exact TV(μ, π) (probability mass)", True),
    ("mask_frac", "masked share of tokens with Â ≠ 0", False),
)


def plot_training(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Figure:
    """Reward, exact TV(μ, π) and the masked share over steps, one hue per method, one column per value of the
    varying configuration columns (e.g. engine: mismatch on or off).

    Each seed's curve is first smoothed by a rolling mean over W steps (W = steps/16, at least 1); the line is the
    mean over seeds and the band the range (min to max) over seeds — a band that stays positive, so it can be
    drawn on the log axis that exact TV needs.
    """
    data = table.copy()
    data["facet"] = _facet_labels(data, config_columns)
    facets = sorted(data["facet"].unique())
    panels = [p for p in _TRAINING_PANELS if p[0] in data.columns]
    window = max(1, round(data["step"].nunique() / 16))
    keys = [c for c in ("facet", "method", "seed") if c in data.columns]
    data = data.sort_values([*keys, "step"])
    for metric, _, _ in panels:
        data[metric] = data.groupby(keys)[metric].transform(lambda v: v.rolling(window, min_periods=1).mean())
    fig = Figure(figsize=(5.5 * len(facets) + 1, 4.2 * len(panels)))
    axes = fig.subplots(len(panels), len(facets), squeeze=False)
    for col, facet in enumerate(facets):
        sub = data[data["facet"] == facet]
        for row, (metric, label, log_scale) in enumerate(panels):
            ax = axes[row, col]
            sns.lineplot(data=sub, x="step", y=metric, hue="method", errorbar=("pi", 100), ax=ax)
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
                _drop_axis_legend(ax)
    smoothing = f", rolling mean over {window} steps" if window > 1 else ""
    fig.suptitle(f"Training curves: mean over seeds (line) and range over seeds (band){smoothing}", y=1.0)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- driver
_ANALYSIS_FIGURES = {
    "estimators": ("estimators_by_mu", plot_estimators),
    "masks": ("masks_by_mu", plot_masks),
    "calibration": ("calibration", plot_calibration),
    "vocab-scaling": ("vocab_scaling", plot_vocab_scaling),
}


def _figure_rows(analysis: str, part: pd.DataFrame) -> pd.DataFrame:
    """The rows a figure is drawn from, stored next to it as <figure>.csv (the numbers behind the picture)."""
    if analysis == "estimators":
        part = part[part["stratum"] == "mu"]
    elif analysis == "calibration":
        part = part[(part["record"] == "match") | (part["stratum"] == "all")]
    return part.dropna(axis=1, how="all")


_TRAINING_COLUMNS = {"step", "reward", "tv_exact", "method"}
_TRAINING_METRICS = {
    "step",
    "reward",
    "entropy",
    "tv_exact",
    "kl_exact",
    "mismatch_k1",
    "mismatch_k3",
    "mask_frac",
    "mask_frac_pos",
    "mask_frac_neg",
    "ratio_clip_frac",
    "ratio_cap_frac",
    "grad_norm",
    "tokens_per_s",
}


def _inferred_training_config(table: pd.DataFrame, max_values: int = 8) -> list[str]:
    """Without sweep.json: columns of a training table that are not metrics and take few values (e.g. engine)."""
    return [
        c
        for c in table.columns
        if c not in _TRAINING_METRICS
        and c not in _NOT_FACETS
        and table[c].nunique(dropna=False) <= max_values
    ]


def training_summary(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The numbers behind the training figure: one row per configuration × method, averaged over seeds.

    reward_early / reward_final: mean reward over the first / last eighth of the steps; tv_exact_mean,
    kl_exact_mean, mask_frac_mean: means over all steps; tv_exact_max: the largest per-step value; seeds: count.
    """
    varying = [c for c in config_columns if c in table.columns and c != "method" and table[c].nunique() > 1]
    keys = [*varying, "method"]
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


def draw_figures(results_dir: str | os.PathLike, figures_dir: str | os.PathLike | None = None) -> list[Path]:
    """Draw every figure the stored table supports; returns the written paths.

    results_dir: a sweep folder holding ``table.csv`` (and ``sweep.json``); figures_dir: where the PNGs go
    (default ``results_dir/figures``).
    """
    results_dir = Path(results_dir)
    table_path = results_dir / "table.csv"
    if not table_path.exists():
        raise FileNotFoundError(f"{table_path} not found: results_dir must be a finished sweep folder")
    table = pd.read_csv(table_path, keep_default_na=False, na_values=["", "nan", "NaN"])
    figures_dir = Path(figures_dir) if figures_dir is not None else results_dir / "figures"
    config_columns = _config_columns(table, results_dir)
    written: list[Path] = []
    if "analysis" in table.columns:
        for analysis, (name, draw) in _ANALYSIS_FIGURES.items():
            part = table[table["analysis"] == analysis].dropna(axis=1, how="all")
            if not part.empty:
                written.append(_save(draw(part, config_columns), figures_dir / f"{name}.png"))
                _save(_figure_rows(analysis, part), figures_dir / f"{name}.csv")
    if _TRAINING_COLUMNS <= set(table.columns):
        columns = config_columns or _inferred_training_config(table)
        written.append(_save(plot_training(table, columns), figures_dir / "training_curves.png"))
        _save(training_summary(table, columns), figures_dir / "training_summary.csv")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustregion_lab.plots RESULTS_DIR [--figures-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.plots",
        description="Draw the figures of a finished sweep from its stored table (RESULTS_DIR/table.csv).",
        epilog="example:\n  python -m trustregion_lab.plots results/default --figures-dir figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder holding table.csv")
    parser.add_argument("--figures-dir", default=None, metavar="DIR", help="default: RESULTS_DIR/figures")
    args = parser.parse_args(argv)
    try:
        written = draw_figures(args.results_dir, args.figures_dir)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    for path in written:
        print(f"figure: {path}")
    if not written:
        print("no figure: the table holds no rows a figure is drawn from", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
