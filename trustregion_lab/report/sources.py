"""Find the token export at a path, decide its format and stream it as `TokenChunk`s with a progress bar.

Formats: ``prime-rl`` (``step_<n>/rank_<r>.jsonl`` files of prime-rl's trainer, anywhere below the path),
``parquet`` / ``jsonl`` / ``csv`` (the per-token table; a file, or every such file below a folder). ``auto``
picks prime-rl when such files exist, else the table format the files have (a ``.jsonl`` file whose first record
carries ``schema_version`` and ``trainer_logprobs`` is prime-rl's).

Every file below the path is accounted for: an unreadable folder or file stops the run with its name; ``auto``
refuses a folder holding token tables of more than one format (an explicit ``--format`` reads that format and
notes the files it leaves). A prime-rl step still being written is skipped and noted: a step folder without
prime-rl's ``STABLE`` marker when other steps have one, or, when no step has one, a last step whose file ends
in a half-written line. A folder holding several runs' ``token_exports`` is refused (their steps would mix).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from trustregion_lab._validate import check_choice
from trustregion_lab.report.primerl import find_prime_rl_files, iter_prime_rl, step_rank
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
    counts: dict[str, int] = field(default_factory=dict, compare=False)  # filled while streaming (readers)

    def chunks(
        self, *, progress: bool | None = None, batch_tokens: int = BATCH_TOKENS
    ) -> Iterator[TokenChunk]:
        """Stream every file's response tokens. progress: True / False / None (= only on a terminal).

        `counts` restarts at each call, so a source streamed twice counts once.
        """
        self.counts.clear()
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
                        path,
                        batch_tokens=batch_tokens,
                        first_sequence=index << 32,
                        advance=bar.update,
                        counts=self.counts,
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


def _walk(root: Path) -> list[Path]:
    """Every regular file below `root` (hidden names skipped); an unreadable folder or file raises, naming it."""
    if root.is_file():
        if not os.access(root, os.R_OK):
            raise ReportInputError(f"{root}: cannot read this file (permission denied)")
        return [root]
    errors: list[OSError] = []
    files = []
    for folder, subfolders, names in os.walk(root, onerror=errors.append):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in names:
            if not name.startswith("."):
                files.append(Path(folder) / name)
    if errors:
        bad = errors[0]
        raise ReportInputError(
            f"{bad.filename}: cannot read this folder below {root} ({bad.strerror or bad}); "
            "every file of an export must be readable"
        )
    broken = [f for f in files if not f.is_file()]
    if broken:
        raise ReportInputError(
            f"{broken[0]}: not a readable file (a broken link?); every file must be readable"
        )
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        raise ReportInputError(f"{unreadable[0]}: cannot read this file (permission denied)")
    return sorted(files)


def _by_format(files: list[Path]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for f in files:
        for fmt, ending in _SUFFIX.items():
            if f.name.lower().endswith(ending):
                found.setdefault(fmt, []).append(f)
    return found


def _half_written(path: Path) -> bool:
    """A file whose last line has no newline yet (a writer is still at it)."""
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def _prime_rl_source(root: Path, files: list[Path], others: list[Path]) -> TokenSource:
    notes: list[str] = []
    if root.is_dir():
        runs = sorted({f.parent.parent for f in files})
        if len(runs) > 1:
            names = ", ".join(str(r.relative_to(root)) if r != root else "." for r in runs[:4])
            raise ReportInputError(
                f"{root}: holds the token exports of {len(runs)} runs ({names}); their steps would be counted "
                "together: run the report on one run's token_exports folder"
            )
        steps = sorted({f.parent for f in files}, key=lambda d: step_rank(d / "rank_0.jsonl"))
        stable = {d for d in steps if (d / "STABLE").exists()}
        skipped: list[str] = []
        if stable:  # prime-rl marks a step folder STABLE once every rank has flushed it
            skipped = [d.name for d in steps if d not in stable]
            why = "without a STABLE marker (still being written?)"
        elif any(_half_written(f) for f in files if f.parent == steps[-1]):
            skipped = [steps[-1].name]
            why = "whose last line is half-written (the step is still being written; no STABLE markers here)"
        if skipped:
            files = [f for f in files if f.parent.name not in skipped]
            notes.append(f"skipped {len(skipped)} step folder(s) {why}: " + ", ".join(skipped[:5]))
            if not files:
                raise ReportInputError(f"{root}: every step folder is still being written ({notes[0]})")
    if others:
        notes.append(
            f"left out {len(others)} file(s) that are not prime-rl rank files, e.g. {others[0].relative_to(root)}"
        )
    return TokenSource(root, "prime-rl", tuple(files), "prime-rl", tuple(notes))


def open_source(path: str | os.PathLike, fmt: str = "auto") -> TokenSource:
    """Locate the export at `path` (a file or a folder) in format `fmt` (one of `FORMATS`).

    Raises `ReportInputError` when the path does not exist, cannot be read, holds no export of that format, or
    (``auto``) holds token tables of several formats or several prime-rl runs.
    """
    fmt = check_choice("format", fmt, FORMATS)
    root = Path(path)
    if not root.exists():
        raise ReportInputError(f"{root}: no such file or folder")
    every = _walk(root)
    prime = find_prime_rl_files(root) if not root.is_file() else []
    tables = _by_format([f for f in every if f not in set(prime)])
    if fmt == "auto":
        fmt = _detect(root, prime, tables)
    if fmt == "prime-rl":
        files = prime if root.is_dir() else [root]
        if not files:
            raise ReportInputError(
                f"{root}: no prime-rl token export found (expected token_exports/step_<n>/rank_<r>.jsonl below it; "
                "enable the trainer's token export)"
            )
        others = [f for group in tables.values() for f in group]
        return _prime_rl_source(root, files, others)
    files = sorted(tables.get(fmt, [])) if root.is_dir() else [root]
    if not files:
        raise ReportInputError(f"{root}: no *{_SUFFIX[fmt]} token table found")
    ignored = sorted([f for other, group in tables.items() if other != fmt for f in group] + prime)
    notes = (
        (
            f"--format {fmt}: left out {len(ignored)} file(s) of another format, e.g. {ignored[0].relative_to(root)}",
        )
        if ignored and root.is_dir()
        else ()
    )
    framework = None
    if fmt == "parquet":
        names = {table_source_name(f) for f in files}
        framework = names.pop() if len(names) == 1 else None
    return TokenSource(root, fmt, tuple(files), framework, notes)


def _detect(root: Path, prime: list[Path], tables: dict[str, list[Path]]) -> str:
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
    kinds = (["prime-rl"] if prime else []) + sorted(tables)
    if len(kinds) > 1:
        found = "; ".join(
            f"{len(prime)} prime-rl rank file(s)" if k == "prime-rl" else f"{len(tables[k])} *{_SUFFIX[k]}"
            for k in kinds
        )
        raise ReportInputError(
            f"{root}: holds exports of several formats ({found}); the report reads one: move the others out, "
            "or pass --format to read one of them (the others are then left out and noted)"
        )
    if kinds:
        return kinds[0]
    raise ReportInputError(
        f"{root}: no token export found: expected prime-rl's token_exports/step_<n>/rank_<r>.jsonl, "
        "or per-token tables (*.parquet, *.jsonl, *.csv) below this folder"
    )
