"""Figures of the stability study (docs/design.md §7), drawn from per-step training tables.

- `plot_stability`: ``stability_curves.png``, reward, mean |π − μ| and max (π − μ) over training steps, one row
  per rollout engine (the paper's Fig. 3 layout), one colour, line style and marker per arm. Arms whose curves
  coincide are named in a note ("lines coincide"); the mean-mismatch panels carry the paper's reference values
  (mean |π − μ| ≈ 0.004 at the start, 0.011–0.018 in the runs that collapsed).
- `stability_figures` (presets ``stability``, ``stability-quick``, ``stability-long``): the curves,
  ``stability_summary.csv`` (one row per run) and ``stability_verdict.csv`` (per arm and engine, and the claims),
  both computed by `trustregion_lab.analysis.stability`.
- `stability_search_figures` (``stability-search``): the curves of each single-knob cell, one small panel per
  cell and quantity, and ``search.csv``.
- `stability_calibration_figures` (``stability-calibration``): the training curves and ``calibration.csv``, the
  share of steps whose 10-step mean reward lies in [0.2, 0.8] per setting (the protocol's phase A rule).

The smoothing windows are the study's (`trustregion_lab.analysis.stability`): reward by the rolling mean over
REWARD_WINDOW = 25 steps (the study's r̃), the mismatch by the rolling median over WINDOW = 10 steps (m̃).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trustregion_lab.plots.common import (
    Outputs,
    coinciding_note,
    facet_labels,
    readable_log_axis,
    set_by_variant,
    style_map,
)
from trustregion_lab.plots.training import training_figures

__all__ = [
    "PAPER_MISMATCH_END",
    "PAPER_MISMATCH_START",
    "plot_stability",
    "stability_calibration_figures",
    "stability_figures",
    "stability_search_figures",
]

PAPER_MISMATCH_START = 0.004  # the paper's Fig. 3: mean |π − μ| at the start (docs/design.md §6)
PAPER_MISMATCH_END = (0.011, 0.018)  # ... and where PG-IS, CISPO and MiniRL took it before collapsing
_COLUMNS = ("engine", "variant", "seed", "step", "reward", "mismatch_mean", "mismatch_max")


def _panels() -> tuple[tuple[str, str, int, str, bool], ...]:
    """(column, smoothing, window, y label, log axis) per panel, with the study's windows."""
    from trustregion_lab.analysis.stability import REWARD_WINDOW, WINDOW

    return (
        ("reward", "mean", REWARD_WINDOW, f"training reward r̃\n({REWARD_WINDOW}-step rolling mean)", False),
        ("mismatch_mean", "median", WINDOW, f"mean |π(a) − μ(a)| (probability)\n{WINDOW}-step median", True),
        ("mismatch_max", "median", WINDOW, f"max (π(a) − μ(a)) (probability)\n{WINDOW}-step median", False),
    )


def _check_table(table: pd.DataFrame) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"table: expected a training table with the columns {list(_COLUMNS)}, it lacks {missing}"
        )
    if table.empty:
        raise ValueError("table: expected at least one row (one row per run × step), got an empty table")


def plot_stability(
    table: pd.DataFrame,
    config_columns: Sequence[str] = (),
    *,
    metrics: Sequence[str] = ("reward", "mismatch_mean", "mismatch_max"),
    wrap: int = 0,
) -> Figure:
    """Reward, mean |π − μ| and max (π − μ) over training steps, one panel per quantity and facet (the engine and
    the other varying configuration columns), one colour, line style and marker per variant.

    Each seed's curve is smoothed as the study smooths it (`trustregion_lab.analysis.stability`): reward by the
    rolling mean r̃_t = mean(r_{t−24..t}) over REWARD_WINDOW = 25 steps, ``mismatch_mean`` and ``mismatch_max``
    by the rolling median over WINDOW = 10 steps; at the first steps the window holds the steps so far. The line
    is the mean over seeds; with several seeds a band shows their range (min to max). The mean-mismatch axis is
    logarithmic when every value drawn on it is positive, with the paper's reference values drawn on it.
    metrics: the columns drawn, in order; wrap: 0 puts one facet per row and one quantity per column; n > 0
    puts n facets per row, each facet's quantities stacked (for many facets, e.g. the search's cells).
    table: a training table with the columns engine, variant, seed, step, reward, mismatch_mean and
    mismatch_max (one row per run × step).
    """
    _check_table(table)
    panels = [p for p in _panels() if p[0] in metrics]
    if not panels:
        raise ValueError(
            f"metrics: expected some of reward, mismatch_mean, mismatch_max, got {list(metrics)}"
        )
    data = table.copy()
    exclude = ["engine", *set_by_variant(data, config_columns)]
    if wrap and "search_cell" in data.columns:  # many facets: titled by the cell alone, in the table's order
        rest = facet_labels(data, config_columns, exclude=[*exclude, "search_cell"])
        cell = data["search_cell"].astype(str)
        data["facet"] = cell.where(rest == "", cell + ", " + rest)
    else:
        others = facet_labels(data, config_columns, exclude=exclude)
        engine = "engine=" + data["engine"].astype(str)
        data["facet"] = engine.where(others == "", engine + ", " + others)
    facets = list(pd.unique(data["facet"])) if wrap else sorted(data["facet"].unique())
    keys = ["facet", "variant", "seed"]
    data = data.sort_values([*keys, "step"], kind="stable")
    for metric, how, window, _, _ in panels:
        data[metric] = data.groupby(keys)[metric].transform(
            lambda v, how=how, window=window: getattr(v.rolling(window, min_periods=1), how)()
        )
    variants = sorted(data["variant"].unique())
    styles = style_map(variants)
    several_seeds = bool(data.groupby(["facet", "variant"])["seed"].nunique().max() > 1)
    if wrap:
        n_cols = min(wrap, len(facets))
        blocks = math.ceil(len(facets) / n_cols)
        fig = Figure(figsize=(4.2 * n_cols, 2.5 * blocks * len(panels) + 1.2), layout="constrained")
        grid = fig.subplots(blocks * len(panels), n_cols, squeeze=False, sharex=True)
        slots = {
            (f, p): grid[(i // n_cols) * len(panels) + p, i % n_cols]
            for i, f in enumerate(facets)
            for p in range(len(panels))
        }
        for i in range(len(facets), blocks * n_cols):
            for p in range(len(panels)):
                grid[(i // n_cols) * len(panels) + p, i % n_cols].axis("off")
    else:
        fig = Figure(figsize=(5.4 * len(panels), 3.6 * len(facets) + 1.2), layout="constrained")
        grid = fig.subplots(len(facets), len(panels), squeeze=False)
        slots = {(f, p): grid[r, p] for r, f in enumerate(facets) for p in range(len(panels))}
    notes: dict[str, list[str]] = {}
    for facet in facets:
        sub = data[data["facet"] == facet]
        for p_index, (metric, _, _, label, log_scale) in enumerate(panels):
            ax = slots[(facet, p_index)]
            for variant in variants:
                runs = sub[sub["variant"] == variant]
                if runs.empty:
                    continue
                curve = runs.groupby("step")[metric].agg(["mean", "min", "max"])
                style = styles[variant]
                every = max(1, len(curve) // 8)  # 8 markers a line, staggered so coinciding lines show each
                ax.plot(
                    curve.index,
                    curve["mean"],
                    label=variant,
                    **style,  # colour, line style and marker (style_map)
                    markevery=(variants.index(variant) * every // len(variants), every),
                    markersize=5,
                    linewidth=1.4,
                )
                if several_seeds and runs["seed"].nunique() > 1:
                    ax.fill_between(
                        curve.index, curve["min"], curve["max"], color=style["color"], alpha=0.06, linewidth=0
                    )
            values = sub[metric].dropna()
            if metric == "mismatch_mean":
                positive = bool(len(values)) and bool((values > 0).all())
                _paper_reference(ax)
                if log_scale and positive:
                    ax.set_yscale("log")
                    readable_log_axis(ax)
            ax.set_title(facet, fontsize=10)
            row, col = next((r, c) for (r, c), a in np.ndenumerate(grid) if a is ax)
            if not wrap or row == grid.shape[0] - 1 or not grid[row + 1, col].axison:
                ax.set_xlabel("training step (policy updates)")
            if not wrap or col == 0:
                ax.set_ylabel(label, fontsize=9)
        curves = {
            v: sub[sub["variant"] == v].groupby("step")[[m for m, *_ in panels]].mean() for v in variants
        }
        note = coinciding_note({v: c for v, c in curves.items() if not c.empty})
        if note:
            notes.setdefault(note, []).append(facet)
    first = slots[(facets[0], 0)]
    handles, texts = first.get_legend_handles_labels()
    fig.legend(
        handles, texts, loc="outside lower center", ncol=min(len(variants), 7), frameon=False, fontsize=9
    )
    band = "line: mean over seeds, band: range over seeds" if several_seeds else "one seed per arm"
    lines = [f"Stability ({band})"]
    for note, where in notes.items():
        lines.append(note if len(where) == len(facets) else f"{note} ({', '.join(where)})")
    fig.suptitle("\n".join(lines), fontsize=10)
    return fig


def _paper_reference(ax) -> None:
    """The paper's Fig. 3 values on a mean-mismatch axis: ≈ 0.004 at the start, 0.011–0.018 before collapse."""
    ax.axhline(PAPER_MISMATCH_START, color="dimgrey", linestyle=":", linewidth=1, gid="reference")
    ax.axhspan(*PAPER_MISMATCH_END, color="tab:red", alpha=0.08, gid="reference")
    x0 = ax.get_xlim()[0]
    ax.text(x0, PAPER_MISMATCH_START, " paper: start 0.004", fontsize=7, va="bottom", color="dimgrey")
    ax.text(
        x0,
        PAPER_MISMATCH_END[0],
        " paper: collapsing runs 0.011–0.018",
        fontsize=7,
        va="bottom",
        color="firebrick",
    )


def _verdict_tables(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    from trustregion_lab.analysis.stability import stability_summary

    return stability_summary(table, keys=tuple(keys))


def stability_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """``stability_curves.png`` (`plot_stability`), ``stability_summary.csv`` (one row per run) and
    ``stability_verdict.csv`` (per arm and engine: seeds that drifted, collapsed, stayed stable; the claims),
    the last two from `trustregion_lab.analysis.stability`."""
    from trustregion_lab.analysis.stability import LOW_PRECISION_ENGINE, MATCHED_ENGINE, stability_verdict

    summary = _verdict_tables(table, ("variant", "engine", "seed"))
    return {
        "stability_curves.png": plot_stability(table, config_columns),
        "stability_summary.csv": summary,
        "stability_verdict.csv": stability_verdict(summary, LOW_PRECISION_ENGINE, MATCHED_ENGINE),
    }


def _changed_knobs(table: pd.DataFrame, config_columns: Sequence[str], reference: str) -> dict[str, str]:
    """{search cell: "knob=value, ..."}: the configuration columns whose value differs from the reference cell's
    (compared variant by variant, so columns a variant fills itself do not count); "-" for none."""
    skip = {"search_cell", "variant", "seed"}
    columns = [c for c in config_columns if c in table.columns and c not in skip]
    base = table[table["search_cell"] == reference]
    changes = {}
    for cell, rows in table.groupby("search_cell", sort=False):
        changed = []
        for column in columns:
            mine = rows.groupby("variant")[column].first()
            theirs = base.groupby("variant")[column].first().reindex(mine.index)
            differs = [
                str(a) != str(b) for a, b in zip(mine, theirs, strict=True) if not (pd.isna(a) and pd.isna(b))
            ]
            if any(differs):
                changed.append(f"{column}={mine.iloc[0]}")
        changes[cell] = ", ".join(changed) or "-"
    return changes


def stability_search_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """``stability_curves.png``: reward and mean |π − μ| of each search cell (four cells per row), and
    ``search.csv``: every cell's runs (`stability_summary`) with the knobs changed from the study setting."""
    summary = _verdict_tables(table, ("search_cell", "variant", "engine", "seed"))
    reference = (
        "study setting" if (table["search_cell"] == "study setting").any() else table["search_cell"].iloc[0]
    )
    summary.insert(1, "changed", summary["search_cell"].map(_changed_knobs(table, config_columns, reference)))
    curves = plot_stability(table, ["search_cell"], metrics=("reward", "mismatch_mean"), wrap=4)
    return {"stability_curves.png": curves, "search.csv": summary}


def stability_calibration_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """The training curves and ``calibration.csv``: per setting, the share of steps whose 10-step mean reward
    lies in [0.2, 0.8] (the protocol's phase A rule), with the first and last 10 steps' means."""
    from trustregion_lab.analysis.stability import CALIBRATION_WINDOW

    keys = [c for c in ("task", "lr", "seed") if c in table.columns]
    rows = []
    for key, run in table.sort_values([*keys, "step"]).groupby(keys):
        smooth = run["reward"].rolling(CALIBRATION_WINDOW, min_periods=1).mean()
        rows.append(
            {
                **dict(zip(keys, key)),
                "intermediate_share": float(smooth.between(0.2, 0.8).mean()),
                "reward_first10": float(run["reward"].head(10).mean()),
                "reward_last10": float(run["reward"].tail(10).mean()),
                "entropy_last10": float(run["entropy"].tail(10).mean()),
                "mismatch_mean_first10": float(run["mismatch_mean"].head(10).mean()),
                "steps": len(run),
            }
        )
    return {**training_figures(table, config_columns), "calibration.csv": pd.DataFrame(rows)}
