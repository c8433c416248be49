"""Streaming readers of the per-token table: Parquet (by row groups), JSONL (one token per line), CSV.

Each yields `TokenChunk`s of at most about `batch_rows` rows, never the whole file. JSONL lines are objects with
the table's column names; CSV files hold the scalar columns, and top-K list columns as JSON arrays ("[3, 17]").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from trustregion_lab.report.schema import (
    LIST_COLUMNS,
    REQUIRED_COLUMNS,
    SOURCE_KEY,
    TOKEN_COLUMNS,
    ReportInputError,
    TokenChunk,
)
from trustregion_lab.report.table import build_chunk, json_lines

__all__ = ["iter_csv", "iter_jsonl", "iter_parquet", "parquet_rows", "table_source_name"]


def parquet_rows(path: Path) -> int:
    """Number of rows of a Parquet file, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def table_source_name(path: Path) -> str | None:
    """The framework a Parquet table came from (its ``trustregion_lab.source`` metadata), if recorded."""
    metadata = pq.ParquetFile(path).schema_arrow.metadata or {}
    value = metadata.get(SOURCE_KEY)
    return value.decode() if value else None


def iter_parquet(
    path: Path, *, batch_rows: int, advance: Callable[[int], None] | None = None
) -> Iterator[TokenChunk]:
    """Stream a Parquet token table by record batches; `advance(n_rows)` reports progress."""
    try:
        handle = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise ReportInputError(f"{path}: not a readable Parquet file ({err})") from None
    names = handle.schema_arrow.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ReportInputError(f"{path}: missing required column(s) {missing}")
    wanted = [c for c in TOKEN_COLUMNS if c in names and c not in ("group", "env", "token_id")]
    offset = 0
    for batch in handle.iter_batches(batch_size=batch_rows, columns=wanted):
        columns = {name: batch.column(name) for name in wanted}
        start = offset
        yield build_chunk(columns, str(path), locate=lambda i, s=start: f"{path} row {s + i}")
        offset += batch.num_rows
        if advance is not None:
            advance(batch.num_rows)


def _columns_from_rows(rows: list[dict[str, Any]], lines: list[int], path: Path) -> dict[str, Any]:
    present = {c for row in rows for c in row}
    columns: dict[str, Any] = {}
    for name in (c for c in TOKEN_COLUMNS if c in present and c not in ("group", "env", "token_id")):
        values = [row.get(name) for row in rows]
        if name in LIST_COLUMNS:
            columns[name] = values
            continue
        try:
            columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(values) if not isinstance(v, int | float | type(None)))
            raise ReportInputError(
                f"{path}:{lines[bad]}: column {name!r} must be a number (or null)"
            ) from None
    for name in ("step", "sequence", "position", "response_mask"):
        values = columns[name]
        if np.isnan(values).any():
            bad = int(np.flatnonzero(np.isnan(values))[0])
            raise ReportInputError(f"{path}:{lines[bad]}: column {name!r} must not be null")
    return columns


def iter_jsonl(
    path: Path, *, batch_rows: int, advance: Callable[[int], None] | None = None
) -> Iterator[TokenChunk]:
    """Stream a JSONL token table (one object per token), line by line; `advance(n_bytes)` reports progress."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []

    def flush() -> TokenChunk:
        columns = _columns_from_rows(rows, lines, path)
        line_of = np.asarray(lines)
        return build_chunk(columns, str(path), locate=lambda i: f"{path}:{int(line_of[i])}")

    for line_no, row in json_lines(path, advance):
        if not isinstance(row, dict):
            raise ReportInputError(f"{path}:{line_no}: each line must be a JSON object")
        for name in REQUIRED_COLUMNS:
            if name not in row:
                raise ReportInputError(f"{path}:{line_no}: missing field {name!r}")
        rows.append(row)
        lines.append(line_no)
        if len(rows) >= batch_rows:
            yield flush()
            rows, lines = [], []
    if rows:
        yield flush()


def _csv_mask(column: pd.Series) -> np.ndarray:
    """A CSV response_mask (True/False, true/false or 0/1) as 1.0 / 0.0, NaN for anything else."""
    if column.dtype == object:
        words = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
        return column.astype(str).str.strip().str.lower().map(words).to_numpy(np.float64)
    values = column.to_numpy(np.float64)
    return np.where(np.isin(values, (0.0, 1.0)), values, np.nan)


def iter_csv(
    path: Path, *, batch_rows: int, advance: Callable[[int], None] | None = None
) -> Iterator[TokenChunk]:
    """Stream a CSV token table in chunks of `batch_rows` rows; `advance(n_rows)` reports progress."""
    offset = 0
    try:
        reader = pd.read_csv(path, chunksize=batch_rows)
        for frame in reader:
            missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
            if missing:
                raise ReportInputError(f"{path}: missing required column(s) {missing}")
            columns: dict[str, Any] = {}
            for name in (c for c in TOKEN_COLUMNS if c in frame.columns and c not in ("group", "env")):
                if name in LIST_COLUMNS:
                    columns[name] = [json.loads(v) if isinstance(v, str) else None for v in frame[name]]
                elif name == "response_mask":
                    columns[name] = _csv_mask(frame[name])
                else:
                    columns[name] = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
            for name in ("step", "sequence", "position", "response_mask"):
                if np.isnan(columns[name]).any():
                    bad = offset + int(np.flatnonzero(np.isnan(columns[name]))[0])
                    raise ReportInputError(f"{path} row {bad}: column {name!r} must be a number, not null")
                start = offset
            yield build_chunk(columns, str(path), locate=lambda i, s=start: f"{path} row {s + i}")
            offset += len(frame)
            if advance is not None:
                advance(len(frame))
    except (pd.errors.ParserError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path}: not a readable CSV token table ({err})") from None
