"""The per-token table (docs/design.md §8): the one input of the report card, one row per token.

Required columns (every source provides them):
    step             int    training step the token was trained at
    sequence         int    id of the token's sequence, unique within a step
    position         int    position of the token in its response (0 = first response token; prompt rows, when
                            present, carry any value and are ignored)
    token_id         int    the sampled token a
    rollout_logprob  float  log μ(a), the rollout engine's log-prob (null = missing or non-finite)
    logprob          float  log π(a), the trainer's log-prob (null = missing or non-finite)
    advantage        float  Â of the token (null = missing or non-finite)
    response_mask    bool   True for response tokens the loss trains on; False for prompt and padding
Optional columns:
    old_logprob      float  log π_old(a), the trainer's recomputed log-prob before the update (recompute anchor)
    entropy          float  entropy of the trainer's π(·|s) in nats
    reward           float  the sequence's reward, repeated on its tokens
    is_weight        float  the framework's own importance weight applied to the token's loss (TRL's
                            importance_sampling_ratio: per token, or the sequence's weight repeated on its
                            tokens; 0 where its mask mode dropped the token, the cap where it truncated)
    framework_masked float  1 where the framework's own loss masked the token, 0 where it kept it (prime-rl's
                            is_masked; null = not recorded)
    group, env       int or str   prompt group / environment label
    tv_exact         float  exact TV(μ(·|s), π(·|s)) of the token's state (toys only: full distributions)
    kl_exact         float  exact KL(μ‖π) of the token's state (toys only)
    topk_ids               list[int]    the ids the engine reported at this state (−1 = unused slot)
    rollout_topk_logprobs  list[float]  the engine's log μ at those ids
    topk_logprobs          list[float]  the trainer's log π at those ids
Log-probs above 0 by more than float32 rounding (`LOGPROB_TOLERANCE`) are an error; rounding-level positives are
read as 0. Null and non-finite values are counted and left out of every statistic that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

__all__ = [
    "FLOAT_COLUMNS",
    "LIST_COLUMNS",
    "LOGPROB_COLUMNS",
    "LOGPROB_TOLERANCE",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "TOKEN_COLUMNS",
    "ReportInputError",
    "TokenChunk",
    "arrow_schema",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "step",
    "sequence",
    "position",
    "token_id",
    "rollout_logprob",
    "logprob",
    "advantage",
    "response_mask",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "old_logprob",
    "entropy",
    "reward",
    "is_weight",
    "framework_masked",
    "group",
    "env",
    "tv_exact",
    "kl_exact",
    "topk_ids",
    "rollout_topk_logprobs",
    "topk_logprobs",
)
TOKEN_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
INT_COLUMNS: tuple[str, ...] = ("step", "sequence", "position", "token_id")
FLOAT_COLUMNS: tuple[str, ...] = (
    "rollout_logprob",
    "logprob",
    "advantage",
    "old_logprob",
    "entropy",
    "reward",
    "is_weight",
    "framework_masked",
    "tv_exact",
    "kl_exact",
)
STRING_COLUMNS: tuple[str, ...] = ("group", "env")
LIST_COLUMNS: tuple[str, ...] = ("topk_ids", "rollout_topk_logprobs", "topk_logprobs")
LOGPROB_COLUMNS: tuple[str, ...] = (
    "rollout_logprob",
    "logprob",
    "old_logprob",
    "rollout_topk_logprobs",
    "topk_logprobs",
)
SOURCE_KEY = b"trustregion_lab.source"  # Parquet metadata key: the framework the table came from
# 32 ulps of 1 in float32: exporters write float32 log-probs, which may round above 0 by this much.
LOGPROB_TOLERANCE = 32.0 * float(np.finfo(np.float32).eps)

_ARROW_TYPES: dict[str, pa.DataType] = {
    **{name: pa.int64() for name in INT_COLUMNS},
    **{name: pa.float64() for name in FLOAT_COLUMNS},
    **{name: pa.string() for name in STRING_COLUMNS},
    "response_mask": pa.bool_(),
    "topk_ids": pa.list_(pa.int64()),
    "rollout_topk_logprobs": pa.list_(pa.float64()),
    "topk_logprobs": pa.list_(pa.float64()),
}


def arrow_schema(columns: tuple[str, ...] | list[str] = TOKEN_COLUMNS) -> pa.Schema:
    """The Arrow schema of the table restricted to `columns` (in the table's column order)."""
    unknown = [c for c in columns if c not in _ARROW_TYPES]
    if unknown:
        raise ValueError(
            f"unknown token-table column(s) {unknown}; expected names from {list(TOKEN_COLUMNS)}"
        )
    return pa.schema([(c, _ARROW_TYPES[c]) for c in TOKEN_COLUMNS if c in columns])


class ReportInputError(ValueError):
    """Bad input to the report: the message names the file (and line or record) and the field."""


@dataclass
class TokenChunk:
    """Response tokens of one file, as float64 / int64 numpy arrays `[n]` (top-K arrays `[n, K]`).

    Only rows with response_mask True are kept. NaN marks a null or non-finite value. Top-K arrays pad unused
    slots with id −1 and NaN log-probs. `source` names the file the rows came from (for error messages);
    `locate(i)` describes the chunk's row i there ("file:line" or "file row n").
    """

    source: str
    step: np.ndarray
    sequence: np.ndarray
    position: np.ndarray
    rollout_logprob: np.ndarray
    logprob: np.ndarray
    advantage: np.ndarray
    optional: dict[str, np.ndarray] = field(default_factory=dict)
    locate: Callable[[int], str] | None = field(default=None, repr=False)

    def where(self, i: int) -> str:
        """Where row `i` of the chunk came from, for error messages."""
        return self.locate(i) if self.locate is not None else f"{self.source} (response token {i})"

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def get(self, name: str) -> np.ndarray | None:
        """An optional column, or None when the source has none."""
        return self.optional.get(name)


def clamp_logprobs(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """Check log-probs (NaN allowed): > LOGPROB_TOLERANCE raises `ReportInputError`; rounding positives → 0."""
    with np.errstate(invalid="ignore"):
        bad = values > LOGPROB_TOLERANCE
    if bad.any():
        first = float(values[bad].flat[0])
        raise ReportInputError(
            f"{where}: {name} must be log-probabilities (<= 0), found {first:.6g}; "
            "export log-softmax values, not logits or probabilities"
        )
    return np.minimum(values, 0.0)  # NaN stays NaN


def pad_lists(lists: list, fill: float, dtype: type) -> np.ndarray:
    """Ragged Python lists (None allowed for a row or an element) → `[n, Kmax]` array padded with `fill`."""
    width = max((len(x) for x in lists if x is not None), default=0)
    out = np.full((len(lists), max(width, 1)), fill, dtype=dtype)
    for i, row in enumerate(lists):
        if row:
            out[i, : len(row)] = [fill if v is None else v for v in row]
    return out
