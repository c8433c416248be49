"""Weighted statistics over strata (μ(a) buckets, entropy buckets, everything) used by the analysis tables."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import spearmanr

__all__ = ["rank_correlation", "weighted_sums"]


def weighted_sums(values: np.ndarray, weight: np.ndarray, group: np.ndarray, num_groups: int) -> np.ndarray:
    """Σ_{i in group g} w_i · values_i for g = 0 … num_groups − 1 → `[num_groups]` float64."""
    return np.bincount(group, weights=weight * values, minlength=num_groups)[:num_groups]


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of x and y `[n]` (each token once, weights not used).

    NaN when it is undefined: fewer than 3 tokens, or x or y constant (e.g. a Top-K estimate that is the same for
    every token of a state, in a bucket holding one state).
    """
    if x.shape[0] < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)
