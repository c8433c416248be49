"""Tabular softmax policy: one free logit per (context, token).

π(a | s) = softmax(θ[s])_a with θ of shape [num_contexts, vocab], initialised from a logit model (for example
the LLM-like initial logits of ``trustregion_lab/LargeVocabBandit-v0``), so the policy starts where an LLM would.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TabularSoftmaxPolicy"]


class TabularSoftmaxPolicy(nn.Module):
    """π(·|s) = softmax(θ[s]); θ: [num_contexts, vocab], float32.

    Args:
        initial_logits: [num_contexts, vocab] starting logits (numpy or torch; copied).
    """

    def __init__(self, initial_logits: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        if isinstance(initial_logits, torch.Tensor):
            logits = initial_logits.detach().clone()
        else:
            logits = torch.from_numpy(np.array(initial_logits, dtype=np.float32))
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise ValueError(
                f"initial_logits must have shape [num_contexts, vocab] with vocab >= 2, got {tuple(logits.shape)}"
            )
        if not torch.isfinite(logits).all():
            raise ValueError("initial_logits must be finite")
        self.logits = nn.Parameter(logits.detach().to(torch.float32).clone())

    @property
    def num_contexts(self) -> int:
        return int(self.logits.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.logits.shape[1])

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        """Logits θ[contexts]: contexts [batch] (int) -> [batch, vocab]."""
        return self.logits[contexts]
