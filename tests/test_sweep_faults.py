"""Faults around a sweep: corrupt run files, unwritable or wrong output paths, a full disk, a run that raises,
a bad grid value, a parent killed while its workers compute."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import trustregion_lab
from trustregion_lab import sweep
from trustregion_lab.experiment import Preset
from trustregion_lab.sweep import (
    RunError,
    StorageError,
    SweepConfigError,
    backends,
    cli,
    plan_sweep,
    run_sweep,
    store,
)

PACKAGE_ROOT = str(Path(trustregion_lab.__file__).resolve().parents[1])  # subprocesses import the same code


def _logged_run(config: dict, seed: int) -> pd.DataFrame:
    """Logs each call to config['log']; fails (ValueError, inside the computation) where x == config['fail']."""
    with open(config["log"], "a") as handle:
        handle.write(f"{config['x']} {seed}\n")
    if config["x"] == config["fail"]:
        raise ValueError(f"numerics went wrong at x={config['x']}")
    return pd.DataFrame({"value": [config["x"] * 10 + seed] * 3, "row": [0, 1, 2]})


def _check_x(config: dict) -> None:
    if config["x"] < 0:
        raise ValueError(f"x must be >= 0, got {config['x']}")


def _preset(log: Path, fail: int = -99) -> Preset:
    return Preset(
        name="logged",
        help="test preset",
        run=_logged_run,
        defaults={"x": 1, "log": str(log), "fail": fail},
        grid={"x": [1, 2, 3]},
        seeds=2,
        validate=_check_x,
    )


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _cli(monkeypatch, preset: Preset, argv: list[str]) -> int:
    monkeypatch.setattr(cli, "available_presets", lambda: {preset.name: preset})
    return cli.main(["--preset", preset.name, "--quiet", *argv])


# ------------------------------------------------------------------------------------- verification
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda path: path.write_text(path.read_text() + "garbage,line,with,too,many,fields,here\n"),
        lambda path: path.write_bytes(b""),
        lambda path: path.with_suffix(".json").unlink(),  # a file without its record
        lambda path: path.with_suffix(".json").write_text("{broken"),
        lambda path: path.write_text(path.read_text().replace("\n21,", "\n22,", 1)),  # same size, other value
    ],
    ids=["truncated", "garbage-line", "empty", "no-record", "broken-record", "edited"],
)
def test_resume_recomputes_a_damaged_run_file_with_a_warning(tmp_path, capsys, damage):
    log, out = tmp_path / "log", tmp_path / "out"
    plan = plan_sweep(_preset(log), {}, None)
    first = run_sweep(plan, out, progress=False)
    victim = plan.runs[3]  # x = 2, seed 1
    damage(out / "runs" / f"{victim.run_id}.csv")
    capsys.readouterr()
    again = run_sweep(plan, out, progress=False)
    assert _calls(log)[6:] == ["2 1"]  # only the damaged run was computed again
    err = capsys.readouterr().err
    assert f"warning: {out / 'runs' / victim.run_id}.csv is not a complete run file" in err
    assert "recomputing it" in err
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), first)
    assert store.verify_run(out / "runs", victim.run_id)[0]["rows"] == 3


def test_a_damaged_file_of_another_run_does_not_pin_the_folder(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log)
    plan = plan_sweep(preset, {}, None)
    run_sweep(plan, out, progress=False)
    for spec in plan.runs:
        if spec.config["x"] == 3:
            _truncate(out / "runs" / f"{spec.run_id}.csv")
    smaller = run_sweep(plan_sweep(preset, {"x": [1, 2]}, None), out, progress=False)
    assert len(smaller) == 4 * 3 and len(_calls(log)) == 6


# ----------------------------------------------------------------------------- validation up front
def test_one_bad_grid_value_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log)
    with pytest.raises(SweepConfigError, match=r"rejects x=-1: x must be >= 0, got -1 \(1 of the 3"):
        plan_sweep(preset, {"x": [1, -1, 2]}, None)
    with pytest.raises(SystemExit) as exc:
        _cli(monkeypatch, preset, ["--grid", "x=1,-1,2", "--out", str(out)])
    assert exc.value.code == 2
    assert "rejects x=-1" in capsys.readouterr().err
    assert _calls(log) == [] and not out.exists()
    assert _cli(monkeypatch, preset, ["--grid", "x=1,2", "--out", str(out), "--no-figures"]) == 0  # corrected
    assert len(_calls(log)) == 4


def test_a_run_that_raises_exits_1_with_its_traceback_and_keeps_the_finished_runs(
    tmp_path, monkeypatch, capsys
):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log, fail=2)
    assert _cli(monkeypatch, preset, ["--out", str(out), "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "_logged_run" in err and "ValueError: numerics went wrong at x=2" in err
    assert "rejected its parameters" not in err and "of preset 'logged' failed" in err
    assert len(list((out / "runs").glob("*.csv"))) == 2  # x = 1, seeds 0 and 1
    # the planned runs that never finished do not bind the folder: a command without them resumes into it
    assert _cli(monkeypatch, preset, ["--grid", "x=1", "--out", str(out), "--no-figures"]) == 0
    assert _calls(log) == ["1 0", "1 1", "2 0"]


def test_a_run_that_raises_in_a_worker_process_shows_the_worker_traceback(tmp_path, monkeypatch, capsys):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log, fail=1)
    assert _cli(monkeypatch, preset, ["--out", str(out), "--jobs", "2", "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert 'raise ValueError(f"numerics went wrong' in err  # the worker's own frame
    assert "ValueError: numerics went wrong at x=1" in err
    # runs that were not cancelled finished and were stored
    stored = list((out / "runs").glob("*.csv"))
    assert all(store.verify_run(out / "runs", p.stem)[0] is not None for p in stored)


def test_a_run_returning_no_dataframe_is_a_run_error(tmp_path):
    preset = Preset("bad", "test", lambda config, seed: [1, 2], {"x": 1})
    with pytest.raises(RunError, match=r"must return a pandas\.DataFrame, got list"):
        run_sweep(plan_sweep(preset), tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------- output paths
def _expect_exit_2(monkeypatch, capsys, preset: Preset, argv: list[str], *fragments: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli(monkeypatch, preset, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1  # one line, after the usage line
    for fragment in fragments:
        assert fragment in err


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, monkeypatch, capsys):
    log = tmp_path / "log"
    target = tmp_path / "results.csv"
    target.write_text("keep me")
    _expect_exit_2(monkeypatch, capsys, _preset(log), ["--out", str(target)], f"--out {target} is a file")
    _expect_exit_2(
        monkeypatch,
        capsys,
        _preset(log),
        ["--out", str(target / "sub")],
        f"{target} is a file, expected a folder",
    )
    assert target.read_text() == "keep me" and _calls(log) == []


def _make_read_only(folder: Path, monkeypatch) -> None:
    """chmod 0555; as root (who writes anyway) creating files in it is refused by patching mkstemp."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def refuse(*args, **kwargs):
            if Path(kwargs.get("dir", "")).resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("where", ["out", "runs"])
def test_a_read_only_out_or_runs_folder_exits_2_before_any_run(tmp_path, monkeypatch, capsys, where):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log)
    run_sweep(plan_sweep(preset, {"x": [1]}, None), out, progress=False)  # a folder with two runs
    folder = out if where == "out" else out / "runs"
    _make_read_only(folder, monkeypatch)
    try:
        _expect_exit_2(
            monkeypatch, capsys, preset, ["--out", str(out)], f"--out {folder}", "cannot write there"
        )
    finally:
        folder.chmod(0o755)
    assert len(_calls(log)) == 2  # the missing runs were not computed (they could not have been stored)


def test_figures_dir_that_is_a_file_exits_2_before_any_run(tmp_path, monkeypatch, capsys):
    log = tmp_path / "log"
    target = tmp_path / "figures"
    target.write_text("")
    argv = ["--out", str(tmp_path / "out"), "--figures-dir", str(target)]
    _expect_exit_2(monkeypatch, capsys, _preset(log), argv, f"--figures-dir {target} is a file")
    assert _calls(log) == []


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"a string"', "{not json"])
def test_a_sweep_json_that_is_not_an_object_exits_2(tmp_path, monkeypatch, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(content)
    _expect_exit_2(
        monkeypatch, capsys, _preset(tmp_path / "log"), ["--out", str(out)], str(out / "sweep.json")
    )
    assert (out / "sweep.json").read_text() == content


def test_a_full_disk_exits_2_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    log, out = tmp_path / "log", tmp_path / "out"
    preset = _preset(log)
    real, calls = store.atomic_write_bytes, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) == 3:  # the third run file finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", fill_up)
    _expect_exit_2(
        monkeypatch,
        capsys,
        preset,
        ["--out", str(out), "--no-figures"],
        f"no space left on {out / 'runs'} (writing ",
        ".csv); finished runs are kept, rerun to resume",
    )
    assert len(list((out / "runs").glob("*.csv"))) == 2 and not list((out / "runs").glob("*.tmp"))
    monkeypatch.setattr(store, "atomic_write_bytes", real)
    assert _cli(monkeypatch, preset, ["--out", str(out), "--no-figures"]) == 0
    assert len(_calls(log)) == 3 + 4  # the run that hit the full disk and the three after it
    assert len(pd.read_csv(out / "table.csv")) == 6 * 3


def test_a_full_disk_while_drawing_figures_exits_2(tmp_path, monkeypatch, capsys):
    from trustregion_lab import plots

    def no_space(path, frame, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    preset = Preset(
        "drawn", "test", _logged_run, {"x": 1, "log": str(tmp_path / "log"), "fail": -1}, figures=_one_table
    )
    monkeypatch.setattr(plots.common, "atomic_write_csv", no_space)
    figures = tmp_path / "out" / "figures"
    _expect_exit_2(
        monkeypatch,
        capsys,
        preset,
        ["--out", str(tmp_path / "out")],
        f"no space left on {figures} (writing t.csv)",
    )
    assert (tmp_path / "out" / "table.csv").exists()


def _one_table(table: pd.DataFrame, config_columns: list[str]) -> dict:
    return {"t.csv": table}


# -------------------------------------------------------------------------------------- parent death
_ORPHAN_MODULE = textwrap.dedent(
    """
    import os, time
    import pandas as pd
    from trustregion_lab.experiment import Preset
    from trustregion_lab.sweep import plan_sweep, run_sweep

    def run(config, seed):
        with open(config["log"], "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        time.sleep(120)
        return pd.DataFrame({"x": [config["x"]]})

    def main(out, log):
        preset = Preset("sleepy", "test", run, {"x": 0, "log": log}, {"x": [0, 1, 2, 3]})
        run_sweep(plan_sweep(preset), out, jobs=2, progress=False)
    """
)


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_and_the_resource_tracker_exit_when_the_sweep_process_is_killed(tmp_path):
    (tmp_path / "orphans.py").write_text(_ORPHAN_MODULE)
    out, log = tmp_path / "out", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), PACKAGE_ROOT]))
    command = f"import orphans; orphans.main({str(out)!r}, {str(log)!r})"
    parent = subprocess.Popen([sys.executable, "-c", command], env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(_calls(log)) < 2:  # both workers are inside a run
            time.sleep(0.1)
        assert len(_calls(log)) == 2, "the workers did not start their runs"
        helpers = _children(parent.pid)  # the two workers and the resource tracker
        workers = {int(pid) for pid in _calls(log)}
        assert workers <= helpers and len(helpers) >= 3
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(pid) for pid in helpers):
            time.sleep(0.1)
        assert not [pid for pid in helpers if _alive(pid)], "processes outlived the sweep"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _children(parent.pid) | {int(p) for p in _calls(log)}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_watchdog_exits_only_once_the_parent_changes(monkeypatch):
    parents = iter([10, 10, 10, 1])
    exits = []
    monkeypatch.setattr(backends.os, "getppid", lambda: next(parents))

    def fake_exit(code):
        exits.append(code)
        raise SystemExit

    monkeypatch.setattr(backends.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        backends._watch_parent(10, interval=0.0)
    assert exits == [1]
    with pytest.raises(StopIteration):
        next(parents)  # it polled until the parent changed, then stopped


def test_store_error_is_a_bad_request(tmp_path):
    assert issubclass(StorageError, SweepConfigError) and sweep.StorageError is StorageError
    with pytest.raises(StorageError, match="is a file"):
        store.check_writable_folder(Path(__file__), "--out")
    store.check_writable_folder(tmp_path / "new" / "deeper", "--out")
    assert list(tmp_path.iterdir()) == []  # the probe created nothing and left nothing behind
