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
import pyarrow as pa
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


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``; an empty, damaged or unreadable file raises ReportInputError naming it."""
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise ReportInputError(
            f"{path}: not a readable Parquet file ({' '.join(str(err).split()) or type(err).__name__})"
        ) from None


def parquet_rows(path: Path) -> int:
    """Number of rows of a Parquet file, from its footer."""
    return open_parquet(path).metadata.num_rows


def table_source_name(path: Path) -> str | None:
    """The framework a Parquet table came from (its ``trustregion_lab.source`` metadata), if recorded."""
    metadata = open_parquet(path).schema_arrow.metadata or {}
    value = metadata.get(SOURCE_KEY)
    return value.decode() if value else None


def iter_parquet(
    path: Path, *, batch_rows: int, advance: Callable[[int], None] | None = None
) -> Iterator[TokenChunk]:
    """Stream a Parquet token table by record batches; `advance(n_rows)` reports progress."""
    handle = open_parquet(path)
    names = handle.schema_arrow.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ReportInputError(f"{path}: missing required column(s) {missing}")
    wanted = [c for c in TOKEN_COLUMNS if c in names and c not in ("group", "env", "token_id")]
    offset = 0
    batches = handle.iter_batches(batch_size=batch_rows, columns=wanted)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (OSError, ValueError, pa.ArrowException) as err:
            raise ReportInputError(f"{path}: damaged Parquet data ({' '.join(str(err).split())})") from None
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
        wrong = [
            i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int | float | None)
        ]
        if name == "response_mask":  # true / false, or exactly 0 / 1 (checked in build_chunk)
            wrong = [i for i in wrong if not isinstance(values[i], bool)]
        if wrong:
            raise ReportInputError(
                f"{path}:{lines[wrong[0]]}: column {name!r} must be a number (or null), "
                f"found {values[wrong[0]]!r}"
            )
        try:
            columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        except OverflowError:
            bad = next(i for i, v in enumerate(values) if isinstance(v, int) and abs(v) >= 2**63)
            raise ReportInputError(
                f"{path}:{lines[bad]}: column {name!r} is too large: {values[bad]}"
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


_MASK_WORDS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


def _csv_mask(column: pd.Series, path: Path, offset: int) -> np.ndarray:
    """A CSV response_mask (True/False, true/false or 0/1) as 1.0 / 0.0; anything else raises."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(np.float64, na_value=np.nan)
    text = column.astype(object).map(lambda v: v if isinstance(v, str) else "" if pd.isna(v) else str(v))
    values = text.str.strip().str.lower().map(_MASK_WORDS).to_numpy(np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raise ReportInputError(
            f"{path} row {offset + int(bad[0])}: column 'response_mask' must be true/false or 0/1, "
            f"found {column.iloc[int(bad[0])]!r}"
        )
    return values


def _csv_numbers(column: pd.Series, name: str, path: Path, offset: int) -> np.ndarray:
    """A numeric CSV column as float64 (empty cells → NaN); a cell of text raises, naming its row."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(np.float64, na_value=np.nan)
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(numbers) & column.notna().to_numpy())
    if pd.api.types.is_bool_dtype(column) or bad.size:
        i = int(bad[0]) if bad.size else 0
        raise ReportInputError(
            f"{path} row {offset + i}: column {name!r} must be a number (or empty), found {column.iloc[i]!r}"
        )
    return numbers


def iter_csv(
    path: Path, *, batch_rows: int, advance: Callable[[int], None] | None = None
) -> Iterator[TokenChunk]:
    """Stream a CSV token table in chunks of `batch_rows` rows; `advance(n_rows)` reports progress.

    Rows are numbered from 0 (the first line after the header) in error messages.
    """
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
                    columns[name] = _csv_mask(frame[name], path, offset)
                else:
                    columns[name] = _csv_numbers(frame[name], name, path, offset)
            for name in ("step", "sequence", "position"):
                if np.isnan(columns[name]).any():
                    bad = offset + int(np.flatnonzero(np.isnan(columns[name]))[0])
                    raise ReportInputError(f"{path} row {bad}: column {name!r} must be a number, not empty")
            start = offset
            yield build_chunk(columns, str(path), locate=lambda i, s=start: f"{path} row {s + i}")
            offset += len(frame)
            if advance is not None:
                advance(len(frame))
    except pd.errors.EmptyDataError:
        raise ReportInputError(f"{path}: empty CSV file (expected a header line and token rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path}: not a readable CSV token table ({err})") from None
