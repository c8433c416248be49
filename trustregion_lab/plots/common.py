"""Helpers shared by the figure modules: saving outputs, facet labels, μ(a)-bucket axes and legends.

`save_output` writes a Figure as PNG (dpi DPI) or a DataFrame as CSV through a temporary file and a rename
(``trustregion_lab._io``). `facet_labels` turns the configuration columns that vary within a table into one
label per row; columns that hold bookkeeping (seed, run id, ...) or the hue (method, variant) never become
facets, and `set_by_variant` finds the columns a training table fills with each variant's own value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from trustregion_lab._io import atomic_write_csv, atomic_write_with

__all__ = [
    "DPI",
    "MIN_TOKENS",
    "MU_AXIS",
    "NOT_FACETS",
    "Outputs",
    "bucket_axis",
    "bucket_positions",
    "drop_axis_legend",
    "facet_labels",
    "filled",
    "legend_below",
    "save_output",
    "set_by_variant",
]

DPI = 120
# figure tables keep 10 significant digits: a float64 sum whose last bit differs between CPUs (SIMD widths)
# then writes the same text, so redrawing committed figures from unchanged results changes no file
CSV_FLOAT_FORMAT = "%.10g"
MIN_TOKENS = 20  # buckets with fewer tokens are not drawn (their statistics are noise)
NOT_FACETS = frozenset(
    {
        "analysis",
        "seed",
        "preset",
        "run_id",
        "version",
        "git_commit",
        "method",
        "variant",
        "vocab_size",
        "scaling_vocab_sizes",
    }
)
MU_AXIS = "μ(a): rollout probability of the sampled token"

Outputs = dict[str, Figure | pd.DataFrame]


def save_output(output: Figure | pd.DataFrame, path: Path) -> None:
    """Write ``output`` to ``path``: a Figure to a ``.png`` name, a DataFrame to a ``.csv`` name (TypeError else)."""
    if path.suffix == ".png" and isinstance(output, Figure):
        atomic_write_with(path, lambda tmp: output.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    elif path.suffix == ".csv" and isinstance(output, pd.DataFrame):
        atomic_write_csv(path, output, float_format=CSV_FLOAT_FORMAT)
    else:
        raise TypeError(
            f"figure output {path.name!r}: expected a name ending in .png with a Figure or in .csv with a "
            f"DataFrame, got {type(output).__name__}"
        )


def filled(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its all-empty columns (those of other analyses in a merged table)."""
    return table.dropna(axis=1, how="all")


def facet_labels(
    table: pd.DataFrame, config_columns: Sequence[str], exclude: Sequence[str] = ()
) -> pd.Series:
    """One label per row naming the values of the configuration columns that vary ("" when none vary)."""
    varying = [
        c
        for c in config_columns
        if c not in NOT_FACETS
        and c not in exclude
        and c in table.columns
        and table[c].nunique(dropna=False) > 1
    ]
    if not varying:
        return pd.Series("", index=table.index)
    return table[varying].astype(str).apply(lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def set_by_variant(table: pd.DataFrame, config_columns: Sequence[str]) -> list[str]:
    """Configuration columns a training table fills with the variant's own value (e.g. ``ratio_cap`` left to
    the variant): constant within each variant, so they are not facets of their own."""
    if "variant" not in table.columns:
        return []
    groups = table.groupby("variant")
    return [c for c in config_columns if c in table.columns and groups[c].nunique(dropna=False).max() <= 1]


def bucket_positions(data: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Evenly spaced x positions for the μ(a) buckets (ordered by their lower edge) and their tick labels."""
    order = data[["bucket_lo", "bucket"]].drop_duplicates().sort_values("bucket_lo")
    position = {label: i for i, label in enumerate(order["bucket"])}
    return data["bucket"].map(position), list(order["bucket"])


def bucket_axis(ax, labels: list[str]) -> None:
    """Tick labels and x label of an axis whose x positions come from `bucket_positions`."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_xlabel(MU_AXIS + " (bucket)")


def legend_below(fig: Figure, ax, ncol: int = 3) -> None:
    """One figure legend under the axes, holding the entries of ``ax``."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, -0.02))


def drop_axis_legend(ax) -> None:
    """Remove the legend seaborn put on ``ax`` (the figure shows it once elsewhere)."""
    if ax.get_legend() is not None:
        ax.get_legend().remove()
