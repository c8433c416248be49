"""The regime map: per-run summaries, the calibration's choice of dose levels and the verdict of each map cell
(docs/design.md §9.3), computed from the per-step training tables the sweep merges.

Input: a tidy training table with one row per (variant, engine, dose_level, seed, step) [and task_candidate in
the calibration], the trainer's columns ``reward``, ``mismatch_mean``, ``mask_frac``, ``dose`` and ``tv_after``
(NaN on steps where they are not measured) and the run-level columns (``lr``, ``staleness``, ``epochs``, ...).

Per run (`regime_run_summary`), besides the stability study's quantities (`trustregion_lab.analysis.stability`:
drifted, collapsed, stable, final_reward = the mean reward of the last block of 100 steps, peak_reward,
mismatch_start, mismatch_end, mask_frac_mean, steps):
    dose          = mean over the run's steps of the per-step dose (NaN steps skipped), where a step's dose is
                    the share of response tokens with π(a)/μ(a) outside [0.8, 1.2] after the step's last update
    tv_after_mean = the same mean of ``tv_after`` (exact TV between π after the step and μ)
    reward_auc    = mean of ``reward`` over all the run's steps
    start_reward  = mean of ``reward`` over the run's first START_STEPS = 25 steps
    failed        = final_reward ≤ start_reward − FAIL_DROP (0.1): the run ends clearly below where it began

Calibration choice (`choose_regime`), a pure function of the calibration summary: the candidates are tried in
their order and each one's ladder in its order. F = the first ladder level whose run failed, H = the ladder level
just before F; the candidate qualifies when F and H exist and final_reward at H < MAX_REWARD_BELOW_FAILURE (0.9).
The first qualifying candidate is chosen; its map levels are the first ladder level plus the four highest levels
up to and including F (every level up to F when those are fewer than five). No qualifying candidate: no choice
(None) and the reason, nothing chosen silently.

Cell verdicts (`regime_cells`), per (engine, dose_level) and arm A ≠ pg_is present in the cell, against P = pg_is:
    diff = mean_A − mean_P (mean final_reward over seeds),  se = sqrt(var_A / n_A + var_P / n_P) (ddof = 1)
    judged only when n_A ≥ 2 and n_P ≥ 2; otherwise every verdict of the pair is "n/a" (NOT_JUDGED)
    matters   = (diff ≥ 0.05 and diff > 2·se) or (P collapsed in ≥ half of its seeds and A in none)
    hurts     = (diff ≤ −0.05 and −diff > 2·se) or (A collapsed in ≥ half of its seeds and P in none)
    separated = |diff| ≥ 0.05 (whatever se; such a cell gets a third seed)
    trust_region_matters (per cell) = matters for ppo or for dppo_binary_tv (three-valued: True when either is
                    True, False when both are False, "n/a" otherwise)
    dppo_beats_ppo = the rule of ``matters`` with A = dppo_binary_tv and P = ppo; ppo_beats_dppo the converse.
Verdict columns are of object dtype and hold True, False or the string "n/a"; a CSV writes them as True, False,
n/a.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from trustregion_lab.analysis.stability import NOT_JUDGED, stability_summary

__all__ = [
    "ARM_ORDER",
    "ENGINE_ORDER",
    "FAIL_DROP",
    "MAX_REWARD_BELOW_FAILURE",
    "MIN_DIFF",
    "REFERENCE_ARM",
    "RUN_COLUMNS",
    "START_STEPS",
    "RegimeCells",
    "RegimeChoice",
    "choose_regime",
    "level_order",
    "ordered",
    "regime_cells",
    "regime_run_summary",
]

START_STEPS = 25  # start_reward: the mean reward over the run's first 25 steps
FAIL_DROP = 0.1  # failed: final_reward ≤ start_reward − 0.1
MAX_REWARD_BELOW_FAILURE = 0.9  # the level below the first failure must end under this reward
MAP_LEVELS = 5  # the first ladder level plus the four highest up to the first failure
MIN_DIFF = 0.05  # a difference of final rewards that counts
SE_FACTOR = 2.0  # ... beyond two standard errors over seeds
MIN_SEEDS = 2  # a pair is judged only with this many seeds of each arm
REFERENCE_ARM = "pg_is"  # the arm without a trust region every other arm is compared with
REGION_ARMS = ("ppo", "dppo_binary_tv")  # the arms whose verdict says whether the trust region matters
ENGINE_ORDER = ("model-fp32", "model-bf16", "model-fp8", "model-int4")
ARM_ORDER = (
    "pg_is",
    "cispo",
    "ppo",
    "dppo_binary_tv",
    "minirl",
    "dppo_topk_tv",
    "ppo_relaxed",
    "tis",
    "icepop",
    "seq_mis",
    "gspo",
)
RUN_KEYS = ("variant", "engine", "dose_level", "seed")
PER_STEP = ("step", "reward", "mismatch_mean", "mask_frac", "dose", "tv_after")
RUN_LEVEL = ("task", "lr", "staleness", "epochs", "mini_batches")  # carried from the table when present
RUN_COLUMNS = (
    "variant",
    "engine",
    "dose_level",
    "dose",
    "seed",
    "steps",
    "final_reward",
    "reward_auc",
    "drifted",
    "collapsed",
    "stable",
    "mask_frac_mean",
    "mismatch_start",
    "mismatch_end",
    "tv_after_mean",
    "start_reward",
    "failed",
)
_LEVEL = re.compile(r"^L(\d+)$")


def level_order(levels: Iterable) -> list[str]:
    """The distinct dose-level labels in ladder order: by number when every label reads "L<k>", otherwise in
    the order first seen (the sweep merges its runs in plan order, which follows the ladder)."""
    seen = [str(v) for v in pd.unique(pd.Series(list(levels), dtype=object).astype(str))]
    if seen and all(_LEVEL.match(v) for v in seen):
        return sorted(seen, key=lambda v: int(_LEVEL.match(v).group(1)))
    return seen


def ordered(values: Iterable, order: Sequence[str]) -> list[str]:
    """The distinct ``values`` with those named in ``order`` first (in that order), the rest sorted."""
    present = {str(v) for v in values}
    return [v for v in order if v in present] + sorted(present - set(order))


def _check_columns(table: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: expected the columns {list(needed)}, it lacks {missing}")


def regime_run_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run (variant, engine, dose_level, seed, and task_candidate when the table has it) with
    RUN_COLUMNS (module docstring), the stability study's other run quantities (peak_reward, mismatch_peak,
    collapse_step, drift_step, the ``*_mean`` descriptive means) and the run-level columns of RUN_LEVEL present
    in the table (their first value in the run).

    table: per-step training rows with the columns variant, engine, dose_level, seed, step, reward,
    mismatch_mean, mask_frac, dose and tv_after. Rows are ordered by task_candidate (first seen), variant
    (ARM_ORDER), engine (ENGINE_ORDER), dose_level (`level_order`) and seed.
    """
    _check_columns(table, [*RUN_KEYS, *PER_STEP], "table")
    if table.empty:
        raise ValueError("table: expected at least one row (one row per run × step), got an empty table")
    keys = (["task_candidate"] if "task_candidate" in table.columns else []) + list(RUN_KEYS)
    if "run_id" in table.columns:  # a sweep's table: each key combination must be one run
        runs_per_key = table.groupby(keys, dropna=False)["run_id"].nunique()
        if (runs_per_key > 1).any():
            raise ValueError(_mixed_runs(table, keys, runs_per_key))
    data = table.copy()
    data["dose_level"] = data["dose_level"].astype(str)
    summary = stability_summary(data, keys=tuple(keys))  # each key combination is one run
    data = data.sort_values([*keys, "step"], kind="stable")
    groups = data.groupby(keys, sort=False)
    extra = groups.agg(
        dose=("dose", "mean"),  # pandas' mean skips NaN: the mean over the steps where the dose was measured
        tv_after_mean=("tv_after", "mean"),
        reward_auc=("reward", "mean"),
        start_reward=("reward", lambda r: float(r.iloc[:START_STEPS].mean())),
    )
    carried = [c for c in RUN_LEVEL if c in data.columns and c not in keys]
    if carried:
        extra = extra.join(groups[carried].first())
    summary = summary.merge(extra.reset_index(), on=keys, how="left", validate="one_to_one")
    summary["failed"] = summary["final_reward"] <= summary["start_reward"] - FAIL_DROP
    first = ["task_candidate"] if "task_candidate" in keys else []
    columns = [*first, *RUN_COLUMNS, *carried]
    columns += [c for c in summary.columns if c not in columns]
    summary = summary[columns]
    return _sort_runs(summary, pd.unique(table["task_candidate"]) if first else ()).reset_index(drop=True)


def _mixed_runs(table: pd.DataFrame, keys: list[str], runs_per_key: pd.Series) -> str:
    """The message for a table in which one (variant, engine, dose_level, seed) holds several runs: the columns
    that tell them apart (constant within a run, varying between the runs of one key)."""
    key = runs_per_key[runs_per_key > 1].index[0]
    key = key if isinstance(key, tuple) else (key,)
    rows = table
    for name, value in zip(keys, key):
        rows = rows[rows[name].astype(str) == str(value)]
    per_run = rows.groupby("run_id").first()
    varying = [c for c in per_run.columns if c not in keys and per_run[c].nunique(dropna=False) > 1]
    varying = [c for c in varying if c not in ("step", "reward", "time_s")][:5]
    where = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
    return (
        f"table: {int(runs_per_key.loc[runs_per_key.index[runs_per_key > 1][0]])} runs share {where}; they differ "
        f"in {varying or 'other parameters'}. The regime map compares one run per arm, engine, dose level and "
        "seed: draw the figures of each setting separately (a sweep per setting)"
    )


def _flag(values: pd.Series) -> pd.Series:
    """A True/False column as bool, also when a CSV gave it as text ("True", "False", "true")."""
    if values.dtype == bool:
        return values
    return values.astype(str).str.strip().str.lower().eq("true")


def _sort_runs(summary: pd.DataFrame, candidates: Sequence) -> pd.DataFrame:
    """Rows by task_candidate (``candidates``' order), variant, engine, dose level and seed."""
    rank = {}
    if "task_candidate" in summary:
        rank["task_candidate"] = {v: i for i, v in enumerate(candidates)}
    rank["variant"] = {v: i for i, v in enumerate(ordered(summary["variant"], ARM_ORDER))}
    rank["engine"] = {v: i for i, v in enumerate(ordered(summary["engine"], ENGINE_ORDER))}
    rank["dose_level"] = {v: i for i, v in enumerate(level_order(summary["dose_level"]))}
    by = [*rank, "seed"]
    return summary.sort_values(by, key=lambda s: s.map(rank[s.name]) if s.name in rank else s, kind="stable")


@dataclass(frozen=True, eq=False)
class RegimeChoice:
    """The calibration's choice (module docstring): the task candidate (None when none qualifies), its map
    levels in ladder order, the reason in words, and ``candidates``: one row per candidate tried with its
    first failing level F, the level H before it, final_reward at H, whether it qualifies and why."""

    task_candidate: str | None
    levels: tuple[str, ...]
    reason: str
    candidates: pd.DataFrame = field(repr=False)


def _labels(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a list of labels, got {type(values).__name__}")
    labels = [str(v) for v in values]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{name}: expected a non-empty list of distinct labels, got {labels}")
    return labels


def _candidate(runs: pd.DataFrame, ladder: list[str]) -> dict:
    """F, H and the verdict of one candidate. With several runs at a level (seeds), the level failed when any
    of them failed and its final_reward is their mean."""
    failed = runs.assign(failed=_flag(runs["failed"])).groupby("dose_level")["failed"].any()
    final = runs.groupby("dose_level")["final_reward"].mean()
    row: dict = {"first_failure": None, "below_failure": None, "final_reward_below": np.nan}
    if runs.empty:
        return {**row, "levels_run": 0, "qualifies": False, "incomplete": True, "why": "not run"}
    missing = [lv for lv in ladder if lv not in failed.index]
    row["levels_run"] = len(ladder) - len(missing)
    failing = next((i for i, lv in enumerate(ladder) if lv in failed.index and bool(failed[lv])), None)
    not_run_before = [
        lv for lv in ladder[: (failing + 1 if failing is not None else len(ladder))] if lv in missing
    ]
    if not_run_before:
        return {**row, "qualifies": False, "incomplete": True, "why": f"levels {not_run_before} not run"}
    row["incomplete"] = False
    if failing is None:
        return {**row, "qualifies": False, "why": "no ladder level failed"}
    f = ladder[failing]
    row["first_failure"] = f
    if failing == 0:
        return {**row, "qualifies": False, "why": f"the first ladder level {f} already failed"}
    h = ladder[failing - 1]
    row["below_failure"], row["final_reward_below"] = h, float(final[h])
    if not final[h] < MAX_REWARD_BELOW_FAILURE:
        why = f"first failure at {f}, but {h} ends at {final[h]:.3g} ≥ {MAX_REWARD_BELOW_FAILURE}"
        return {**row, "qualifies": False, "why": why}
    why = f"first failure at {f}; {h} ends at {final[h]:.3g} < {MAX_REWARD_BELOW_FAILURE}"
    return {**row, "qualifies": True, "why": why}


def choose_regime(summary: pd.DataFrame, candidates: Sequence[str], ladder: Sequence[str]) -> RegimeChoice:
    """The calibration's choice of task candidate and map levels (module docstring).

    summary: `regime_run_summary` of the calibration table (columns task_candidate, dose_level, final_reward,
    failed); candidates: the task candidates' labels in the order they are tried; ladder: the dose levels'
    labels in ladder order (low to high dose). Levels absent from ``ladder`` are ignored. A candidate not run,
    or with a ladder level at or before its first failure not run, leaves the choice undetermined (None, reason
    "undetermined: ...") unless an earlier candidate qualified: nothing is guessed and no later candidate is
    chosen in its place.
    """
    _check_columns(summary, ["task_candidate", "dose_level", "final_reward", "failed"], "summary")
    names, levels = _labels(candidates, "candidates"), _labels(ladder, "ladder")
    rows = []
    for name in names:
        runs = summary[summary["task_candidate"].astype(str) == name]
        runs = runs.assign(dose_level=runs["dose_level"].astype(str))
        rows.append({"task_candidate": name, **_candidate(runs, levels)})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    table["map_levels"] = ""
    chosen = next((r for r in rows if r["qualifies"] or r["incomplete"]), None)
    if chosen is not None and chosen["incomplete"]:  # tried in order: a later candidate cannot jump the queue
        reason = (
            f"undetermined: {chosen['task_candidate']}: {chosen['why']} (the candidates are tried in order; run "
            "its ladder up to its first failure)"
        )
        return RegimeChoice(None, (), reason, table)
    if chosen is None:
        reason = "no candidate qualifies: " + "; ".join(f"{r['task_candidate']}: {r['why']}" for r in rows)
        return RegimeChoice(None, (), reason, table)
    up_to = levels[: levels.index(chosen["first_failure"]) + 1]
    picked = tuple(up_to if len(up_to) <= MAP_LEVELS else [up_to[0], *up_to[-(MAP_LEVELS - 1) :]])
    at = table["task_candidate"] == chosen["task_candidate"]
    table.loc[at, "chosen"] = True
    table.loc[at, "map_levels"] = " ".join(picked)
    reason = f"{chosen['task_candidate']}: {chosen['why']}; map levels {', '.join(picked)}"
    skipped = rows[: rows.index(chosen)]
    if skipped:
        reason += " (before it: " + "; ".join(f"{r['task_candidate']}: {r['why']}" for r in skipped) + ")"
    return RegimeChoice(chosen["task_candidate"], picked, reason, table)


class RegimeCells(NamedTuple):
    """`regime_cells`' two tables: ``pairs`` (one row per cell and arm ≠ pg_is) and ``cells`` (one per cell)."""

    pairs: pd.DataFrame
    cells: pd.DataFrame


def _compare(a: pd.DataFrame, p: pd.DataFrame) -> dict:
    """diff, se and the verdicts of arm runs ``a`` against reference runs ``p`` (module docstring)."""
    ra, rp = a["final_reward"].to_numpy(np.float64), p["final_reward"].to_numpy(np.float64)
    ca, cp = int(_flag(a["collapsed"]).sum()), int(_flag(p["collapsed"]).sum())
    n_a, n_p = len(ra), len(rp)
    mean_a = float(ra.mean()) if n_a else np.nan
    mean_p = float(rp.mean()) if n_p else np.nan
    out = {
        "n_arm": n_a,
        "n_ref": n_p,
        "mean_arm": mean_a,
        "mean_ref": mean_p,
        "diff": mean_a - mean_p,
        "se": np.nan,
        "collapsed_arm": ca,
        "collapsed_ref": cp,
    }
    if n_a < MIN_SEEDS or n_p < MIN_SEEDS:
        return {**out, "better": NOT_JUDGED, "worse": NOT_JUDGED, "separated": NOT_JUDGED}
    diff = out["diff"]
    se = math.sqrt(ra.var(ddof=1) / n_a + rp.var(ddof=1) / n_p)
    out["se"] = se
    out["better"] = bool((diff >= MIN_DIFF and diff > SE_FACTOR * se) or (2 * cp >= n_p and ca == 0))
    out["worse"] = bool((diff <= -MIN_DIFF and -diff > SE_FACTOR * se) or (2 * ca >= n_a and cp == 0))
    out["separated"] = bool(abs(diff) >= MIN_DIFF)
    return out


def _any_of(values: Sequence[bool | str]) -> bool | str:
    """Three-valued or: True when one is True, False when all are False, "n/a" otherwise."""
    if any(v is True for v in values):
        return True
    return False if values and all(v is False for v in values) else NOT_JUDGED


def regime_cells(summary: pd.DataFrame) -> RegimeCells:
    """The map's verdicts (module docstring) from `regime_run_summary` of the map table.

    ``pairs``: one row per (engine, dose_level, variant ≠ pg_is) with n_arm, n_pg_is, mean_arm, mean_pg_is
    (mean final_reward over seeds), diff, se (NaN when not judged), matters, hurts, separated (True, False or
    "n/a"), collapsed_arm and collapsed_pg_is (how many of the seeds collapsed).
    ``cells``: one row per (engine, dose_level) with dose (mean over the cell's runs), runs, trust_region_matters,
    dppo_beats_ppo, ppo_beats_dppo (True, False or "n/a"), and the arms that matter, hurt and collapsed there
    (space-separated names, "" for none).
    """
    _check_columns(
        summary, ["variant", "engine", "dose_level", "seed", "final_reward", "collapsed", "dose"], "summary"
    )
    if "task_candidate" in summary.columns and summary["task_candidate"].nunique(dropna=False) > 1:
        raise ValueError(
            "summary: the runs come from several task candidates "
            f"({sorted(summary['task_candidate'].astype(str).unique())}); a cell compares the seeds of one "
            "task: pass one candidate's runs"
        )
    data = summary.assign(
        dose_level=summary["dose_level"].astype(str), variant=summary["variant"].astype(str)
    )
    engines = ordered(data["engine"], ENGINE_ORDER)
    levels = level_order(data["dose_level"])
    arms = ordered(data["variant"], ARM_ORDER)
    pair_rows, cell_rows = [], []
    for engine in engines:
        for level in levels:
            cell = data[(data["engine"] == engine) & (data["dose_level"] == level)]
            if cell.empty:
                continue
            ref = cell[cell["variant"] == REFERENCE_ARM]
            verdicts: dict[str, dict] = {}
            for arm in arms:
                runs = cell[cell["variant"] == arm]
                if arm == REFERENCE_ARM or runs.empty:
                    continue
                got = _compare(runs, ref)
                verdicts[arm] = got
                pair_rows.append(
                    {
                        "engine": engine,
                        "dose_level": level,
                        "variant": arm,
                        "n_arm": got["n_arm"],
                        f"n_{REFERENCE_ARM}": got["n_ref"],
                        "mean_arm": got["mean_arm"],
                        f"mean_{REFERENCE_ARM}": got["mean_ref"],
                        "diff": got["diff"],
                        "se": got["se"],
                        "matters": got["better"],
                        "hurts": got["worse"],
                        "separated": got["separated"],
                        "collapsed_arm": got["collapsed_arm"],
                        f"collapsed_{REFERENCE_ARM}": got["collapsed_ref"],
                    }
                )
            region = [verdicts[a]["better"] if a in verdicts else NOT_JUDGED for a in REGION_ARMS]
            ppo, dppo = (cell[cell["variant"] == a] for a in REGION_ARMS)
            dppo_vs_ppo = _compare(dppo, ppo)
            collapsed = cell.groupby("variant")["collapsed"].apply(lambda c: bool(c.astype(bool).any()))
            cell_rows.append(
                {
                    "engine": engine,
                    "dose_level": level,
                    "dose": float(cell["dose"].mean()),
                    "runs": len(cell),
                    "trust_region_matters": _any_of(region),
                    "dppo_beats_ppo": dppo_vs_ppo["better"],
                    "ppo_beats_dppo": dppo_vs_ppo["worse"],
                    "arms_matter": " ".join(a for a, v in verdicts.items() if v["better"] is True),
                    "arms_hurt": " ".join(a for a, v in verdicts.items() if v["worse"] is True),
                    "arms_collapsed": " ".join(a for a in arms if a in collapsed.index and collapsed[a]),
                }
            )
    verdict_columns = ["matters", "hurts", "separated"]
    pairs = pd.DataFrame(pair_rows, columns=_PAIR_COLUMNS)
    cells = pd.DataFrame(cell_rows, columns=_CELL_COLUMNS)
    pairs = pairs.astype({c: object for c in verdict_columns})
    cells = cells.astype({c: object for c in ("trust_region_matters", "dppo_beats_ppo", "ppo_beats_dppo")})
    return RegimeCells(pairs, cells)


_PAIR_COLUMNS = [
    "engine",
    "dose_level",
    "variant",
    "n_arm",
    f"n_{REFERENCE_ARM}",
    "mean_arm",
    f"mean_{REFERENCE_ARM}",
    "diff",
    "se",
    "matters",
    "hurts",
    "separated",
    "collapsed_arm",
    f"collapsed_{REFERENCE_ARM}",
]
_CELL_COLUMNS = [
    "engine",
    "dose_level",
    "dose",
    "runs",
    "trust_region_matters",
    "dppo_beats_ppo",
    "ppo_beats_dppo",
    "arms_matter",
    "arms_hurt",
    "arms_collapsed",
]
