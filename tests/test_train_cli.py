"""The train CLI as a user meets it: progress lines on stderr, one-line errors with the right exit code, Ctrl-C
that says what was kept and resumes bit for bit, and the faults found by trying it (negative numbers after a flag,
engine_topk beyond V, an unusable cache folder, a huge scratchpad). Also the library checks those faults reach:
the batch carries its own inputs, numpy dtypes named as given, -inf logits pointed to EXCLUDED_LOGIT."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax

from trustregion_lab import divergence
from trustregion_lab.mismatch import EXCLUDED_LOGIT
from trustregion_lab.train import BanditConfig, BanditTrainer, SequenceConfig
from trustregion_lab.train.base import TIMING_COLUMNS
from trustregion_lab.train.cli import ProgressPrinter, build_parser, config_from_args, main
from trustregion_lab.train.engine import TokenSampler

ROOT = Path(__file__).resolve().parents[1]
BANDIT = [
    "bandit",
    "--vocab-size",
    "50",
    "--num-contexts",
    "4",
    "--contexts-per-step",
    "2",
    "--group-size",
    "4",
]
BANDIT += ["--num-minibatches", "1", "--correct-rank-max", "5"]
SEQUENCE = ["sequence", "--task", "copy", "--vocab-size", "40", "--max-length", "3", "--d-model", "32"]
SEQUENCE += [
    "--n-layers",
    "1",
    "--n-heads",
    "2",
    "--d-ff",
    "64",
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
]
SEQUENCE += ["--num-minibatches", "2", "--warm-start-batch", "32", "--engine", "bf16"]


def _exit(argv: list[str], capsys) -> tuple[int, str]:
    """Run main expecting SystemExit; return (code, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code), capsys.readouterr().err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ progress
def test_progress_lines_go_to_stderr_and_the_table_to_stdout(capsys):
    assert main([*BANDIT, "--steps", "5", "--progress-every", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert [line.split()[2] for line in lines] == ["0/5", "2/5", "4/5", "5/5"]
    assert all(line.startswith("[train] step ") for line in lines)
    for key in ("reward", "mismatch", "mask", "s/step"):
        assert all(key in line for line in lines[1:])
    assert "[train]" not in captured.out and "reward" in captured.out.splitlines()[0]


def test_quiet_silences_progress(capsys):
    assert main([*BANDIT, "--steps", "2", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "reward" in captured.out


def test_the_warm_start_reports_its_steps_then_its_cache(tmp_path, capsys):
    argv = [*SEQUENCE, "--steps", "1", "--warm-start-steps", "20", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--progress-every", "5"]) == 0
    err = capsys.readouterr().err.splitlines()
    warm = [line for line in err if line.startswith("[warm start]")]
    assert warm[0].startswith("[warm start] step 1/20  loss ")
    assert [line.split()[3] for line in warm] == ["1/20", "5/20", "10/20", "15/20", "20/20"]
    assert err.index(warm[-1]) < err.index(next(line for line in err if line.startswith("[train]")))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[warm start] step 20/20  loaded from the cache" in err


def test_the_printer_reports_seconds_per_step_over_the_steps_since_its_last_line():
    class Stream:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Stream()
    printer = ProgressPrinter(3, stream)
    from trustregion_lab.progress import Progress

    for done in range(0, 8):
        printer(Progress("train", done, 7, {"reward": 0.5, "mismatch_mean": 1e-3, "mask_frac": 0.25}))
    lines = stream.text.splitlines()
    assert [line.split()[2] for line in lines] == ["0/7", "3/7", "6/7", "7/7"]
    assert lines[1].split("  ")[1:4] == ["reward 0.5", "mismatch 0.001", "mask 0.25"]
    assert printer.last.done == 7


def test_the_printer_says_n_a_for_nothing_measured_and_times_answers_per_answer():
    import io

    from trustregion_lab.progress import Progress

    stream = io.StringIO()
    printer = ProgressPrinter(1, stream)
    printer(Progress("train", 0, 2, {"mask_frac": float("nan")}))
    printer(Progress("train", 1, 2, {"mask_frac": 0.5}))
    printer(Progress("prompt pool", 0, 8))
    printer(Progress("prompt pool", 8, 8))
    lines = stream.getvalue().splitlines()
    assert "mask n/a" in lines[0] and "nan" not in lines[0] and "mask 0.5" in lines[1]
    assert lines[1].endswith("s/step") and lines[3].endswith("s/answer"), lines


# ----------------------------------------------------------------------------------------------- Ctrl-C
def _interrupt(argv: list[str], after: str, *, script: str | None = None) -> subprocess.CompletedProcess:
    """Start the CLI, wait (at most 120 s) for a stderr line containing ``after``, send SIGINT, and return the
    finished process (killed when it outlives the interrupt by 60 s)."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "trustregion_lab.train"]
    proc = subprocess.Popen(
        [*command, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (seen and after in seen[-1]):
        try:
            seen.append(lines.get(timeout=1.0))
        except queue.Empty:
            if proc.poll() is not None:
                break
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out = proc.stdout.read()
    reader.join(timeout=5)
    while not lines.empty():
        seen.append(lines.get())
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen))


def test_ctrl_c_says_what_was_kept_and_the_same_command_resumes_bit_for_bit(tmp_path):
    run, out = tmp_path / "run", tmp_path / "resumed.csv"
    argv = [
        *BANDIT,
        "--steps",
        "40",
        "--checkpoint-dir",
        str(run),
        "--out",
        str(out),
        "--progress-every",
        "1",
    ]
    done = _interrupt(argv, "step 3/40")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m trustregion_lab.train bandit: interrupted at step ")
    assert "the checkpoint of step" in last and str(run) in last and "rerun the same command" in last
    kept = int(last.split("the checkpoint of step ")[1].split()[0])
    assert kept >= 3 and torch.load(run / "checkpoint.pt", weights_only=True)["step"] == kept
    assert not out.exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "trustregion_lab.train", *argv], capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.splitlines()[0] == f"[train] step {kept}/40"  # picked up where it stopped
    assert main([*BANDIT, "--steps", "40", "--out", str(tmp_path / "straight.csv"), "--quiet"]) == 0
    straight = pd.read_csv(tmp_path / "straight.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(pd.read_csv(out).drop(columns=list(TIMING_COLUMNS)), straight)


def test_ctrl_c_without_a_checkpoint_folder_says_nothing_was_kept(tmp_path):
    done = _interrupt([*BANDIT, "--steps", "100000", "--progress-every", "1"], "step 2/")
    assert done.returncode == 130 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "nothing is kept (no --checkpoint-dir" in last and "--checkpoint-dir DIR" in last


def test_ctrl_c_ends_a_step_stuck_in_one_long_native_call(tmp_path):
    # a step that never returns to Python (one C call of minutes): the interrupt must still end the run
    script = textwrap.dedent(
        """
        import hashlib, sys
        from trustregion_lab.train import base, cli
        original = base.Trainer.train_step
        def stuck(self):
            if self.step == 2:
                hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)
            return original(self)
        base.Trainer.train_step = stuck
        sys.exit(cli.main(sys.argv[1:]))
        """
    )
    argv = [*BANDIT, "--steps", "5", "--progress-every", "1", "--checkpoint-dir", str(tmp_path / "run")]
    start = time.monotonic()
    done = _interrupt(argv, "step 2/5", script=script)
    assert time.monotonic() - start < 60
    assert done.returncode == 130, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "interrupted at step 2 of 5; the checkpoint of step 2 is kept" in last


# -------------------------------------------------------------------------------- requests and exit codes
def test_a_negative_number_after_a_flag_is_a_value_not_a_flag(capsys):
    code, err = _exit([*BANDIT, "--adam-eps", "-1e-8"], capsys)
    assert code == 2 and "adam_eps must be > 0, got -1e-08" in err and len(err.splitlines()) == 1
    code, err = _exit([*BANDIT, "--lr", "-3e-4"], capsys)
    assert code == 2 and "lr must be > 0" in err
    args = build_parser().parse_args(["bandit", "--max-grad-norm=inf", "--low=0.1"])
    assert config_from_args(args).max_grad_norm == float("inf")


def test_the_variants_own_threshold_is_none_on_the_command_line(capsys):
    parser = build_parser()
    absent = config_from_args(parser.parse_args(["bandit"]))
    assert (absent.low, absent.high, absent.ratio_cap) == (None, None, None)
    own = config_from_args(
        parser.parse_args(["bandit", "--low", "own", "--high", "0.3", "--ratio-cap", "own"])
    )
    assert (own.low, own.high, own.ratio_cap) == (None, 0.3, None)
    assert own.resolved_variant.high == 0.3 and own.resolved_variant.low == absent.resolved_variant.low
    code, err = _exit([*BANDIT, "--low", "nan"], capsys)  # NaN is no longer a sentinel
    assert code == 2 and "low must be a finite number" in err
    code, err = _exit([*BANDIT, "--low", "loose"], capsys)
    assert code == 2 and "expected a number or 'own'" in err and len(err.splitlines()) == 1


def test_engine_topk_beyond_the_vocabulary_is_refused_when_the_config_is_built(capsys):
    for cls, fields in ((BanditConfig, {"vocab_size": 100}), (SequenceConfig, {"vocab_size": 100})):
        cls(engine_topk=100, **fields)  # the whole vocabulary is fine
        with pytest.raises(ValueError, match="engine_topk=101 exceeds the vocabulary size V=100"):
            cls(engine_topk=101, **fields)
    code, err = _exit(
        ["sequence", "--vocab-size", "100", "--engine", "model-bf16", "--engine-topk", "101"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "engine_topk=101" in err
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(5))
    assert TokenSampler("none", 100, "topk_plus_sampled", 0).sample(logits).topk_ids.shape == (3, 101)
    with pytest.raises(ValueError, match="topk"):  # never clipped silently
        TokenSampler("none", 101, "topk_plus_sampled", 0).sample(logits)


def test_a_cache_dir_that_is_a_file_or_read_only_is_a_bad_request(tmp_path, capsys):
    a_file = tmp_path / "cache"
    a_file.write_text("x")
    code, err = _exit(
        [*SEQUENCE, "--steps", "1", "--warm-start-steps", "5", "--cache-dir", str(a_file)], capsys
    )
    assert code == 2 and err.count("\n") == 1 and f"--cache-dir {a_file} is a file" in err
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:  # root ignores permissions: then a folder of a file system that takes no new files (/sys, /proc)
        folder = next(p for p in (read_only, Path("/sys"), Path("/proc")) if p.is_dir() and not _writable(p))
        code, err = _exit([*SEQUENCE, "--steps", "1", "--cache-dir", str(folder / "cache")], capsys)
        assert code == 2 and err.count("\n") == 1 and "cannot write there" in err
    finally:
        read_only.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_a_huge_scratchpad_is_refused_with_its_reason(capsys):
    code, err = _exit(["sequence", "--scratch-length", "100000"], capsys)
    assert code == 2 and "scratch_length must be an int in [0, 1024]" in err
    with pytest.raises(ValueError, match=r"512 rows × 135 answer positions × 2000 tokens = 138,240,000"):
        SequenceConfig(scratch_length=128)  # within the cap, but the step's logits exceed their budget
    SequenceConfig(scratch_length=128, prompts_per_step=8)  # a smaller batch fits


def test_a_prompt_pool_that_finds_too_few_prompts_is_a_failure_not_a_bad_request(tmp_path, capsys):
    argv = [*SEQUENCE, "--steps", "1", "--warm-start-steps", "5", "--cache-dir", str(tmp_path / "c")]
    argv += ["--prompt-pool", "4", "--pool-candidates", "16", "--pool-samples", "1", "--eval-prompts", "4"]
    argv += [
        "--pool-min-success",
        "0.5",
        "--pool-max-success",
        "0.5",
    ]  # one sample scores 0 or 1: none in band
    code, err = _exit(argv, capsys)
    assert code == 1 and "failed while setting up the run: only 0 of" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "python -m trustregion_lab.train"
    )


def test_the_export_folder_is_a_constructor_argument(tmp_path):
    trainer = BanditTrainer(BanditConfig(steps=1, vocab_size=50), export_dir=tmp_path / "tokens")
    assert trainer.export_dir == tmp_path / "tokens"
    assert BanditTrainer(BanditConfig(steps=1, vocab_size=50)).export_dir is None


# ------------------------------------------------------------------------------------------------ the batch
def test_a_batch_needs_nothing_a_later_collect_left_behind():
    seed = 11
    trainer = BanditTrainer(
        BanditConfig(steps=2, vocab_size=50, engine="none", seed=seed, contexts_per_step=8)
    )
    trainer.sampler.begin_step(0)
    first = trainer.collect()
    second = trainer.collect()  # the trainer's last collect is another batch
    assert not torch.equal(first.inputs, second.inputs), f"seed {seed}"
    assert not hasattr(trainer, "batch") and not hasattr(trainer, "contexts")
    trainer.prepare(first)
    logits = trainer.policy.logits.detach().double().numpy()
    want = log_softmax(logits[first.inputs.numpy()], axis=-1)
    got = torch.log_softmax(first.old_logits.double(), -1)[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"seed {seed}")
    rows = torch.tensor([1, 3])
    np.testing.assert_array_equal(
        trainer.policy_logits(first.rows(rows).inputs).detach().numpy()[:, 0], logits[first.inputs[rows]]
    )


# ------------------------------------------------------------------------------------- array checks
def test_numpy_integer_logits_are_named_as_numpy():
    ids = np.arange(12).reshape(3, 4)
    with pytest.raises(TypeError, match="got numpy int64") as info:
        divergence.tv(ids, ids.astype(np.float64))
    assert "torch" not in str(info.value)
    with pytest.raises(TypeError, match=r"got torch\.int64"):
        divergence.tv(torch.from_numpy(ids), torch.zeros(3, 4))


def test_minus_inf_logits_point_to_the_toolkits_excluded_logit():
    seed = 2026
    rng = np.random.default_rng(seed)
    mu, pi = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    cut = mu < np.quantile(mu, 0.5, axis=1, keepdims=True)  # top-p style truncation of μ
    truncated = np.where(cut, -np.inf, mu)
    with pytest.raises(ValueError, match=r"EXCLUDED_LOGIT") as info:
        divergence.tv(truncated, pi)
    assert "-1e4" in str(info.value) and "docs/design.md" in str(info.value)
    # the convention the message names: the finite EXCLUDED_LOGIT gives the truncated distribution exactly
    got = np.asarray(divergence.tv(np.where(cut, EXCLUDED_LOGIT, mu), pi), dtype=np.float64)
    p = np.where(cut, 0.0, np.exp(log_softmax(np.where(cut, -np.inf, mu), axis=1)))
    q = np.exp(log_softmax(pi, axis=1))
    np.testing.assert_allclose(got, 0.5 * np.abs(p - q).sum(axis=1), rtol=1e-6, err_msg=f"seed {seed}")


def test_a_failing_warm_start_is_a_run_time_failure_in_one_line(tmp_path, capsys, monkeypatch):
    from trustregion_lab.train import sequence

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail on a second line")

    monkeypatch.setattr(sequence, "warm_start_cached", failing)
    code, err = _exit([*SEQUENCE, "--steps", "1", "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.endswith("failed while setting up the run: CUDA out of memory. Tried to allocate 2.00 GiB\n")


def test_a_run_that_exports_tokens_resumes_after_an_interruption_between_checkpoints(tmp_path, capsys):
    """A step's table is written before its checkpoint: an interrupted run leaves tables of steps its checkpoint
    does not hold. The same command resumes (those tables are written again) and the export equals an
    uninterrupted run's, table for table; another run's tables are still refused."""
    cfg = BanditConfig(
        vocab_size=50,
        num_contexts=4,
        contexts_per_step=2,
        group_size=4,
        num_minibatches=1,
        correct_rank_max=5,
    )
    cfg = BanditConfig(**{**cfg.__dict__, "steps": 6, "checkpoint_every": 3})
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    BanditTrainer(cfg, export_dir=resumed).train(tmp_path / "ck", stop_after=4)  # checkpoint at 3, table 4
    assert sorted(p.name for p in resumed.iterdir())[-1] == "step_000004.parquet"
    argv = [*BANDIT, "--steps", "6", "--checkpoint-every", "3", "--quiet"]
    assert main([*argv, "--checkpoint-dir", str(tmp_path / "ck"), "--export-tokens", str(resumed)]) == 0
    assert "removed 1 table(s) of steps after the checkpoint (step 3)" in capsys.readouterr().err
    assert main([*argv, "--export-tokens", str(straight)]) == 0
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir()) and len(names) == 6
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(resumed / name), pd.read_parquet(straight / name))
    code, err = _exit([*argv, "--export-tokens", str(straight)], capsys)  # a new run into a full folder
    assert code == 2 and "another run" in err
