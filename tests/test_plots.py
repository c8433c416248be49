"""Figures drawn from stored tables: files exist, axes carry the expected labels and number of lines; each
preset's figure function is found by name; bad results folders give one-line errors."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

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
    written = plots.draw_figures(only_table, tmp_path / "figs")  # the preset is named by the table's rows
    names = [p.name for p in written]
    assert names == [
        "estimators_by_mu.png",
        "estimator_bias.png",
        "masks_by_mu.png",
        "calibration.png",
        "vocab_scaling.png",
    ]
    for path in written:
        assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        [*names, *(name.replace(".png", ".csv") for name in names)]
    )


def test_cli_draws_into_figures_dir(default_results, tmp_path, capsys):
    assert plots.main([str(default_results), "--figures-dir", str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f").glob("*.png"))) == 5
    assert len(list((tmp_path / "f").glob("*.csv"))) == 5
    with pytest.raises(SystemExit) as exc:
        plots.main([str(tmp_path / "missing")])
    assert exc.value.code == 2


def test_estimator_figure_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    part = table[table["analysis"] == "estimators"].dropna(axis=1, how="all")
    fig = plots.plot_estimators(part)
    axes = fig.axes
    tv_bias = next(ax for ax in axes if ax.get_title().startswith("TV estimates: relative bias"))
    assert tv_bias.get_ylabel() == "bias / exact TV\n(share of the exact value)"
    assert tv_bias.get_yscale() == "linear"  # one quantity on a linear axis, no symlog
    assert tv_bias.get_xlabel().startswith("μ(a): rollout probability of the sampled token")
    # |r − 1|/2, Binary TV and one Top-K TV line (K = 3, +sampled), plus the y = 0 reference line
    lines = _data_lines(tv_bias)
    assert len(lines) == 3 and len(_reference_lines(tv_bias)) == 1
    assert len({(line.get_linestyle(), line.get_marker(), line.get_color()) for line in lines}) == 3
    # the drawn values are bias / exact_mean of the μ(a) buckets (one seed: no averaging)
    rows = part[
        (part["stratum"] == "mu")
        & (part["n_tokens"] >= plots.MIN_TOKENS)
        & (part["estimator"] == "binary_tv")
    ]
    binary = next(line for line in lines if line.get_label() == "Binary TV")
    expected = (
        rows.sort_values("bucket_lo")["bias"] / rows.sort_values("bucket_lo")["exact_mean"]
    ).to_numpy()
    np.testing.assert_allclose(np.asarray(binary.get_ydata(), float), expected)
    kl_std = next(
        ax for ax in axes if ax.get_title().startswith("KL estimates: standard deviation of the error")
    )
    assert kl_std.get_yscale() == "log"
    assert len(_data_lines(kl_std)) == 5  # k1, k2, k3, Binary KL, Top-K KL


def test_estimator_bias_figure_marks_which_intervals_cover_zero(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    part = table[table["analysis"] == "estimators"].dropna(axis=1, how="all")
    fig = plots.plot_estimator_bias(part)
    tv, kl = fig.axes[:2]
    assert [t.get_text() for t in tv.get_xticklabels()] == [
        "Binary TV",
        "|r − 1| / 2",
        "Top-K TV (K=3, +sampled)",
    ]
    drawn = part["set_rule"].isna() | (part["set_rule"] == "topk_plus_sampled")  # Top-K: the paper's rule
    rows = part[(part["stratum"] == "all") & (part["target"] == "tv") & drawn].set_index("estimator")
    for container, estimator in zip(tv.containers, ("binary_tv", "ratio_tv", "topk_tv"), strict=True):
        value = rows.loc[estimator, "bias"] / rows.loc[estimator, "exact_mean"]
        half = 1.96 * rows.loc[estimator, "bias_se"] / rows.loc[estimator, "exact_mean"]
        point = container.lines[0]
        assert np.asarray(point.get_ydata(), float)[0] == pytest.approx(value, rel=1e-12)
        assert (point.get_color() == "tab:green") == (abs(value) <= half)
    assert kl.get_ylabel().startswith("bias / exact KL")
    with pytest.raises(ValueError, match="stratum 'all'"):
        plots.plot_estimator_bias(part[part["stratum"] == "mu"])


def test_mask_figure_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    part = table[table["analysis"] == "masks"].dropna(axis=1, how="all")
    fig = plots.plot_masks(part)
    assert len(fig.axes) == 4
    n_masks = part["mask"].nunique()
    for ax in fig.axes:
        assert "share of the bucket's tokens" in ax.get_ylabel()
        lines = _data_lines(ax)
        assert len(lines) == n_masks
        assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == n_masks
        if sum(np.allclose(line.get_ydata(), 0.0) for line in lines) > 1:  # lines at 0 coincide: named
            assert "lines coincide:" in ax.get_title()
    assert any("Â < 0" in ax.get_title() for ax in fig.axes)
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(text.startswith("ppo: masks") for text in legend_texts)


def test_calibration_and_vocab_scaling_axes(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=[""])
    cal = plots.plot_calibration(table[table["analysis"] == "calibration"].dropna(axis=1, how="all"))
    ppo_ax, tv_rate_ax, kl_rate_ax = cal.axes[:3]  # one threshold per axis: ε, δ_TV, δ_KL
    assert ppo_ax.get_xlabel() == "PPO ratio clip ε (dimensionless)"
    assert tv_rate_ax.get_xlabel() == "δ of the TV masks (probability mass)"
    assert kl_rate_ax.get_xlabel() == "δ of the KL masks (nats)"
    for ax, n in ((ppo_ax, 1), (tv_rate_ax, 2), (kl_rate_ax, 2)):
        assert ax.get_yscale() == "log" and ax.get_ylabel().startswith("mask rate")
        assert len(_data_lines(ax)) == n
    colours = {line.get_label(): line.get_color() for ax in cal.axes for line in _data_lines(ax)}
    tv_ax = cal.axes[3]
    assert tv_ax.get_xlabel() == "PPO ratio clip ε (dimensionless)"
    assert tv_ax.get_ylabel() == "matched δ (TV, probability mass)"
    # dppo_binary_tv, dppo_exact_tv (same colours as in the rate panel), reference lines δ = 0.15, 0.2, ε = 0.2, 0.28
    assert len(_data_lines(tv_ax)) == 2 and len(_reference_lines(tv_ax)) == 4
    for line in _data_lines(tv_ax):
        assert line.get_color() == colours[line.get_label()]
    scaling = table[table["analysis"] == "vocab-scaling"].dropna(axis=1, how="all")
    fig = plots.plot_vocab_scaling(scaling)
    rmse_tv = fig.axes[0]
    assert rmse_tv.get_xlabel() == "vocabulary size V (tokens)" and rmse_tv.get_xscale() == "log"
    assert len(_data_lines(rmse_tv)) == 3
    for line in _data_lines(rmse_tv):
        np.testing.assert_array_equal(np.asarray(line.get_xdata(), float), [64.0, 128.0])
    legend = rmse_tv.get_legend()  # beside the panel, off the data
    assert legend is not None and legend.get_bbox_to_anchor().x0 >= rmse_tv.get_window_extent().x1


def test_training_figure_from_a_synthetic_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    caps = {"ppo": 10.0, "dppo_binary_tv": 10.0, "pg_is": float("inf")}  # filled in by the variant
    for variant in ("ppo", "dppo_binary_tv", "pg_is"):
        for engine in ("none", "moe"):
            for seed in range(3):
                for step in range(10):
                    rows.append(
                        {
                            "variant": variant,
                            "ratio_cap": caps[variant],
                            "engine": engine,
                            "seed": seed,
                            "step": step,
                            "reward": rng.random(),
                            "tv_exact": rng.random() * 0.01,
                        }
                    )
    table = pd.DataFrame(rows)
    fig = plots.plot_training(table, ["variant", "ratio_cap", "engine"])
    axes = np.array(fig.axes).reshape(3, 2)  # one row per variant, columns reward | exact TV
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["dppo_binary_tv", "pg_is", "ppo"]
    assert [ax.get_title() for ax in axes[0]] == [
        "mean reward per sample",
        "exact TV(μ, π) (probability mass)",
    ]
    assert [ax.get_xlabel() for ax in axes[-1]] == ["training step (policy updates)"] * 2
    for ax in axes.ravel():
        lines = _data_lines(ax)
        assert [line.get_label() for line in lines] == ["engine=moe", "engine=none"]  # one line per engine
        assert len(ax.collections) == 2  # one band over the 3 seeds per engine
    one_seed = plots.plot_training(table[table["seed"] == 0], ["variant", "ratio_cap", "engine"])
    assert all(len(ax.collections) == 0 for ax in one_seed.axes)  # no "range over seeds" for one seed
    assert "one seed" in one_seed._suptitle.get_text() and "range" not in one_seed._suptitle.get_text()
    summary = plots.training_summary(table, ["variant", "ratio_cap", "engine"])
    assert list(summary.columns[:3]) == ["engine", "variant", "seeds"] and len(summary) == 6
    out = tmp_path / "train"
    out.mkdir()
    table.to_csv(out / "table.csv", index=False)
    written = plots.draw_figures(out, figures=plots.training_figures)
    assert [p.name for p in written] == ["training_curves.png"]
    # without sweep.json the configuration is what stays constant within each run: engine is still a facet
    runs = table.assign(run_id=table["variant"] + "-" + table["engine"] + "-" + table["seed"].astype(str))
    columns = []
    runs.to_csv(out / "table.csv", index=False)
    plots.draw_figures(out, figures=lambda t, c: columns.extend(c) or {})
    assert {"engine", "variant", "seed", "ratio_cap"} <= set(columns) and not {"step", "reward"} & set(
        columns
    )
    table.to_csv(out / "table.csv", index=False)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "figures" / "training_summary.csv"),
        plots.training_summary(table, []),
        check_dtype=False,
    )


def _stability_table(rng: np.random.Generator) -> pd.DataFrame:
    """2 engines × 2 variants × 2 seeds × 30 steps; the exact engine has no mismatch (π = μ)."""
    rows = []
    for engine in ("bf16", "none"):
        for variant in ("dppo_binary_tv", "pg_is"):
            for seed in range(2):
                for step in range(30):
                    drift = 0.0 if engine == "none" else rng.uniform(1e-4, 1e-2)
                    rows.append(
                        {
                            "engine": engine,
                            "variant": variant,
                            "ratio_cap": 10.0 if variant == "dppo_binary_tv" else float("inf"),
                            "seed": seed,
                            "step": step,
                            "reward": rng.random(),
                            "mismatch_mean": drift,
                            "mismatch_max": 3 * drift,
                        }
                    )
    table = pd.DataFrame(rows)
    return table.sample(frac=1.0, random_state=1).reset_index(drop=True)  # the figure sorts by step itself


def _rolling(values: np.ndarray, window: int, statistic) -> np.ndarray:
    """Reference smoothing in float64: statistic over the last ``window`` values (fewer at the start)."""
    return np.array([statistic(values[max(0, t - window + 1) : t + 1]) for t in range(len(values))])


def test_stability_figure_from_a_synthetic_table(tmp_path):
    from trustregion_lab.analysis.stability import REWARD_WINDOW, WINDOW

    table = _stability_table(np.random.default_rng(7))
    fig = plots.plot_stability(table, ["variant", "ratio_cap", "engine"])
    assert len(fig.axes) == 6
    axes = np.array(fig.axes).reshape(2, 3)  # one row per engine, columns reward | mean |π − μ| | max (π − μ)
    assert [[ax.get_title() for ax in row] for row in axes] == [["engine=bf16"] * 3, ["engine=none"] * 3]
    assert axes[0, 0].get_ylabel() == f"training reward r̃\n({REWARD_WINDOW}-step rolling mean)"
    assert axes[0, 1].get_ylabel().startswith("mean |π(a) − μ(a)|")
    assert axes[0, 1].get_ylabel().endswith(f"{WINDOW}-step median")
    assert axes[0, 2].get_ylabel().startswith("max (π(a) − μ(a))")
    for ax in axes.ravel():
        assert ax.get_xlabel() == "training step (policy updates)"
        lines = _data_lines(ax)
        assert len(lines) == 2  # one mean line per variant, each with its own style and marker
        assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 2
    assert len(axes[0, 0].collections) == 2  # one band (range over seeds) per variant
    # the paper's reference on each mean-mismatch panel: 0.004 at the start, the 0.011–0.018 band
    for ax in axes[:, 1]:
        assert [line.get_ydata()[0] for line in _reference_lines(ax)] == [
            plots.stability.PAPER_MISMATCH_START
        ]
    assert axes[0, 1].get_yscale() == "log" and axes[1, 1].get_yscale() == "linear"  # no mismatch: zeros
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dppo_binary_tv", "pg_is"]
    ordered = table.sort_values("step")
    for col, (metric, window, statistic) in enumerate(
        (("reward", REWARD_WINDOW, np.mean), ("mismatch_mean", WINDOW, np.median))
    ):
        for line, variant in zip(_data_lines(axes[0, col]), ("dppo_binary_tv", "pg_is"), strict=True):
            runs = ordered[(ordered["engine"] == "bf16") & (ordered["variant"] == variant)]
            per_seed = [
                _rolling(runs.loc[runs["seed"] == seed, metric].to_numpy(np.float64), window, statistic)
                for seed in (0, 1)
            ]
            np.testing.assert_allclose(np.asarray(line.get_ydata(), float), np.mean(per_seed, axis=0))

    out = tmp_path / "stability"
    out.mkdir()
    table.to_csv(out / "table.csv", index=False)
    written = plots.draw_figures(out, figures=plots.stability_figures)
    assert written == [out / "figures" / "stability_curves.png"]
    assert written[0].stat().st_size > 10_000 and written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "stability_curves.png",
        "stability_summary.csv",
        "stability_verdict.csv",
    ]


def test_stability_figure_names_lines_that_coincide_and_draws_no_band_for_one_seed():
    table = _stability_table(np.random.default_rng(9))
    table = table[table["seed"] == 0]
    twin = table[table["variant"] == "pg_is"].assign(variant="cispo")  # identical to pg_is
    fig = plots.plot_stability(pd.concat([table, twin], ignore_index=True), ["engine"])
    title = fig._suptitle.get_text()
    assert (
        "lines coincide: cispo = pg_is" in title and "one seed" in title and "range over seeds" not in title
    )
    assert all(len(ax.collections) == 0 for ax in fig.axes if ax.get_yscale() == "linear")
    assert "lines coincide" not in plots.plot_stability(table, ["engine"])._suptitle.get_text()


def test_search_figure_one_panel_per_cell_and_the_changed_knobs_from_the_table():
    table = _stability_table(np.random.default_rng(10))
    table = table[table["engine"] == "bf16"]
    cells = [("study setting", 1e-5), ("lr x3", 3e-5), ("2 epochs", 1e-5)]
    parts = [
        table.assign(search_cell=cell, lr=lr, epochs=2 if cell == "2 epochs" else 1) for cell, lr in cells
    ]
    search = pd.concat(parts, ignore_index=True)
    outputs = plots.stability_search_figures(search, ["variant", "engine", "lr", "epochs", "search_cell"])
    fig = outputs["stability_curves.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["study setting", "lr x3", "2 epochs"] * 2  # reward row, then mean-mismatch row
    changed = outputs["search.csv"].drop_duplicates("search_cell").set_index("search_cell")["changed"]
    assert changed.to_dict() == {"study setting": "-", "lr x3": "lr=3e-05", "2 epochs": "epochs=2"}


def test_stability_figure_facets_other_varying_columns_and_refuses_bad_tables():
    table = _stability_table(np.random.default_rng(8))
    table = pd.concat([table.assign(lr=1e-3), table.assign(lr=1e-2)], ignore_index=True)
    fig = plots.plot_stability(table, ["engine", "lr", "ratio_cap"])
    titles = [ax.get_title() for ax in fig.axes[::3]]
    assert titles == [f"engine={e}, lr={lr}" for e in ("bf16", "none") for lr in (0.001, 0.01)]
    with pytest.raises(ValueError, match=r"table: .* lacks \['mismatch_max'\]"):
        plots.plot_stability(table.drop(columns="mismatch_max"))
    with pytest.raises(ValueError, match="table: expected at least one row"):
        plots.plot_stability(table.iloc[:0])
    with pytest.raises(TypeError, match="table: expected a pandas DataFrame"):
        plots.plot_stability(table.to_dict())


def test_plots_reads_tables_only_and_runs_as_a_module():
    code = (
        "import sys, trustregion_lab.plots\n"
        "print(sorted(m for m in sys.modules if m.startswith(('trustregion_lab.analysis', 'trustregion_lab.train',"
        " 'trustregion_lab.sweep'))))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, "-m", "trustregion_lab.plots", "--help"], capture_output=True, text=True, check=True
    )
    assert "RESULTS_DIR" in helped.stdout and "--figures-dir" in helped.stdout


# ------------------------------------------------------------------------------------ figure functions
def _two_outputs(table: pd.DataFrame, config_columns: list[str]) -> dict:
    fig = Figure()
    fig.subplots().plot(table["x"], table["y"])
    return {"line.png": fig, "line.csv": table.assign(columns=",".join(config_columns))}


def _results(tmp_path, manifest=None) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    pd.DataFrame({"x": [0, 1, 2], "y": [1.0, 3.0, 2.0], "k": ["a", "a", "a"]}).to_csv(
        out / "table.csv", index=False
    )
    if manifest is not None:
        (out / "sweep.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return out


def test_draw_figures_saves_what_the_figure_function_returns(tmp_path):
    out = _results(tmp_path, {"preset": "custom", "defaults": {"k": "a", "absent": 1}})
    written = plots.draw_figures(out, figures=_two_outputs)
    assert written == [out / "figures" / "line.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = pd.read_csv(out / "figures" / "line.csv")
    assert list(stored["columns"]) == ["k"] * 3  # the preset's parameters that are columns of the table
    assert not [p for p in (out / "figures").iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize(
    "outputs",
    [
        {"line.csv": Figure()},
        {"line.png": pd.DataFrame()},
        {"line.txt": pd.DataFrame()},
        {"../line.csv": pd.DataFrame()},
    ],
)
def test_a_figure_function_with_bad_outputs_is_refused(tmp_path, outputs):
    out = _results(tmp_path)
    with pytest.raises((TypeError, ValueError), match="figure output"):
        plots.draw_figures(out, figures=lambda table, columns: outputs)
    assert not (tmp_path / "line.csv").exists()


def test_the_preset_named_by_sweep_json_chooses_the_figures(default_results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(default_results, copy)
    manifest = json.loads((copy / "sweep.json").read_text())
    manifest["preset"] = "vocab-scaling"  # its figure function draws only the vocabulary-scaling figure
    (copy / "sweep.json").write_text(json.dumps(manifest))
    table = pd.read_csv(copy / "table.csv")
    table[table["analysis"] == "vocab-scaling"].to_csv(copy / "table.csv", index=False)
    assert [p.name for p in plots.draw_figures(copy)] == ["vocab_scaling.png"]
    manifest["preset"] = "no-such-preset"
    (copy / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(plots.ResultsError, match="'no-such-preset', which is not a preset"):
        plots.draw_figures(copy)


def test_figures_of_the_default_preset_match_the_single_analysis_presets(default_results):
    table = pd.read_csv(default_results / "table.csv", keep_default_na=False, na_values=["", "nan", "NaN"])
    suite = plots.analysis_suite_figures(table, [])
    part = table[table["analysis"] == "calibration"]
    single = plots.calibration_figures(part, [])
    assert list(suite)[6:8] == list(single) == ["calibration.png", "calibration.csv"]
    pd.testing.assert_frame_equal(suite["calibration.csv"], single["calibration.csv"])
    assert set(suite["calibration.csv"]["record"]) == {"curve", "match"}
    assert (suite["estimators_by_mu.csv"]["stratum"] == "mu").all()


# ----------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    ("manifest", "message"),
    [("[1, 2]", "holds a JSON list, expected an object"), ("{not json", "is not valid JSON")],
)
def test_cli_sweep_json_that_is_not_an_object_exits_2(tmp_path, capsys, manifest, message):
    out = _results(tmp_path, manifest)
    with pytest.raises(SystemExit) as exc:
        plots.main([str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(out / "sweep.json") in err and "Traceback" not in err


def test_cli_figures_dir_that_is_a_file_exits_2(default_results, tmp_path, capsys):
    target = tmp_path / "figures.png"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        plots.main([str(default_results), "--figures-dir", str(target)])
    assert exc.value.code == 2
    assert f"{target}: the figures folder is a file" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


def test_cli_full_disk_exits_2_naming_the_path(default_results, tmp_path, capsys, monkeypatch):
    def no_space(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots.common, "atomic_write_with", no_space)  # the writer behind every PNG
    with pytest.raises(SystemExit) as exc:
        plots.main([str(default_results), "--figures-dir", str(tmp_path / "f")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"no space left on {tmp_path / 'f' / 'estimators_by_mu.png'}" in err and "Traceback" not in err
