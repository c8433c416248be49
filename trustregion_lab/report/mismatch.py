"""Streaming mismatch statistics: by_step.csv, by_position.csv and sequence_is.csv.

Per group (a training step, or a bucket of positions in the response) the sums behind the metrics of
`trustregion_lab.report.names` are accumulated chunk by chunk (sums, counts, maxima), so memory is independent of
the token count. Position buckets are [0, 1), [1, 2), [2, 4), [4, 8), ... (powers of two).

Sequence importance weights (sequence_is.csv), with log r_t = log π(a_t) − log μ(a_t) over a sequence's n
response tokens:
    token:     w_t = r_t (one weight per token)
    product:   w = exp(Σ_t log r_t)                 (sequence-level IS)
    geometric: w = exp((1/n) Σ_t log r_t)            (length-normalised, GSPO-style)
and, for caps C = 2, 3, 5, the share with w > C (what truncation at C changes, or a mask at C drops), with
w < 1/C, and outside [1/C, C] (a two-sided mask). Only the per-sequence (Σ log r, n) pairs are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from trustregion_lab.report.names import framework_metric
from trustregion_lab.report.view import ReportMask, TokenView

__all__ = ["CAPS", "GroupStats", "SequenceStats", "position_bucket"]

CAPS: tuple[float, ...] = (2.0, 3.0, 5.0)
RATIO_CAP = 10.0
_SUMS = (
    "n",
    "abs",
    "lpabs",
    "k1",
    "k3",
    "chi2",
    "r",
    "r2",
    "cap",
    "n_tv",
    "tv",
    "n_kl",
    "kl",
    "n_h",
    "h",
    "n_rw",
    "rw",
    "n_fm",
    "fm",
)
_MAXES = ("abs_max", "max", "neg_min", "lpabs_max")  # neg_min stores max(−(π − μ)) = −min


def position_bucket(position: np.ndarray) -> np.ndarray:
    """Bucket index `[n]`: 0 for position 0, k for positions in [2^(k−1), 2^k)."""
    p = np.maximum(position, 0)
    return np.where(p == 0, 0, np.floor(np.log2(np.maximum(p, 1))).astype(np.int64) + 1)


class GroupStats:
    """Mismatch sums per integer group key (step, or position bucket) plus the mask rates of `specs`."""

    def __init__(self, specs: Sequence[ReportMask]) -> None:
        self.specs = list(specs)
        self.width = len(_SUMS) + 2 * len(self.specs)
        self.sums: dict[int, np.ndarray] = {}
        self.maxes: dict[int, np.ndarray] = {}

    def add(self, view: TokenView, keys: np.ndarray) -> None:
        c = view.chunk
        ok = view.ok
        with np.errstate(over="ignore", invalid="ignore"):
            self._add(view, keys, c, ok)

    def _add(self, view: TokenView, keys: np.ndarray, c, ok: np.ndarray) -> None:
        delta = np.where(ok, np.exp(np.nan_to_num(c.logprob)) - view.mu, 0.0)
        log_r = np.where(ok, view.log_ratio, 0.0)
        r = np.where(ok, view.ratio, 0.0)
        columns = {
            "n": ok,
            "abs": np.abs(delta),
            "lpabs": np.abs(log_r),
            "k1": -log_r,
            "k3": np.where(ok, np.expm1(log_r) - log_r, 0.0),
            "chi2": np.where(ok, np.expm1(log_r) ** 2, 0.0),
            "r": r,
            "r2": r * r,
            "cap": ok & (r > RATIO_CAP),
        }
        pairs = (
            ("tv_exact", "tv"),
            ("kl_exact", "kl"),
            ("entropy", "h"),
            ("reward", "rw"),
            ("framework_masked", "fm"),
        )
        for name, short in pairs:
            column = c.get(name)
            has = np.isfinite(column) if column is not None else np.zeros(view.n, dtype=bool)
            columns[f"n_{short}"] = has
            columns[short] = np.where(has, np.nan_to_num(column) if column is not None else 0.0, 0.0)
        stacked = [columns[name] for name in _SUMS]
        for spec in self.specs:
            members, drop = view.drop(spec)
            stacked += [members, drop]
        unique, inverse = np.unique(keys, return_inverse=True)
        for j, values in enumerate(stacked):
            sums = np.bincount(inverse, weights=values.astype(np.float64), minlength=unique.size)
            for i, key in enumerate(unique):
                self.sums.setdefault(int(key), np.zeros(self.width))[j] += sums[i]
        maxima = [np.where(ok, np.abs(delta), -np.inf), np.where(ok, delta, -np.inf)]
        maxima += [np.where(ok, -delta, -np.inf), np.where(ok, np.abs(log_r), -np.inf)]
        for j, values in enumerate(maxima):
            best = np.full(unique.size, -np.inf)
            np.maximum.at(best, inverse, values)
            for i, key in enumerate(unique):
                store = self.maxes.setdefault(int(key), np.full(len(_MAXES), -np.inf))
                store[j] = max(store[j], best[i])

    def metrics(self, key: int) -> list[tuple[str, ReportMask | None, float, float]]:
        """(metric, spec or None, value, denominator) for one group."""
        s = dict(zip(_SUMS, self.sums[key][: len(_SUMS)]))
        mx = dict(zip(_MAXES, self.maxes[key]))
        n = s["n"]

        def mean(total: float, count: float) -> float:
            return total / count if count else np.nan

        def finite_max(value: float) -> float:
            return value if np.isfinite(value) else np.nan

        out = [
            ("mismatch_mean", None, mean(s["abs"], n), n),
            ("mismatch_abs_max", None, finite_max(mx["abs_max"]), n),
            ("mismatch_max", None, finite_max(mx["max"]), n),
            ("mismatch_min", None, -finite_max(mx["neg_min"]), n),
            ("mismatch_logprob_abs", None, mean(s["lpabs"], n), n),
            ("mismatch_logprob_abs_max", None, finite_max(mx["lpabs_max"]), n),
            ("mismatch_k1", None, mean(s["k1"], n), n),
            ("mismatch_k3", None, mean(s["k3"], n), n),
            ("chi2", None, mean(s["chi2"], n), n),
            ("ess", None, s["r"] ** 2 / (n * s["r2"]) if n and s["r2"] > 0 else np.nan, n),
            ("ratio_cap_frac", None, mean(s["cap"], n), n),
        ]
        for metric, count, total in (
            ("tv_exact", "n_tv", "tv"),
            ("kl_exact", "n_kl", "kl"),
            ("entropy", "n_h", "h"),
            ("reward", "n_rw", "rw"),
            ("framework_mask_frac", "n_fm", "fm"),
        ):
            if s[count]:
                out.append((metric, None, s[total] / s[count], s[count]))
        base = len(_SUMS)
        for i, spec in enumerate(self.specs):
            tokens, dropped = self.sums[key][base + 2 * i], self.sums[key][base + 2 * i + 1]
            out.append(("mask_frac", spec, dropped / tokens if tokens else np.nan, tokens))
        return out

    def table(self, key_columns: dict[int, dict], framework: str | None = None) -> pd.DataFrame:
        """Long table: key columns, metric, method, low, high, value, tokens, source, source_metric."""
        rows = []
        for key in sorted(self.sums):
            for metric, spec, value, tokens in self.metrics(key):
                name, _ = framework_metric(
                    framework,
                    metric,
                    spec.method if spec else "",
                    spec.low if spec else 0.0,
                    spec.high if spec else 0.0,
                )
                rows.append(
                    {
                        **key_columns[key],
                        "metric": metric,
                        "method": spec.method if spec else "",
                        "low": spec.low if spec else np.nan,
                        "high": spec.high if spec else np.nan,
                        "anchor": spec.anchor if spec else "",
                        "value": value,
                        "tokens": int(tokens),
                        "source": framework or "",
                        "source_metric": name,
                    }
                )
        return pd.DataFrame(rows)


class SequenceStats:
    """Per-sequence Σ log r and token counts, and token-level cap shares (sequence_is.csv)."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []
        self.pending = 0
        self.token = {"n": 0, "lr": 0.0, "lr_abs": 0.0} | {
            f"{side}{cap:g}": 0 for cap in CAPS for side in "ab"
        }

    def add(self, view: TokenView) -> None:
        ok = view.ok
        log_r = view.log_ratio[ok]
        t = self.token
        t["n"] += int(ok.sum())
        t["lr"] += float(log_r.sum())
        t["lr_abs"] += float(np.abs(log_r).sum())
        for cap in CAPS:
            t[f"a{cap:g}"] += int((log_r > np.log(cap)).sum())
            t[f"b{cap:g}"] += int((log_r < -np.log(cap)).sum())
        frame = pd.DataFrame({"step": view.chunk.step[ok], "sequence": view.chunk.sequence[ok], "lr": log_r})
        self.parts.append(frame.groupby(["step", "sequence"], sort=False)["lr"].agg(["sum", "count"]))
        self.pending += 1
        if self.pending >= 64:
            self.parts = [self._combined()]
            self.pending = 0

    def _combined(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({"sum": [], "count": []})
        return pd.concat(self.parts).groupby(level=[0, 1], sort=False).sum()

    def table(self) -> pd.DataFrame:
        t = self.token
        seq = self._combined()
        sums, counts = seq["sum"].to_numpy(np.float64), seq["count"].to_numpy(np.float64)
        levels = [("token", "tokens", None, None)]
        if counts.size:
            levels += [
                ("product", "sequences", sums, counts),
                ("geometric", "sequences", sums / counts, counts),
            ]
        rows = []
        for level, units, log_w, lengths in levels:
            for cap in CAPS:
                if log_w is None:
                    n = t["n"]
                    above, below = t[f"a{cap:g}"], t[f"b{cap:g}"]
                    mean_lw, mean_abs = (t["lr"] / n, t["lr_abs"] / n) if n else (np.nan, np.nan)
                    mean_len = 1.0
                else:
                    n = log_w.size
                    above, below = int((log_w > np.log(cap)).sum()), int((log_w < -np.log(cap)).sum())
                    mean_lw, mean_abs, mean_len = (
                        float(log_w.mean()),
                        float(np.abs(log_w).mean()),
                        lengths.mean(),
                    )
                rows.append(
                    {
                        "level": level,
                        "cap": cap,
                        "units": units,
                        "count": int(n),
                        "frac_above": above / n if n else np.nan,
                        "frac_below": below / n if n else np.nan,
                        "frac_outside": (above + below) / n if n else np.nan,
                        "log_weight_mean": mean_lw,
                        "log_weight_abs_mean": mean_abs,
                        "mean_length": float(mean_len),
                    }
                )
        return pd.DataFrame(rows)
