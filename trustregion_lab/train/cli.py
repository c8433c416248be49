"""``python -m trustregion_lab.train {bandit,sequence} [--field value ...]``: one training run, table to CSV.

The options are generated from the config dataclasses (``BanditConfig``, ``SequenceConfig``), so ``--help``
lists every field with its default and help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import typing
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig

__all__ = ["add_config_arguments", "build_parser", "config_from_args", "main", "write_csv"]

COMMANDS: dict[str, type[TrainConfig]] = {"bandit": BanditConfig, "sequence": SequenceConfig}
SUMMARY_COLUMNS = [
    "step",
    "reward",
    "entropy",
    "tv_exact",
    "kl_exact",
    "mismatch_k3",
    "mask_frac",
    "grad_norm",
]


def _parse_float(text: str) -> float:
    return float(text)


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
        if hint is int:
            kind = int
        elif hint in (float, float | None):
            kind = _parse_float
        else:
            kind = str
        group.add_argument(
            flag, dest=f.name, type=kind, default=f.default, metavar=f.name.upper(), help=help_text
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.train",
        description="Train with a trust-region variant (GRPO ratio clip, DPPO masks, PG-IS, ...) and write the "
        "tidy per-step table (method, seed, step, reward, entropy, tv_exact, kl_exact, mismatch_k1/k3, mask "
        "fractions, grad_norm, tokens_per_s, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bandit,sequence}")
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        p.add_argument("--out", default="", help="CSV file for the table ('' = print a summary only)")
        p.add_argument(
            "--checkpoint-dir",
            default="",
            help="folder for checkpoint.pt (written every --checkpoint-every steps, every step when that is 0): a killed run resumes from it",
        )
        add_config_arguments(p, cls)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cls = COMMANDS[args.command]
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**values)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            frame.to_csv(handle, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.checkpoint_dir and config.checkpoint_every == 0:
            config = dataclasses.replace(config, checkpoint_every=1)  # a checkpoint folder means: checkpoint
        if args.command == "bandit":
            from trustregion_lab.train.bandit import BanditTrainer as trainer_cls
        else:
            from trustregion_lab.train.sequence import SequenceTrainer as trainer_cls
        table = trainer_cls(config).train(args.checkpoint_dir or None)
    except (ValueError, TypeError) as exc:  # bad values found while building the trainer or on its first step
        parser.error(str(exc))
    if args.out:
        write_csv(table, args.out)
        print(f"wrote {len(table)} rows to {args.out}")
    every = max(1, len(table) // 10)
    shown = table.iloc[sorted(set(range(0, len(table), every)) | {len(table) - 1})]
    print(shown[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
