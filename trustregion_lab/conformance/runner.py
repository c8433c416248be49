"""Run a user's mask, loss, divergence or IS-weight function against the reference cases; return a tidy table of
disagreements (empty = pass).

A case holds `[B, T]` arrays (sampled-token log-probs, advantages, response mask; `[B, T, K]` top-K ids and
log-probs; `[B, T, V]` logits) and the expected values. One row of a case is one sequence (its tokens are those
with response_mask True). Adapters call the user's function the way its framework would:

- ``"plain"``: keywords, named as in `trustregion_lab.masks.trust_region_mask` / `trustregion_lab.divergence`:
  logprob, rollout_logprob, advantages, low, high, response_mask, topk_ids, rollout_topk_logprobs,
  topk_logprobs (π at the reported ids), logits, rollout_logits, a rule's own parameters (clip_ratio_c), and
  old_logprob. Only the keywords the function accepts are passed (all of them when it takes ``**kwargs``).
  old_logprob is passed only in the π_old-anchored ("recompute") cases; a function that *requires* it gets the
  rollout μ as old_logprob in the μ-anchored cases (π_old = μ: no recompute, verl's bypass mode), and a function
  that does not take it skips the recompute cases (listed in ``attrs["skipped"]``).
- ``"verl"``: ``fn(old_log_prob, log_prob, advantages, response_mask, **kw)`` like verl's policy-loss
  functions: old_log_prob is the case's anchor (μ, or π_old in the recompute cases), log_prob is π. kw, when
  accepted: low/high, clip_ratio_low/clip_ratio_high, cliprange_low/cliprange_high, the rule's parameters
  (clip_ratio_c), and rollout_log_probs = μ: in the μ-anchored cases always, in the recompute cases only when
  the function requires it (there μ would otherwise let a function anchor on the wrong distribution).

Top-K ids: unused slots (the "topk_plus_sampled" case reports K + 1 ids, the last one −1 when the sampled token
is already among the K) hold id −1 and log-prob 0. An implementation that indexes the vocabulary with every id
cannot take −1: ``topk_unused="sentinel"`` rewrites those slots to a sentinel vocabulary column appended to
``logits`` and ``rollout_logits`` (id = vocab, logit −1e4, so its probability is exactly 0 in float64 and the
softmax of the other columns is unchanged), and sets the slots' log-probs to that column's log-prob. The same
recipe works in a user's own code: append one column, map −1 to it.

Results are compared as float64 (a bfloat16 or float16 result is cast exactly). Masks must be boolean (or 0/1
numbers); divergences and weights real numbers (a NaN or ±inf result is a disagreement). Each disagreement row
carries the token's Â, response_mask, μ(a), π_old(a) (NaN unless the row is π_old-anchored: the anchor is shown
under its own name) and π(a), so a pattern (only Â = 0 tokens, only μ(a) → 1, only one side) shows at a glance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from trustregion_lab._validate import check_bool, check_choice, check_real, check_threshold
from trustregion_lab.conformance import reference as ref
from trustregion_lab.conformance.adapters import accepted, arguments, call, convert
from trustregion_lab.conformance.data import Case, case_inputs, load_cases

__all__ = [
    "DIVERGENCES",
    "TOLERANCES",
    "Case",
    "check_divergence",
    "check_loss",
    "check_mask",
    "check_weights",
    "load_cases",
    "methods",
]

DIVERGENCES: dict[str, tuple[str, ...]] = {
    "binary_tv": ("rollout_logprob", "logprob"),
    "binary_kl": ("rollout_logprob", "logprob"),
    "topk_tv": ("rollout_topk_logprobs", "topk_ids", "logits", "topk_logprobs"),
    "topk_kl": ("rollout_topk_logprobs", "topk_ids", "logits", "topk_logprobs"),
    "tv": ("rollout_logits", "logits"),
    "kl": ("rollout_logits", "logits"),
}
TOLERANCES: dict[str, tuple[float, float]] = {
    # (rtol, atol): |got − expected| ≤ atol + rtol·|expected|
    "float64": (1e-6, 1e-12),
    "float32": (1e-4, 1e-6),
}
"""Tolerance presets for ``check_divergence`` / ``check_weights`` (``tolerance=``).

"float64" (the default) is for implementations that compute in float64: rtol 1e-6, atol 1e-12.
"float32" is for implementations that compute in float32, as most trainers do: rtol 1e-4, atol 1e-6. The
reason: float32 carries about 7 significant digits (eps 1.2e-7), and a divergence is a sum of terms that
cancel (Σ μ log μ/π over a set, 1 − Σ for the rest bucket), so on these cases a correct float32 Top-K KL is
off by up to 4.2e-7 absolute and a Binary KL with a `+ 1e-8` guard inside its logs by up to 1.0e-7 (printed
by ``pytest -s tests/test_conformance.py -k tolerance``), which fails rtol 1e-6 on small values. Both are far
below any threshold a mask uses (≥ 1e-3), and mask decisions are checked exactly: every reference decision
lies at least 1e-7 (relative) away from its threshold, so float32 decides each token the same way. Tokens with
μ(a) → 1 and an empty rest bucket are out of float32's reach (1 − μ rounds to 0) under any preset.
"""
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
    "pi_old",
    "pi",
    "description",
]


def methods() -> list[str]:
    """Every method the kit checks: the mask registry's (`trustregion_lab.masks.METHODS`), then the rules
    frameworks ship (`reference.FRAMEWORK_RULES`: dual_clip, ipo, icepop, token_mask, opsm, seq_mis,
    seq_geo_mis, gspo).

    icepop, seq_mis, seq_geo_mis and gspo are the rules of the same keys in `masks.CORRECTION_METHODS`, with
    low/high in the registry's convention: deviations from 1, so a framework's absolute band [a, b] on the
    statistic (r, R = Π_t r_t or G = exp(mean_t log r_t)) is low = 1 − a, high = b − 1 (IcePop [0.5, 5] →
    (0.5, 4); sequence MIS [0.5, 2] → (0.5, 1); geometric band [0.99, 1.01] → (0.01, 0.01); token_mask
    [0.125, 8] → (0.875, 7)); gspo drops a sequence's tokens where GSPO's clip of G at [1 − low, 1 + high] is
    active for the sign of Â (PPO's rule on G). A function taking absolute bounds is checked through a wrapper
    that passes a = 1 − low, b = 1 + high. The former name ``seq_geo_mask`` is accepted as an alias of
    ``seq_geo_mis`` (`reference.ALIASES`) and is not listed.
    """
    return ref.rule_names()


# ------------------------------------------------------------------------------------------ validation


def _cases(cases: Any) -> list[Case]:
    if cases is None:
        return load_cases()
    if not isinstance(cases, list | tuple) or not all(isinstance(c, Case) for c in cases):
        raise TypeError("cases must be None (the shipped cases) or a list of conformance Case objects")
    if not cases:
        raise ValueError(
            "cases is empty: pass None for the shipped cases, or a non-empty list of Case objects"
        )
    return list(cases)


def _tolerances(tolerance: Any, rtol: Any, atol: Any) -> tuple[float, float]:
    tolerance = check_choice("tolerance", tolerance, TOLERANCES)
    preset_rtol, preset_atol = TOLERANCES[tolerance]
    rtol = preset_rtol if rtol is None else check_real("rtol", rtol, minimum=0.0)
    atol = preset_atol if atol is None else check_real("atol", atol, minimum=0.0)
    return rtol, atol


def _check_callable(fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {fn!r} ({type(fn).__name__})")


def _check_method(method: Any) -> str:
    if isinstance(method, str) and method in ref.ALIASES:
        return ref.ALIASES[method]
    return check_choice("method", method, methods())


def _params(params: Any) -> dict[str, float] | None:
    if params is None:
        return None
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise TypeError(f"params must be None or a dict of name -> number, got {params!r}")
    return {k: check_real(f"params[{k!r}]", v) for k, v in params.items()}


def _result_array(value: Any, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """The user's result as float64 (kind "real") or bool (kind "bool") numpy `shape`, validated."""
    if hasattr(value, "detach") and hasattr(value, "dtype"):
        import torch

        value = value.detach().cpu()
        if value.is_complex():
            raise TypeError(f"{name} returned a complex tensor, expected real numbers")
        value = value.numpy() if value.dtype == torch.bool else value.to(torch.float64).numpy()
    try:
        out = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} returned {type(value).__name__}, expected an array ({exc})") from None
    if out.shape != shape:
        raise ValueError(f"{name} returned shape {out.shape}, expected {shape}")
    if kind == "bool":
        if out.dtype == bool:
            return out
        if out.dtype.kind in "iuf":
            values = out.astype(np.float64)
            if np.all((values == 0) | (values == 1)):
                return values == 1
            bad = values[~((values == 0) | (values == 1))].ravel()[0]
            raise ValueError(f"{name} returned a mask holding {bad!r}, expected booleans (or 0/1)")
        raise TypeError(f"{name} returned a mask of dtype {out.dtype}, expected booleans (or 0/1)")
    if out.dtype.kind == "c":
        raise TypeError(f"{name} returned complex numbers, expected real numbers")
    if out.dtype.kind not in "iuf":
        raise TypeError(f"{name} returned dtype {out.dtype}, expected real numbers")
    return out.astype(np.float64)


# ------------------------------------------------------------------------------------------ expectations


def _expectations(
    case: Case,
    method: str,
    low: float | None,
    high: float | None,
    params: dict | None,
    anchor: str,
) -> Iterator[tuple[str, float, float, dict, np.ndarray | None]]:
    """(anchor, low, high, params, keep) of `method` on `case`: the stored decisions, or, when thresholds or
    params are given, the reference's decisions at those values (keep None when a token sits on a bound)."""
    anchors = ("rollout", "recompute") if anchor == "any" else (anchor,)
    if low is None and high is None and params is None:
        for m in case.masks:
            if m["method"] == method and m["anchor"] in anchors:
                yield m["anchor"], m["low"], m["high"], m["params"], m["keep"]
        return
    stored = [m for m in case.masks if m["method"] == method]
    x = case.inputs
    defaults = dict(ref.FRAMEWORK_RULES[method].params) if method in ref.FRAMEWORK_RULES else {}
    for anchor_name in anchors:
        base = [m for m in stored if m["anchor"] == anchor_name]
        if not base:
            continue
        pairs = {(m["low"], m["high"]) for m in base}
        lows = [low] if low is not None else sorted({p[0] for p in pairs})
        highs = [high] if high is not None else sorted({p[1] for p in pairs})
        p = {**defaults, **(params or {})}
        if anchor_name == "recompute":
            anchor_lp = x["old_logprob"]
            tv, kl = ref.binary(anchor_lp, x["logprob"])
            estimates = {"binary_tv": tv, "binary_kl": kl}
        else:
            anchor_lp, estimates = x["rollout_logprob"], ref.divergences(x)
        for lo in lows:
            for hi in highs:
                keep, tie = ref.keep_decisions(
                    method,
                    anchor=anchor_lp,
                    lpi=x["logprob"],
                    adv=x["advantages"],
                    mask=x["response_mask"],
                    low=lo,
                    high=hi,
                    params=p,
                    estimates=estimates,
                )
                yield anchor_name, lo, hi, p, None if tie else keep


def _disagreements(
    case: Case, check: str, low, high, anchor, where, expected, got, err
) -> list[dict[str, Any]]:
    x = case.inputs
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
                "advantage": x["advantages"][b, t].item(),
                "response_mask": bool(x["response_mask"][b, t]),
                "mu": float(np.exp(x["rollout_logprob"][b, t])),
                "pi_old": float(np.exp(x["old_logprob"][b, t])) if anchor == "recompute" else np.nan,
                "pi": float(np.exp(x["logprob"][b, t])),
                "description": case.description,
            }
        )
    return rows


def _result(rows: list[dict], checked: int, skipped: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table.attrs["checked"] = checked
    table.attrs["skipped"] = skipped
    return table


# ------------------------------------------------------------------------------------------ checks


def check_divergence(
    fn: Callable[..., Any],
    quantity: str,
    *,
    tolerance: str = "float64",
    rtol: float | None = None,
    atol: float | None = None,
    array: str = "numpy",
    topk_unused: str = "minus_one",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Compare `fn` (plain adapter) with the expected `quantity` (a key of `DIVERGENCES`) on response tokens.

    A token agrees when |got − expected| ≤ atol + rtol·|expected|; ``tolerance`` picks the (rtol, atol) preset
    ("float64" or "float32", see `TOLERANCES`), rtol/atol override it. topk_unused: "minus_one" (unused top-K
    slots hold id −1) or "sentinel" (module docstring). Returns one row per disagreeing token (empty when all
    agree); ``attrs["checked"]`` = tokens compared.
    """
    _check_callable(fn)
    quantity = check_choice("quantity", quantity, DIVERGENCES)
    rtol, atol = _tolerances(tolerance, rtol, atol)
    array = check_choice("array", array, ("numpy", "torch"))
    topk_unused = check_choice("topk_unused", topk_unused, ("minus_one", "sentinel"))
    rows, checked = [], 0
    for case in _cases(cases):
        x = case_inputs(case, topk_unused)
        names = accepted(fn, list(DIVERGENCES[quantity]))
        kwargs = convert({n: x[n] for n in names}, array)
        expected = case.expected[quantity]
        got = _result_array(fn(**kwargs), quantity, expected.shape, "real")
        where = case.inputs["response_mask"]
        err = np.abs(got - expected)
        bad = where & ~(err <= atol + rtol * np.abs(expected))
        rows += _disagreements(case, quantity, np.nan, np.nan, "", bad, expected, got, err)
        checked += int(where.sum())
    return _result(rows, checked, [])


def check_weights(
    fn: Callable[..., Any],
    kind: str,
    *,
    cap: float | None = None,
    tolerance: str = "float64",
    rtol: float | None = None,
    atol: float | None = None,
    array: str = "numpy",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Compare an importance-sampling weight `fn` with the reference `kind` (a key of `reference.WEIGHTS`).

    tis = min(r, C) per token; seq_is = min(Π_t r_t, C) and seq_geo_is = min(exp(mean_t log r_t), C) per
    sequence (a row's response tokens), r = π(a)/μ(a). `fn` is called with the accepted keywords of logprob,
    rollout_logprob, response_mask and cap, and returns `[B, T]` (or `[B]` for the sequence kinds). cap: the
    C to check (needed when `fn` takes no ``cap``); by default every cap the cases hold (2 and 3). Compared on
    response tokens as in `check_divergence`; disagreement rows carry C under ``high``.
    """
    _check_callable(fn)
    kind = check_choice("kind", kind, ref.WEIGHTS)
    rtol, atol = _tolerances(tolerance, rtol, atol)
    array = check_choice("array", array, ("numpy", "torch"))
    if cap is not None:
        cap = check_real("cap", cap, positive=True, allow_inf=True)
    elif "cap" not in accepted(fn, ["cap"]):
        raise ValueError("fn takes no cap: pass cap=C, the cap your function applies")
    rows, checked = [], 0
    for case in _cases(cases):
        x = case.inputs
        caps = [cap] if cap is not None else sorted({w["cap"] for w in case.weights if w["kind"] == kind})
        for c in caps:
            expected = ref.weights(kind, x["rollout_logprob"], x["logprob"], x["response_mask"], c)
            names = accepted(fn, ["logprob", "rollout_logprob", "response_mask", "cap"])
            args = {"logprob": x["logprob"], "rollout_logprob": x["rollout_logprob"]}
            args |= {"response_mask": x["response_mask"], "cap": c}
            value = fn(**convert({n: args[n] for n in names}, array))
            shape = expected.shape
            if kind != "tis" and np.ndim(value) == 1:
                shape = expected.shape[:1]
            got = _result_array(value, kind, shape, "real")
            got = np.broadcast_to(got[:, None], expected.shape) if got.ndim == 1 else got
            where = x["response_mask"]
            err = np.abs(got - expected)
            bad = where & ~(err <= atol + rtol * np.abs(expected))
            rows += _disagreements(case, kind, np.nan, c, "rollout", bad, expected, got, err)
            checked += int(where.sum())
    return _result(rows, checked, [])


def check_mask(
    fn: Callable[..., Any],
    method: str,
    *,
    adapter: str = "plain",
    output: str = "keep",
    array: str = "numpy",
    low: float | None = None,
    high: float | None = None,
    params: dict[str, float] | None = None,
    anchor: str = "any",
    topk_unused: str = "minus_one",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Compare `fn`'s keep/drop decisions with every expectation of `method` (all thresholds, both anchors).

    `method` names the rule `fn` implements: a key of `trustregion_lab.masks.METHODS` or of
    `reference.FRAMEWORK_RULES` (`methods()` lists them). `fn` returns the keep mask (True = the token keeps
    its gradient; ``output="drop"`` for a drop mask) `[B, T]` as booleans or 0/1 (numpy or torch). low/high/
    params: check only these thresholds / rule parameters (the reference decides the cases at them; for a
    function with fixed thresholds); anchor: "any", "rollout" or "recompute". Padded and Â = 0 tokens are
    expected to be kept. Recompute-anchor expectations are skipped (listed in ``attrs["skipped"]``) when a
    plain-adapter `fn` takes no old_logprob. Returns one row per disagreeing token; ``attrs["checked"]`` =
    decisions compared.
    """
    _check_callable(fn)
    method = _check_method(method)
    adapter = check_choice("adapter", adapter, ("plain", "verl"))
    output = check_choice("output", output, ("keep", "drop"))
    array = check_choice("array", array, ("numpy", "torch"))
    low, high, params, anchor = _selection(low, high, params, anchor)
    topk_unused = check_choice("topk_unused", topk_unused, ("minus_one", "sentinel"))
    rows, checked, skipped = [], 0, []
    selection = (method, low, high, params, anchor)
    for case, anchor_name, lo, hi, expected, kwargs in _calls(
        fn, adapter, cases, topk_unused, selection, skipped
    ):
        result, _ = call(fn, adapter, kwargs, array)
        got = _result_array(result, method, expected.shape, "bool")
        got = ~got if output == "drop" else got
        rows += _disagreements(case, method, lo, hi, anchor_name, got != expected, expected, got, None)
        checked += expected.size
    if not checked and not skipped:
        raise ValueError(f"no reference case has expectations for method {method!r} and anchor {anchor!r}")
    return _result(rows, checked, skipped)


def _calls(
    fn: Callable[..., Any], adapter: str, cases: Any, topk_unused: str, selection: tuple, skipped: list[str]
) -> Iterator[tuple]:
    """(case, anchor name, low, high, expected keep mask, fn's keyword arguments) for every expectation of the
    selection (method, low, high, params, anchor) that can be run; the others are listed in ``skipped``."""
    method, low, high, params, anchor = selection
    for case in _cases(cases):
        x = case_inputs(case, topk_unused)
        for anchor_name, lo, hi, p, expected in _expectations(case, method, low, high, params, anchor):
            label = f"{case.name} {anchor_name} {lo:g}/{hi:g}"
            if expected is None:
                skipped.append(f"{label}: a token sits on the threshold")
                continue
            kwargs = arguments(fn, adapter, x, anchor_name, lo, hi, p)
            if kwargs is None:
                skipped.append(f"{label}: fn takes no old_logprob")
                continue
            yield case, anchor_name, lo, hi, expected, kwargs


def _selection(low: Any, high: Any, params: Any, anchor: Any) -> tuple:
    low = None if low is None else check_threshold("low", low)
    high = None if high is None else check_threshold("high", high)
    return low, high, _params(params), check_choice("anchor", anchor, ("any", "rollout", "recompute"))


def check_loss(
    fn: Callable[..., Any],
    method: str,
    *,
    adapter: str = "plain",
    low: float | None = None,
    high: float | None = None,
    params: dict[str, float] | None = None,
    anchor: str = "any",
    include_zero_advantage: bool = False,
    include_padding: bool = False,
    topk_unused: str = "minus_one",
    array: str = "torch",
    cases: list[Case] | None = None,
) -> pd.DataFrame:
    """Check a policy *loss* by its gradient: the keep mask is read from d loss / d log π(a).

    `fn` is called through the adapter (module docstring) with float64 torch tensors, ``logprob`` (plain) /
    ``log_prob`` (verl) requiring grad, and returns the loss: a scalar tensor, or a tuple/list whose first
    element is it (``(loss, metrics)``, verl's ``(pg_loss, clipfrac, ...)``). A token keeps its gradient when
    d loss / d log π(a) ≠ 0 (exactly: float64 has no underflow on these cases), so kept = "has a gradient";
    the expectation is the reference mask of `method` (see `check_mask`). Compared tokens: response tokens
    with Â ≠ 0. ``include_zero_advantage=True`` adds the Â = 0 tokens and ``include_padding=True`` the padded
    ones, both expected to get no gradient (a loss term that is not multiplied by Â, e.g. a KL penalty, or
    padding that reaches the loss, shows there). A non-finite gradient on a compared token is always a
    disagreement. low/high/params: the thresholds and rule parameters the loss implements, when it takes none
    of them as arguments (the reference then decides the cases at those values); otherwise every stored
    threshold is passed in turn. array: "torch" only (the mask is read from a torch gradient; the argument
    exists for symmetry with `check_mask`). Returns the `check_mask` table (``got``/``expected`` = has a gradient);
    ``attrs["checked"]`` = tokens compared, ``attrs["skipped"]`` = expectations not run and why.
    """
    import torch

    _check_callable(fn)
    method = _check_method(method)
    adapter = check_choice("adapter", adapter, ("plain", "verl"))
    low, high, params, anchor = _selection(low, high, params, anchor)
    include_zero_advantage = check_bool("include_zero_advantage", include_zero_advantage)
    include_padding = check_bool("include_padding", include_padding)
    topk_unused = check_choice("topk_unused", topk_unused, ("minus_one", "sentinel"))
    check_choice("array", array, ("torch",))
    threshold_names = ("low", "high", "clip_ratio_low", "clip_ratio_high", "cliprange_low", "cliprange_high")
    if low is None and high is None and method != "none" and not accepted(fn, list(threshold_names)):
        raise ValueError(
            "fn takes no thresholds (low/high, clip_ratio_low/high or cliprange_low/high): pass low=..., "
            "high=... to say which thresholds it implements"
        )
    grad_name = "logprob" if adapter == "plain" else "log_prob"
    rows, checked, skipped, depends = [], 0, [], False
    selection = (method, low, high, params, anchor)
    for case, anchor_name, lo, hi, keep, kwargs in _calls(
        fn, adapter, cases, topk_unused, selection, skipped
    ):
        mask, adv = case.inputs["response_mask"], case.inputs["advantages"]
        live = mask & (adv != 0)
        where = live | (mask & (adv == 0) if include_zero_advantage else False)
        where = where | (~mask if include_padding else False)
        result, tracked = call(fn, adapter, kwargs, "torch", grad_name)
        loss = result[0] if isinstance(result, tuple | list) and result else result
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"fn returned {type(loss).__name__}, expected a scalar torch tensor (or a tuple whose "
                "first element is one)"
            )
        if loss.is_complex():
            raise TypeError("fn returned a complex loss, expected a real scalar")
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.reshape(()), tracked, allow_unused=True)
        else:
            grad = None
        grad = np.zeros(keep.shape) if grad is None else grad.detach().to(torch.float64).numpy()
        depends |= bool(np.any(grad != 0))
        got = grad != 0
        expected = keep & live
        bad = where & ((got != expected) | ~np.isfinite(grad))
        rows += _disagreements(case, method, lo, hi, anchor_name, bad, expected, got, None)
        checked += int(where.sum())
    if not checked and not skipped:
        raise ValueError(f"no reference case has expectations for method {method!r} and anchor {anchor!r}")
    if checked and not depends:
        raise ValueError(
            f"fn's loss has no gradient with respect to {grad_name} on any case: it must be computed from "
            f"{grad_name} (the kit reads the mask from d loss / d {grad_name})"
        )
    return _result(rows, checked, skipped)
