"""Helpers shared by the figure modules: saving outputs, facet labels, μ(a)-bucket axes and legends.

`save_output` writes a Figure as PNG (dpi DPI) or a DataFrame as CSV through a temporary file and a rename
(``trustregion_lab._io``). `facet_labels` turns the configuration columns that vary within a table into one
label per row; columns that hold bookkeeping (seed, run id, ...) or the hue (method, variant) never become
facets, and `set_by_variant` finds the columns a training table fills with each variant's own value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from trustregion_lab._io import atomic_write_csv, atomic_write_with

__all__ = [
    "DPI",
    "MIN_TOKENS",
    "MU_AXIS",
    "NOT_FACETS",
    "Outputs",
    "bucket_axis",
    "bucket_positions",
    "coinciding_groups",
    "coinciding_note",
    "draw_lines",
    "drop_axis_legend",
    "facet_labels",
    "filled",
    "legend_below",
    "readable_log_axis",
    "save_output",
    "set_by_variant",
    "style_map",
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


_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def style_map(names: Sequence[str]) -> dict[str, dict]:
    """One colour, line style and marker per name (in the order given), so lines that coincide stay visible:
    ``{name: {"color", "linestyle", "marker"}}``."""
    palette = sns.color_palette("tab10", n_colors=max(len(names), 1))
    return {
        name: {
            "color": palette[i % len(palette)],
            "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)],
        }
        for i, name in enumerate(names)
    }


def coinciding_groups(curves: Mapping[str, pd.DataFrame | pd.Series], rtol: float = 1e-9) -> list[list[str]]:
    """Groups of two or more names whose curves are equal (same index, values within ``rtol``, NaN = NaN)."""
    groups: list[list[str]] = []
    for name, curve in curves.items():
        for group in groups:
            other = curves[group[0]]
            if curve.shape == other.shape and curve.index.equals(other.index):
                a, b = np.asarray(curve, dtype=float), np.asarray(other, dtype=float)
                if np.allclose(a, b, rtol=rtol, atol=0.0, equal_nan=True):
                    group.append(name)
                    break
        else:
            groups.append([name])
    return [group for group in groups if len(group) > 1]


def coinciding_note(curves: Mapping[str, pd.DataFrame | pd.Series] | list[list[str]]) -> str:
    """The note "lines coincide: a = b; c = d" for the names whose curves are equal ("" when none are);
    ``curves`` may also be the groups `coinciding_groups` returned."""
    groups = curves if isinstance(curves, list) else coinciding_groups(curves)
    return "lines coincide: " + "; ".join(" = ".join(group) for group in groups) if groups else ""


def readable_log_axis(ax, axis: str = "y") -> None:
    """Label a log axis so that it reads at a glance: ticks at 1, 2, 5 × 10^k in plain numbers when the axis
    spans under three decades (1, 1.5, 2, 3, 5, 7 × 10^k under one decade), one labelled tick per decade (10^k)
    otherwise."""
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    target = ax.yaxis if axis == "y" else ax.xaxis
    if low > 0 and high / low < 1e3:
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if high / low < 10 else (1.0, 2.0, 5.0)
        target.set_major_locator(LogLocator(base=10, subs=subs))
        target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        target.set_major_locator(LogLocator(base=10, numticks=7))
        target.set_major_formatter(LogFormatterSciNotation(base=10))
    target.set_minor_formatter(NullFormatter())


def draw_lines(
    ax,
    data: pd.DataFrame,
    x: str,
    y: str,
    by: str,
    order: Sequence[str],
    styles: Mapping[str, dict],
    *,
    dodge: float = 0.0,
    labels: Mapping[str, str] | None = None,
) -> list[list[str]]:
    """One line per value of ``by`` (in ``order``; the mean of ``y`` over rows sharing an ``x``), each in its own
    colour, line style and marker from ``styles``; ``dodge`` shifts the i-th line by (i − (n − 1)/2) · dodge
    along x so that markers of equal values sit side by side. Returns the groups of names whose lines coincide
    (`coinciding_groups`), for the caller's "lines coincide" note."""
    present = [name for name in order if (data[by] == name).any()]
    curves = {name: data[data[by] == name].groupby(x)[y].mean().sort_index() for name in present}
    for i, name in enumerate(present):
        curve, style = curves[name], styles[name]
        shift = (i - (len(present) - 1) / 2) * dodge
        ax.plot(
            np.asarray(curve.index, dtype=float) + shift,
            curve.to_numpy(),
            label=(labels or {}).get(name, name),
            **style,  # colour, line style and marker (style_map)
            markersize=5,
            linewidth=1.4,
        )
    return coinciding_groups(curves)
