"""Streaming mask statistics: summary (mask rates per method), by_mu (PPO vs Binary TV) and matched δ.

Every statistic is a sum over chunks, so the tables need one pass and memory independent of the token count.
Denominators (docs/design.md §2): response tokens with Â ≠ 0 whose needed inputs are finite (`TokenView.in_set`);
`mask_frac` = dropped / tokens, `mask_frac_pos` / `mask_frac_neg` = dropped among Â > 0 / Â < 0.

Matched δ ("which δ matches my ε"): with symmetric thresholds a mask drops a token exactly when its critical
value c exceeds δ (`TokenView.critical`), so rate(δ) = #[c > δ] / n. The c values are counted in a fixed
histogram with right-closed bins (e_k, e_{k+1}] on a log grid (`CRITICAL_EDGES`, 1000 bins per decade over
[1e-9, 1e3], plus c ≤ 0 and c > 1e3): at every edge the rate is exact, and the matched δ — the smallest edge
with rate(δ) ≤ PPO's rate, found by `trustregion_lab.analysis.matched_threshold` — is within one bin
(relative 0.23 %) above the exact smallest such δ, which lies in (delta_lo, matched_delta].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from trustregion_lab.analysis import matched_threshold, mu_buckets
from trustregion_lab.report.view import ReportMask, TokenView

__all__ = ["CRITICAL_EDGES", "ConfusionStats", "CriticalHistogram", "MatchedStats", "SummaryStats"]

CRITICAL_EDGES = np.concatenate([[0.0], np.logspace(-9.0, 3.0, 12 * 1000 + 1)])


class CriticalHistogram:
    """Counts of critical values: bin 0 = c ≤ 0 (never dropped at δ ≥ 0), 1..M = (e_{k−1}, e_k], M+1 = c > e_M."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.counts = np.zeros((*shape, CRITICAL_EDGES.shape[0] + 1), dtype=np.int64)

    @staticmethod
    def bins(c: np.ndarray) -> np.ndarray:
        """Bin index per critical value `[m]` (NaN and −∞ → bin 0)."""
        index = np.searchsorted(CRITICAL_EDGES, np.nan_to_num(c, nan=-np.inf), side="left")
        return np.where(c > 0, index, 0)

    def add(self, c: np.ndarray, cell: np.ndarray | None = None) -> None:
        """Count values `[m]`, into the cells `[m]` (flat index of `shape`) when the histogram has cells."""
        width = self.counts.shape[-1]
        flat = self.bins(c) if cell is None else cell * width + self.bins(c)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    @staticmethod
    def match(counts: np.ndarray, target: float) -> tuple[float, float, float, bool]:
        """(matched δ, delta_lo, rate at δ, reachable) for counts `[M + 2]`; NaNs when nothing is countable."""
        total = counts.sum()
        if total == 0 or not np.isfinite(target):
            return np.nan, np.nan, np.nan, False
        if counts[-1] / total > target + 1e-12:  # beyond the histogram's last edge
            return np.nan, CRITICAL_EDGES[-1], np.nan, True
        reps = np.concatenate([[-np.inf], CRITICAL_EDGES[1:], [np.inf]])  # a value per bin, its upper edge
        delta, reachable = matched_threshold(reps, counts.astype(np.float64), float(target))
        k = int(np.searchsorted(CRITICAL_EDGES, delta))
        rate = counts[k + 1 :].sum() / total
        return delta, CRITICAL_EDGES[k - 1] if k > 0 else 0.0, float(rate), reachable


def _frac(num: float, den: float) -> float:
    return num / den if den else np.nan


class SummaryStats:
    """summary.csv: one row per `ReportMask` (method, thresholds, anchor)."""

    FIELDS = ("tokens", "tokens_pos", "tokens_neg", "dropped", "dropped_pos", "dropped_neg", "skipped")

    def __init__(self, specs: Sequence[ReportMask]) -> None:
        self.specs = list(specs)
        self.sums = {spec: dict.fromkeys(self.FIELDS, 0) for spec in self.specs}
        self.exact = {spec: [0, 0] for spec in self.specs}  # agree, compared

    def add(self, view: TokenView) -> None:
        adv = view.chunk.advantage
        nonzero = ~(view.adv_ok & (np.nan_to_num(adv) == 0))  # Â ≠ 0, or Â unknown
        for spec in self.specs:
            members, drop = view.drop(spec)
            s = self.sums[spec]
            pos, neg = members & (adv > 0), members & (adv < 0)
            s["tokens"] += int(members.sum())
            s["tokens_pos"] += int(pos.sum())
            s["tokens_neg"] += int(neg.sum())
            s["dropped"] += int(drop.sum())
            s["dropped_pos"] += int((drop & pos).sum())
            s["dropped_neg"] += int((drop & neg).sum())
            s["skipped"] += int((nonzero & ~view.available(spec)).sum())
            reference = self._exact_reference(spec)
            if reference is not None:
                ref_members, ref_drop = view.drop(reference)
                both = members & ref_members
                self.exact[spec][0] += int((both & (drop == ref_drop)).sum())
                self.exact[spec][1] += int(both.sum())

    @staticmethod
    def _exact_reference(spec: ReportMask) -> ReportMask | None:
        if spec.anchor != "rollout" or spec.method not in ("dppo_binary_tv", "dppo_topk_tv"):
            return None
        return ReportMask("dppo_exact_tv", spec.low, spec.high)

    def table(self, has_exact: bool) -> pd.DataFrame:
        rows = []
        for spec in self.specs:
            s = self.sums[spec]
            agree, compared = self.exact[spec]
            rows.append(
                {
                    "method": spec.method,
                    "low": spec.low,
                    "high": spec.high,
                    "anchor": spec.anchor,
                    "mask_frac": _frac(s["dropped"], s["tokens"]),
                    "mask_frac_pos": _frac(s["dropped_pos"], s["tokens_pos"]),
                    "mask_frac_neg": _frac(s["dropped_neg"], s["tokens_neg"]),
                    "tokens": s["tokens"],
                    "tokens_pos": s["tokens_pos"],
                    "tokens_neg": s["tokens_neg"],
                    "dropped": s["dropped"],
                    "skipped_nonfinite": s["skipped"],
                    "agree_exact_tv": _frac(agree, compared) if has_exact else np.nan,
                }
            )
        return pd.DataFrame(rows)


class ConfusionStats:
    """by_mu.csv: PPO vs Binary TV (rollout anchor) by μ(a) bucket × Â sign, with the exact-TV mask if known."""

    COUNTS = (
        "tokens",
        "ppo_drop",
        "tv_drop",
        "both_drop",
        "exact_tokens",
        "exact_drop",
        "ppo_agree",
        "tv_agree",
    )

    def __init__(self, ppo: ReportMask, tv: ReportMask) -> None:
        self.ppo, self.tv = ppo, tv
        self.exact = ReportMask("dppo_exact_tv", tv.low, tv.high)
        self.buckets = mu_buckets()
        nb = len(self.buckets.labels)
        self.counts = {name: np.zeros((nb, 2), dtype=np.int64) for name in self.COUNTS}
        self.hist = CriticalHistogram((nb, 2))

    def add(self, view: TokenView) -> None:
        ppo_in, ppo_drop = view.drop(self.ppo)
        tv_in, tv_drop = view.drop(self.tv)
        members = ppo_in & tv_in
        rows = np.flatnonzero(members)
        if rows.size == 0:
            return
        bucket = self.buckets.assign(np.clip(view.mu[rows], 0.0, 1.0), "mu")
        cell = bucket * 2 + (view.chunk.advantage[rows] < 0)
        size = self.counts["tokens"].size
        ex_in, ex_drop = view.drop(self.exact)
        ex_in = ex_in[rows]
        values = {
            "tokens": np.ones(rows.size, bool),
            "ppo_drop": ppo_drop[rows],
            "tv_drop": tv_drop[rows],
            "both_drop": ppo_drop[rows] & tv_drop[rows],
            "exact_tokens": ex_in,
            "exact_drop": ex_in & ex_drop[rows],
            "ppo_agree": ex_in & (ppo_drop[rows] == ex_drop[rows]),
            "tv_agree": ex_in & (tv_drop[rows] == ex_drop[rows]),
        }
        for name, flags in values.items():
            self.counts[name] += np.bincount(cell[flags], minlength=size).reshape(-1, 2)
        _, c = view.critical(self.tv.method)
        self.hist.add(c[rows], cell)

    def table(self) -> pd.DataFrame:
        b = self.buckets
        cells = [(i, b.labels[i], b.lo[i], b.hi[i]) for i in range(len(b.labels))] + [(None, "all", 0.0, 1.0)]
        rows = []
        for index, label, lo, hi in cells:
            for sign, sides in (("pos", [0]), ("neg", [1]), ("all", [0, 1])):
                pick = (slice(None) if index is None else index, sides)
                n = {name: int(arr[pick].sum()) for name, arr in self.counts.items()}
                hist = self.hist.counts[pick].reshape(-1, self.hist.counts.shape[-1]).sum(axis=0)
                delta, delta_lo, _, reachable = CriticalHistogram.match(
                    hist, _frac(n["ppo_drop"], n["tokens"])
                )
                rows.append(
                    {
                        "mu_bucket": label,
                        "mu_lo": lo,
                        "mu_hi": hi,
                        "sign": sign,
                        "tokens": n["tokens"],
                        "ppo_low": self.ppo.low,
                        "ppo_high": self.ppo.high,
                        "tv_low": self.tv.low,
                        "tv_high": self.tv.high,
                        "ppo_drop": n["ppo_drop"],
                        "tv_drop": n["tv_drop"],
                        "both_drop": n["both_drop"],
                        "ppo_only": n["ppo_drop"] - n["both_drop"],
                        "tv_only": n["tv_drop"] - n["both_drop"],
                        "ppo_only_frac": _frac(n["ppo_drop"] - n["both_drop"], n["tokens"]),
                        "tv_only_frac": _frac(n["tv_drop"] - n["both_drop"], n["tokens"]),
                        "matched_delta": delta,
                        "matched_delta_lo": delta_lo,
                        "matched_reachable": reachable,
                        "exact_tokens": n["exact_tokens"],
                        "exact_drop": n["exact_drop"],
                        "ppo_agree_exact": _frac(n["ppo_agree"], n["exact_tokens"]),
                        "tv_agree_exact": _frac(n["tv_agree"], n["exact_tokens"]),
                    }
                )
        return pd.DataFrame(rows)


class MatchedStats:
    """matched_delta.csv: per PPO clip (ε_low, ε_high) and DPPO method, the symmetric δ with the same mask rate."""

    def __init__(self, ppo_specs: Sequence[ReportMask], methods: Sequence[str]) -> None:
        self.ppo_specs = list(ppo_specs)
        self.methods = list(methods)
        self.ppo = {spec: [0, 0] for spec in self.ppo_specs}  # dropped, tokens
        self.hists = {method: CriticalHistogram() for method in self.methods}

    def add(self, view: TokenView) -> None:
        for spec in self.ppo_specs:
            members, drop = view.drop(spec)
            self.ppo[spec][0] += int(drop.sum())
            self.ppo[spec][1] += int(members.sum())
        for method in self.methods:
            members, c = view.critical(method)
            self.hists[method].add(c[members])

    def table(self) -> pd.DataFrame:
        rows = []
        for spec in self.ppo_specs:
            dropped, tokens = self.ppo[spec]
            target = _frac(dropped, tokens)
            for method in self.methods:
                counts = self.hists[method].counts
                delta, delta_lo, rate, reachable = CriticalHistogram.match(counts, target)
                rows.append(
                    {
                        "ppo_low": spec.low,
                        "ppo_high": spec.high,
                        "ppo_mask_frac": target,
                        "method": method,
                        "matched_delta": delta,
                        "matched_delta_lo": delta_lo,
                        "mask_frac_at_delta": rate,
                        "reachable": reachable,
                        "tokens": int(counts.sum()),
                    }
                )
        return pd.DataFrame(rows)
