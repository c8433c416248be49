"""Checks of plain arguments (config fields, constructor keywords, thresholds), one definition each.

Every check raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a value out of range, and
its message names the argument and the expected form. Each returns the value as a plain Python number or str.
Booleans are never accepted as numbers. Tensor checks (shapes, finiteness, log-probabilities) live in
``trustregion_lab._arrays``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_choice", "check_int", "check_probability", "check_real", "check_threshold"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either bound optional)."""
    bounds = _describe_bounds(minimum, maximum)
    if _is_bool(value) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int{bounds}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{bounds}, got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
    allow_inf: bool = False,
) -> float:
    """``value`` as a finite float (inf allowed with ``allow_inf``); ``positive``: > 0; ``minimum``: ≥ it."""
    if _is_bool(value) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return v


def check_threshold(name: str, value: Any) -> float:
    """A mask threshold: a real number ≥ 0 (inf: that side never drops)."""
    return check_real(name, value, minimum=0.0, allow_inf=True)


def check_probability(name: str, value: Any) -> float:
    """A probability in [0, 1]."""
    return check_real(name, value, minimum=0.0, maximum=1.0)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` must be one of the strings ``choices``."""
    options = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {options}, got {value!r} ({type(value).__name__})")
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not _is_bool(value):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def _describe_bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
