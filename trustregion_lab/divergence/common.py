"""Helpers shared by the divergence modules: log-space arithmetic, mass floors and argument handling.

- 1 − p is computed in log space with log1mexp(x) = log(1 − eˣ) (Mächler 2012), never as 1 − exp(x).
- |eᵃ − eᵇ| is computed as e^max(a,b) · (−expm1(−|a − b|)): no cancellation when π ≈ μ (`abs_exp_diff`).
- `LOG_MASS_FLOOR` = log of the smallest normal float64 (≈ −708.4), the lowest floor a log-mass is clamped to;
  `resolution_log_floor(dtype)` = log(eps/2) of a dtype, the floor `binary_kl` puts under its rest buckets.
- `names` (exact and Top-K, `token_logprobs`): a mapping from a function's argument names to the names its error
  messages should use (`argument_names`); `chunk_elements`: an int ≥ 1, elements per chunk of rows, default
  `DEFAULT_CHUNK_ELEMENTS` = 2**18 (`chunk_size`).
- Single-sampled-token inputs (Binary and single-sample estimates) are read by `sampled_logprobs`: the two
  log-probs `[...]`, same shape, detached, validated by `check_logprobs` (values above 0 by rounding, up to 32
  ulps of 1 in their dtype, count as 0; larger positive values, NaN and ±inf are rejected) and widened to float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from trustregion_lab._arrays import ArrayLike, Converter, check_logprobs, check_same_shape
from trustregion_lab._validate import check_int

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "LOG_MASS_FLOOR",
    "abs_exp_diff",
    "argument_names",
    "chunk_size",
    "log1mexp",
    "resolution_log_floor",
    "sampled_logprobs",
]

LOG_MASS_FLOOR = math.log(torch.finfo(torch.float64).tiny)  # ≈ −708.4
DEFAULT_CHUNK_ELEMENTS = 1 << 18
_LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").

    x > −ln 2: log(−expm1(x));  x ≤ −ln 2: log1p(−exp(x)).  log1mexp(0) = −inf.  Input and output `[...]`.
    """
    return torch.where(x > -_LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def abs_exp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|exp(a) − exp(b)| without cancellation; 0 where both are −inf. Inputs and output `[...]`."""
    hi = torch.maximum(a, b)
    gap = torch.minimum(a, b) - hi  # ≤ 0, or NaN when both are −inf
    out = torch.exp(hi) * torch.expm1(gap).abs()
    return torch.where(torch.isneginf(hi), torch.zeros_like(out), out)


def resolution_log_floor(dtype: torch.dtype) -> float:
    """log(eps/2) of the dtype a log-probability arrived in: the smallest rest mass 1 − p it can resolve.

    A log-softmax computed in float32 returns exactly 0 once 1 − p < ~6e-8, so a rest bucket read off such a
    log-prob is only known to lie in [0, eps/2]; flooring it there (≈ −16.6 in float32, −36.7 in float64) keeps
    a rounded log π(a) = 0 from turning into a huge Binary KL.
    """
    return max(LOG_MASS_FLOOR, math.log(torch.finfo(dtype).eps / 2))


def argument_names(names: Mapping[str, str] | None, arguments: tuple[str, ...]) -> dict[str, str]:
    """The name each argument goes by in error messages: its own, or the caller's from `names`."""
    if names is None:
        return {a: a for a in arguments}
    if not isinstance(names, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise TypeError(
            "names must be a mapping from argument names to the names errors should use, "
            f"e.g. {{{arguments[0]!r}: 'old_logits'}}, got {names!r}"
        )
    unknown = sorted(set(names) - set(arguments))
    if unknown:
        raise ValueError(
            f"names has keys {unknown} that are not arguments here; expected some of {list(arguments)}"
        )
    return {a: names.get(a, a) for a in arguments}


def chunk_size(chunk_elements: Any) -> int:
    """`chunk_elements` checked as an int ≥ 1; None gives `DEFAULT_CHUNK_ELEMENTS`."""
    if chunk_elements is None:
        return DEFAULT_CHUNK_ELEMENTS
    return check_int("chunk_elements", chunk_elements, minimum=1)


def sampled_logprobs(
    rollout_logprob: ArrayLike, logprob: ArrayLike, dtype: torch.dtype | None
) -> tuple[Converter, torch.Tensor, torch.Tensor]:
    """The sampled token's log μ(a) and log π(a) `[...]`, validated, as float64 tensors, and their Converter."""
    conv = Converter(dtype)
    lmu = conv.tensor(rollout_logprob, "rollout_logprob").detach()
    lpi = conv.tensor(logprob, "logprob").detach()
    lmu, lpi = conv.place(lmu), conv.place(lpi)
    check_same_shape(lmu, "rollout_logprob", lpi, "logprob")
    lmu = check_logprobs(lmu, "rollout_logprob").double()
    lpi = check_logprobs(lpi, "logprob").double()
    return conv, lmu, lpi
