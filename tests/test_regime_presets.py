"""The regime map's presets (docs/design.md §9.3): the labels stand for the fields they set, the map holds the
design's (arm, engine) pairs only, and a field a label sets is not a parameter the user could set in vain."""

from __future__ import annotations

import pandas as pd
import pytest

from trustregion_lab.experiment import Preset
from trustregion_lab.sweep import SweepConfigError, available_presets, parse_grid_args, plan_sweep
from trustregion_lab.train import regime


def test_a_label_is_replaced_by_the_fields_it_stands_for():
    for task, task_fields in regime.TASK_CANDIDATES:
        for level, level_fields in regime.LADDER:
            config = regime.regime_config({"variant": "ppo", "task_candidate": task, "dose_level": level})
            assert config == {"variant": "ppo", **task_fields, **level_fields}
    # without a task candidate the chosen task is used
    config = regime.regime_config({"dose_level": "L0"})
    assert config["task"] == dict(regime.TASK_CANDIDATES)[regime.REGIME_TASK]["task"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dose_level": "L99"}, "dose_level must be one of"),
        ({"dose_level": "L0", "task_candidate": "sorted"}, "task_candidate must be one of"),
    ],
)
def test_an_unknown_label_is_refused_by_name(config, message):
    with pytest.raises(ValueError, match=message):
        regime.regime_config(config)


def test_the_ladder_only_moves_the_knobs_and_climbs():
    knobs = {"lr", "staleness", "epochs"}
    previous = None
    for _, fields in regime.LADDER:
        assert set(fields) == knobs
        current = (fields["lr"], fields["staleness"], fields["epochs"])
        if previous is not None:  # no knob goes down from one rung to the next, one goes up
            assert all(c >= p for c, p in zip(current, previous)) and current != previous
        previous = current
    assert set(regime.REGIME_LEVELS) <= {label for label, _ in regime.LADDER}
    assert regime.REGIME_LEVELS[0] == regime.LADDER[0][0] and len(regime.REGIME_LEVELS) >= 5


@pytest.mark.parametrize("name", ["regime-calibration", "regime-map", "regime-map-quick"])
def test_a_field_a_label_sets_is_not_a_parameter(name):
    preset = available_presets()[name]
    assert not regime.label_fields() & set(preset.defaults)
    with pytest.raises(SweepConfigError, match="unknown parameter 'lr'"):
        plan_sweep(preset, parse_grid_args(["lr=1e-3"], preset.defaults))


def test_the_map_holds_the_core_arms_on_every_engine_and_the_others_on_fp8_only():
    preset = available_presets()["regime-map"]
    plan = plan_sweep(preset)
    pairs = {(spec.config["variant"], spec.config["engine"]) for spec in plan.runs}
    expected = {(arm, engine) for arm in regime.CORE_ARMS for engine in regime.MAP_ENGINES}
    expected |= {(arm, regime.OTHER_ARMS_ENGINE) for arm in regime.OTHER_ARMS}
    assert pairs == expected
    levels = {spec.config["dose_level"] for spec in plan.runs}
    assert levels == set(regime.REGIME_LEVELS)
    assert len(plan.runs) == len(expected) * len(levels) * 2 and plan.seeds == 2
    # a grid narrowed to pairs outside the design is refused, not run empty
    with pytest.raises(SweepConfigError, match="holds none of the requested combinations"):
        plan_sweep(preset, parse_grid_args(["variant=gspo", "engine=model-fp32"], preset.defaults))


def test_include_filters_any_preset_and_must_be_callable():
    def run(config, seed):
        return pd.DataFrame({"x": [config["a"] * config["b"]]})

    preset = Preset(
        "toy",
        "toy",
        run,
        {"a": 1, "b": 1},
        grid={"a": [1, 2, 3], "b": [1, 2]},
        include=lambda c: not (c["a"] == 2 and c["b"] == 2),
    )
    combos = [(spec.config["a"], spec.config["b"]) for spec in plan_sweep(preset).runs]
    assert combos == [(1, 1), (1, 2), (2, 1), (3, 1), (3, 2)]
    with pytest.raises(TypeError, match="include must be callable"):
        Preset("toy", "toy", run, {"a": 1}, include="a != 2")


def test_a_regime_run_records_the_values_it_ran_with(monkeypatch):
    from trustregion_lab.train import presets

    def tiny_run(config, seed):
        return pd.DataFrame({"step": [1, 2], "engine": [config["engine"]] * 2, "seed": [seed] * 2})

    monkeypatch.setattr(presets, "run_sequence_preset", tiny_run)
    preset = available_presets()["regime-calibration"]
    rows = presets.run_regime_preset(
        {**preset.defaults, "task_candidate": "sort-long-hard", "dose_level": "L6"}, 0
    )
    level, task = dict(regime.LADDER)["L6"], dict(regime.TASK_CANDIDATES)["sort-long-hard"]
    for key, value in {**level, "min_length": task["min_length"], "max_length": task["max_length"]}.items():
        assert (rows[key] == value).all(), key


def test_the_committed_choice_is_the_rule_applied_to_the_committed_calibration():
    """docs/design.md §9.3: REGIME_TASK and REGIME_LEVELS are choose_regime of the committed calibration table."""
    from pathlib import Path

    from trustregion_lab.analysis.regime_map import choose_regime

    path = (
        Path(__file__).resolve().parents[1]
        / "figures"
        / "regime-map"
        / "calibration"
        / "regime_calibration.csv"
    )
    summary = pd.read_csv(path)
    choice = choose_regime(
        summary, [label for label, _ in regime.TASK_CANDIDATES], [label for label, _ in regime.LADDER]
    )
    assert choice.task_candidate == regime.REGIME_TASK, choice.reason
    assert choice.levels == regime.REGIME_LEVELS, choice.reason


def test_seeds_for_gives_a_configuration_its_own_seed_count_and_seeds_overrides_it(monkeypatch):
    def run(config, seed):
        return pd.DataFrame({"x": [config["a"]]})

    preset = Preset(
        "toy",
        "toy",
        run,
        {"a": 1},
        grid={"a": [1, 2, 3]},
        seeds=2,
        seeds_for=lambda c: 3 if c["a"] == 2 else 2,
    )
    plan = plan_sweep(preset)
    assert [(spec.config["a"], spec.seed) for spec in plan.runs] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
        (3, 0),
        (3, 1),
    ]
    assert plan.seeds == 3 and len(plan_sweep(preset, seeds=1).runs) == 3
    bad = Preset("toy", "toy", run, {"a": 1}, grid={"a": [1]}, seeds_for=lambda c: 0)
    with pytest.raises(SweepConfigError, match="seeds_for must return a positive int"):
        plan_sweep(bad)
    # the map: a cell listed for a third seed gets it for every arm run there, the rest keep two
    monkeypatch.setattr(regime, "THIRD_SEED_CELLS", (("model-fp8", regime.REGIME_LEVELS[-1]),))
    runs = plan_sweep(available_presets()["regime-map"]).runs
    third = {
        (spec.config["variant"], spec.config["engine"], spec.config["dose_level"])
        for spec in runs
        if spec.seed == 2
    }
    assert third == {
        (arm, "model-fp8", regime.REGIME_LEVELS[-1]) for arm in (*regime.CORE_ARMS, *regime.OTHER_ARMS)
    }


def test_the_third_seed_cells_are_the_cells_the_first_pass_separated():
    """docs/design.md §9.3: a cell gets a third seed when, over seeds 0 and 1, some arm's mean final reward is
    ≥ 0.05 from pg_is's. Before the map's table is committed no cell has one; after, THIRD_SEED_CELLS is what
    regime_cells finds in the committed table restricted to the first two seeds."""
    from pathlib import Path

    from trustregion_lab.analysis.regime_map import regime_cells

    path = Path(__file__).resolve().parents[1] / "figures" / "regime-map" / "regime_map.csv"
    if not path.exists():
        assert regime.THIRD_SEED_CELLS == ()
        return
    summary = pd.read_csv(path)
    pairs = regime_cells(summary[summary["seed"] < regime.MAP_SEEDS]).pairs
    separated = pairs[pairs["separated"].astype(str).str.lower() == "true"]
    expected = set(zip(separated["engine"], separated["dose_level"]))
    assert set(regime.THIRD_SEED_CELLS) == expected


def test_a_requested_value_the_design_never_runs_is_refused_not_dropped():
    preset = available_presets()["regime-map"]
    with pytest.raises(SweepConfigError, match="never runs variant=gspo") as caught:
        plan_sweep(
            preset, parse_grid_args(["variant=pg_is,gspo", "engine=model-fp32,model-bf16"], preset.defaults)
        )
    assert "engine=model-fp32,model-bf16" in str(caught.value)
    with pytest.raises(SweepConfigError, match="variant=gspo, engine=model-fp32"):
        plan_sweep(preset, parse_grid_args(["variant=gspo", "engine=model-fp32"], preset.defaults))
    # a request the design holds in part for each value is fine: gspo with fp8, pg_is with both
    plan = plan_sweep(
        preset, parse_grid_args(["variant=pg_is,gspo", "engine=model-fp32,model-fp8"], preset.defaults)
    )
    assert {(s.config["variant"], s.config["engine"]) for s in plan.runs} == {
        ("pg_is", "model-fp32"),
        ("pg_is", "model-fp8"),
        ("gspo", "model-fp8"),
    }


def test_the_ladder_and_the_task_are_the_ones_the_committed_calibration_ran():
    """Run ids hash the labels, not the fields behind them: a rung or a task edited after the calibration would
    silently relabel finished runs. The committed table's rows carry the values each run used."""
    from pathlib import Path

    path = (
        Path(__file__).resolve().parents[1]
        / "figures"
        / "regime-map"
        / "calibration"
        / "regime_calibration.csv"
    )
    calibration = pd.read_csv(path)
    rungs = dict(regime.LADDER)
    assert list(calibration["dose_level"]) == list(rungs)
    for row in calibration.itertuples():
        assert (row.lr, row.staleness, row.epochs) == (
            rungs[row.dose_level]["lr"],
            rungs[row.dose_level]["staleness"],
            rungs[row.dose_level]["epochs"],
        )
        assert row.task == dict(regime.TASK_CANDIDATES)[row.task_candidate]["task"]


def test_the_map_runs_the_issues_arms_and_engines():
    """Literal lists (docs/design.md §9.3), so dropping an arm or an engine from the constants is caught."""
    assert regime.CORE_ARMS == ("pg_is", "cispo", "ppo", "dppo_binary_tv")
    assert regime.OTHER_ARMS == ("minirl", "dppo_topk_tv", "ppo_relaxed", "tis", "icepop", "seq_mis", "gspo")
    assert regime.MAP_ENGINES == ("model-fp32", "model-bf16", "model-fp8", "model-int4")
    assert regime.OTHER_ARMS_ENGINE == "model-fp8" and regime.MAP_SEEDS == 2
    assert regime.REGIME_SETTINGS["steps"] >= 300
    assert dict(regime.TASK_CANDIDATES)["sort-hard"] == {
        "task": "sort",
        "min_length": 1,
        "max_length": 12,
        "pool_min_success": 0.05,
        "pool_max_success": 0.5,
    }
    assert (regime.REGIME_SETTINGS["prompt_pool"], regime.REGIME_SETTINGS["pool_candidates"]) == (1024, 4096)
