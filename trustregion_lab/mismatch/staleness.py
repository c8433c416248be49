"""Staleness: the rollout engine serves the weights of k updates ago.

Staleness (μ is the policy from k updates ago) is a property of the weights, not of the engine: `StalePolicy(k)`
keeps parameter snapshots and returns the one from k updates back; the trainer computes logits with those
parameters and passes them to the engine.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import numpy as np
import torch

__all__ = ["StalePolicy"]


class StalePolicy:
    """Staleness: μ is the policy from `staleness` = k updates ago.

    Call `push(params)` with the trainer's parameters after every update (and once before the first); `params`
    may be a torch state_dict, a tensor, a numpy array or a nested dict/list/tuple of them (tensors are detached
    and cloned on their device, arrays copied, anything else deep-copied). `rollout_params()` returns the
    snapshot from k pushes back, or the oldest one while fewer than k + 1 have been pushed (the engine starts
    from the initial weights). The trainer computes the logits it hands to `RolloutEngine` with those parameters.
    """

    def __init__(self, staleness: int) -> None:
        if isinstance(staleness, bool) or not isinstance(staleness, int | np.integer):
            raise TypeError(f"staleness must be an int >= 0, got {type(staleness).__name__}")
        if staleness < 0:
            raise ValueError(f"staleness must be an int >= 0 (updates back), got {staleness}")
        self.staleness = int(staleness)
        self._snapshots: deque[Any] = deque(maxlen=self.staleness + 1)

    @staticmethod
    def _snapshot(params: Any) -> Any:
        if isinstance(params, torch.Tensor):
            return params.detach().clone()
        if isinstance(params, np.ndarray):
            return params.copy()
        if isinstance(params, dict):
            return type(params)((key, StalePolicy._snapshot(value)) for key, value in params.items())
        if isinstance(params, list | tuple):
            return type(params)(StalePolicy._snapshot(value) for value in params)
        return copy.deepcopy(params)

    def push(self, params: Any) -> None:
        """Store a snapshot of the parameters after an update."""
        self._snapshots.append(self._snapshot(params))

    @property
    def lag(self) -> int:
        """How many updates old `rollout_params()` is now: min(k, pushes − 1)."""
        if not self._snapshots:
            raise ValueError("StalePolicy is empty: push(params) the initial parameters first")
        return len(self._snapshots) - 1

    def rollout_params(self) -> Any:
        """The snapshot from k updates back (the oldest stored while fewer than k + 1 pushes)."""
        if not self._snapshots:
            raise ValueError("StalePolicy is empty: push(params) the initial parameters first")
        return self._snapshots[0]
