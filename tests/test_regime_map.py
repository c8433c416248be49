"""The regime map's analysis (per-run summary, the calibration's choice, the cell verdicts) and its figures.

The per-run quantities are checked against direct float64 numpy computations on fresh random per-step tables;
the choice and the verdicts on hand-built summaries whose answer follows from the rules in
docs/design.md §9.3 (and on random ones for diff and se).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trustregion_lab.analysis.regime_map import (
    RUN_COLUMNS,
    choose_regime,
    level_order,
    regime_cells,
    regime_run_summary,
)
from trustregion_lab.analysis.stability import NOT_JUDGED, run_stability
from trustregion_lab.plots.common import save_output
from trustregion_lab.plots.regime_map import regime_calibration_figures, regime_map_figures
from trustregion_lab.plots.registry import figures_for

CORE = ("pg_is", "cispo", "ppo", "dppo_binary_tv")
OTHER = ("minirl", "dppo_topk_tv", "ppo_relaxed", "tis", "icepop", "seq_mis", "gspo")
ENGINES = ("model-fp32", "model-bf16", "model-fp8", "model-int4")
NO_REGION = ("pg_is", "cispo", "minirl")
LEVEL_DOSE = (0.001, 0.02, 0.06, 0.15, 0.35, 0.6, 0.8, 0.9)


def synthetic_run(
    rng: np.random.Generator, steps: int, level: int, collapse: bool, plateau: float = 0.7
) -> pd.DataFrame:
    """One run's per-step rows: a reward that rises to ``plateau`` (and falls to ≈ 0.1 halfway when
    ``collapse``), a per-step dose around the level's (NaN on every 7th step), tv_after, mask_frac and a mismatch
    that shrinks slowly."""
    t = np.arange(1, steps + 1)
    reward = 0.3 + (plateau - 0.3) * (1 - np.exp(-t / 30)) + rng.normal(0, 0.04, steps)
    if collapse:
        reward[steps // 2 :] = 0.1 + rng.normal(0, 0.03, steps - steps // 2)
    dose = LEVEL_DOSE[level] * np.exp(rng.normal(0, 0.3, steps))
    dose[::7] = np.nan
    return pd.DataFrame(
        {
            "step": t,
            "reward": np.clip(reward, 0, 1),
            "dose": dose,
            "tv_after": dose / 3 * np.exp(rng.normal(0, 0.1, steps)),
            "mismatch_mean": 0.004 * np.exp(-t / 400) * np.exp(rng.normal(0, 0.05, steps)),
            "mismatch_max": 0.05 + rng.uniform(0, 0.02, steps),
            "mask_frac": rng.uniform(0, 0.02 * (level + 1), steps),
            "eval_reward_sampled": np.nan,
            "entropy": rng.uniform(0.5, 1.0, steps),
        }
    )


def synthetic_map(
    rng: np.random.Generator,
    *,
    engines=ENGINES,
    levels: int = 5,
    core=CORE,
    other=OTHER,
    seeds: int = 2,
    steps: int = 200,
    candidates=(None,),
) -> pd.DataFrame:
    """A merged sweep table: core arms on every engine, the other arms on model-fp8, ``levels`` dose levels; the
    no-trust-region arms collapse at the top two levels (from one level lower on model-int4)."""
    parts = []
    for candidate in candidates:
        for engine in engines:
            arms = [*core, *(other if engine == "model-fp8" else ())]
            for arm in arms:
                for k in range(levels):
                    for seed in range(seeds):
                        top = levels - 2 - (engine == "model-int4")
                        collapse = arm in NO_REGION and k >= top
                        plateau = 0.75 - 0.05 * k - (0.1 if arm == "ppo_relaxed" else 0.0)
                        run = synthetic_run(rng, steps, k, collapse, plateau)
                        run = run.assign(
                            variant=arm,
                            engine=engine,
                            dose_level=f"L{k}",
                            seed=seed,
                            lr=1e-5 * 3**k,
                            staleness=k,
                            epochs=1 + (k >= 3),
                        )
                        if candidate is not None:
                            run["task_candidate"] = candidate
                        parts.append(run)
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------- run summary
def test_summary_columns_and_values_match_numpy(rng, fresh_seed):
    table = synthetic_map(
        rng, engines=("model-fp32", "model-int4"), levels=3, core=("pg_is", "ppo"), other=(), steps=130
    )
    shuffled = table.sample(frac=1.0, random_state=fresh_seed % 2**31)  # row order must not matter
    summary = regime_run_summary(shuffled)
    assert set(RUN_COLUMNS) | {"lr", "staleness", "epochs"} <= set(summary.columns)
    assert list(summary.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert len(summary) == 2 * 2 * 3 * 2
    for _, row in summary.iterrows():
        run = table[
            (table["variant"] == row["variant"])
            & (table["engine"] == row["engine"])
            & (table["dose_level"] == row["dose_level"])
            & (table["seed"] == row["seed"])
        ].sort_values("step")
        reward = run["reward"].to_numpy(np.float64)
        dose = run["dose"].to_numpy(np.float64)
        tv = run["tv_after"].to_numpy(np.float64)
        final = reward[-100:].mean()  # 130 steps: blocks of 100 counted back from the end
        start = reward[:25].mean()
        np.testing.assert_allclose(row["dose"], dose[np.isfinite(dose)].mean(), rtol=1e-12)
        np.testing.assert_allclose(row["tv_after_mean"], tv[np.isfinite(tv)].mean(), rtol=1e-12)
        np.testing.assert_allclose(row["reward_auc"], reward.mean(), rtol=1e-12)
        np.testing.assert_allclose(row["start_reward"], start, rtol=1e-12)
        np.testing.assert_allclose(row["final_reward"], final, rtol=1e-12)
        np.testing.assert_allclose(row["mask_frac_mean"], run["mask_frac"].mean(), rtol=1e-12)
        assert row["failed"] == (final <= start - 0.1)
        assert row["steps"] == len(run)
        assert row["lr"] == run["lr"].iloc[0] and row["staleness"] == run["staleness"].iloc[0]
        stats = run_stability(
            run["step"].to_numpy(), reward, run["mismatch_mean"].to_numpy(), np.full(len(run), np.nan)
        )
        for key in ("drifted", "collapsed", "stable", "mismatch_start", "mismatch_end"):
            assert row[key] == stats[key], key
    # the synthetic runs that collapse halfway fail; the others rise and do not
    # (pg_is from L1 on with model-fp32 and at every level with model-int4)
    want = summary["variant"].eq("pg_is") & (
        summary["dose_level"].ne("L0") | summary["engine"].eq("model-int4")
    )
    assert summary.loc[want, "failed"].all() and summary.loc[want, "collapsed"].all()
    assert not summary.loc[~want, "failed"].any()


def test_summary_keeps_task_candidates_apart_and_orders_levels_by_number(rng):
    table = synthetic_map(
        rng,
        engines=("model-fp32",),
        levels=3,
        core=("ppo",),
        other=(),
        seeds=1,
        steps=60,
        candidates=("b", "a"),
    )
    table["dose_level"] = table["dose_level"].replace({"L2": "L10"})
    summary = regime_run_summary(table)
    assert list(summary.columns[:2]) == ["task_candidate", "variant"]
    assert list(summary["task_candidate"]) == ["b"] * 3 + ["a"] * 3  # first-seen order kept
    assert list(summary["dose_level"][:3]) == ["L0", "L1", "L10"]
    assert level_order(["L10", "L2", "L0"]) == ["L0", "L2", "L10"]
    assert level_order(["low", "high", "low"]) == ["low", "high"]


def test_bad_tables_raise_naming_the_columns():
    columns = ["variant", "engine", "dose_level", "seed", "step", "reward", "mismatch_mean", "mask_frac"]
    with pytest.raises(ValueError, match=r"lacks \['dose', 'tv_after'\]"):
        regime_run_summary(pd.DataFrame(columns=columns))
    with pytest.raises(ValueError, match="empty"):
        regime_run_summary(pd.DataFrame(columns=[*columns, "dose", "tv_after"]))
    with pytest.raises(TypeError, match="DataFrame"):
        regime_run_summary([1, 2])
    with pytest.raises(ValueError, match=r"lacks \['task_candidate'\]"):
        choose_regime(pd.DataFrame(columns=["dose_level", "final_reward", "failed"]), ["a"], ["L0"])
    with pytest.raises(ValueError, match=r"lacks \['collapsed', 'dose'\]"):
        regime_cells(pd.DataFrame(columns=["variant", "engine", "dose_level", "seed", "final_reward"]))
    with pytest.raises(ValueError, match="task_candidate"):
        regime_calibration_figures(pd.DataFrame({"variant": ["ppo"]}), [])
    good = pd.DataFrame(
        {"task_candidate": ["a"], "dose_level": ["L0"], "final_reward": [0.5], "failed": [False]}
    )
    with pytest.raises(TypeError, match="ladder"):
        choose_regime(good, ["a"], "L0")
    with pytest.raises(ValueError, match="distinct"):
        choose_regime(good, ["a", "a"], ["L0"])


# ------------------------------------------------------------------------------------------- calibration choice
LADDER = [f"L{k}" for k in range(8)]


def calibration(finals: dict[str, list[float]], start: float = 0.5) -> pd.DataFrame:
    """A calibration summary: one run per (candidate, level) with the given final rewards (NaN: not run)."""
    rows = []
    for name, values in finals.items():
        for level, final in zip(LADDER, values, strict=False):
            if not math.isnan(final):
                rows.append(
                    {
                        "task_candidate": name,
                        "dose_level": level,
                        "final_reward": final,
                        "start_reward": start,
                        "failed": final <= start - 0.1,
                    }
                )
    return pd.DataFrame(rows)


def test_the_first_qualifying_candidate_is_chosen_with_its_four_highest_levels_up_to_the_failure():
    finals = {
        "easy": [0.95] * 8,  # never fails
        "hard": [0.6, 0.65, 0.7, 0.7, 0.72, 0.7, 0.1, 0.05],  # fails first at L6, L5 ends at 0.7
        "harder": [0.5, 0.5, 0.1] + [0.0] * 5,  # qualifies too, but comes later
    }
    choice = choose_regime(calibration(finals), ["easy", "hard", "harder"], LADDER)
    assert choice.task_candidate == "hard"
    assert choice.levels == ("L0", "L3", "L4", "L5", "L6")
    assert "L6" in choice.reason and "easy" in choice.reason
    row = choice.candidates.set_index("task_candidate")
    assert row.loc["hard", "first_failure"] == "L6" and row.loc["hard", "below_failure"] == "L5"
    assert row.loc["hard", "final_reward_below"] == 0.7 and bool(row.loc["hard", "chosen"])
    assert not row.loc["easy", "qualifies"] and not row.loc["harder", "chosen"]
    # the candidates' order decides
    assert choose_regime(calibration(finals), ["harder", "hard"], LADDER).task_candidate == "harder"


def test_fewer_than_five_levels_up_to_the_failure_are_all_taken():
    choice = choose_regime(calibration({"a": [0.5, 0.6, 0.55, 0.2, 0.1]}), ["a"], LADDER[:5])
    assert choice.task_candidate == "a" and choice.levels == ("L0", "L1", "L2", "L3")
    choice = choose_regime(calibration({"a": [0.5, 0.6, 0.55, 0.5, 0.1]}), ["a"], LADDER[:5])
    assert choice.levels == ("L0", "L1", "L2", "L3", "L4")


def test_no_qualifying_candidate_gives_none_and_the_reason():
    finals = {
        "flat": [0.5] * 5,  # no failure
        "saturated": [0.95, 0.95, 0.92, 0.1, 0.0],  # the level below the failure ends ≥ 0.9
        "at_once": [0.1] * 5,  # fails at the first level: no H
    }
    choice = choose_regime(calibration(finals), list(finals), LADDER[:5])
    assert choice.task_candidate is None and choice.levels == ()
    assert choice.reason.startswith("no candidate qualifies")
    for text in ("no ladder level failed", "0.92", "already failed"):
        assert text in choice.reason, text
    assert not choice.candidates["qualifies"].any() and not choice.candidates["chosen"].any()


@pytest.mark.parametrize(
    ("first", "why"),
    [([0.5, math.nan, 0.5, 0.1, 0.1], "levels ['L1'] not run"), (None, "absent: not run")],
)
def test_a_candidate_not_run_in_full_leaves_the_choice_undetermined(first, why):
    """Candidates are tried in order: while an earlier one has not run its ladder up to its first failure, a
    later qualifying one is not chosen in its place (e.g. figures drawn with --so-far part way)."""
    finals = {"good": [0.5, 0.6, 0.7, 0.8, 0.05]}
    name = "absent" if first is None else "gap"
    if first is not None:
        finals = {name: first, **finals}
    choice = choose_regime(calibration(finals), [name, "good"], LADDER[:5])
    assert choice.task_candidate is None and choice.levels == ()
    assert choice.reason.startswith("undetermined") and why in choice.reason
    assert choose_regime(calibration(finals), ["good", name], LADDER[:5]).task_candidate == "good"


# ------------------------------------------------------------------------------------------- cell verdicts
def cells_summary(
    finals: dict[str, list[float]], collapsed: dict[str, list[bool]] | None = None
) -> pd.DataFrame:
    rows = []
    for arm, values in finals.items():
        for seed, final in enumerate(values):
            flag = (collapsed or {}).get(arm, [False] * len(values))[seed]
            rows.append(
                {
                    "variant": arm,
                    "engine": "model-fp8",
                    "dose_level": "L3",
                    "seed": seed,
                    "final_reward": final,
                    "collapsed": flag,
                    "dose": 0.1 + seed,
                }
            )
    return pd.DataFrame(rows)


def verdicts(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    pairs, cells = regime_cells(summary)
    assert len(cells) == 1
    return pairs.set_index("variant"), cells.iloc[0]


def test_a_clear_separation_over_three_seeds_matters_and_an_overlap_does_not():
    pairs, cell = verdicts(
        cells_summary(
            {
                "pg_is": [0.30, 0.32, 0.31],
                "ppo": [0.60, 0.62, 0.61],  # far above, tight
                "dppo_binary_tv": [0.20, 0.50, 0.80],  # 0.19 above on average, spread too wide (2 se ≈ 0.35)
                "cispo": [0.10, 0.12, 0.11],  # far below
            }
        )
    )
    assert pairs.loc["ppo", "matters"] is True and pairs.loc["ppo", "hurts"] is False
    assert (
        pairs.loc["dppo_binary_tv", "matters"] is False and pairs.loc["dppo_binary_tv", "separated"] is True
    )
    assert pairs.loc["cispo", "hurts"] is True and pairs.loc["cispo", "matters"] is False
    assert cell["trust_region_matters"] is True
    assert cell["ppo_beats_dppo"] is False and cell["dppo_beats_ppo"] is False  # 0.11 apart, 2 se ≈ 0.35
    assert cell["arms_matter"] == "ppo" and cell["arms_hurt"] == "cispo" and cell["arms_collapsed"] == ""
    np.testing.assert_allclose(cell["dose"], np.mean([0.1, 1.1, 2.1]))
    assert list(pairs.index) == ["cispo", "ppo", "dppo_binary_tv"]  # the arms' order, pg_is left out


def test_diff_and_se_match_numpy(rng):
    finals = {arm: list(rng.uniform(0, 1, int(rng.integers(2, 6)))) for arm in ("pg_is", "ppo", "tis")}
    pairs, _ = verdicts(cells_summary(finals))
    p = np.asarray(finals["pg_is"])
    for arm in ("ppo", "tis"):
        a = np.asarray(finals[arm])
        diff = a.mean() - p.mean()
        se = np.sqrt(a.var(ddof=1) / len(a) + p.var(ddof=1) / len(p))
        np.testing.assert_allclose(pairs.loc[arm, "diff"], diff, rtol=1e-12)
        np.testing.assert_allclose(pairs.loc[arm, "se"], se, rtol=1e-12)
        assert pairs.loc[arm, "matters"] is bool(diff >= 0.05 and diff > 2 * se)
        assert pairs.loc[arm, "hurts"] is bool(diff <= -0.05 and -diff > 2 * se)
        assert pairs.loc[arm, "separated"] is bool(abs(diff) >= 0.05)
        assert pairs.loc[arm, "n_arm"] == len(a) and pairs.loc[arm, "n_pg_is"] == len(p)


def test_one_seed_reads_na():
    pairs, cell = verdicts(cells_summary({"pg_is": [0.1], "ppo": [0.9, 0.9], "dppo_binary_tv": [0.9, 0.92]}))
    for arm in ("ppo", "dppo_binary_tv"):
        assert [pairs.loc[arm, c] for c in ("matters", "hurts", "separated")] == [NOT_JUDGED] * 3
        assert math.isnan(pairs.loc[arm, "se"])
    assert cell["trust_region_matters"] == NOT_JUDGED
    assert cell["dppo_beats_ppo"] is False  # two seeds each: judged
    _, cell = verdicts(cells_summary({"pg_is": [0.1, 0.1], "ppo": [0.9, 0.9]}))  # no DPPO run: not judged
    assert cell["trust_region_matters"] is True and cell["dppo_beats_ppo"] == NOT_JUDGED


def test_collapses_decide_when_rewards_do_not():
    finals = {"pg_is": [0.5, 0.5], "ppo": [0.5, 0.5], "dppo_binary_tv": [0.5, 0.5], "cispo": [0.5, 0.5]}
    collapsed = {"pg_is": [True, False], "cispo": [True, True], "dppo_binary_tv": [False, True]}
    pairs, cell = verdicts(cells_summary(finals, collapsed))
    assert pairs.loc["ppo", "matters"] is True  # pg_is collapsed in half its seeds, ppo in none
    assert pairs.loc["dppo_binary_tv", "matters"] is False  # one DPPO seed collapsed too
    assert pairs.loc["cispo", "hurts"] is False  # pg_is collapsed as well
    assert pairs.loc["cispo", "collapsed_arm"] == 2 and pairs.loc["cispo", "collapsed_pg_is"] == 1
    assert cell["trust_region_matters"] is True
    assert cell["ppo_beats_dppo"] is True and cell["dppo_beats_ppo"] is False
    assert cell["arms_collapsed"] == "pg_is cispo dppo_binary_tv"
    collapsed = {"ppo": [True, True]}
    pairs, cell = verdicts(cells_summary(finals, collapsed))
    assert pairs.loc["ppo", "hurts"] is True and cell["dppo_beats_ppo"] is True


# ------------------------------------------------------------------------------------------- figures
PNG = b"\x89PNG\r\n\x1a\n"


def test_map_figures_return_the_named_outputs_and_draw(rng, tmp_path):
    table = synthetic_map(
        rng, engines=("model-fp32", "model-fp8"), levels=3, core=("pg_is", "ppo"), other=("tis",), steps=60
    )
    outputs = regime_map_figures(table, ["variant", "engine", "dose_level", "seed"])
    assert list(outputs) == [
        "regime_map.png",
        "regime_map.csv",
        "regime_cells.csv",
        "regime_cell_verdicts.csv",
    ]
    assert len(outputs["regime_map.csv"]) == (2 * 2 + 1) * 3 * 2
    assert len(outputs["regime_cells.csv"]) == (2 + 1) * 3  # ppo on both engines, tis on fp8, 3 levels
    assert len(outputs["regime_cell_verdicts.csv"]) == 2 * 3
    for name, output in outputs.items():
        save_output(output, tmp_path / name)
    png = (tmp_path / "regime_map.png").read_bytes()
    assert png[:8] == PNG and len(png) > 20_000
    verdicts = pd.read_csv(tmp_path / "regime_cell_verdicts.csv", keep_default_na=False)
    assert set(verdicts["trust_region_matters"]) <= {"True", "False", "n/a"}
    assert (
        figures_for("regime-map") is regime_map_figures
        and figures_for("regime-map-quick") is regime_map_figures
    )


def test_calibration_figures_return_the_named_outputs_and_mark_the_choice(rng, tmp_path):
    table = synthetic_map(
        rng,
        engines=("model-fp32",),
        levels=5,
        core=("pg_is",),
        other=(),
        seeds=1,
        steps=60,
        candidates=("sort-hard", "sort-long"),
    )
    outputs = regime_calibration_figures(table, ["task_candidate", "dose_level"])
    assert list(outputs) == ["regime_calibration.png", "regime_calibration.csv", "regime_choice.csv"]
    runs = outputs["regime_calibration.csv"]
    # pg_is collapses (fails) from L3 on in the synthetic table: sort-hard is chosen, levels L0..L3
    assert set(runs.loc[runs["map_level"], "dose_level"]) == {"L0", "L1", "L2", "L3"}
    assert set(runs.loc[runs["chosen_candidate"], "task_candidate"]) == {"sort-hard"}
    for name, output in outputs.items():
        save_output(output, tmp_path / name)
    png = (tmp_path / "regime_calibration.png").read_bytes()
    assert png[:8] == PNG and len(png) > 20_000
    assert figures_for("regime-calibration") is regime_calibration_figures


def test_the_driver_draws_a_stored_map_and_calibration(rng, tmp_path):
    from trustregion_lab.plots import draw_figures

    table = synthetic_map(rng, engines=("model-fp32",), levels=2, core=("pg_is", "ppo"), other=(), steps=40)
    (tmp_path / "map").mkdir()
    table.assign(preset="regime-map-quick").to_csv(tmp_path / "map" / "table.csv", index=False)
    assert [p.name for p in draw_figures(tmp_path / "map")] == ["regime_map.png"]
    stored = pd.read_csv(tmp_path / "map" / "figures" / "regime_map.csv")
    direct = regime_run_summary(table)
    assert list(stored.columns) == list(direct.columns)
    np.testing.assert_allclose(stored["final_reward"], direct["final_reward"], rtol=1e-9)  # 10 digits kept
    calib = synthetic_map(
        rng,
        engines=("model-fp32",),
        levels=3,
        core=("ppo",),
        other=(),
        seeds=1,
        steps=40,
        candidates=("x", "y"),
    )
    (tmp_path / "cal").mkdir()
    calib.assign(preset="regime-calibration").to_csv(tmp_path / "cal" / "table.csv", index=False)
    assert [p.name for p in draw_figures(tmp_path / "cal")] == ["regime_calibration.png"]
    choice = pd.read_csv(tmp_path / "cal" / "figures" / "regime_choice.csv")
    assert list(choice["task_candidate"]) == ["x", "y"] and not choice["chosen"].any()  # ppo never fails here


def test_short_runs_and_unmeasured_doses(rng):
    table = synthetic_map(rng, engines=("model-fp8",), levels=1, core=("ppo",), other=(), seeds=1, steps=12)
    table["dose"] = np.nan  # never measured
    row = regime_run_summary(table).iloc[0]
    reward = table["reward"].to_numpy(np.float64)
    assert math.isnan(row["dose"]) and row["steps"] == 12
    np.testing.assert_allclose([row["start_reward"], row["final_reward"]], [reward.mean()] * 2, rtol=1e-12)
    assert not row["failed"]  # 12 steps: the first 25 and the last 100 are the same steps


def test_runs_that_share_arm_engine_level_and_seed_are_refused_not_merged():
    """Two runs of one (variant, engine, dose_level, seed) that differ in another parameter (e.g. a --grid over
    prompt_pool) would be summed into one run of twice the steps: refused, naming the column."""
    steps = np.arange(1, 121)
    frames = []
    for pool, level in ((256, 0.4), (1024, 0.9)):
        frames.append(
            pd.DataFrame(
                {
                    "variant": "ppo",
                    "engine": "model-fp32",
                    "dose_level": "L0",
                    "seed": 0,
                    "step": steps,
                    "reward": level,
                    "mismatch_mean": 0.001,
                    "mask_frac": 0.0,
                    "dose": 0.01,
                    "tv_after": 0.01,
                    "prompt_pool": pool,
                    "run_id": f"run-{pool}",
                }
            )
        )
    with pytest.raises(ValueError, match=r"2 runs share .*prompt_pool"):
        regime_run_summary(pd.concat(frames, ignore_index=True))
    one = regime_run_summary(frames[0])
    assert len(one) == 1 and one["steps"].iloc[0] == 120


def test_verdicts_read_true_false_text_from_a_csv_as_flags():
    """A summary read back from CSV may hold the flags as text: "False" must not count as a collapse."""
    rows = []
    for arm, base in (("pg_is", 0.5), ("ppo", 0.52)):
        for seed in range(3):
            rows.append(
                {
                    "variant": arm,
                    "engine": "model-fp32",
                    "dose_level": "L0",
                    "seed": seed,
                    "final_reward": base + 0.001 * seed,
                    "collapsed": "False",
                    "dose": 0.01,
                }
            )
    pairs = regime_cells(pd.DataFrame(rows)).pairs
    assert pairs["collapsed_arm"].tolist() == [0] and pairs["collapsed_pg_is"].tolist() == [0]
    assert pairs["matters"].tolist() == [False]
    two = pd.DataFrame(rows).assign(task_candidate=["a", "b"] * 3)
    with pytest.raises(ValueError, match="several task candidates"):
        regime_cells(two)
