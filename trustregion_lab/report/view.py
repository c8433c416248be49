"""Per-chunk derived arrays: which tokens each statistic may use, ratios, divergence estimates and masks.

A `ReportMask` names a mask (a method of `trustregion_lab.masks.METHODS`, thresholds low/high, anchor
"rollout" or "recompute"). Every mask is read from the registry entry — its rule, its estimate, what it needs
and its `min_anchor_prob` — so a method added there is a method of the report. For each mask the view gives,
over the chunk's response tokens `[n]`:
    in_set: the token enters the mask's statistics: Â finite and ≠ 0, and every value the mask needs finite
            (log μ(a), log π(a); log π_old(a) for the recompute anchor; the top-K lists for methods that need
            top-K ids; the table's exact divergence column for methods that need full logits);
    drop:   the registry's rule on the critical thresholds (`masks.MaskMethod.critical`):
            drop = (Â > 0 and c_up > high) or (Â < 0 and c_down > low).
Methods that need full logits (exact TV / KL) have none here: their estimate D is the table's tv_exact /
kl_exact column (`exact_column`), passed to the registry's rule as the precomputed estimate. Top-K methods get
the trainer's side as logits over a local vocabulary of K + 1 outcomes: the reported ids' log π plus one
outcome holding π's rest mass log(1 − Σ_S π_v); their log-softmax returns exactly those log-probs, so the
registry's Top-K estimates see the same two distributions as with full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.special import logsumexp

from trustregion_lab import masks
from trustregion_lab.report.schema import TokenChunk

__all__ = ["ReportMask", "TokenView", "exact_column", "needed_column"]

_UNUSED_LOGIT = -1.0e4  # exp(−1e4) = 0 in float64: an unused top-K slot holds no mass
_REST_FLOOR = -700.0


def _entry(method: str) -> masks.MaskMethod:
    return masks.METHODS[masks.check_method(method)]


def _needs_topk(method: str) -> bool:
    return "topk_ids" in _entry(method).needs


def exact_column(method: str) -> str | None:
    """The table column holding the estimate of a method that needs full logits ("tv_exact" / "kl_exact")."""
    entry = _entry(method)
    if "anchor_logits" not in entry.needs:
        return None
    return f"{entry.divergence}_exact" if entry.divergence in ("tv", "kl") else "full logits"


def needed_column(method: str, anchor: str = "rollout") -> str | None:
    """The optional table column a mask cannot do without (None: the required columns suffice).

    The recompute anchor needs old_logprob, and only the methods that read log-probs alone have it (the table
    holds no π_old top-K log-probs or exact divergences).
    """
    if anchor == "recompute":
        return "old_logprob" if not _entry(method).needs else "π_old top-K / logits"
    if _needs_topk(method):
        return "topk_ids"
    return exact_column(method)


@dataclass(frozen=True)
class ReportMask:
    """One mask of the report: method (a `masks.METHODS` name), thresholds and anchor ("rollout" or
    "recompute")."""

    method: str
    low: float
    high: float
    anchor: str = "rollout"

    @property
    def label(self) -> str:
        return f"{self.method} {self.low:g}/{self.high:g}" + (
            "" if self.anchor == "rollout" else " recompute"
        )


class TokenView:
    """Derived arrays of one `TokenChunk` `[n]`, computed once and shared by every statistic."""

    def __init__(self, chunk: TokenChunk) -> None:
        self.chunk = chunk
        self.n = len(chunk)
        self.ok = np.isfinite(chunk.logprob) & np.isfinite(chunk.rollout_logprob)
        self.adv_ok = np.isfinite(chunk.advantage)
        self.graded = self.ok & self.adv_ok & (np.nan_to_num(chunk.advantage) != 0)
        self._drops: dict[ReportMask, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ ratios
    @cached_property
    def log_ratio(self) -> np.ndarray:
        """log r = log π(a) − log μ(a) `[n]` (NaN where either is missing)."""
        return self.chunk.logprob - self.chunk.rollout_logprob

    @cached_property
    def ratio(self) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(self.log_ratio)

    @cached_property
    def mu(self) -> np.ndarray:
        return np.exp(self.chunk.rollout_logprob)

    # ------------------------------------------------------------------ top-K inputs
    @cached_property
    def topk_ok(self) -> np.ndarray:
        """Rows with at least one reported id and finite log-probs at every used slot `[n]`."""
        ids = self.chunk.get("topk_ids")
        if ids is None:
            return np.zeros(self.n, dtype=bool)
        used = ids >= 0
        finite = np.isfinite(self.chunk.get("rollout_topk_logprobs")) & np.isfinite(
            self.chunk.get("topk_logprobs")
        )
        return used.any(axis=1) & (finite | ~used).all(axis=1)

    def _topk_arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local ids `[m, K]`, log μ at ids `[m, K]`, local logits `[m, K + 1]`) for the given rows."""
        ids = self.chunk.get("topk_ids")[rows]
        used = ids >= 0
        lmu = np.where(used, self.chunk.get("rollout_topk_logprobs")[rows], 0.0)
        lpi = np.where(used, self.chunk.get("topk_logprobs")[rows], -np.inf)
        total = np.minimum(logsumexp(lpi, axis=1), 0.0)
        with np.errstate(divide="ignore"):
            rest = np.where(total > -np.log(2.0), np.log(-np.expm1(total)), np.log1p(-np.exp(total)))
        rest = np.maximum(rest, _REST_FLOOR)
        logits = np.concatenate([np.where(used, lpi, _UNUSED_LOGIT), rest[:, None]], axis=1)
        local_ids = np.where(used, np.arange(ids.shape[1])[None, :], -1)
        return local_ids, lmu, logits

    # ------------------------------------------------------------------ estimates
    def exact_estimate(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(available `[n]`, D `[n]` NaN where unavailable) from the table's exact column (tv_exact, kl_exact)."""
        values = self.chunk.get(column)
        out = np.full(self.n, np.nan)
        if values is None:
            return np.zeros(self.n, dtype=bool), out
        ok = self.ok & np.isfinite(values)
        out[ok] = values[ok]
        return ok, out

    def available(self, spec: ReportMask) -> np.ndarray:
        """Tokens whose inputs `spec` needs are all finite `[n]` (advantage included)."""
        ok = self.ok & self.adv_ok
        if spec.anchor == "recompute":
            old = self.chunk.get("old_logprob")
            if old is None or _entry(spec.method).needs:
                return np.zeros(self.n, dtype=bool)
            ok = ok & np.isfinite(old)
        if _needs_topk(spec.method):
            ok = ok & self.topk_ok
        column = exact_column(spec.method)
        if column is not None:
            ok = ok & self.exact_estimate(column)[0]
        return ok

    def _critical_rows(self, method: str, anchor: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c_up, c_down) float64 `[m]` at `rows` from the registry entry (rule, estimate, min_anchor_prob)."""
        entry = _entry(method)
        c = self.chunk
        anchor_lp = c.get("old_logprob") if anchor == "recompute" else c.rollout_logprob
        fields: dict[str, torch.Tensor] = {}
        estimate = None
        if _needs_topk(method):
            ids, lmu_k, logits = self._topk_arrays(rows)
            fields = {
                "topk_ids": torch.from_numpy(ids),
                "anchor_topk_logprobs": torch.from_numpy(lmu_k),
                "logits": torch.from_numpy(logits),
            }
        column = exact_column(method)
        if column is not None:
            estimate = torch.from_numpy(self.exact_estimate(column)[1][rows])
        x = masks.MaskInputs(
            logprob=torch.from_numpy(c.logprob[rows]),
            anchor_logprob=torch.from_numpy(anchor_lp[rows]),
            anchor_name="old" if anchor == "recompute" else "rollout",
            **fields,
        )
        up, down = entry.critical(x, estimate)
        return up.numpy(), down.numpy()

    # ------------------------------------------------------------------ masks
    def in_set(self, spec: ReportMask) -> np.ndarray:
        """Tokens that enter `spec`'s mask statistics `[n]` (see module docstring)."""
        return self.drop(spec)[0]

    def drop(self, spec: ReportMask) -> tuple[np.ndarray, np.ndarray]:
        """(in_set `[n]`, drop `[n]`, False outside the set) for one mask."""
        if spec not in self._drops:
            self._drops[spec] = self._compute_drop(spec)
        return self._drops[spec]

    def _compute_drop(self, spec: ReportMask) -> tuple[np.ndarray, np.ndarray]:
        members = self.available(spec) & self.graded
        drop = np.zeros(self.n, dtype=bool)
        rows = np.flatnonzero(members)
        if rows.size == 0:
            return members, drop
        up, down = self._critical_rows(spec.method, spec.anchor, rows)
        adv = self.chunk.advantage[rows]
        drop[rows] = ((adv > 0) & (up > spec.high)) | ((adv < 0) & (down > spec.low))
        return members, drop

    def critical(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(members `[n]`, c `[n]`): the symmetric threshold above which `method` drops each graded token.

        c = c_up for Â > 0 and c_down for Â < 0 (the registry's critical thresholds, rollout anchor; −∞ where
        the method never drops the token), so at low = high = t a token is dropped exactly when c > t.
        """
        members = self.available(ReportMask(method, 0.0, 0.0)) & self.graded
        c = np.full(self.n, -np.inf)
        rows = np.flatnonzero(members)
        if rows.size:
            up, down = self._critical_rows(method, "rollout", rows)
            c[rows] = np.where(self.chunk.advantage[rows] > 0, up, down)
        return members, c
