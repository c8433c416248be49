"""``python -m trustregion_lab.train {bandit,sequence} [--field value ...]``: one training run, table to CSV.

The options are generated from the config dataclasses (``BanditConfig``, ``SequenceConfig``), so ``--help``
lists every field with its default and help text. ``--low``, ``--high`` and ``--ratio-cap`` left out (or given
as ``own``) mean the variant's own value (``None`` in the config).

While it runs, a progress line goes to stderr at the first step and every ``--progress-every`` steps of each
stage (warm start, prompt pool, training: step, reward, mismatch, mask rate, seconds per step); ``--quiet``
silences it. The final table goes to stdout.

Exit codes: 0 done; 2 a bad request (a field's value, an output or cache path that cannot be written, a
checkpoint that is not one), reported in one line before any training; 1 a run-time failure (the warm start or
the prompt pool failed, a file could not be written), in one line; 130 interrupted (Ctrl-C), with one line
saying what was kept and how to resume. An error inside a training step is a bug: it keeps its traceback (1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from trustregion_lab import progress
from trustregion_lab._io import atomic_write_csv, check_writable_folder
from trustregion_lab.train.base import CHECKPOINT_NAME
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig
from trustregion_lab.train.warm_start import cache_folder

__all__ = ["ProgressPrinter", "add_config_arguments", "build_parser", "config_from_args", "main"]

EXIT_FAILURE, EXIT_BAD_REQUEST, EXIT_INTERRUPTED = 1, 2, 130
OWN = "own"  # --low/--high/--ratio-cap own: the variant's own value (None)
# after Ctrl-C, a main thread stuck this long inside one native call (a long kernel) is ended from outside
INTERRUPT_GRACE_S = 3.0

COMMANDS: dict[str, type[TrainConfig]] = {"bandit": BanditConfig, "sequence": SequenceConfig}
SUMMARY_COLUMNS = [
    "step",
    "reward",
    "entropy",
    "mismatch_mean",
    "tv_exact",
    "mismatch_k3",
    "mask_frac",
    "grad_norm",
]


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[TrainConfig]) -> None:
    """One ``--field`` option per dataclass field (bools as ``--flag/--no-flag``); defaults shown in help."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} fields")
    for f in dataclasses.fields(config_cls):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        if hint is bool:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
            continue
        if hint == float | None:
            help_text = (
                f"{f.metadata.get('help', '')} (default: the variant's own; '{OWN}' says so explicitly)"
            )
            group.add_argument(
                flag, dest=f.name, type=_optional_float, default=None, metavar=f.name.upper(), help=help_text
            )
            continue
        kind = int if hint is int else float if hint is float else str
        group.add_argument(
            flag, dest=f.name, type=kind, default=f.default, metavar=f.name.upper(), help=help_text
        )


def _optional_float(text: str) -> float | None:
    """A number, or ``own`` for None (the variant's own value)."""
    if text.strip().lower() == OWN:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or '{OWN}', got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: message``) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_REQUEST, f"{self.prog}: error: {message} (see --help)\n")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--adam-eps -1e-8`` → ``--adam-eps=-1e-8``: argparse takes a token starting with '-' for an option unless
    it looks like a plain negative number (``-1``, ``-0.5``), so exponents and ``-inf`` need the '='."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-"):
            try:
                float(token)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={token}"
                continue
        out.append(token)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trustregion_lab.train",
        description="Train with a trust-region variant (GRPO ratio clip, DPPO masks, PG-IS, CISPO, MiniRL, ...) and "
        "write the tidy per-step table (variant, method, seed, step, reward, mismatch_mean/max/min, entropy, "
        "tv_exact, kl_exact, mismatch_k1/k3, mask fractions, grad_norm, tokens_per_s, ...).",
        epilog="example:\n  python -m trustregion_lab.train sequence --variant dppo_binary_tv --engine model-bf16 "
        "--steps 50 --out results/run.csv\n\n"
        "The sequence trainer's supervised warm start (and prompt pool) is cached in --cache-dir, by default\n"
        "$TRUSTREGION_LAB_CACHE or ~/.cache/trustregion_lab (files warm_start-<hash>.pt, prompt_pool-<hash>.pt;\n"
        "safe to delete). Progress goes to stderr (--quiet silences it); Ctrl-C stops a run, and with\n"
        "--checkpoint-dir rerunning the same command resumes it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bandit,sequence}")
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        if cls is SequenceConfig:
            doc += (
                " The warm start is cached in --cache-dir (default $TRUSTREGION_LAB_CACHE or "
                "~/.cache/trustregion_lab)."
            )
        p = sub.add_parser(name, help=doc, description=doc)
        p.add_argument("--out", default="", help="CSV file for the table ('' = print a summary only)")
        p.add_argument(
            "--checkpoint-dir",
            default="",
            help="folder for checkpoint.pt (written every --checkpoint-every steps, every step when that is 0): "
            "a killed run resumes from it",
        )
        p.add_argument(
            "--export-tokens",
            default="",
            metavar="DIR",
            help="write every step's per-token table (engine and trainer log-probs, advantages, top-K, exact TV of "
            "the state) to DIR/step_<n>.parquet, the input of `python -m trustregion_lab.report DIR`",
        )
        p.add_argument(
            "--quiet",
            action="store_true",
            help="no progress lines on stderr (the final table is still printed)",
        )
        p.add_argument(
            "--progress-every",
            type=int,
            default=10,
            metavar="N",
            help="a progress line every N steps of each stage, besides the first and the last (default: 10; the "
            "warm start every max(N, steps/20))",
        )
        add_config_arguments(p, cls)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cls = COMMANDS[args.command]
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def check_output_paths(out: str, checkpoint_dir: str) -> None:
    """Refuse outputs that would fail only after training: --out a folder or unwritable, --checkpoint-dir a file."""
    if out:
        path = Path(out)
        if path.is_dir():
            raise ValueError(f"--out {out} is a folder; give a CSV file name such as {path / 'table.csv'}")
        check_writable_folder(path.parent if str(path.parent) else Path("."), f"--out {out}")
    if checkpoint_dir:
        folder = Path(checkpoint_dir)
        check_writable_folder(folder, "--checkpoint-dir")


def check_cache_folder(config: TrainConfig) -> None:
    """The sequence trainer's cache folder must be a folder this process can write (ValueError otherwise)."""
    if not isinstance(config, SequenceConfig) or not (config.warm_start_steps or config.prompt_pool):
        return
    if config.cache_dir:
        what = "--cache-dir"
    elif os.environ.get("TRUSTREGION_LAB_CACHE"):
        what = "$TRUSTREGION_LAB_CACHE (the warm-start cache; choose another with --cache-dir)"
    else:
        what = "the warm-start cache folder (choose another with --cache-dir)"
    check_writable_folder(cache_folder(config.cache_dir), what)


def _prepare_export_folder(folder: Path, step: int, *, resumed: bool) -> None:
    """Refuse an export folder holding another run's tables; on resume, remove this run's tables of the steps
    after the checkpoint (exported before the interruption, written again by the resumed run)."""
    from trustregion_lab.report.table import check_export_folder

    check_export_folder(folder, first_step=step + 1, resuming=resumed)
    if resumed and folder.is_dir():
        later = [p for p in folder.glob("step_*.parquet") if p.stem[5:].isdigit() and int(p.stem[5:]) > step]
        for path in later:
            path.unlink()
        if later:
            print(
                f"--export-tokens: removed {len(later)} table(s) of steps after the checkpoint (step {step}); "
                "the resumed run writes them again",
                file=sys.stderr,
            )


class ProgressPrinter:
    """A progress sink (``trustregion_lab.progress``) printing one line at each multiple of ``every`` units of a
    stage, and at its first and last report, to ``stream``; it also remembers the last report (for the Ctrl-C line).

    Lines: ``[train] step 5/50  reward 0.4375  mismatch 0.00123  mask 0.031  2.31 s/step``,
    ``[warm start] step 100/600  loss 2.31  0.05 s/step``; s/step is the wall time since the previous line
    over the units done since it.
    """

    LABELS = (("reward", "reward"), ("mismatch_mean", "mismatch"), ("mask_frac", "mask"), ("loss", "loss"))

    def __init__(self, every: int = 10, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.every = max(1, int(every))
        self.stream = stream
        self.quiet = quiet
        self.last: progress.Progress | None = None
        self._printed: dict[str, tuple[int, float]] = {}

    def _every(self, report: progress.Progress) -> int:
        if report.stage == "warm start":
            return max(self.every, report.total // 20)
        return self.every

    def __call__(self, report: progress.Progress) -> None:
        self.last = report
        if self.quiet:
            return
        now = time.perf_counter()
        previous = self._printed.get(report.stage)
        due = (
            previous is None
            or report.done >= report.total
            or report.done // self._every(report) > previous[0] // self._every(report)
        )
        if not due or (previous is not None and report.done == previous[0]):
            return
        parts = [f"[{report.stage}] step {report.done}/{report.total}"]
        if report.stage == "prompt pool":
            parts = [f"[{report.stage}] {report.done}/{report.total} answers scored"]
        if report.metrics.get("cached"):
            parts.append("loaded from the cache")
        for key, label in self.LABELS:
            if key in report.metrics:
                value = report.metrics[key]
                # NaN: nothing to measure this step (e.g. no token with Â ≠ 0 for a mask rate)
                parts.append(f"{label} n/a" if value != value else f"{label} {value:.4g}")
        if previous is not None and report.done > previous[0]:
            unit = "answer" if report.stage == "prompt pool" else "step"
            parts.append(f"{(now - previous[1]) / (report.done - previous[0]):.3g} s/{unit}")
        self._printed[report.stage] = (report.done, now)
        print("  ".join(parts), file=self.stream or sys.stderr, flush=True)


@contextmanager
def _interrupt_guard(message: typing.Callable[[], str]) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual; when the main thread sits inside one long native call (a kernel
    that never returns to Python), a watcher thread woken by the signal prints ``message()`` and ends the process
    with 130 after ``INTERRUPT_GRACE_S``. Files are written to a temp file and renamed, so none is half written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = threading.Event()
    reader, writer = socket.socketpair()
    reader.setblocking(True)
    writer.setblocking(False)

    def on_sigint(signum: int, frame: object) -> None:
        if not handled.is_set():  # the first Ctrl-C stops the run; more while it winds down are ignored
            handled.set()
            raise KeyboardInterrupt

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data and not handled.wait(INTERRUPT_GRACE_S):
                sys.stderr.write(message() + "\n")
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    thread = threading.Thread(target=watch, name="interrupt-watcher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        handled.set()  # winding down: a Ctrl-C from here on is ignored until the previous handler is back
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        writer.close()
        thread.join(timeout=1.0)
        reader.close()


def _interrupted_line(
    args: argparse.Namespace, printer: ProgressPrinter, trainer: typing.Any, total: int
) -> str:
    """The one line printed after Ctrl-C: where the run was, what was kept, how to resume."""
    where = "before the first step"
    if trainer is not None:
        where = f"at step {trainer.step} of {total}"
    elif printer.last is not None:
        where = f"during the {printer.last.stage} ({printer.last.done} of {printer.last.total})"
    kept = getattr(trainer, "checkpoint_step", None)
    if args.checkpoint_dir and kept:
        return (
            f"interrupted {where}; the checkpoint of step {kept} is kept in {args.checkpoint_dir}: rerun the same "
            "command to resume from it"
        )
    if args.checkpoint_dir:
        return (
            f"interrupted {where}; no step finished yet, so nothing is kept in {args.checkpoint_dir} (a finished "
            "warm start stays cached): rerun the same command to start again"
        )
    return (
        f"interrupted {where}; nothing is kept (no --checkpoint-dir; a finished warm start stays cached): rerun "
        "with --checkpoint-dir DIR to make a run resumable"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    prog = f"{parser.prog} {args.command}"
    try:  # everything that can be wrong with the request is found before training starts
        config = config_from_args(args)
        if args.checkpoint_dir and config.checkpoint_every == 0:
            config = dataclasses.replace(config, checkpoint_every=1)  # a checkpoint folder means: checkpoint
        if args.progress_every < 1:
            raise ValueError(f"--progress-every must be an int >= 1, got {args.progress_every}")
        check_output_paths(args.out, args.checkpoint_dir)
        if args.export_tokens:
            check_writable_folder(Path(args.export_tokens), "--export-tokens")
        check_cache_folder(config)
    except (ValueError, TypeError) as exc:
        parser.exit(EXIT_BAD_REQUEST, f"{prog}: error: {exc}\n")
    if args.command == "bandit":
        from trustregion_lab.train.bandit import BanditTrainer as trainer_cls
    else:
        from trustregion_lab.train.sequence import SequenceTrainer as trainer_cls
    printer = ProgressPrinter(args.progress_every, quiet=args.quiet)
    trainer = None
    with (
        progress.listening(printer),
        _interrupt_guard(lambda: f"{prog}: " + _interrupted_line(args, printer, trainer, config.steps)),
    ):
        try:
            try:
                trainer = trainer_cls(config, export_dir=args.export_tokens or None)
                checkpoint = Path(args.checkpoint_dir) / CHECKPOINT_NAME if args.checkpoint_dir else None
                if checkpoint is not None and checkpoint.exists():
                    trainer.load_checkpoint(checkpoint)
                if args.export_tokens:  # a resumed run may hold its own steps there, nothing else
                    _prepare_export_folder(Path(args.export_tokens), trainer.step, resumed=trainer.step > 0)
            except (ValueError, TypeError) as exc:  # the request (a device, an engine, a checkpoint) is wrong
                parser.exit(EXIT_BAD_REQUEST, f"{prog}: error: {exc}\n")
            except (RuntimeError, OSError) as exc:  # the warm start or the prompt pool failed
                what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                parser.exit(EXIT_FAILURE, f"{prog}: failed while setting up the run: {what}\n")
            try:
                table = trainer.train(args.checkpoint_dir or None)  # other errors are bugs: traceback, exit 1
            except OSError as exc:
                parser.exit(EXIT_FAILURE, f"{prog}: failed while training: {exc}\n")
        except KeyboardInterrupt:
            sys.stderr.write(f"{prog}: " + _interrupted_line(args, printer, trainer, config.steps) + "\n")
            return EXIT_INTERRUPTED
    if args.out:
        try:
            atomic_write_csv(args.out, table)
        except OSError as exc:
            parser.exit(
                EXIT_FAILURE, f"{prog}: error: cannot write --out {args.out}: {exc.strerror or exc}\n"
            )
        print(f"wrote {len(table)} rows to {args.out}")
    every = max(1, len(table) // 10)
    shown = table.iloc[sorted(set(range(0, len(table), every)) | {len(table) - 1})]
    print(shown[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
