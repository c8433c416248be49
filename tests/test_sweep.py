"""The sweep runner: grid parsing and expansion, resume, kill safety, CLI errors, the Ray backend.

Faults (corrupt run files, unwritable folders, a full disk, failing runs, a killed parent) are tested in
tests/test_sweep_faults.py; the presets' validation in tests/test_sweep_presets.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import trustregion_lab
from trustregion_lab import sweep
from trustregion_lab.experiment import Preset
from trustregion_lab.sweep import SweepConfigError, expand_grid, parse_grid_args, plan_sweep, run_sweep

PACKAGE_ROOT = str(Path(trustregion_lab.__file__).resolve().parents[1])  # subprocesses import the same code
TINY_ANALYSIS = [
    "num_states=8",
    "vocab_size=96",
    "samples_per_state=4",
    "topk_sizes=3",
    "scaling_vocab_sizes=64",
]


def _counting_run(config: dict, seed: int) -> pd.DataFrame:
    """A cheap preset body: logs every call to config['log'], returns two rows."""
    with open(config["log"], "a") as handle:
        handle.write(f"{config['x']} {config['y']} {seed}\n")
    return pd.DataFrame({"value": [config["x"] * 10 + seed, config["y"]], "row": [0, 1]})


def _counting_preset(log: Path) -> Preset:
    return Preset(
        name="counting",
        help="test preset",
        run=_counting_run,
        defaults={"x": 1, "y": 0.5, "log": str(log), "flag": False},
        grid={"x": [1, 2]},
        seeds=2,
    )


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# --------------------------------------------------------------------------------------------- parsing
def test_parse_grid_casts_to_the_default_types():
    defaults = {"n": 4, "lr": 0.1, "name": "a", "flag": False}
    grid = parse_grid_args(["n=1,2,1e3", "lr=0.5,1", "name=b,c", "flag=true,0"], defaults)
    assert grid == {"n": [1, 2, 1000], "lr": [0.5, 1.0], "name": ["b", "c"], "flag": [True, False]}
    assert all(isinstance(v, int) for v in grid["n"]) and all(isinstance(v, float) for v in grid["lr"])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["n"], "KEY=V1,V2"),
        (["=1"], "missing parameter name"),
        (["m=1"], "unknown parameter 'm'"),
        (["n=1.5"], "expected an integer"),
        (["n=1,"], "empty value"),
        (["flag=maybe"], "boolean"),
        (["n=1", "n=2"], "given twice"),
        (["lr=0.1,0.1"], "repeated value"),
    ],
)
def test_parse_grid_rejects_malformed_input(items, message):
    with pytest.raises(SweepConfigError, match=message):
        parse_grid_args(items, {"n": 4, "lr": 0.1, "flag": False})


def test_expand_grid_is_the_cartesian_product_in_order():
    configs = expand_grid({"a": 0, "b": "x", "c": 1.0}, {"a": [1, 2, 3], "b": ["p", "q"]})
    assert len(configs) == 6
    assert [(c["a"], c["b"]) for c in configs] == [(1, "p"), (1, "q"), (2, "p"), (2, "q"), (3, "p"), (3, "q")]
    assert all(c["c"] == 1.0 for c in configs)


def test_plan_merges_the_preset_grid_and_fixes_single_values(tmp_path):
    preset = _counting_preset(tmp_path / "log")
    plan = plan_sweep(preset, {"y": [0.1, 0.2]}, seeds=3)
    assert plan.grid == {"x": [1, 2], "y": [0.1, 0.2]} and len(plan.runs) == 2 * 2 * 3
    fixed = plan_sweep(preset, {"x": [7]})
    assert fixed.grid == {} and fixed.base["x"] == 7 and len(fixed.runs) == 2
    assert len({spec.run_id for spec in plan.runs}) == len(plan.runs)


# ------------------------------------------------------------------------------------------ run + resume
def test_run_writes_tidy_tables_and_resumes_only_missing_runs(tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "out"
    plan = plan_sweep(_counting_preset(log), {}, None)
    table = run_sweep(plan, out, progress=False)
    assert len(_calls(log)) == 4 and len(table) == 8
    for column in ("x", "y", "flag", "seed", "preset", "run_id", "version"):
        assert column in table.columns
    assert set(table["version"]) == {trustregion_lab.__version__}
    assert "git_commit" not in table.columns  # provenance that changes without a change stays out of the rows
    assert sorted(zip(table["x"], table["seed"])) == sorted([(1, 0), (1, 1), (2, 0), (2, 1)] * 2)
    merged = pd.read_csv(out / "table.csv")
    assert len(merged) == 8
    for spec in plan.runs:  # each run file has its record: row count and checksum
        record = json.loads((out / "runs" / f"{spec.run_id}.json").read_text())
        assert record["rows"] == 2 and record["seed"] == spec.seed and len(record["sha256"]) == 64
        assert record["git_commit"] == sweep.git_commit() and record["version"] == trustregion_lab.__version__

    # rerun: nothing recomputed; delete one run file: only that run is recomputed
    run_sweep(plan, out, progress=False)
    assert len(_calls(log)) == 4
    victim = plan.runs[2]
    (out / "runs" / f"{victim.run_id}.csv").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.csv")}
    run_sweep(plan, out, progress=False)
    assert _calls(log)[4:] == [f"{victim.config['x']} {victim.config['y']} {victim.seed}"]
    for path in (out / "runs").glob("*.csv"):
        if path.name in mtimes:
            assert path.stat().st_mtime_ns == mtimes[path.name]
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), merged)


def test_an_output_folder_of_another_configuration_is_refused_untouched(tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "out"
    preset = _counting_preset(log)
    run_sweep(plan_sweep(preset, {}, None), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        SweepConfigError, match=r"another configuration \(4 finished runs .* y=0.5 \(requested 0.9\)"
    ):
        run_sweep(plan_sweep(preset, {"y": [0.9]}, None), out, progress=False)
    with pytest.raises(SweepConfigError, match=r"another configuration \(2 finished runs .* seed 1"):
        run_sweep(plan_sweep(preset, {}, seeds=1), out, progress=False)  # would drop seed 1
    other = Preset("other", "test", _counting_run, preset.defaults, preset.grid, seeds=2)
    with pytest.raises(SweepConfigError, match="runs of preset 'counting', requested 'other'"):
        run_sweep(plan_sweep(other, {}, None), out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(_calls(log)) == 4
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(SweepConfigError, match="not a sweep folder"):
        run_sweep(plan_sweep(preset, {}, None), stray, progress=False)
    assert sorted(p.name for p in stray.iterdir()) == ["notes.txt"]


def test_more_seeds_or_values_extend_a_folder_computing_only_the_new_runs(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _counting_preset(log)
    run_sweep(plan_sweep(preset, {}, None), out, progress=False)  # x = 1, 2; seeds 0, 1
    table = run_sweep(plan_sweep(preset, {"x": [1, 2, 3]}, seeds=3), out, progress=False)
    new_calls = sorted(_calls(log)[4:])
    assert new_calls == sorted(["1 0.5 2", "2 0.5 2", "3 0.5 0", "3 0.5 1", "3 0.5 2"])
    assert len(table) == 2 * 9
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["seeds"] == 3 and manifest["grid"] == {"x": [1, 2, 3]} and len(manifest["runs"]) == 9


def test_parallel_workers_give_the_same_table(tmp_path):
    log = tmp_path / "log"
    plan = plan_sweep(_counting_preset(log), {}, None)
    serial = run_sweep(plan, tmp_path / "serial", progress=False)
    parallel = run_sweep(plan, tmp_path / "parallel", jobs=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)


_SLOW_PRESET = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from trustregion_lab.experiment import Preset
    from trustregion_lab.sweep import plan_sweep, run_sweep

    def run(config, seed):
        with open(config["log"], "a") as handle:
            handle.write(f"{config['x']}\\n")
        if config["x"] >= config["slow_from"]:
            time.sleep(60)
        return pd.DataFrame({"value": list(range(2000)), "x": config["x"]})

    def main(out, log, slow_from):
        preset = Preset("slow", "test", run, {"x": 0, "log": log, "slow_from": 0}, {"x": list(range(6))})
        run_sweep(plan_sweep(preset, {"slow_from": [slow_from]}, 1), out, progress=False)

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


def test_sigkill_during_a_run_leaves_no_partial_file_and_rerun_completes_the_rest(tmp_path):
    (tmp_path / "slowpreset.py").write_text(_SLOW_PRESET)
    out, log = tmp_path / "out", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), PACKAGE_ROOT]))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "slowpreset.py"), str(out), str(log), "3"], env=env, cwd=tmp_path
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_calls(log)) < 4:  # runs 0, 1, 2 done; run 3 is sleeping
            time.sleep(0.1)
        assert len(_calls(log)) == 4, "the sweep subprocess did not reach the slow run"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = sorted((out / "runs").glob("*.csv"))
    assert len(finished) == 3
    assert not list((out / "runs").glob("*.tmp")) and not (out / "table.csv").exists()
    for path in finished:
        assert len(pd.read_csv(path)) == 2000  # complete files only

    # rerun the same configuration in a fresh process, the slow runs made fast by replacing time.sleep
    rerun = textwrap.dedent(
        f"""
        import time, slowpreset
        time.sleep = lambda seconds: None
        slowpreset.main({str(out)!r}, {str(log)!r}, 3)
        """
    )
    subprocess.run([sys.executable, "-c", rerun], env=env, cwd=tmp_path, check=True, timeout=120)
    calls = _calls(log)
    assert sorted(calls[4:]) == ["3", "4", "5"]  # only the missing runs were computed
    assert len(pd.read_csv(out / "table.csv")) == 6 * 2000


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown preset"),
        (["--preset", "estimators", "--grid", "vocab_size"], "KEY=V1,V2"),
        (["--preset", "estimators", "--grid", "not_a_param=1"], "unknown parameter"),
        (["--preset", "estimators", "--grid", "vocab_size=big"], "expected an integer"),
        (["--seeds", "0"], "--seeds"),
        (["--jobs", "0"], "--jobs"),
        (["--address", "auto"], "--backend ray"),
        (
            ["--preset", "estimators", "--grid", "family=nope"],
            "rejects perturbation='mismatch': family must be",
        ),
        (["--preset", "masks", "--grid", "ratio_cap=0"], "ratio_cap must be > 0"),
    ],
)
def test_bad_cli_input_exits_with_code_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        sweep.main([*argv, "--out", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_refuses_another_configuration_in_a_subprocess(tmp_path):
    out = tmp_path / "out"
    base = [
        sys.executable,
        "-m",
        "trustregion_lab.sweep",
        "--preset",
        "estimators",
        "--out",
        str(out),
        "--quiet",
    ]
    grid = ["--grid", *TINY_ANALYSIS, "perturbation=update", "--no-figures"]
    first = subprocess.run([*base, *grid], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = subprocess.run(
        [*base, *grid[:-2], "perturbation=mismatch", "--no-figures"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert second.returncode == 2
    assert "another configuration" in second.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_help_and_list_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--preset",
        "--grid",
        "--seeds",
        "--jobs",
        "--out",
        "--figures-dir",
        "--backend",
        "--address",
    ):
        assert option in text
    assert "python -m trustregion_lab.sweep --preset masks --grid vocab_size=4096,32768 family=" in text
    assert sweep.main(["--list-presets"]) == 0
    listing = capsys.readouterr().out
    for name in ("default", "estimators", "masks", "calibration", "vocab-scaling", "bandit-train"):
        assert f"{name}  (" in listing
    assert "default  (seeds: 1; figures: analysis_suite_figures)" in listing


def test_analysis_presets_expose_scalar_parameters():
    presets = sweep.available_presets()
    for name in ("default", "estimators", "masks", "calibration", "vocab-scaling"):
        preset = presets[name]
        assert all(isinstance(v, bool | int | float | str) for v in preset.defaults.values())
        assert set(preset.grid) <= set(preset.defaults)


# ------------------------------------------------------------------------------------------------- Ray
def test_ray_backend_gives_the_local_tables(tmp_path):
    ray = pytest.importorskip("ray")
    preset = sweep.available_presets()["estimators"]
    grid = parse_grid_args(TINY_ANALYSIS, preset.defaults)
    plan = plan_sweep(preset, grid, seeds=1)
    assert len(plan.runs) == 2  # perturbation = mismatch, update
    local = run_sweep(plan, tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(plan, tmp_path / "ray", backend="ray", progress=False)
        # resume semantics: a deleted run is recomputed by Ray, the others are kept
        (tmp_path / "ray" / "runs" / f"{plan.runs[0].run_id}.csv").unlink()
        again = run_sweep(plan, tmp_path / "ray", backend="ray", progress=False)
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(local, remote)
    pd.testing.assert_frame_equal(local, again)
    manifest = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert manifest["preset"] == "estimators" and len(manifest["runs"]) == 2


# ------------------------------------------------------------------------------------ stable figure files
def test_redrawing_figures_from_unchanged_code_changes_no_file(tmp_path, monkeypatch):
    """`make figures` twice (here: a tiny default sweep, a different git commit each time) writes the same
    bytes: no provenance that changes without a change, and figure tables written to fixed digits."""
    from trustregion_lab.sweep import cli, store

    outputs = []
    for commit in (
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222-dirty",
    ):
        monkeypatch.setattr(store, "git_commit", lambda commit=commit: commit)
        figures = tmp_path / f"figures-{commit[0]}"
        argv = ["--out", str(tmp_path / f"out-{commit[0]}"), "--figures-dir", str(figures), "--quiet"]
        assert cli.main([*argv, "--grid", *TINY_ANALYSIS]) == 0
        outputs.append({path.name: path.read_bytes() for path in sorted(figures.iterdir())})
        record = json.loads(next((tmp_path / f"out-{commit[0]}" / "runs").glob("*.json")).read_text())
        assert record["git_commit"] == commit  # provenance kept beside the table, not in it
    assert list(outputs[0]) == list(outputs[1]) and any(name.endswith(".csv") for name in outputs[0])
    for name in outputs[0]:
        assert outputs[0][name] == outputs[1][name], name


def test_figure_tables_do_not_change_with_the_last_bit_of_a_sum(tmp_path):
    """0.1 + 0.2 and 0.3 differ in the last bit of a float64 (as a sum on another CPU may); the figure
    table written from either is the same text."""
    from trustregion_lab import plots

    written = []
    for value in (0.1 + 0.2, 0.3):
        assert value in (0.30000000000000004, 0.3)
        out = tmp_path / f"r{len(written)}"
        out.mkdir()
        pd.DataFrame({"x": [1]}).to_csv(out / "table.csv", index=False)
        table = pd.DataFrame({"mean": [value], "small": [value * 1e-9], "count": [3]})
        plots.draw_figures(out, figures=lambda t, c, table=table: {"t.csv": table})
        written.append((out / "figures" / "t.csv").read_text())
    assert written[0] == written[1]
    np_back = pd.read_csv(tmp_path / "r0" / "figures" / "t.csv")
    assert abs(np_back["mean"].iloc[0] - 0.3) < 1e-12 and abs(np_back["small"].iloc[0] - 3e-10) < 1e-21


# --------------------------------------------------------------------------------- a preset with no figures
def test_cli_draws_nothing_for_a_preset_without_a_figure_function(tmp_path, monkeypatch, capsys):
    """A preset missing from the figure registry (``figures`` None) "draws none": the sweep finishes with exit 0,
    writes its table and no figures folder (it once raised after every run had finished)."""
    from trustregion_lab.sweep import cli

    preset = _counting_preset(tmp_path / "calls.log")
    assert preset.figures is None
    monkeypatch.setattr(cli, "available_presets", lambda: {preset.name: preset})
    out = tmp_path / "out"
    assert cli.main(["--preset", preset.name, "--out", str(out)]) == 0
    assert len(_calls(tmp_path / "calls.log")) == 4  # 2 grid points × 2 seeds
    assert (out / "table.csv").is_file()
    assert not (out / "figures").exists() or not any((out / "figures").iterdir())
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "figure:" not in printed


# ------------------------------------------------------------------------------------------ figures so far
def test_so_far_draws_the_finished_runs_only_and_writes_no_table(tmp_path, monkeypatch, capsys):
    """A long sweep in the background: ``--so-far`` draws the figures of the runs finished so far (verified files
    only, in plan order) into <out>/figures-so-far and runs nothing; table.csv, which means finished, stays
    unwritten; a folder with no finished run, or none at all, is a one-line error."""
    from trustregion_lab.sweep import cli

    seen = []

    def figures(table, columns):
        seen.append((table.copy(), list(columns)))
        return {"runs.csv": table[["x", "seed"]].drop_duplicates()}

    preset = dataclasses.replace(_counting_preset(tmp_path / "calls.log"), figures=figures)
    monkeypatch.setattr(cli, "available_presets", lambda: {preset.name: preset})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as missing:
        cli.main(["--preset", preset.name, "--out", str(out), "--so-far"])
    assert missing.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert cli.main(["--preset", preset.name, "--out", str(out), "--no-figures", "--quiet"]) == 0
    (out / "table.csv").unlink()
    runs = sorted((out / "runs").glob("*.csv"))
    runs[0].unlink()  # as if that run were still going
    (runs[1].with_suffix(".json")).write_text("{}")  # and that one's record were not written yet
    calls = len(_calls(tmp_path / "calls.log"))
    assert cli.main(["--preset", preset.name, "--out", str(out), "--so-far"]) == 0
    assert len(_calls(tmp_path / "calls.log")) == calls  # nothing ran
    assert not (out / "table.csv").exists()
    table, columns = seen[-1]
    assert len(table) == 2 * 2 and set(columns) >= {"x", "y"}  # 2 of 4 runs, 2 rows each
    drawn = pd.read_csv(out / "figures-so-far" / "runs.csv")
    assert len(drawn) == 2
    assert "2 of 4 runs finished" in capsys.readouterr().out
    for path in (out / "runs").glob("*.csv"):
        path.unlink()
    with pytest.raises(SystemExit) as none:
        cli.main(["--preset", preset.name, "--out", str(out), "--so-far"])
    assert none.value.code == 2 and "none of the 4 runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--preset", preset.name, "--out", str(out), "--so-far", "--no-figures"])


def test_a_seed_a_configuration_no_longer_runs_is_named_in_the_refusal(tmp_path):
    """seeds_for gave x=2 a third seed; a plan that takes it back is refused with the seed and configuration."""
    log = tmp_path / "calls.log"
    three = dataclasses.replace(_counting_preset(log), seeds_for=lambda c: 3 if c["x"] == 2 else 2)
    run_sweep(plan_sweep(three), tmp_path / "out", progress=False)
    assert len(_calls(log)) == 5
    with pytest.raises(SweepConfigError, match=r"seed 2 \(requested seeds 0\.\.1 of this configuration\)"):
        run_sweep(plan_sweep(_counting_preset(log)), tmp_path / "out", progress=False)
