"""The adapters: how the conformance kit calls a user's function the way its framework would ("plain"
keywords or verl's positional signature; the module docstring of `trustregion_lab.conformance.runner` says what
each passes), passing only the arguments the function takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from trustregion_lab.conformance.data import TOPK_FIELDS


def _signature(fn: Callable) -> tuple[dict[str, inspect.Parameter], bool] | None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return None
    return dict(params), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def accepted(fn: Callable, names: list[str]) -> list[str]:
    """The names of `names` that `fn` takes (all of them when it takes **kwargs or has no signature)."""
    sig = _signature(fn)
    if sig is None or sig[1]:
        return names
    return [n for n in names if n in sig[0]]


def required(fn: Callable, name: str) -> bool:
    """Whether `fn` requires the parameter `name` (no default, not *args/**kwargs)."""
    sig = _signature(fn)
    if sig is None or name not in sig[0]:
        return False
    return sig[0][name].default is inspect.Parameter.empty and sig[0][name].kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    )


def convert(arrays: dict[str, Any], array: str, grad: str | None = None) -> dict[str, Any]:
    if array == "numpy":
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    import torch

    out = {k: torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    if grad is not None:
        out[grad] = out[grad].requires_grad_(True)
    return out


def _plain_arguments(
    fn: Callable, x: dict[str, np.ndarray], anchor: str, low: float, high: float, params: dict
) -> dict | None:
    available = {
        "logprob": x["logprob"],
        "rollout_logprob": x["rollout_logprob"],
        "advantages": x["advantages"],
        "low": low,
        "high": high,
        "response_mask": x["response_mask"],
        **{k: x[k] for k in TOPK_FIELDS},
        **params,
    }
    taken = accepted(fn, [*available, "old_logprob"])
    if anchor == "recompute":
        if "old_logprob" not in taken:
            return None
        available["old_logprob"] = x["old_logprob"]
    elif required(fn, "old_logprob"):
        available["old_logprob"] = x["rollout_logprob"]  # π_old = μ: no recompute
    return {k: v for k, v in available.items() if k in taken}


_VERL_POSITIONAL = ("old_log_prob", "log_prob", "advantages", "response_mask")


def _verl_arguments(
    fn: Callable, x: dict[str, np.ndarray], anchor: str, low: float, high: float, params: dict
) -> dict:
    anchor_lp = x["old_logprob"] if anchor == "recompute" else x["rollout_logprob"]
    optional = {
        "low": low,
        "high": high,
        "clip_ratio_low": low,
        "clip_ratio_high": high,
        "cliprange_low": low,
        "cliprange_high": high,
        **params,
    }
    if anchor != "recompute" or required(fn, "rollout_log_probs"):
        optional["rollout_log_probs"] = x["rollout_logprob"]
    keywords = {k: v for k, v in optional.items() if k in accepted(fn, list(optional))}
    return {
        "old_log_prob": anchor_lp,
        "log_prob": x["logprob"],
        "advantages": x["advantages"],
        "response_mask": x["response_mask"],
        **keywords,
    }


def _missing(fn: Callable, adapter: str, kwargs: dict) -> list[str]:
    """Parameters `fn` requires that the adapter does not pass."""
    sig = _signature(fn)
    if sig is None:
        return []
    names = list(sig[0])[len(_VERL_POSITIONAL) :] if adapter == "verl" else list(sig[0])
    return [
        n for n in names if required(fn, n) and n not in kwargs and sig[0][n].kind.name != "POSITIONAL_ONLY"
    ]


def call(fn: Callable, adapter: str, kwargs: dict, array: str, grad: str | None = None) -> tuple[Any, Any]:
    """(fn's result, the tensor that carries the gradient or None)."""
    missing = _missing(fn, adapter, kwargs)
    if missing:
        raise TypeError(
            f"fn requires {', '.join(missing)}, which the {adapter!r} adapter does not pass here (it passes "
            f"{', '.join(kwargs)}); give a rule parameter with params={{...}} or wrap fn"
        )
    converted = convert(kwargs, array, grad)
    tracked = converted[grad] if grad else None
    if adapter == "plain":
        return fn(**converted), tracked
    positional = [converted.pop(k) for k in _VERL_POSITIONAL]
    return fn(*positional, **converted), tracked


def arguments(
    fn: Callable, adapter: str, x: dict[str, np.ndarray], anchor: str, low: float, high: float, params: dict
) -> dict | None:
    """The keyword arguments `adapter` passes `fn` for one expectation (None: the plain adapter skips it)."""
    build = _plain_arguments if adapter == "plain" else _verl_arguments
    return build(fn, x, anchor, low, high, params)
