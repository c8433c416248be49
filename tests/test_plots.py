"""Figures drawn from stored tables: files exist, axes carry the expected labels and number of lines."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from trustregion_lab import plots, sweep
from trustregion_lab.sweep import parse_grid_args, plan_sweep, run_sweep

TINY = [
    "num_states=12",
    "vocab_size=128",
    "samples_per_state=8",
    "topk_sizes=3",
    "scaling_vocab_sizes=64+128",
]


@pytest.fixture(scope="module")
def default_results(tmp_path_factory):
    preset = sweep.available_presets()["default"]
    out = tmp_path_factory.mktemp("default")
    run_sweep(plan_sweep(preset, parse_grid_args(TINY, preset.defaults), 1), out, progress=False)
    return out


def _data_lines(ax) -> list:
    """Lines that draw data: not the empty legend handles, not the reference lines (gid "reference")."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 0 and line.get_gid() != "reference"]


def _reference_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_gid() == "reference"]


def test_draw_figures_writes_every_analysis_figure_from_the_table_alone(default_results, tmp_path):
    only_table = tmp_path / "results"
    only_table.mkdir()
    shutil.copy(default_results / "table.csv", only_table / "table.csv")  # no sweep.json: tables only
    written = plots.draw_figures(only_table, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == ["calibration.png", "estimators_by_mu.png", "masks_by_mu.png", "vocab_scaling.png"]
    for path in written:
        assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "figs").glob("*.tmp"))


def test_cli_draws_into_figures_dir(default_results, tmp_path, capsys):
    assert plots.main([str(default_results), "--figures-dir", str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f").glob("*.png"))) == 4
    assert len(list((tmp_path / "f").glob("*.csv"))) == 4
    with pytest.raises(SystemExit) as exc:
        plots.main([str(tmp_path / "missing")])
    assert exc.value.code == 2


def test_estimator_figure_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    part = table[table["analysis"] == "estimators"].dropna(axis=1, how="all")
    fig = plots.plot_estimators(part)
    axes = fig.axes
    tv_bias = next(ax for ax in axes if ax.get_title() == "TV estimates: bias")
    assert tv_bias.get_ylabel() == "bias\n(TV, probability mass)"
    assert tv_bias.get_xlabel().startswith("μ(a): rollout probability of the sampled token")
    # |r − 1|/2, Binary TV and one Top-K TV line (K = 3, +sampled), plus the y = 0 reference line
    assert len(_data_lines(tv_bias)) == 3 and len(_reference_lines(tv_bias)) == 1
    kl_std = next(ax for ax in axes if ax.get_title() == "KL estimates: standard deviation of the error")
    assert kl_std.get_yscale() == "log"
    assert len(_data_lines(kl_std)) == 5  # k1, k2, k3, Binary KL, Top-K KL


def test_mask_figure_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    part = table[table["analysis"] == "masks"].dropna(axis=1, how="all")
    fig = plots.plot_masks(part)
    assert len(fig.axes) == 4
    n_masks = part["mask"].nunique()
    for ax in fig.axes:
        assert "share of the bucket's tokens" in ax.get_ylabel()
        assert len(_data_lines(ax)) == n_masks
    assert any("Â < 0" in ax.get_title() for ax in fig.axes)
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(text.startswith("ppo: masks") for text in legend_texts)


def test_calibration_and_vocab_scaling_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    cal = plots.plot_calibration(table[table["analysis"] == "calibration"].dropna(axis=1, how="all"))
    rate_ax = cal.axes[0]
    assert rate_ax.get_yscale() == "log" and rate_ax.get_ylabel().startswith("mask rate")
    assert len(_data_lines(rate_ax)) == 5  # ppo and four DPPO masks
    tv_ax = cal.axes[1]
    assert tv_ax.get_xlabel() == "PPO ratio clip ε (dimensionless)"
    assert tv_ax.get_ylabel() == "matched δ (TV, probability mass)"
    # dppo_binary_tv, dppo_exact_tv, and reference lines at δ = 0.15, 0.2 and ε = 0.2, 0.28
    assert len(_data_lines(tv_ax)) == 2 and len(_reference_lines(tv_ax)) == 4
    scaling = table[table["analysis"] == "vocab-scaling"].dropna(axis=1, how="all")
    fig = plots.plot_vocab_scaling(scaling)
    rmse_tv = fig.axes[0]
    assert rmse_tv.get_xlabel() == "vocabulary size V (tokens)" and rmse_tv.get_xscale() == "log"
    assert len(_data_lines(rmse_tv)) == 3
    for line in _data_lines(rmse_tv):
        np.testing.assert_array_equal(np.asarray(line.get_xdata(), float), [64.0, 128.0])


def test_training_figure_from_a_synthetic_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for method in ("ppo", "dppo_binary_tv", "pg_is"):
        for engine in ("none", "moe"):
            for seed in range(3):
                for step in range(10):
                    rows.append(
                        {
                            "method": method,
                            "engine": engine,
                            "seed": seed,
                            "step": step,
                            "reward": rng.random(),
                            "tv_exact": rng.random() * 0.01,
                        }
                    )
    table = pd.DataFrame(rows)
    fig = plots.plot_training(table, ["method", "engine"])
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes[0]] == ["engine=moe", "engine=none"]
    for ax in axes.ravel():
        assert ax.get_xlabel() == "training step (policy updates)"
        assert len(_data_lines(ax)) == 3  # one mean line per method
        assert len(ax.collections) == 3  # one band over seeds per method
    assert axes[0, 0].get_ylabel() == "mean reward per sample"
    assert axes[1, 0].get_ylabel() == "exact TV(μ, π) (probability mass)"
    out = tmp_path / "train"
    out.mkdir()
    table.to_csv(out / "table.csv", index=False)
    written = plots.draw_figures(out)
    assert [p.name for p in written] == ["training_curves.png"]
