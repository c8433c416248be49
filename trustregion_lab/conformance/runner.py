"""Run a user's mask or divergence function against the reference cases; return a tidy table of disagreements.

A case holds `[B, T]` arrays (sampled-token log-probs, advantages, response mask; `[B, T, K]` top-K ids and
log-probs; `[B, T, V]` logits) and the expected values. Adapters call the user's function the way its framework
would:
- ``"plain"``: keywords, named as in `trustregion_lab.masks.trust_region_mask` / `trustregion_lab.divergence`:
  logprob, rollout_logprob, advantages, low, high, response_mask, old_logprob, topk_ids, rollout_topk_logprobs,
  topk_logprobs (π at the reported ids), logits, rollout_logits. Only the keywords the function accepts are
  passed (all of them when it takes ``**kwargs``).
- ``"verl"``: ``fn(old_log_prob, log_prob, advantages, response_mask, **kw)`` like verl's policy-loss functions:
  old_log_prob is the mask's anchor (the rollout μ, i.e. verl's bypass mode; π_old for the recompute cases),
  log_prob is π; kw: low/high or clip_ratio_low/clip_ratio_high, and rollout_log_probs, when accepted.
A mask function returns the keep mask (True = the token keeps its gradient; ``output="drop"`` for a drop mask),
`[B, T]`, as numpy or torch; ``array="torch"`` passes float64 torch tensors instead of numpy arrays.
Padded and Â = 0 tokens are expected to be kept. Divergences are compared on response tokens with
|got − expected| ≤ atol + rtol·|expected|. Each disagreement row carries the token's Â, response_mask, μ(a)
and π(a), so a pattern (only Â = 0 tokens, only μ(a) → 1, only one side) shows at a glance.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustregion_lab._validate import check_choice
from trustregion_lab.conformance.data import DATA_FILE, VERSION

__all__ = ["DIVERGENCES", "Case", "check_divergence", "check_mask", "load_cases"]

DIVERGENCES: dict[str, tuple[str, ...]] = {
    "binary_tv": ("rollout_logprob", "logprob"),
    "binary_kl": ("rollout_logprob", "logprob"),
    "topk_tv": ("rollout_topk_logprobs", "topk_ids", "logits", "topk_logprobs"),
    "topk_kl": ("rollout_topk_logprobs", "topk_ids", "logits", "topk_logprobs"),
    "tv": ("rollout_logits", "logits"),
    "kl": ("rollout_logits", "logits"),
}
_COLUMNS = [
    "case",
    "check",
    "low",
    "high",
    "anchor",
    "batch",
    "time",
    "expected",
    "got",
    "abs_error",
    "advantage",
    "response_mask",
    "mu",
    "pi",
    "description",
]


@dataclass(frozen=True)
class Case:
    """One reference case: inputs (numpy arrays), expected divergences `[B, T]` and mask expectations."""

    name: str
    description: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    masks: tuple[dict, ...]


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[int, tuple[Case, ...]]:
    document = json.loads(Path(path).read_text())
    cases = []
    for raw in document["cases"]:
        inputs = {}
        for key, value in raw["inputs"].items():
            dtype = (
                bool if key == "response_mask" else np.int64 if key in ("token", "topk_ids") else np.float64
            )
            inputs[key] = np.array(value, dtype=dtype)
        expected = {key: np.array(value, np.float64) for key, value in raw["expected"].items()}
        masks = tuple({**m, "keep": np.array(m["keep"], bool)} for m in raw["masks"])
        cases.append(Case(raw["name"], raw["description"], inputs, expected, masks))
    return int(document["version"]), tuple(cases)


def load_cases(path: str | Path | None = None) -> list[Case]:
    """The shipped reference cases (version `VERSION`), or those of another cases file."""
    version, cases = _load(str(path or DATA_FILE))
    if path is None and version != VERSION:
        raise ValueError(f"{DATA_FILE} holds version {version}, expected {VERSION}")
    return list(cases)


def _accepted(fn: Callable, names: list[str]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return names
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return names
    return [n for n in names if n in params]


def _convert(arrays: dict[str, Any], array: str) -> dict[str, Any]:
    if array == "numpy":
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    import torch

    return {k: torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def _to_numpy(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    out = np.asarray(value)
    if out.shape != shape:
        raise ValueError(f"{name} returned shape {out.shape}, expected {shape}")
    return out


def _disagreements(case: Case, check: str, low, high, anchor, where, expected, got, err) -> list[dict]:
    rows = []
    for b, t in zip(*np.nonzero(where)):
        rows.append(
            {
                "case": case.name,
                "check": check,
                "low": low,
                "high": high,
                "anchor": anchor,
                "batch": int(b),
                "time": int(t),
                "expected": expected[b, t].item(),
                "got": got[b, t].item(),
                "abs_error": err[b, t].item() if err is not None else np.nan,
                "advantage": case.inputs["advantages"][b, t].item(),
                "response_mask": bool(case.inputs["response_mask"][b, t]),
                "mu": float(np.exp(case.inputs["rollout_logprob"][b, t])),
                "pi": float(np.exp(case.inputs["logprob"][b, t])),
                "description": case.description,
            }
        )
    return rows


def _result(rows: list[dict], checked: int, skipped: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table.attrs["checked"] = checked
    table.attrs["skipped"] = skipped
    return table


def check_divergence(
    fn: Callable[..., Any],
    quantity: str,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    array: str = "numpy",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Compare `fn` (plain adapter) with the expected `quantity` (a key of `DIVERGENCES`) on response tokens.

    Returns one row per disagreeing token (empty when all agree); ``attrs["checked"]`` = tokens compared.
    """
    quantity = check_choice("quantity", quantity, DIVERGENCES)
    array = check_choice("array", array, ("numpy", "torch"))
    rows, checked = [], 0
    for case in cases or load_cases():
        names = _accepted(fn, list(DIVERGENCES[quantity]))
        kwargs = _convert({n: case.inputs[n] for n in names}, array)
        expected = case.expected[quantity]
        got = _to_numpy(fn(**kwargs), quantity, expected.shape).astype(np.float64)
        where = case.inputs["response_mask"]
        err = np.abs(got - expected)
        bad = where & ~(err <= atol + rtol * np.abs(expected))
        rows += _disagreements(case, quantity, np.nan, np.nan, "", bad, expected, got, err)
        checked += int(where.sum())
    return _result(rows, checked, [])


def check_mask(
    fn: Callable[..., Any],
    method: str,
    *,
    adapter: str = "plain",
    output: str = "keep",
    array: str = "numpy",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Compare `fn`'s keep/drop decisions with every expectation of `method` (all thresholds, both anchors).

    `method` names the rule `fn` implements (a key of `trustregion_lab.masks.METHODS`). Recompute-anchor
    expectations are skipped (listed in ``attrs["skipped"]``) when a plain-adapter `fn` takes no old_logprob.
    Returns one row per disagreeing token; ``attrs["checked"]`` = decisions compared.
    """
    adapter = check_choice("adapter", adapter, ("plain", "verl"))
    output = check_choice("output", output, ("keep", "drop"))
    array = check_choice("array", array, ("numpy", "torch"))
    rows, checked, skipped = [], 0, []
    for case in cases or load_cases():
        for expectation in (m for m in case.masks if m["method"] == method):
            anchor, low, high = expectation["anchor"], expectation["low"], expectation["high"]
            kwargs = _mask_arguments(fn, case, adapter, anchor, low, high)
            if kwargs is None:
                skipped.append(f"{case.name} {anchor} {low:g}/{high:g}")
                continue
            result = fn(**_convert(kwargs, array)) if adapter == "plain" else _call_verl(fn, kwargs, array)
            expected = expectation["keep"]
            got = _to_numpy(result, method, expected.shape).astype(bool)
            got = ~got if output == "drop" else got
            rows += _disagreements(case, method, low, high, anchor, got != expected, expected, got, None)
            checked += expected.size
    if not checked and not skipped:
        raise ValueError(f"no reference case has expectations for method {method!r}")
    return _result(rows, checked, skipped)


def _mask_arguments(fn, case: Case, adapter: str, anchor: str, low: float, high: float) -> dict | None:
    x = case.inputs
    if adapter == "verl":
        return {
            "old_log_prob": x["old_logprob"] if anchor == "recompute" else x["rollout_logprob"],
            "log_prob": x["logprob"],
            "advantages": x["advantages"],
            "response_mask": x["response_mask"],
            "low": low,
            "high": high,
            "clip_ratio_low": low,
            "clip_ratio_high": high,
            "rollout_log_probs": x["rollout_logprob"],
        }
    available = {
        "logprob": x["logprob"],
        "rollout_logprob": x["rollout_logprob"],
        "advantages": x["advantages"],
        "low": low,
        "high": high,
        "response_mask": x["response_mask"],
        **{
            k: x[k]
            for k in ("topk_ids", "rollout_topk_logprobs", "topk_logprobs", "logits", "rollout_logits")
        },
    }
    accepted = _accepted(fn, [*available, "old_logprob"])
    if anchor == "recompute":
        if "old_logprob" not in accepted:
            return None
        available["old_logprob"] = x["old_logprob"]
    return {k: v for k, v in available.items() if k in accepted}


def _call_verl(fn: Callable, kwargs: dict, array: str) -> Any:
    """fn(old_log_prob, log_prob, advantages, response_mask, **accepted keywords)."""
    converted = _convert(kwargs, array)
    positional = [converted[k] for k in ("old_log_prob", "log_prob", "advantages", "response_mask")]
    extra = _accepted(fn, ["low", "high", "clip_ratio_low", "clip_ratio_high", "rollout_log_probs"])
    return fn(*positional, **{k: converted[k] for k in extra})
