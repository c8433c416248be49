"""Buckets for stratifying token-level results: μ(a) on a log scale, entropy of μ on a linear scale.

μ(a) buckets are decades from 1e-6 to 0.1 plus one bucket for everything below 1e-6, and the top decade split
where LLM tokens crowd (most sampled tokens have μ(a) near 1):
    [0, 1e-6), [1e-6, 1e-5), ..., [1e-2, 0.1), [0.1, 0.5), [0.5, 0.9), [0.9, 0.99), [0.99, 1].
Entropy buckets (nats) default to [0, 0.1), [0.1, 0.67), [0.67, 2), [2, 4), [4, ∞): 0.67 nats is the
80th-percentile token entropy of reasoning traces (Wang et al. 2025, arXiv 2506.01939), so the two lowest buckets
hold the "confident" positions and the rest the high-entropy "forking" ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_ENTROPY_EDGES",
    "DEFAULT_MU_EDGES",
    "Buckets",
    "entropy_buckets",
    "mu_buckets",
]

DEFAULT_MU_EDGES: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99, 1.0)
DEFAULT_ENTROPY_EDGES: tuple[float, ...] = (0.0, 0.1, 0.67, 2.0, 4.0, float("inf"))


@dataclass(frozen=True)
class Buckets:
    """Half-open intervals [lo, hi) (the last one closed) with printable labels."""

    edges: tuple[float, ...]
    labels: tuple[str, ...]

    @property
    def lo(self) -> np.ndarray:
        return np.asarray(self.edges[:-1], dtype=np.float64)

    @property
    def hi(self) -> np.ndarray:
        return np.asarray(self.edges[1:], dtype=np.float64)

    def assign(self, values: np.ndarray, name: str = "values") -> np.ndarray:
        """Bucket index per value `[...]` → int `[...]`; values outside [edges[0], edges[-1]] raise ValueError."""
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values) | np.isposinf(values)):
            raise ValueError(f"{name} must not contain NaN or -inf")
        if np.any(values < self.edges[0]) or np.any(values > self.edges[-1]):
            raise ValueError(f"{name} must lie in [{self.edges[0]}, {self.edges[-1]}]")
        index = np.searchsorted(np.asarray(self.edges[1:-1]), values, side="right")
        return index.astype(np.int64)


def _check_edges(edges: Sequence[float], name: str) -> tuple[float, ...]:
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(not (a < b) for a, b in itertools.pairwise(edges)):
        raise ValueError(f"{name} must be at least two strictly increasing numbers, got {edges}")
    return edges


def _format_edge(value: float) -> str:
    if value == 0:
        return "0"
    if np.isinf(value):
        return "inf"
    exponent = np.log10(value)
    if abs(exponent - round(exponent)) < 1e-9 and value < 0.1:
        return f"1e{round(exponent)}"
    return f"{value:g}"


def mu_buckets(edges: Sequence[float] = DEFAULT_MU_EDGES) -> Buckets:
    """Buckets of μ(a) (probability of the sampled token under the rollout engine), log-spaced by default."""
    edges = _check_edges(edges, "mu bucket edges")
    if edges[0] < 0 or edges[-1] > 1:
        raise ValueError(f"mu bucket edges must lie in [0, 1], got {edges}")
    labels = tuple(f"{_format_edge(a)}–{_format_edge(b)}" for a, b in itertools.pairwise(edges))
    return Buckets(edges=edges, labels=labels)


def entropy_buckets(edges: Sequence[float] = DEFAULT_ENTROPY_EDGES) -> Buckets:
    """Buckets of the entropy of μ(·|s) in nats."""
    edges = _check_edges(edges, "entropy bucket edges")
    if edges[0] < 0:
        raise ValueError(f"entropy bucket edges must be >= 0, got {edges}")
    labels = tuple(f"{_format_edge(a)}–{_format_edge(b)}" for a, b in itertools.pairwise(edges))
    return Buckets(edges=edges, labels=labels)
