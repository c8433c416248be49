"""Reader of prime-rl's trainer token export (``schema_version`` 1) into the per-token table.

prime-rl's trainer, with token export on, writes ``<output_dir>/token_exports/step_<n>/rank_<r>.jsonl`` (with
several runs: ``<output_dir>/<run_id>/token_exports/step_<n>/...``): one JSON object per line, one line per
sequence, holding aligned per-token arrays over the whole sequence, prompt included (source: prime-rl's
``src/prime_rl/trainer/rl/token_export.py``). Non-finite floats are written as null. Mapping to the table:

    step            ← "step"
    sequence        ← a running record number (unique over the export)
    position        ← index in the record − index of its first trained token
    token_id        ← "token_ids"
    rollout_logprob ← "inference_logprobs" (μ)
    logprob         ← "trainer_logprobs" (π)
    advantage       ← "advantages"
    response_mask   ← "loss_mask" (false on prompt tokens), and false where "rl_weights" is exactly 0; when
                      the record carries per-token "losses" channels (newer exports), only tokens whose "rl"
                      channel has mask true (tokens of other losses, e.g. SFT, are counted and left out)
    entropy, reward ← "entropy", "rewards" (when present; newer exports have no "rewards")
    framework_masked ← "is_masked" (prime-rl's own DPPO mask flag, when present; null where not computed)
Records with "training_mode" = "sft" (an SFT phase, not RL tokens) are skipped and counted (`counts`:
sft_records, sft_tokens; non_rl_tokens for tokens of other loss channels). The environment label may be
"env_name" or "env"; "rank", "micro_step" and "micro_sequence_idx" identify a record: the same
(micro_step, micro_sequence_idx) twice in one rank file is an error (it would be counted twice).

The file is read line by line (one record in memory at a time) and yields a `TokenChunk` every ~`batch_tokens`
response tokens. Errors name the file, the line and, for per-record problems, the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trustregion_lab.report.schema import ReportInputError, TokenChunk
from trustregion_lab.report.table import build_chunk, json_lines

__all__ = ["PRIME_RL_FIELDS", "find_prime_rl_files", "iter_prime_rl"]

SCHEMA_VERSION = 1
# record field → (table column, required)
PRIME_RL_FIELDS: dict[str, tuple[str, bool]] = {
    "token_ids": ("token_id", True),
    "loss_mask": ("response_mask", True),
    "advantages": ("advantage", True),
    "inference_logprobs": ("rollout_logprob", True),
    "trainer_logprobs": ("logprob", True),
    "entropy": ("entropy", False),
    "rewards": ("reward", False),
    "is_masked": ("framework_masked", False),
}
_ARRAY_FIELDS = ("token_ids", "position_ids", "rl_weights", *(f for f in PRIME_RL_FIELDS if f != "token_ids"))


def step_rank(path: Path) -> tuple[int, int, str]:
    def number(text: str, prefix: str) -> int:
        tail = text[len(prefix) :]
        return int(tail) if tail.isdigit() else -1

    return number(path.parent.name, "step_"), number(path.stem, "rank_"), str(path)


def find_prime_rl_files(root: Path) -> list[Path]:
    """``step_<n>/rank_<r>.jsonl`` files under `root` (or `root` itself), ordered by step, then rank."""
    if root.is_file():
        return [root]
    return sorted(root.glob("**/step_*/rank_*.jsonl"), key=step_rank)


class _Batch:
    """Response tokens of several records of one file, gathered until a chunk is full."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.lines: list[np.ndarray] = []
        self.size = 0

    def add(self, columns: dict[str, np.ndarray], line: int) -> None:
        n = columns["step"].shape[0]
        for name, values in columns.items():
            self.parts.setdefault(name, []).append(values)
        self.lines.append(np.full(n, line, dtype=np.int64))
        self.size += n

    def chunk(self, path: Path) -> TokenChunk:
        columns = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        lines = np.concatenate(self.lines)
        return build_chunk(columns, str(path), locate=lambda i: f"{path}:{int(lines[i])}")


def _array(record: dict, field: str, kind: type, where: str) -> np.ndarray | None:
    values = record.get(field)
    if values is None:
        return None
    if not isinstance(values, list):
        raise ReportInputError(f"{where}: field {field!r} must be a list, got {type(values).__name__}")
    if kind is bool:
        arr = np.array(values)
        if arr.dtype != np.bool_ and arr.size:
            raise ReportInputError(f"{where}: field {field!r} must hold booleans only (no null)")
        return arr.astype(bool)
    try:
        return np.array(values, dtype=kind)
    except (TypeError, ValueError):
        what = "integers (no null)" if kind is np.int64 else "numbers (or null)"
        raise ReportInputError(f"{where}: field {field!r} must hold {what}") from None


def _rl_channel_mask(record: dict, where: str, length: int) -> np.ndarray | None:
    """Per-token "losses" channels → bool `[n]`: the token is in the RL loss (None when the record has none)."""
    losses = record.get("losses")
    if losses is None:
        return None
    if not isinstance(losses, list) or len(losses) != length:
        raise ReportInputError(f"{where}: field 'losses' must be a list of one entry per token ({length})")
    out = np.zeros(length, dtype=bool)
    for i, entry in enumerate(losses):
        rl = entry.get("rl") if isinstance(entry, dict) else None
        out[i] = bool(isinstance(rl, dict) and rl.get("mask") is True)
    return out


def _record_columns(
    record: Any, where: str, sequence: int, counts: dict[str, int] | None = None
) -> dict[str, np.ndarray] | None:
    """One JSON record → columns of its response tokens (None when it has none)."""
    if not isinstance(record, dict):
        raise ReportInputError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
    counts = counts if counts is not None else {}
    if str(record.get("training_mode", "rl")).lower() == "sft":
        mask = record.get("loss_mask")
        counts["sft_records"] = counts.get("sft_records", 0) + 1
        counts["sft_tokens"] = counts.get("sft_tokens", 0) + (
            sum(1 for m in mask if m is True) if isinstance(mask, list) else 0
        )
        return None
    for field in ("schema_version", "step", *(f for f, (_, req) in PRIME_RL_FIELDS.items() if req)):
        if record.get(field) is None:
            raise ReportInputError(f"{where}: missing field {field!r}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ReportInputError(
            f"{where}: unsupported schema_version {record['schema_version']!r} (this reader knows {SCHEMA_VERSION})"
        )
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise ReportInputError(f"{where}: field 'step' must be an integer, got {step!r}")
    arrays = {}
    for field in _ARRAY_FIELDS:
        kind = bool if field == "loss_mask" else np.int64 if field in ("token_ids", "position_ids") else float
        arrays[field] = _array(record, field, kind, where)
    lengths = {field: a.shape[0] for field, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        ident = ", ".join(f"{k} {record[k]}" for k in ("step", "rank", "export_sequence_idx") if k in record)
        sizes = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise ReportInputError(f"{where} (record {ident}): per-token arrays of unequal length: {sizes}")
    mask = arrays["loss_mask"]
    rl = _rl_channel_mask(record, where, mask.shape[0])
    if rl is not None:
        counts["non_rl_tokens"] = counts.get("non_rl_tokens", 0) + int((mask & ~rl).sum())
        mask = mask & rl
    if arrays["rl_weights"] is not None:  # a weight of exactly 0 takes the token out of the RL loss
        mask = mask & ~(arrays["rl_weights"] == 0)
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return None
    columns = {
        "step": np.full(rows.size, step, dtype=np.int64),
        "sequence": np.full(rows.size, sequence, dtype=np.int64),
        "position": rows - rows[0],
        "response_mask": np.ones(rows.size, dtype=bool),
    }
    for field, (column, _) in PRIME_RL_FIELDS.items():
        if field != "loss_mask" and arrays[field] is not None:
            columns[column] = arrays[field][rows]
    return columns


def iter_prime_rl(
    path: Path,
    *,
    batch_tokens: int,
    first_sequence: int = 0,
    advance: Callable[[int], None] | None = None,
    counts: dict[str, int] | None = None,
) -> Iterator[TokenChunk]:
    """Stream one prime-rl ``rank_<r>.jsonl`` file as `TokenChunk`s; `advance(n_bytes)` reports progress.

    Sequence ids are `first_sequence`, `first_sequence` + 1, ... in line order (one per record). `counts`
    receives the skipped SFT records and tokens (module docstring).
    """
    batch = _Batch()
    sequence = first_sequence
    seen: dict[tuple, int] = {}
    for line_no, record in json_lines(path, advance):
        if isinstance(record, dict) and "micro_sequence_idx" in record:
            key = (record.get("step"), record.get("micro_step"), record.get("micro_sequence_idx"))
            if key in seen:
                raise ReportInputError(
                    f"{path}:{line_no}: record (step {key[0]}, micro_step {key[1]}, micro_sequence_idx {key[2]}) "
                    f"repeats line {seen[key]}; it would be counted twice"
                )
            seen[key] = line_no
        columns = _record_columns(record, f"{path}:{line_no}", sequence, counts)
        sequence += 1
        if columns is not None:
            batch.add(columns, line_no)
        if batch.size >= batch_tokens:
            yield batch.chunk(path)
            batch = _Batch()
    if batch.size:
        yield batch.chunk(path)
