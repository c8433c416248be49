"""The rollout engine as the trainers use it: π's logits in, sampled tokens and μ's log-probs out.

``Sampler(name, topk, seed)``: ``name="none"`` is the exact engine (μ = π bit for bit: the engine's logits are π's
and its log-probs are the trainer's own float32 ``log_softmax``), so with one optimiser pass per rollout batch
every ratio is exactly 1. Any other name is a preset of ``trustregion_lab.mismatch.ENGINE_PRESETS`` ("exact",
"bf16", "bf16_noisy", "moe"), run by ``trustregion_lab.mismatch.RolloutEngine``, so μ ≠ π even at equal weights.

Randomness is a pure function of (seed, step): ``begin_step(step)`` re-seeds the engine from
``SeedSequence([seed, step])``, so a checkpoint needs no engine state to resume bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from trustregion_lab.mismatch import ENGINE_PRESETS, EngineConfig, RolloutEngine

__all__ = ["ENGINE_NAMES", "EngineSample", "Sampler"]

ENGINE_NAMES = ("none", *ENGINE_PRESETS)


@dataclass
class EngineSample:
    """tokens [N] int64; logprob [N] log μ(a); engine_logits [N, V] log μ; topk_ids / topk_logprobs [N, K]."""

    tokens: torch.Tensor
    logprob: torch.Tensor
    engine_logits: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor


def check_engine_name(name: str) -> None:
    if name not in ENGINE_NAMES:
        raise ValueError(f"engine must be one of {list(ENGINE_NAMES)}, got {name!r}")


class Sampler:
    """Draws one token per state. ``begin_step(step)`` then ``sample(logits [N, V]) -> EngineSample``.

    The engine reports ``topk`` ids with the "topk_replace_last" rule (always K ids, the sampled one among them).
    """

    def __init__(self, name: str, topk: int, seed: int) -> None:
        check_engine_name(name)
        self.name = name
        self.topk = topk
        self.seed = seed
        self.engine_config: EngineConfig | None = None
        if name != "none":
            self.engine_config = dataclasses.replace(
                ENGINE_PRESETS[name], topk=topk, topk_rule="topk_replace_last"
            )
        self._engine: RolloutEngine | None = None
        self._generator: torch.Generator | None = None
        self._step_seed = 0
        self.begin_step(0)

    def begin_step(self, step: int) -> None:
        """Re-seed all sampling randomness from (seed, step)."""
        self._step_seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1, dtype=np.uint32)[0])
        self._generator = None
        self._engine = (
            None if self.engine_config is None else RolloutEngine(self.engine_config, self._step_seed)
        )

    def _exact(self, logits: torch.Tensor) -> EngineSample:
        if self._generator is None or self._generator.device != logits.device:
            self._generator = torch.Generator(device=logits.device).manual_seed(self._step_seed)
        logp_all = torch.log_softmax(logits, dim=-1)
        cdf = logp_all.double().exp().cumsum(-1)
        u = torch.rand(logits.shape[0], generator=self._generator, device=logits.device, dtype=torch.float64)
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
        tokens = tokens.clamp(max=logits.shape[-1] - 1)
        logprob = logp_all.gather(-1, tokens[:, None])[:, 0]
        k = min(self.topk, logits.shape[-1])
        topk_logprobs, topk_ids = logp_all.topk(k, dim=-1)
        missing = ~(topk_ids == tokens[:, None]).any(-1)
        topk_ids[missing, -1] = tokens[missing]
        topk_logprobs[missing, -1] = logprob[missing]
        return EngineSample(tokens, logprob, logits, topk_ids, topk_logprobs)

    def sample(self, logits: torch.Tensor) -> EngineSample:
        """Sample from μ = engine(logits): logits [N, V] (float, any device) -> EngineSample on that device."""
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape [N, vocab], got {tuple(logits.shape)}")
        logits = logits.detach().float()
        if self._engine is None:
            return self._exact(logits)
        out = self._engine.sample(logits)
        return EngineSample(out.tokens, out.logprob, out.engine_logits, out.topk_ids, out.topk_logprobs)


def make_sampler(name: str, topk: int, seed: int) -> Sampler:
    """A ``Sampler`` for engine ``name`` ("none" = exact, else a mismatch preset), ``topk`` ids, seeded by ``seed``."""
    return Sampler(name, topk, seed)
