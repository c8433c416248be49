"""The presets as the sweep sees them: every configuration is validated when the sweep is planned, and each
preset names its own figure function.

The analysis presets are tested first; the training-preset tests at the end use tiny configurations.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from trustregion_lab import plots
from trustregion_lab.analysis.presets import ANALYSIS_DEFAULTS, run_analysis, validate_analysis
from trustregion_lab.sweep import SweepConfigError, available_presets, parse_grid_args, plan_sweep, run_sweep

ANALYSIS_PRESETS = ("default", "estimators", "masks", "calibration", "vocab-scaling")
TRAINING_PRESETS = ("bandit-train", "sequence-train")


def test_every_preset_names_a_figure_function_of_plots_and_a_validator():
    presets = available_presets()
    expected = {
        "default": plots.analysis_suite_figures,
        "estimators": plots.estimator_figures,
        "masks": plots.mask_figures,
        "calibration": plots.calibration_figures,
        "vocab-scaling": plots.vocab_scaling_figures,
        "bandit-train": plots.training_figures,
        "sequence-train": plots.training_figures,
        "stability": plots.stability_figures,
        "stability-long": plots.stability_figures,
        "stability-search": plots.stability_search_figures,
        "stability-calibration": plots.stability_calibration_figures,
    }
    assert set(expected) <= set(presets)
    for name, figures in expected.items():
        assert presets[name].figures is figures
        assert callable(presets[name].validate)
    # the figure registry and the sweep's presets name the same presets, each with a function of plots
    assert set(plots.PRESET_FIGURES) == set(presets)
    for name, preset in presets.items():
        assert preset.figures is plots.PRESET_FIGURES[name]
        assert preset.figures.__module__.startswith("trustregion_lab.plots.")


def test_the_modules_that_define_presets_name_no_figure_function():
    """The figures are attached by the sweep from plots' registry, so analysis and train never import plots."""
    from trustregion_lab.analysis.presets import PRESETS as analysis_presets
    from trustregion_lab.train.presets import PRESETS as training_presets

    assert [p.figures for p in [*analysis_presets, *training_presets]] == [None] * (
        len(analysis_presets) + len(training_presets)
    )


@pytest.mark.parametrize("name", ANALYSIS_PRESETS)
def test_the_default_grid_of_each_analysis_preset_validates(name):
    plan = plan_sweep(available_presets()[name])
    assert len(plan.runs) >= 1


# ------------------------------------------------------------------------------------ analysis checks
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ratio_cap": 0.0}, "ratio_cap must be > 0"),
        ({"ratio_cap": -1.0}, "ratio_cap must be > 0"),
        ({"ratio_cap": math.nan}, "ratio_cap must be a finite number"),
        ({"analysis": "bogus"}, "analysis must be one of"),
        ({"perturbation": "bogus"}, "perturbation must be one of"),
        ({"family": "bogus"}, "family must be one of"),
        ({"engine": "exact"}, "engine must be one of"),
        ({"vocab_size": 1}, "vocab_size must be an int >= 2"),
        ({"num_states": 0}, "num_states must be an int >= 1"),
        ({"samples_per_state": 0}, "samples_per_state must be an int >= 1"),
        ({"step_size": 0.0}, "step_size must be > 0"),
        ({"step_decades": -1.0}, "step_decades must be >= 0"),
        ({"topk_sizes": "5+x"}, "topk_sizes must be integers joined by '+'"),
        ({"topk_sizes": "20000"}, "topk_sizes must be <= vocab_size (16384)"),
        ({"analysis": "vocab-scaling", "topk_sizes": "2000"}, "smallest of scaling_vocab_sizes (1024)"),
        ({"set_rules": "topk+nope"}, "set_rules must be names from"),
        ({"ppo_low": -0.1}, "ppo_low must be >= 0"),
        ({"delta_tv": math.inf}, "delta_tv must be a finite number"),
        ({"ppo_reference": "loose"}, "ppo_reference must be 'matched' or a TV threshold"),
        ({"ppo_reference": "-0.1"}, "ppo_reference must be 'matched' or a TV threshold"),
        ({"scaling_vocab_sizes": "1+64"}, "scaling_vocab_sizes must be integers >= 2"),
        ({"num_states": 8.5}, "num_states must be an int"),
        ({"extra": 1}, "unknown parameters ['extra']"),
    ],
)
def test_validate_analysis_rejects_each_bad_parameter(change, message):
    config = {**ANALYSIS_DEFAULTS, **change}
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        validate_analysis(config)


def test_validate_analysis_accepts_the_defaults_and_an_uncapped_ratio():
    validate_analysis(dict(ANALYSIS_DEFAULTS))
    validate_analysis({**ANALYSIS_DEFAULTS, "ratio_cap": math.inf, "ppo_reference": "0.15"})
    with pytest.raises(ValueError, match="missing parameters"):
        validate_analysis({"analysis": "masks"})


def test_run_analysis_itself_refuses_ratio_cap_zero():
    config = {**ANALYSIS_DEFAULTS, "analysis": "masks", "num_states": 4, "vocab_size": 64, "topk_sizes": "3"}
    with pytest.raises(ValueError, match="ratio_cap must be > 0"):
        run_analysis({**config, "ratio_cap": 0.0}, 0)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_masks_preset_refuses_ratio_cap_at_plan_time(value, tmp_path):
    preset = available_presets()["masks"]
    with pytest.raises(
        SweepConfigError, match=rf"rejects its fixed parameters: ratio_cap must be > 0, got {value}"
    ):
        plan_sweep(preset, parse_grid_args([f"ratio_cap={value}"], preset.defaults))


def test_a_bad_value_anywhere_in_the_grid_is_refused_as_a_whole():
    preset = available_presets()["estimators"]
    grid = parse_grid_args(["vocab_size=64,128", "topk_sizes=3,100"], preset.defaults)
    with pytest.raises(
        SweepConfigError,
        match=r"rejects perturbation='mismatch', vocab_size=64, topk_sizes='100': .*\(2 of the 8 configurations",
    ):
        plan_sweep(preset, grid)


# ------------------------------------------------------------------------------------ training presets
TINY_BANDIT = [
    "steps=2",
    "vocab_size=50",
    "num_contexts=4",
    "contexts_per_step=2",
    "group_size=4",
    "num_minibatches=2",
    "correct_rank_max=5",
]


@pytest.mark.parametrize("name", TRAINING_PRESETS)
def test_the_default_grid_of_each_training_preset_validates(name):
    preset = available_presets()[name]
    plan = plan_sweep(preset)
    assert {spec.config["variant"] for spec in plan.runs} == set(preset.grid["variant"])
    assert {spec.config["engine"] for spec in plan.runs} == {"none", "moe"}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["variant=ppo,nope"], "rejects variant='nope'"),
        (["ratio_cap=0"], "ratio_cap must be > 0"),
        (["lr=-1"], "lr must be > 0"),
        (["engine=exact"], "engine must be one of"),
        (["num_minibatches=1000"], "num_minibatches=1000 exceeds"),
    ],
)
def test_a_training_preset_validates_by_building_its_config(items, message):
    preset = available_presets()["bandit-train"]
    with pytest.raises(SweepConfigError, match=message):
        plan_sweep(preset, parse_grid_args(items, preset.defaults))


def test_a_tiny_bandit_sweep_draws_the_training_figures(tmp_path):
    preset = available_presets()["bandit-train"]
    grid = parse_grid_args([*TINY_BANDIT, "variant=ppo,pg_is", "engine=none,fp32"], preset.defaults)
    out = tmp_path / "out"
    table = run_sweep(plan_sweep(preset, grid, seeds=1), out, progress=False)
    assert set(table["variant"]) == {"ppo", "pg_is"} and set(table["method"]) == {"ppo", "none"}
    written = plots.draw_figures(out)
    assert [p.name for p in written] == ["training_curves.png"]
    summary = pd.read_csv(out / "figures" / "training_summary.csv")
    assert sorted(zip(summary["engine"], summary["variant"])) == [
        ("fp32", "pg_is"),
        ("fp32", "ppo"),
        ("none", "pg_is"),
        ("none", "ppo"),
    ]


# ------------------------------------------------------------------------------------- stated durations
_DURATION = re.compile(
    r"((?:under|about) (?:a|an|\d+(?:\.\d+)?) (?:s|seconds?|min|minutes?)) on 2 idle cores"
)
_ANY_DURATION = re.compile(r"(?:~|about |under )?\d+(?:\.\d+)? ?(?:s|min|minutes)\b|under a minute")


def _project_file(name: str) -> str:
    from pathlib import Path

    import trustregion_lab

    return (Path(trustregion_lab.__file__).resolve().parents[1] / name).read_text()


def test_each_preset_duration_is_stated_once_and_agrees_everywhere():
    """A preset's help states its time on 2 idle cores (what --list-presets prints); the README and the Makefile
    comments that time the same job say the same, and name the machine."""
    presets = available_presets()
    stated = {name: _DURATION.search(preset.help) for name, preset in presets.items()}
    assert stated["default"] and stated["stability-quick"], "the default and the quick study state their time"
    readme, makefile = _project_file("README.md"), _project_file("Makefile")
    jobs = {
        "default": [line for line in readme.splitlines() if line.startswith("make sweep")]
        + [line for line in makefile.splitlines() if line.startswith(("sweep:", "figures:"))],
        "stability-quick": [line for line in readme.splitlines() if "--preset stability-quick " in line],
    }
    for name, lines in jobs.items():
        duration = stated[name].group(1)
        assert lines, name
        for line in lines:
            assert f"{duration} on 2 idle cores" in line, (name, line)
            others = [d for d in _ANY_DURATION.findall(line) if d != duration and d not in duration]
            assert not others, (name, line, others)


def test_a_search_cell_records_the_values_it_ran_with(monkeypatch):
    """The search figure reads each cell's change from the table, so the rows carry the values used."""
    from trustregion_lab.train import presets

    def tiny_run(config, seed):
        return pd.DataFrame({"step": [1, 2], "engine": [config["engine"]] * 2, "seed": [seed] * 2})

    monkeypatch.setattr(presets, "run_sequence_preset", tiny_run)
    search = available_presets()["stability-search"]
    rows = presets.run_search_preset({**search.defaults, "search_cell": "lr x3"}, 0)
    assert (rows["lr"] == 3 * search.defaults["lr"]).all() and (rows["search_cell"] == "lr x3").all()
    rows = presets.run_search_preset({**search.defaults, "search_cell": "fp16 engine"}, 0)
    assert (rows["engine"] == "model-fp16").all() and (rows["lr"] == search.defaults["lr"]).all()
