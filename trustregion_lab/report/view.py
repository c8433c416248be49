"""Per-chunk derived arrays: which tokens each statistic may use, ratios, divergence estimates and masks.

A `MaskSpec` names a mask (method of `trustregion_lab.masks.METHODS`, thresholds low/high, anchor "rollout" or
"recompute"). For each spec the view gives, over the chunk's response tokens `[n]`:
    in_set: the token enters the spec's mask statistics: Â finite and ≠ 0, and every value the mask needs finite
            (log μ(a), log π(a); log π_old(a) for the recompute anchor; the top-K lists for Top-K methods;
            tv_exact / kl_exact for the exact methods);
    drop:   the mask drops it (docs/design.md §2 rules, computed by `trustregion_lab.masks.trust_region_mask`).
The exact methods have no logits here: their rule is applied to the table's tv_exact / kl_exact column D:
    drop = (Â > 0 and D > high and π(a) > μ(a)) or (Â < 0 and D > low and π(a) < μ(a)).
Top-K methods get the trainer's side as logits over a local vocabulary of K + 1 outcomes: the reported ids'
log π plus one outcome holding π's rest mass log(1 − Σ_S π_v); their log-softmax returns exactly those
log-probs, so `topk_tv`/`topk_kl` and the masks see the same two distributions as with full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import logsumexp

from trustregion_lab import divergence, masks
from trustregion_lab.report.schema import TokenChunk

__all__ = ["DIVERGENCE_OF", "MaskSpec", "TokenView"]

# DPPO method → the divergence estimate its rule thresholds
DIVERGENCE_OF: dict[str, str] = {
    "dppo_binary_tv": "binary_tv",
    "dppo_binary_kl": "binary_kl",
    "dppo_topk_tv": "topk_tv",
    "dppo_topk_kl": "topk_kl",
    "dppo_exact_tv": "tv_exact",
    "dppo_exact_kl": "kl_exact",
}
_UNUSED_LOGIT = -1.0e4  # exp(−1e4) = 0 in float64: an unused top-K slot holds no mass
_REST_FLOOR = -700.0


@dataclass(frozen=True)
class MaskSpec:
    """One mask of the report: method, thresholds and anchor ("rollout" or "recompute")."""

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
        self._drops: dict[MaskSpec, tuple[np.ndarray, np.ndarray]] = {}
        self._divergences: dict[str, tuple[np.ndarray, np.ndarray]] = {}

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

    # ------------------------------------------------------------------ divergences
    def divergence(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(available `[n]` bool, D `[n]` float64, NaN where unavailable) for a `DIVERGENCE_OF` estimate."""
        if name not in self._divergences:
            self._divergences[name] = self._compute_divergence(name)
        return self._divergences[name]

    def _compute_divergence(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        out = np.full(self.n, np.nan)
        if name in ("tv_exact", "kl_exact"):
            column = self.chunk.get(name)
            if column is None:
                return np.zeros(self.n, dtype=bool), out
            ok = self.ok & np.isfinite(column)
            out[ok] = column[ok]
            return ok, out
        if name in ("topk_tv", "topk_kl"):
            ok = self.ok & self.topk_ok
            rows = np.flatnonzero(ok)
            if rows.size:
                ids, lmu, logits = self._topk_arrays(rows)
                fn = divergence.topk_tv if name == "topk_tv" else divergence.topk_kl
                out[rows] = fn(lmu, ids, logits)
            return ok, out
        rows = np.flatnonzero(self.ok)
        if rows.size:
            fn = divergence.binary_tv if name == "binary_tv" else divergence.binary_kl
            out[rows] = fn(self.chunk.rollout_logprob[rows], self.chunk.logprob[rows])
        return self.ok.copy(), out

    # ------------------------------------------------------------------ masks
    def in_set(self, spec: MaskSpec) -> np.ndarray:
        """Tokens that enter `spec`'s mask statistics `[n]` (see module docstring)."""
        return self.drop(spec)[0]

    def drop(self, spec: MaskSpec) -> tuple[np.ndarray, np.ndarray]:
        """(in_set `[n]`, drop `[n]`, False outside the set) for one mask."""
        if spec not in self._drops:
            self._drops[spec] = self._compute_drop(spec)
        return self._drops[spec]

    def available(self, spec: MaskSpec) -> np.ndarray:
        """Tokens whose inputs `spec` needs are all finite `[n]` (advantage included)."""
        ok = self.ok & self.adv_ok
        if spec.anchor == "recompute":
            old = self.chunk.get("old_logprob")
            ok = ok & (np.isfinite(old) if old is not None else False)
        if spec.method in ("dppo_topk_tv", "dppo_topk_kl"):
            ok = ok & self.topk_ok
        if spec.method in ("dppo_exact_tv", "dppo_exact_kl"):
            ok = ok & self.divergence(DIVERGENCE_OF[spec.method])[0]
        return ok

    def _compute_drop(self, spec: MaskSpec) -> tuple[np.ndarray, np.ndarray]:
        members = self.available(spec) & self.graded
        drop = np.zeros(self.n, dtype=bool)
        rows = np.flatnonzero(members)
        if rows.size == 0:
            return members, drop
        c = self.chunk
        lp, lmu, adv = c.logprob[rows], c.rollout_logprob[rows], c.advantage[rows]
        if spec.method in ("dppo_exact_tv", "dppo_exact_kl"):
            d = self.divergence(DIVERGENCE_OF[spec.method])[1][rows]
            drop[rows] = ((adv > 0) & (d > spec.high) & (lp > lmu)) | (
                (adv < 0) & (d > spec.low) & (lp < lmu)
            )
            return members, drop
        kwargs = {}
        if spec.anchor == "recompute":
            kwargs["old_logprob"] = c.get("old_logprob")[rows]
        if spec.method in ("dppo_topk_tv", "dppo_topk_kl"):
            ids, lmu_k, logits = self._topk_arrays(rows)
            kwargs.update(topk_ids=ids, rollout_topk_logprobs=lmu_k, logits=logits)
        keep = masks.trust_region_mask(
            spec.method,
            logprob=lp,
            rollout_logprob=lmu,
            advantages=adv,
            low=spec.low,
            high=spec.high,
            **kwargs,
        )
        drop[rows] = ~np.asarray(keep, dtype=bool)
        return members, drop

    def critical(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(members `[n]`, c `[n]`): the symmetric threshold above which `method` drops each graded token.

        ppo: c = r − 1 (Â > 0), 1 − r (Â < 0); DPPO: c = D when the update moves π(a) away from μ(a)
        ((Â > 0 and π(a) > μ(a)) or (Â < 0 and π(a) < μ(a))), else −∞. Rollout anchor. A token is dropped at
        low = high = t exactly when c > t (the rules of docs/design.md §2).
        """
        adv = self.chunk.advantage
        if method == "ppo":
            members = self.graded
            c = np.where(adv > 0, self.ratio - 1.0, 1.0 - self.ratio)
        else:
            ok, d = self.divergence(DIVERGENCE_OF[method])
            members = self.graded & ok
            lp, lmu = self.chunk.logprob, self.chunk.rollout_logprob
            outward = ((adv > 0) & (lp > lmu)) | ((adv < 0) & (lp < lmu))
            c = np.where(outward, d, -np.inf)
        return members, np.where(members, c, -np.inf)
