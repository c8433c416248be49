"""Figures of the regime map (docs/design.md §9.3), drawn from per-step training tables.

- `plot_regime_map`: ``regime_map.png``, one heat map per arm other than pg_is (small multiples on one colour
  scale): rows are the rollout engines, columns the dose levels (label and measured mean dose), colour = the
  arm's mean final reward minus pg_is's in the same cell; a cross marks a cell where a run of the arm collapsed,
  a star a judged verdict (the arm matters or hurts), and grey cells were not run. The first panel shows pg_is's
  own mean final reward, the reference every other panel is measured against.
- `plot_regime_calibration`: ``regime_calibration.png``, per task candidate the final and start reward per
  ladder level (with the 0.9 line the level below the first failure must stay under), the measured dose per
  level below it, failed runs marked and the chosen map levels shaded.
- `regime_map_figures` (presets ``regime-map``, ``regime-map-quick``) and `regime_calibration_figures`
  (``regime-calibration``): the figures with their tables, all computed by `trustregion_lab.analysis.regime_map`.

The analysis module is imported inside the functions, as ``plots.stability`` does, so that importing ``plots``
does not import the ``analysis`` package (and torch with it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trustregion_lab.plots.common import Outputs, readable_log_axis

if TYPE_CHECKING:
    from trustregion_lab.analysis.regime_map import RegimeChoice

__all__ = [
    "plot_regime_calibration",
    "plot_regime_map",
    "regime_calibration_figures",
    "regime_map_figures",
]

DIFF_LABEL = "final reward of the arm − final reward of pg_is (mean over seeds, same engine and dose level)"
MIN_COLOUR_RANGE = 0.1  # the diverging scale spans at least ±0.1, so seed noise does not look saturated
_NOT_RUN = "#d9d9d9"


def _dose_text(dose: float) -> str:
    if not np.isfinite(dose):
        return "dose n/a"
    return f"dose {dose:.2g}" if dose >= 1e-3 or dose == 0 else f"dose {dose:.1e}"


def _grid(values: pd.DataFrame, column: str, engines: list[str], levels: list[str]) -> np.ndarray:
    """`[engines, levels]` array of ``column`` (NaN where the cell has no row)."""
    table = values.pivot_table(index="engine", columns="dose_level", values=column, aggfunc="first")
    return table.reindex(index=engines, columns=levels).to_numpy(np.float64)


def _flags(values: pd.DataFrame, column: str, engines: list[str], levels: list[str]) -> np.ndarray:
    """`[engines, levels]` bool array of a True/False ``column`` (False where the cell has no row)."""
    return np.nan_to_num(_grid(values.assign(flag=values[column].astype(float)), "flag", engines, levels)) > 0


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _heat(
    ax,
    grid: np.ndarray,
    cmap,
    norm,
    fmt: str,
    marks: np.ndarray,
    stars: np.ndarray,
    no_reference: np.ndarray | None = None,
):
    """One heat-map panel: coloured cells with their number, grey cells where NaN ("not run", or "no pg_is run"
    where ``no_reference`` says the arm ran but pg_is did not)."""
    ax.set_facecolor(_NOT_RUN)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            text = "no pg_is run" if no_reference is not None and no_reference[i, j] else "not run"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="dimgrey")
            continue
        colour = _text_colour(image.cmap(image.norm(value)))
        text = fmt.format(0.0 if abs(value) < 0.005 else value) + ("*" if stars[i, j] else "")
        text = text.replace("+0.00", "0.00")
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour, fontweight="bold")
        if marks[i, j]:
            ax.add_patch(
                Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, edgecolor="black", linewidth=2.2)
            )
            ax.text(
                j + 0.44, i - 0.42, "×", ha="right", va="top", fontsize=11, color=colour, fontweight="bold"
            )
    return image


def _axes_labels(ax, engines: list[str], columns: list[str], left: bool) -> None:
    ax.set_yticks(range(len(engines)))
    ax.set_yticklabels(engines if left else [""] * len(engines), fontsize=8.5)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=7.5)
    ax.tick_params(length=0)
    for edge in np.arange(-0.5, len(columns), 1.0):
        ax.axvline(edge, color="white", linewidth=1.5)
    for edge in np.arange(-0.5, len(engines), 1.0):
        ax.axhline(edge, color="white", linewidth=1.5)


def _panel_rows(panels: list[tuple[str, list[str]]], n_cols: int) -> list[list[tuple[str, list[str]]]]:
    """Panels packed into figure rows of at most ``n_cols``; a row holds panels with the same engines only, so
    that the panels of a row have the same height."""
    rows: list[list[tuple[str, list[str]]]] = []
    for panel in panels:
        if rows and len(rows[-1]) < n_cols and rows[-1][0][1] == panel[1]:
            rows[-1].append(panel)
        else:
            rows.append([panel])
    return rows


def plot_regime_map(summary: pd.DataFrame) -> Figure:
    """The regime map at a glance: one heat map per arm A ≠ pg_is, rows = the engines A ran with (ENGINE_ORDER
    first), columns = dose levels (ladder order; label and the measured dose, the mean over every run at that
    level), colour = mean_A − mean_pg_is of the final reward over seeds in the same cell (diverging colour map
    centred at 0, one symmetric scale for all panels, at least ±MIN_COLOUR_RANGE), the number in each cell; "*"
    after the number: the cell's judged verdict says the arm matters or hurts
    (`trustregion_lab.analysis.regime_map.regime_cells`); a black frame and "×": a run of the arm collapsed there
    (§7); grey "not run": no run of the arm there ("no pg_is run": the arm ran, pg_is did not). The first panel: pg_is's own mean final
    reward (sequential colour map, 0 to 1), framed where a pg_is run collapsed. Panels with the same engines share
    a row of the figure (arms that ran on one engine only get one-row panels).

    summary: `trustregion_lab.analysis.regime_map.regime_run_summary` of the map's table.
    """
    from trustregion_lab.analysis import regime_map as rm

    pairs, _ = rm.regime_cells(summary)
    data = summary.assign(
        dose_level=summary["dose_level"].astype(str), variant=summary["variant"].astype(str)
    )
    engines = rm.ordered(data["engine"], rm.ENGINE_ORDER)
    levels = rm.level_order(data["dose_level"])
    dose = data.groupby("dose_level")["dose"].mean()
    columns = [f"{lv}\n{_dose_text(dose.get(lv, np.nan))}" for lv in levels]
    judged = pairs.assign(
        star=pairs["matters"].map(lambda v: v is True) | pairs["hurts"].map(lambda v: v is True),
        collapse=pairs["collapsed_arm"] > 0,
    )
    finite = judged["diff"].abs().dropna()
    limit = max(MIN_COLOUR_RANGE, float(finite.max()) if len(finite) else 0.0)
    limit = math.ceil(limit * 20 - 1e-9) / 20  # a round bound (a multiple of 0.05)
    diff_norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)

    def engines_of(arm: str) -> list[str]:
        ran = set(data.loc[data["variant"] == arm, "engine"])
        return [e for e in engines if e in ran]

    reference = data[data["variant"] == rm.REFERENCE_ARM]
    panels = [(rm.REFERENCE_ARM, engines_of(rm.REFERENCE_ARM))] if len(reference) else []
    arms = rm.ordered(judged["variant"], rm.ARM_ORDER)
    panels += sorted(((a, engines_of(a)) for a in arms), key=lambda p: -len(p[1]))  # stable: arm order kept
    if not panels:
        raise ValueError("summary: expected runs of pg_is or of an arm compared with it, got none")
    n_cols = min(4, max(len(row) for row in _panel_rows(panels, 4)))
    layout = _panel_rows(panels, n_cols)
    cell_w, cell_h = 0.74, 0.52
    heights = [len(row[0][1]) * cell_h + 1.0 for row in layout]
    width = n_cols * (len(levels) * cell_w + 1.2) + 1.8
    fig = Figure(figsize=(max(width, 8.0), sum(heights) + 1.3), layout="constrained")
    spec = fig.add_gridspec(len(layout), n_cols, height_ratios=heights)
    diff_axes, image = [], None
    for r, row in enumerate(layout):
        for c, (arm, shown) in enumerate(row):
            ax = fig.add_subplot(spec[r, c])
            one = len(shown) == 1 and len(engines) > 1
            if arm == rm.REFERENCE_ARM:
                means = (
                    reference.groupby(["engine", "dose_level"])
                    .agg(final_reward=("final_reward", "mean"), collapsed=("collapsed", "any"))
                    .reset_index()
                )
                values = _grid(means, "final_reward", shown, levels)
                marks = _flags(means, "collapsed", shown, levels)
                ref_image = _heat(ax, values, "viridis", Normalize(0.0, 1.0), "{:.2f}", marks, marks & False)
                ax.set_title(
                    f"{rm.REFERENCE_ARM}'s own final reward (the reference)", fontsize=10, fontweight="bold"
                )
                bar = fig.colorbar(ref_image, ax=ax, shrink=0.95, pad=0.02, aspect=15)
                bar.set_label(f"{rm.REFERENCE_ARM} final reward", fontsize=8)
                bar.ax.tick_params(labelsize=7)
            else:
                rows = judged[judged["variant"] == arm]
                values = _grid(rows, "diff", shown, levels)
                marks = _flags(rows, "collapse", shown, levels)
                stars = _flags(rows, "star", shown, levels)
                alone = _flags(
                    rows.assign(alone=rows["n_arm"].gt(0) & rows["diff"].isna()), "alone", shown, levels
                )
                image = _heat(ax, values, "RdBu", diff_norm, "{:+.2f}", marks, stars, alone)
                diff_axes.append(ax)
                where = f"  ({shown[0]} only)" if one else ""
                ax.set_title(f"{arm} − {rm.REFERENCE_ARM}{where}", fontsize=10, fontweight="bold")
            _axes_labels(ax, shown, columns, left=c == 0 or arm == rm.REFERENCE_ARM or one)
    if image is not None:
        bar = fig.colorbar(image, ax=diff_axes, location="bottom", shrink=0.5, aspect=45, pad=0.01)
        bar.set_label(DIFF_LABEL, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    seeds = data.groupby(["variant", "engine", "dose_level"])["seed"].nunique()
    seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    seed_text += " seed" if seeds.max() == 1 else " seeds"
    head = (
        "Where does the trust region matter? Each arm's mean final reward minus pg_is's in the same cell "
        "(rows: rollout engine, columns: off-policy dose level)"
    )
    key = (
        f"blue: the arm ends above pg_is, red: below; {seed_text} per arm and cell;  "
        "* judged: ≥ 0.05 beyond 2 standard errors, or a collapse on one side only;  "
        "black frame ×: a run collapsed;  grey: not run"
    )
    chars = int(fig.get_figwidth() * 11)
    fig.suptitle(_wrap(head, chars) + "\n" + _wrap(key, chars), fontsize=10)
    return fig


def plot_regime_calibration(summary: pd.DataFrame, choice: RegimeChoice | None = None) -> Figure:
    """Per task candidate (one column each): top, the final reward (mean of the last 100-step block) and the
    start reward (mean of the first 25 steps) per ladder level, with the 0.9 line (the level below the first
    failure must end under it) and a red cross at each failed run (final ≤ start − 0.1); bottom, the measured
    off-policy dose per level (mean over the run's steps; log axis when every value is positive). The chosen
    candidate's map levels are shaded when ``choice`` holds one.

    summary: `trustregion_lab.analysis.regime_map.regime_run_summary` of the calibration table (with
    task_candidate); choice: `trustregion_lab.analysis.regime_map.choose_regime`'s answer, or None.
    """
    from trustregion_lab.analysis import regime_map as rm

    data = summary.assign(dose_level=summary["dose_level"].astype(str))
    if "task_candidate" not in data:
        data = data.assign(task_candidate="all runs")
    candidates = [str(c) for c in pd.unique(data["task_candidate"])]
    levels = rm.level_order(data["dose_level"])
    x_of = {lv: i for i, lv in enumerate(levels)}
    fig = Figure(figsize=(max(4.4 * len(candidates), 6.0), 6.4), layout="constrained")
    axes = fig.subplots(2, len(candidates), squeeze=False, sharex=True, sharey="row")
    for col, name in enumerate(candidates):
        runs = data[data["task_candidate"].astype(str) == name].copy()
        runs["x"] = runs["dose_level"].map(x_of)
        per_level = runs.groupby("x").agg(
            final=("final_reward", "mean"), start=("start_reward", "mean"), dose=("dose", "mean")
        )
        top, low = axes[0, col], axes[1, col]
        chosen = choice is not None and choice.task_candidate == name
        for ax in (top, low):
            if chosen:
                for lv in choice.levels:
                    if lv in x_of:
                        ax.axvspan(x_of[lv] - 0.4, x_of[lv] + 0.4, color="gold", alpha=0.25, linewidth=0)
        top.plot(
            per_level.index, per_level["start"], "s--", color="grey", label="start reward (first 25 steps)"
        )
        top.plot(
            per_level.index, per_level["final"], "o-", color="tab:blue", label="final reward (last 100 steps)"
        )
        bad = runs[runs["failed"].astype(bool)]
        top.plot(
            bad["x"],
            bad["final_reward"],
            "X",
            color="tab:red",
            markersize=11,
            linestyle="none",
            label=f"failed run (final ≤ start − {rm.FAIL_DROP})",
        )
        top.axhline(
            rm.MAX_REWARD_BELOW_FAILURE,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"{rm.MAX_REWARD_BELOW_FAILURE}: the level before the first failure must end below it",
        )
        top.set_ylim(-0.03, 1.05)
        title = f"{name} (chosen: {' '.join(choice.levels)})" if chosen else name
        top.set_title(title, fontsize=10, fontweight="bold" if chosen else "normal", pad=16)
        if choice is not None:
            why = choice.candidates.set_index("task_candidate")["why"].get(name, "")
            top.text(
                0.5, 1.01, _wrap(str(why), 60), transform=top.transAxes, ha="center", va="bottom", fontsize=8
            )
        low.plot(per_level.index, per_level["dose"], "D-", color="tab:purple")
        values = per_level["dose"].dropna()
        if len(values) and bool((values > 0).all()):
            low.set_yscale("log")
            readable_log_axis(low)
        low.set_xticks(range(len(levels)))
        low.set_xticklabels(levels)
        low.set_xlabel("dose level (ladder)")
        if col == 0:
            top.set_ylabel("training reward")
            low.set_ylabel("measured dose: share of tokens\nwith π/μ outside [0.8, 1.2]")
    handles, texts = axes[0, 0].get_legend_handles_labels()
    if choice is not None and choice.task_candidate is not None:
        handles.append(Rectangle((0, 0), 1, 1, color="gold", alpha=0.25))
        texts.append("chosen map levels")
    fig.legend(handles, texts, loc="outside lower center", ncol=3, frameon=False, fontsize=8.5)
    head = "Regime calibration: final reward and measured dose per ladder level and task candidate"
    tail = (
        f"choice: {choice.reason}"
        if choice is not None and choice.task_candidate is not None
        else (f"no choice: {choice.reason}" if choice is not None else "")
    )
    fig.suptitle(head + ("\n" + _wrap(tail) if tail else ""), fontsize=10)
    return fig


def _wrap(text: str, width: int = 150) -> str:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def regime_map_figures(table: pd.DataFrame, config_columns: Sequence[str] = ()) -> Outputs:
    """``regime_map.png`` (`plot_regime_map`), ``regime_map.csv`` (one row per run, `regime_run_summary`),
    ``regime_cells.csv`` (one row per engine × dose level × arm ≠ pg_is) and ``regime_cell_verdicts.csv`` (one
    row per engine × dose level), the last two from `trustregion_lab.analysis.regime_map.regime_cells`."""
    from trustregion_lab.analysis import regime_map as rm

    summary = rm.regime_run_summary(table)
    pairs, cells = rm.regime_cells(summary)
    return {
        "regime_map.png": plot_regime_map(summary),
        "regime_map.csv": summary,
        "regime_cells.csv": pairs,
        "regime_cell_verdicts.csv": cells,
    }


def regime_calibration_figures(
    table: pd.DataFrame,
    config_columns: Sequence[str] = (),
    *,
    candidates: Sequence[str] | None = None,
    ladder: Sequence[str] | None = None,
) -> Outputs:
    """``regime_calibration.png`` (`plot_regime_calibration`), ``regime_calibration.csv`` (one row per run,
    `regime_run_summary`, with ``chosen_candidate`` and ``map_level`` marking the choice) and
    ``regime_choice.csv`` (one row per candidate: its first failing level, the level below, why it qualifies
    or not; `choose_regime`).

    candidates, ladder: the order in which candidates are tried and the ladder's order; by default the
    protocol's (``trustregion_lab.train.regime.TASK_CANDIDATES`` and ``LADDER``), whatever order the runs were
    planned in, followed by any other label the table holds; for a table holding none of the protocol's
    candidates, the order in which it holds them and `level_order` of its levels.
    """
    from trustregion_lab.analysis import regime_map as rm

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    if "task_candidate" not in table.columns:
        raise ValueError("table: expected a calibration table with the column 'task_candidate', it lacks it")
    summary = rm.regime_run_summary(table)
    if candidates is None or ladder is None:  # the protocol's order (train.regime), then any other label seen
        from trustregion_lab.train.regime import LADDER, TASK_CANDIDATES

        seen = [str(c) for c in pd.unique(table["task_candidate"])]
        levels = rm.level_order(table["dose_level"])
        known, rungs = [label for label, _ in TASK_CANDIDATES], [label for label, _ in LADDER]
        protocol = any(c in known for c in seen)  # else a table of other candidates: the order it holds
        default_names = known + [c for c in seen if c not in known] if protocol else seen
        default_order = rungs + [lv for lv in levels if lv not in rungs] if protocol else levels
        names = list(candidates) if candidates is not None else default_names
        order = list(ladder) if ladder is not None else default_order
    else:
        names, order = list(candidates), list(ladder)
    choice = rm.choose_regime(summary, names, order)
    marked = summary.copy()
    marked["chosen_candidate"] = marked["task_candidate"].astype(str) == (choice.task_candidate or "")
    marked["map_level"] = marked["chosen_candidate"] & marked["dose_level"].astype(str).isin(choice.levels)
    return {
        "regime_calibration.png": plot_regime_calibration(summary, choice),
        "regime_calibration.csv": marked,
        "regime_choice.csv": choice.candidates.assign(reason=choice.reason),
    }
