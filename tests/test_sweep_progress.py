"""The sweep's progress inside running runs, Ctrl-C, and --quiet.

A fake preset reports its steps through `trustregion_lab.progress` (as the trainers do); the sweep must show
them while the runs compute, serially and from worker processes, stop cleanly on Ctrl-C with one line, and
stay silent with --quiet.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import trustregion_lab
from trustregion_lab import progress
from trustregion_lab.experiment import Preset
from trustregion_lab.sweep import backends, cli, plan_sweep, run_sweep

PACKAGE_ROOT = str(Path(trustregion_lab.__file__).resolve().parents[1])  # subprocesses import the same code


def _stepping_run(config: dict, seed: int) -> pd.DataFrame:
    """A preset body that reports ``steps`` training steps, ``pause`` seconds apart; raises KeyboardInterrupt
    in the run whose x equals ``interrupt_at`` (a Ctrl-C arriving inside that run)."""
    if config["x"] == config["interrupt_at"]:
        raise KeyboardInterrupt
    for step in range(1, config["steps"] + 1):
        time.sleep(config["pause"])
        progress.report("train", step, config["steps"], {"reward": 0.5})
    return pd.DataFrame({"x": [config["x"]], "seed": [seed]})


def _stepping_preset(steps: int = 6, pause: float = 0.05, runs: int = 2, interrupt_at: int = -1) -> Preset:
    return Preset(
        name="stepping",
        help="test preset",
        run=_stepping_run,
        defaults={"x": 0, "steps": steps, "pause": pause, "interrupt_at": interrupt_at},
        grid={"x": list(range(runs))},
    )


class _FakeBar:
    def __init__(self) -> None:
        self.postfixes: list[str] = []
        self.n = 0

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)

    def update(self, n: int) -> None:
        self.n += n

    def refresh(self) -> None:
        pass


def test_the_display_lists_each_running_run_and_forgets_finished_ones():
    bar = _FakeBar()
    display = backends._Display(bar, enabled=True)
    display.report("a", "started", 0, 0)
    display.report("a", "warm start", 120, 600)
    display.report("b", "train", 37, 200)
    assert bar.postfixes[-1] == "2 running: warm start 120/600, train 37/200"
    display.finished("a")
    display.report("a", "train", 200, 200)  # a late report of a stored run is not shown again
    assert bar.postfixes[-1] == "1 running: train 37/200" and bar.n == 1
    display.finished("b")
    assert bar.postfixes[-1] == "" and bar.n == 2


def test_serial_sweep_shows_the_steps_of_the_running_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backends, "REDRAW_INTERVAL", 0.02)
    run_sweep(plan_sweep(_stepping_preset(steps=6, pause=0.05)), tmp_path / "out")
    err = capsys.readouterr().err
    shown = set(re.findall(r"1 running: train (\d)/6", err))
    assert shown and shown <= {str(i) for i in range(1, 7)}, err
    assert "2/2" in err  # the finished runs are counted too


def test_worker_processes_forward_their_steps(tmp_path, capsys):
    table = run_sweep(plan_sweep(_stepping_preset(steps=8, pause=0.3)), tmp_path / "out", jobs=2)
    assert sorted(table["x"]) == [0, 1]
    err = capsys.readouterr().err
    assert re.search(r"running: (started, )?train [1-8]/8", err), err  # steps from inside a worker


def test_quiet_prints_nothing(tmp_path, capsys):
    code = _cli_with(_stepping_preset(), ["--out", str(tmp_path / "out"), "--no-figures", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and out == "" and err == ""


def _cli_with(preset: Preset, argv: list[str]) -> int:
    original = cli.available_presets
    cli.available_presets = lambda: {preset.name: preset}
    try:
        return cli.main(["--preset", preset.name, *argv])
    finally:
        cli.available_presets = original


def test_ctrl_c_in_a_serial_sweep_exits_130_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code = _cli_with(_stepping_preset(runs=4, interrupt_at=2), ["--out", str(out), "--no-figures"])
    err = capsys.readouterr().err
    assert code == 130
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted: 2 of 4 runs are kept in {out}; run the same command to resume"], err
    assert "Traceback" not in err and len(list((out / "runs").glob("*.csv"))) == 2


_FAKE_CLI = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from trustregion_lab import progress
    from trustregion_lab.experiment import Preset
    from trustregion_lab.sweep import cli

    def run(config, seed):
        for step in range(1, 1001):
            time.sleep(config["pause"])
            progress.report("train", step, 1000)
        return pd.DataFrame({"x": [config["x"]]})

    PRESET = Preset("endless", "test", run, {"x": 0, "pause": 0.05}, {"x": [0, 1, 2, 3]})

    if __name__ == "__main__":
        cli.available_presets = lambda: {"endless": PRESET}
        sys.exit(cli.main(["--preset", "endless", "--no-figures", *sys.argv[1:]]))
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


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ctrl_c_with_worker_processes_stops_them_and_says_what_is_kept(tmp_path):
    (tmp_path / "endless.py").write_text(_FAKE_CLI)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), PACKAGE_ROOT]))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "endless.py"), "--out", str(out), "--jobs", "2"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")))
    reader.start()
    try:
        deadline = started + 90
        while time.monotonic() < deadline and not re.search(rb"train \d+/1000", b"".join(chunks)):
            time.sleep(0.1)
        seen_after = time.monotonic() - started
        assert re.search(rb"train \d+/1000", b"".join(chunks)), b"".join(chunks).decode(errors="replace")
        print(f"steps of a running run shown {seen_after:.1f} s after the start")
        workers = _children(proc.pid)
        assert workers, "no worker processes"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        code = proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = b"".join(chunks).decode(errors="replace")
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last == f"interrupted: 0 of 4 runs are kept in {out}; run the same command to resume", err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the sweep"
    assert not list((out / "runs").glob("*.csv"))


def test_ray_tasks_forward_their_steps(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = run_sweep(plan_sweep(_stepping_preset(steps=8, pause=0.3)), tmp_path / "out", backend="ray")
    finally:
        ray.shutdown()
    assert sorted(table["x"]) == [0, 1]
    err = capsys.readouterr().err
    assert re.search(r"running: .*train [1-8]/8", err), err


def _verdict_figures(table: pd.DataFrame, config_columns: list[str]) -> dict:
    """A figure function returning a stability verdict computed from the runs (one seed: claims n/a)."""
    from trustregion_lab.analysis.stability import stability_verdict

    summary = pd.DataFrame(
        {"variant": "pg_is", "engine": "model-bf16", "seed": table["seed"], "drifted": False}
    ).assign(collapsed=False, stable=True)
    return {"stability_verdict.csv": stability_verdict(summary, "model-bf16", "model-fp32")}


def test_the_sweep_prints_the_verdict_table_at_the_end(tmp_path, capsys):
    preset = _stepping_preset(runs=1)
    preset = Preset(preset.name, preset.help, preset.run, preset.defaults, seeds=1, figures=_verdict_figures)
    code = _cli_with(preset, ["--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    verdict = out[out.index("stability verdict") :].splitlines()
    assert any(line.split()[:2] == ["pg_is", "model-bf16"] for line in verdict), out
    claims = [line for line in verdict if line.startswith("claim: ")]
    assert len(claims) == 4 and all(line.split()[-1] == "n/a" for line in claims), out
    assert "stability verdict" not in capsys.readouterr().out
    assert _cli_with(preset, ["--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
