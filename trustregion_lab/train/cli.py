"""``python -m trustregion_lab.train {bandit,sequence} [--field value ...]``: one training run, table to CSV.

The options are generated from the config dataclasses (``BanditConfig``, ``SequenceConfig``), so ``--help``
lists every field with its default and help text. Exit codes: 0 done; 2 a bad request (a field's value, an
output path that cannot be written, a checkpoint that is not one), reported in one line before any training;
1 an error while training, shown with its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from trustregion_lab._io import atomic_write_csv, check_writable_folder
from trustregion_lab.train.base import CHECKPOINT_NAME
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig

__all__ = ["add_config_arguments", "build_parser", "config_from_args", "main"]

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
        kind = int if hint is int else float if hint in (float, float | None) else str
        group.add_argument(
            flag, dest=f.name, type=kind, default=f.default, metavar=f.name.upper(), help=help_text
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.train",
        description="Train with a trust-region variant (GRPO ratio clip, DPPO masks, PG-IS, CISPO, MiniRL, ...) and "
        "write the tidy per-step table (variant, method, seed, step, reward, mismatch_mean/max/min, entropy, "
        "tv_exact, kl_exact, mismatch_k1/k3, mask fractions, grad_norm, tokens_per_s, ...).",
        epilog="example:\n  python -m trustregion_lab.train sequence --variant dppo_binary_tv --engine model-bf16 "
        "--steps 50 --out results/run.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bandit,sequence}")
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
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
        add_config_arguments(p, cls)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cls = COMMANDS[args.command]
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for name in ("low", "high", "ratio_cap"):  # NaN on the command line is "not set"
        if isinstance(values.get(name), float) and math.isnan(values[name]):
            values[name] = None
    return cls(**values)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # everything that can be wrong with the request is found before training starts
        config = config_from_args(args)
        if args.checkpoint_dir and config.checkpoint_every == 0:
            config = dataclasses.replace(config, checkpoint_every=1)  # a checkpoint folder means: checkpoint
        check_output_paths(args.out, args.checkpoint_dir)
        if args.export_tokens:
            check_writable_folder(Path(args.export_tokens), "--export-tokens")
        if args.command == "bandit":
            from trustregion_lab.train.bandit import BanditTrainer as trainer_cls
        else:
            from trustregion_lab.train.sequence import SequenceTrainer as trainer_cls
        trainer = trainer_cls(config)
        trainer.export_dir = Path(args.export_tokens) if args.export_tokens else None
        checkpoint = Path(args.checkpoint_dir) / CHECKPOINT_NAME if args.checkpoint_dir else None
        if checkpoint is not None and checkpoint.exists():
            trainer.load_checkpoint(checkpoint)
        if args.export_tokens:  # a resumed run may hold its own earlier steps there, nothing else
            from trustregion_lab.report.table import check_export_folder

            check_export_folder(args.export_tokens, first_step=trainer.step + 1)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    table = trainer.train(args.checkpoint_dir or None)  # errors here are bugs: traceback, exit 1
    if args.out:
        try:
            atomic_write_csv(args.out, table)
        except OSError as exc:
            parser.error(f"cannot write --out {args.out}: {exc.strerror or exc}")
        print(f"wrote {len(table)} rows to {args.out}")
    every = max(1, len(table) // 10)
    shown = table.iloc[sorted(set(range(0, len(table), every)) | {len(table) - 1})]
    print(shown[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
