"""Find the token export at a path, decide its format and stream it as `TokenChunk`s with a progress bar.

Formats: ``prime-rl`` (``step_<n>/rank_<r>.jsonl`` files of prime-rl's trainer, anywhere below the path),
``parquet`` / ``jsonl`` / ``csv`` (the per-token table; a file, or every such file below a folder). ``auto``
picks prime-rl when such files exist, else the table format the files have (a ``.jsonl`` file whose first record
carries ``schema_version`` and ``trainer_logprobs`` is prime-rl's). In a prime-rl export whose step folders
carry prime-rl's ``STABLE`` marker, folders without one (a step still being written) are skipped and noted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from trustregion_lab._validate import check_choice
from trustregion_lab.report.primerl import find_prime_rl_files, iter_prime_rl
from trustregion_lab.report.readers import iter_csv, iter_jsonl, iter_parquet, parquet_rows, table_source_name
from trustregion_lab.report.schema import ReportInputError, TokenChunk

__all__ = ["FORMATS", "TokenSource", "open_source"]

FORMATS: tuple[str, ...] = ("auto", "prime-rl", "parquet", "jsonl", "csv")
_SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}
BATCH_TOKENS = 1 << 18


@dataclass(frozen=True)
class TokenSource:
    """A located export: its format, its files, and the framework it came from (for metric names)."""

    path: Path
    format: str
    files: tuple[Path, ...]
    framework: str | None
    notes: tuple[str, ...] = ()

    def chunks(
        self, *, progress: bool | None = None, batch_tokens: int = BATCH_TOKENS
    ) -> Iterator[TokenChunk]:
        """Stream every file's response tokens. progress: True / False / None (= only on a terminal)."""
        by_rows = self.format == "parquet"
        total = (
            sum(parquet_rows(f) for f in self.files)
            if by_rows
            else sum(os.path.getsize(f) for f in self.files)
        )
        bar = tqdm(
            total=total,
            unit="row" if by_rows else "B",
            unit_scale=True,
            desc=f"reading {self.format}",
            disable=None if progress is None else not progress,
            leave=False,
        )
        try:
            for index, path in enumerate(self.files):
                if self.format == "prime-rl":
                    yield from iter_prime_rl(
                        path, batch_tokens=batch_tokens, first_sequence=index << 32, advance=bar.update
                    )
                elif self.format == "parquet":
                    yield from iter_parquet(path, batch_rows=batch_tokens, advance=bar.update)
                elif self.format == "jsonl":
                    yield from iter_jsonl(path, batch_rows=batch_tokens, advance=bar.update)
                else:
                    yield from iter_csv(path, batch_rows=batch_tokens, advance=bar.update)
        finally:
            bar.close()


def _looks_like_prime_rl(path: Path) -> bool:
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(first, dict) and "schema_version" in first and "trainer_logprobs" in first
    return False


def _table_files(root: Path, fmt: str) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(f"*{_SUFFIX[fmt]}") if not p.name.startswith("."))


def open_source(path: str | os.PathLike, fmt: str = "auto") -> TokenSource:
    """Locate the export at `path` (a file or a folder) in format `fmt` (one of `FORMATS`).

    Raises `ReportInputError` when the path does not exist or holds no export of that format.
    """
    fmt = check_choice("format", fmt, FORMATS)
    root = Path(path)
    if not root.exists():
        raise ReportInputError(f"{root}: no such file or folder")
    if fmt == "auto":
        fmt = _detect(root)
    if fmt == "prime-rl":
        files = find_prime_rl_files(root)
        if not files:
            raise ReportInputError(
                f"{root}: no prime-rl token export found (expected token_exports/step_<n>/rank_<r>.jsonl below it; "
                "enable the trainer's token export)"
            )
        notes: tuple[str, ...] = ()
        stable = {f.parent for f in files if (f.parent / "STABLE").exists()}
        if stable and root.is_dir():  # prime-rl marks a step folder STABLE once every rank has flushed it
            unstable = sorted({f.parent.name for f in files} - {d.name for d in stable})
            files = [f for f in files if f.parent in stable]
            if unstable:
                notes = (
                    f"skipped {len(unstable)} step folder(s) without a STABLE marker (still being written?): "
                    + ", ".join(unstable[:5]),
                )
        return TokenSource(root, fmt, tuple(files), "prime-rl", notes)
    files = _table_files(root, fmt)
    if not files:
        raise ReportInputError(f"{root}: no *{_SUFFIX[fmt]} token table found")
    framework = None
    if fmt == "parquet":
        names = {table_source_name(f) for f in files[:1]}
        framework = names.pop() if len(names) == 1 else None
    return TokenSource(root, fmt, tuple(files), framework)


def _detect(root: Path) -> str:
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".jsonl":
            return "prime-rl" if _looks_like_prime_rl(root) else "jsonl"
        for fmt, ending in _SUFFIX.items():
            if suffix == ending:
                return fmt
        raise ReportInputError(
            f"{root}: cannot tell the format from the suffix {suffix!r}; pass --format prime-rl|parquet|jsonl|csv"
        )
    if find_prime_rl_files(root):
        return "prime-rl"
    for fmt in ("parquet", "jsonl", "csv"):
        if _table_files(root, fmt):
            return fmt
    raise ReportInputError(
        f"{root}: no token export found: expected prime-rl's token_exports/step_<n>/rank_<r>.jsonl, "
        "or per-token tables (*.parquet, *.jsonl, *.csv) below this folder"
    )
