"""Write and read the per-token table (schema in `trustregion_lab.report.schema`).

A trainer writes one Parquet file per step into a folder, ``DIR/step_<n>.parquet`` (`token_table_path`), with
`write_token_table(frame, path)`: the frame is a pandas DataFrame or a mapping of column name → array `[n]`
(`[n, K]` for the top-K list columns, −1 marking unused id slots). The file is written to a temporary name and
renamed, so a reader never sees half a file.

`build_chunk` turns the columns of one batch of rows into a `TokenChunk` of response tokens: every reader uses
it, so validation (missing columns, nulls in integer columns, log-probs above 0) is one definition.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trustregion_lab._io import atomic_write_with
from trustregion_lab.report.schema import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    LIST_COLUMNS,
    LOGPROB_COLUMNS,
    LOGPROB_TOLERANCE,
    REQUIRED_COLUMNS,
    SOURCE_KEY,
    STRING_COLUMNS,
    TOKEN_COLUMNS,
    ReportInputError,
    TokenChunk,
    arrow_schema,
    clamp_logprobs,
    pad_lists,
)

__all__ = [
    "build_chunk",
    "check_export_folder",
    "json_lines",
    "read_token_table",
    "to_arrow",
    "token_table_path",
    "write_token_table",
]

ROW_GROUP_ROWS = 1 << 18  # rows per Parquet row group: the unit a reader streams
TOPK_MASS_TOLERANCE = 1e-2  # reported top-K probabilities may sum above 1 by low-precision rounding
# the optional float columns a chunk carries when present (the required ones it always carries)
_CHUNK_OPTIONAL = tuple(c for c in FLOAT_COLUMNS if c not in REQUIRED_COLUMNS)


def json_lines(path: Path, advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL file; `advance(n_bytes)` reports progress.

    A line that is not JSON raises ReportInputError naming ``path:line``.
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if advance is not None:
                advance(len(raw))
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw)
            except ValueError as err:
                raise ReportInputError(
                    f"{path}:{line_no}: not valid JSON ({err.args[0].split(':')[0]})"
                ) from None


def token_table_path(folder: str | os.PathLike, step: int) -> Path:
    """Where a trainer writes the table of `step`: ``folder/step_<step, 6 digits>.parquet``."""
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise TypeError(f"step must be an int >= 0, got {step!r}")
    return Path(folder) / f"step_{int(step):06d}.parquet"


def check_export_folder(folder: str | os.PathLike, *, first_step: int = 1, resuming: bool = False) -> Path:
    """Check a folder a trainer is about to export per-token tables into → its path.

    The folder must be new, empty, or hold only this run's own tables of steps before `first_step` (a run
    resumed from a checkpoint at step `first_step` − 1). With ``resuming=True`` tables of later steps are
    accepted too: a run exports a step's table before its checkpoint is written, so an interrupted run leaves
    the tables of steps its checkpoint does not hold; the resumed run writes them again (the caller removes
    them first). Anything else — another run's tables, tables of the steps a new run will write, other files —
    raises ValueError naming the folder and a file, so two runs are never mixed in one export (the report would
    count both).
    """
    folder = Path(folder)
    if isinstance(first_step, bool) or not isinstance(first_step, int | np.integer) or first_step < 0:
        raise TypeError(f"first_step must be an int >= 0, got {first_step!r}")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise ValueError(f"--export-tokens {folder} is a file, expected a folder")
    for path in sorted(folder.iterdir()):
        name = path.name
        stem = name[len("step_") : -len(".parquet")] if name.startswith("step_") else ""
        ours = name.endswith(".parquet") and stem.isdigit() and (resuming or int(stem) < first_step)
        if not ours and not name.startswith("."):
            what = "a token table of another run (or of a step this run will write)" if stem else "a file"
            raise ValueError(
                f"--export-tokens {folder} already holds {what}: {name}; the report would mix two runs: "
                "export into a new or empty folder"
            )
    return folder


def _list_array(values: Any, name: str, n: int) -> pa.Array:
    """A list column from a `[n, K]` array or a sequence of per-row lists."""
    arrow_type = arrow_schema([name]).field(name).type
    arr = np.asarray(values) if not isinstance(values, list | pd.Series) else None
    if arr is not None and arr.ndim == 2 and arr.dtype != object:
        if arr.shape[0] != n:
            raise ValueError(f"column {name!r} has {arr.shape[0]} rows, expected {n}")
        flat = arr.reshape(-1).astype(np.int64 if name == "topk_ids" else np.float64)
        offsets = np.arange(0, flat.shape[0] + 1, arr.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=arrow_type.value_type))
    rows = list(values)
    if (
        rows
        and all(isinstance(r, np.ndarray) and r.ndim == 1 for r in rows)
        and len({r.shape for r in rows}) == 1
    ):
        return _list_array(np.stack(rows), name, n)  # equal-length rows (e.g. a converter's output): one copy
    if len(rows) != n:
        raise ValueError(f"column {name!r} has {len(rows)} rows, expected {n}")
    return pa.array([None if r is None else list(r) for r in rows], type=arrow_type)


def to_arrow(frame: pd.DataFrame | Mapping[str, Any]) -> pa.Table:
    """Validate a token table (DataFrame or mapping column → array) and convert it to Arrow with the schema types.

    Raises ValueError naming the column: a missing required column, an unknown column, unequal lengths, nulls in
    an integer or mask column, or log-probs above 0 (beyond float32 rounding).
    """
    columns = dict(frame.items()) if isinstance(frame, pd.DataFrame) else dict(frame)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"token table is missing required column(s) {missing}; required: {list(REQUIRED_COLUMNS)}"
        )
    unknown = [c for c in columns if c not in TOKEN_COLUMNS]
    if unknown:
        raise ValueError(f"token table has unknown column(s) {unknown}; allowed: {list(TOKEN_COLUMNS)}")
    n = len(np.asarray(columns["step"]))
    arrays = {}
    for name in (c for c in TOKEN_COLUMNS if c in columns):
        values = columns[name]
        if name in LIST_COLUMNS:
            arrays[name] = _list_array(values, name, n)
            continue
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"column {name!r} must have shape [{n}] like 'step', got {arr.shape}")
        if name in INT_COLUMNS or name == "response_mask":
            if arr.dtype == object or np.issubdtype(arr.dtype, np.floating):
                if pd.isna(arr).any() if arr.dtype == object else np.isnan(arr).any():
                    raise ValueError(f"column {name!r} must not hold nulls")
            if name == "response_mask" and not np.isin(arr, (0, 1)).all():
                raise ValueError("column 'response_mask' must hold booleans (or 0/1)")
            arr = arr.astype(bool if name == "response_mask" else np.int64)
        elif name in FLOAT_COLUMNS:
            arr = arr.astype(np.float64)
        elif name in STRING_COLUMNS and not np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(str)  # group / env: int64 labels stay int64, anything else becomes a string
        arrays[name] = pa.array(arr)
    schema = arrow_schema(list(arrays))
    for name in (c for c in STRING_COLUMNS if c in arrays and pa.types.is_integer(arrays[c].type)):
        schema = schema.set(schema.get_field_index(name), pa.field(name, pa.int64()))
    table = pa.table(arrays).cast(schema)
    present = [c for c in LIST_COLUMNS if c in arrays]
    if present:
        lengths = [pa.compute.list_value_length(table.column(c)).fill_null(0).to_numpy() for c in present]
        bad = np.flatnonzero(np.any([length != lengths[0] for length in lengths], axis=0))
        if bad.size:
            sizes = ", ".join(f"{c} {int(length[bad[0]])}" for c, length in zip(present, lengths))
            raise ValueError(f"row {int(bad[0])}: top-K list columns of unequal length: {sizes}")
    for name in (c for c in LOGPROB_COLUMNS if c in arrays):
        col = table.column(name).combine_chunks()
        values = (col.flatten() if name in LIST_COLUMNS else col).to_numpy(zero_copy_only=False)
        try:
            clamp_logprobs(np.asarray(values, np.float64), name, "token table")
        except ReportInputError as err:
            raise ValueError(str(err)) from None
    return table


def write_token_table(
    frame: pd.DataFrame | Mapping[str, Any], path: str | os.PathLike, *, source: str | None = None
) -> Path:
    """Write a per-token table to Parquet at `path` atomically (see `to_arrow` for the checks) → the path.

    source: the framework the tokens came from ("trustregion_lab", "verl", "trl", ...; default the frame's
    ``attrs["source"]`` when set), stored in the file's metadata so the report can name that framework's metrics.
    Typical trainer use, once per step: ``write_token_table(frame, token_table_path(export_dir, step),
    source="trustregion_lab")``.
    """
    table = to_arrow(frame)
    if source is None and isinstance(frame, pd.DataFrame):
        source = frame.attrs.get("source")
    if source is not None:
        if not isinstance(source, str) or not source:
            raise TypeError(f"source must be a non-empty str, got {source!r}")
        table = table.replace_schema_metadata({SOURCE_KEY: source.encode()})
    path = Path(path)
    atomic_write_with(path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS))
    return path


def read_token_table(path: str | os.PathLike) -> pd.DataFrame:
    """A whole Parquet token table as a DataFrame (for small files; the report itself streams)."""
    return pq.read_table(path).to_pandas()


# ------------------------------------------------------------------------------------------- chunk building


def _float(values: Any, name: str = "value", source: str = "") -> np.ndarray:
    """Float64 copy with NaN for null and non-finite values; text or other non-numbers raise ReportInputError."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        kind = values.type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)):
            raise ReportInputError(f"{source}: column {name!r} must be numbers, got Arrow type {kind}")
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu" and not (arr.dtype == object and arr.size == 0):
        if arr.dtype == object and all(v is None or isinstance(v, int | float) for v in arr.tolist()):
            arr = np.array([np.nan if v is None else v for v in arr.tolist()], dtype=np.float64)
        else:
            raise ReportInputError(
                f"{source}: column {name!r} must be numbers, got values of type {arr.dtype}"
            )
    arr = np.array(arr, dtype=np.float64)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _padded(values: Any, fill: float, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column (Arrow list array, ragged Python lists, or `[n, K]` array) → (`[n, Kmax]` padded with
    `fill`, per-row list lengths `[n]`)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(dtype), np.full(values.shape[0], values.shape[1])
    if isinstance(values, list):
        lengths = np.array([0 if row is None else len(row) for row in values], dtype=np.int64)
        return pad_lists(values, fill, dtype), lengths
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lengths = pa.compute.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    flat = values.flatten().to_numpy(zero_copy_only=False)
    n, width = len(values), int(lengths.max(initial=0))
    out = np.full((n, max(width, 1)), fill, dtype=dtype)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    cols = np.arange(flat.shape[0]) - np.repeat(starts, lengths)
    flat = np.asarray(flat, dtype=np.float64)
    if dtype is np.int64:
        flat = np.where(np.isnan(flat), -1, flat)
    out[rows, cols] = flat
    return out, lengths


def _topk_columns(
    columns: Mapping[str, Any], rows: np.ndarray, locate: Callable[[int], str]
) -> dict[str, np.ndarray]:
    """The three top-K list columns of the response rows, padded to one width; unequal list lengths raise."""
    padded = {}
    lengths = []
    for name in LIST_COLUMNS:
        fill, dtype = (-1, np.int64) if name == "topk_ids" else (np.nan, np.float64)
        arr, length = _padded(columns[name], fill, dtype)
        padded[name], lengths = arr[rows], [*lengths, length[rows]]
    bad = np.flatnonzero((lengths[0] != lengths[1]) | (lengths[0] != lengths[2]))
    if bad.size:
        i = bad[0]
        sizes = ", ".join(f"{name} {int(length[i])}" for name, length in zip(LIST_COLUMNS, lengths))
        raise ReportInputError(f"{locate(int(rows[i]))}: top-K lists of unequal length: {sizes}")
    ids = padded["topk_ids"]
    ordered = np.sort(ids, axis=1)
    repeated = np.flatnonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))
    if repeated.size:
        raise ReportInputError(f"{locate(int(rows[repeated[0]]))}: topk_ids repeats an id within the row")
    for name in ("rollout_topk_logprobs", "topk_logprobs"):
        used = (ids >= 0) & np.isfinite(padded[name])
        with np.errstate(over="ignore"):
            total = np.where(used, np.exp(np.minimum(padded[name], 0.0)), 0.0).sum(axis=1)
        over = np.flatnonzero(total > 1.0 + TOPK_MASS_TOLERANCE)
        if over.size:
            raise ReportInputError(
                f"{locate(int(rows[over[0]]))}: {name} are not log-probabilities of distinct tokens "
                f"(their probabilities sum to {total[over[0]]:.4g} > 1)"
            )
    width = max(a.shape[1] for a in padded.values())
    for name, arr in padded.items():
        if arr.shape[1] < width:
            fill = -1 if name == "topk_ids" else np.nan
            padded[name] = np.concatenate(
                [arr, np.full((arr.shape[0], width - arr.shape[1]), fill, arr.dtype)], 1
            )
    return padded


_INT64_LIMIT = float(2**63)  # floats at or beyond ±2^63 do not fit int64


def _mask_values(values: np.ndarray, locate: Callable[[int], str]) -> np.ndarray:
    """response_mask as bool `[n]`: booleans, or numbers that are exactly 0 or 1 (anything else raises)."""
    if values.dtype == np.bool_:
        return values
    if values.dtype.kind in "iuf":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isin(values, (0, 1)))
        if bad.size:
            raise ReportInputError(
                f"{locate(int(bad[0]))}: column 'response_mask' must be true/false (or 0/1), "
                f"found {values[bad[0]]!r}"
            )
        return values.astype(bool)
    raise ReportInputError(
        f"{locate(0)}: column 'response_mask' must be booleans (or 0/1), got values of type {values.dtype}"
    )


def _integer_values(
    name: str, values: np.ndarray, rows: np.ndarray, locate: Callable[[int], str], minimum: int | None
) -> np.ndarray:
    """An integer column at the response rows as int64: floats must be whole and fit int64; `minimum` checked."""
    picked = values[rows]
    if picked.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(
                ~np.isfinite(picked) | (picked != np.floor(picked)) | (np.abs(picked) >= _INT64_LIMIT)
            )
        if bad.size:
            raise ReportInputError(
                f"{locate(int(rows[bad[0]]))}: column {name!r} must hold integers, found {picked[bad[0]]!r}"
            )
        picked = picked.astype(np.int64)
    elif picked.dtype.kind == "u":
        if picked.size and picked.max() >= 2**63:
            i = int(np.argmax(picked))
            raise ReportInputError(f"{locate(int(rows[i]))}: column {name!r} is too large: {picked[i]}")
        picked = picked.astype(np.int64)
    elif picked.dtype.kind not in "i":
        raise ReportInputError(
            f"{locate(int(rows[0]) if rows.size else 0)}: column {name!r} must hold integers, "
            f"got values of type {picked.dtype}"
        )
    picked = picked.astype(np.int64, copy=False)
    if minimum is not None:
        low = np.flatnonzero(picked < minimum)
        if low.size:
            raise ReportInputError(
                f"{locate(int(rows[low[0]]))}: column {name!r} must be >= {minimum}, found {picked[low[0]]}"
            )
    return picked


def build_chunk(
    columns: Mapping[str, Any], source: str, locate: Callable[[int], str] | None = None
) -> TokenChunk:
    """Columns of one batch of rows (numpy arrays or Arrow arrays) → `TokenChunk` of its response tokens.

    `locate(i)` describes row i of the batch for error messages (e.g. "file:line 12"); default "source row i".
    Checked here, for every reader: response_mask holds booleans or exactly 0 / 1 (every row); on response
    rows step, sequence and position are whole numbers that fit int64, step and position >= 0.
    """
    locate = locate or (lambda i: f"{source} row {i}")
    for name in REQUIRED_COLUMNS:
        if name not in columns and name != "token_id":  # readers check token_id; the analysis never reads it
            raise ReportInputError(f"{source}: missing required column {name!r}")
    ints = {}
    for name in ("step", "sequence", "position", "response_mask"):
        values = columns[name]
        if isinstance(values, pa.Array | pa.ChunkedArray):
            if values.null_count:
                first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                raise ReportInputError(f"{locate(first)}: column {name!r} must not be null")
            values = values.to_numpy(zero_copy_only=False)
        ints[name] = np.asarray(values)
    keep = _mask_values(ints["response_mask"], locate)
    rows = np.flatnonzero(keep)
    checked = {
        name: _integer_values(name, ints[name], rows, locate, minimum)
        for name, minimum in (("step", 0), ("sequence", None), ("position", 0))
    }
    optional: dict[str, np.ndarray] = {}
    for name in _CHUNK_OPTIONAL:
        if name in columns and columns[name] is not None:
            optional[name] = _float(columns[name], name, source)[rows]
    if all(c in columns and columns[c] is not None for c in LIST_COLUMNS):
        optional |= _topk_columns(columns, rows, locate)
    chunk = TokenChunk(
        source=source,
        step=checked["step"],
        sequence=checked["sequence"],
        position=checked["position"],
        rollout_logprob=_float(columns["rollout_logprob"], "rollout_logprob", source)[rows],
        logprob=_float(columns["logprob"], "logprob", source)[rows],
        advantage=_float(columns["advantage"], "advantage", source)[rows],
        optional=optional,
        locate=lambda i: locate(int(rows[i])),
    )
    for name in LOGPROB_COLUMNS:
        values = getattr(chunk, name, None) if name in ("rollout_logprob", "logprob") else chunk.get(name)
        if values is None or values.size == 0:
            continue
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero((values > LOGPROB_TOLERANCE).reshape(values.shape[0], -1).any(axis=1))
        where = locate(int(rows[bad[0]])) if bad.size else source
        clamped = clamp_logprobs(values, name, where)
        if name in ("rollout_logprob", "logprob"):
            setattr(chunk, name, clamped)
        else:
            optional[name] = clamped
    return chunk
