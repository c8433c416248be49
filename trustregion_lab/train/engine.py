"""The rollout engine as the trainers use it: next-token logits in, a sampled token and the engine's report out.

Engines (``ENGINE_NAMES``; docs/design.md §3):
- ``"none"``: exact. μ = softmax of the logits handed over, drawn exactly; the trainers then report μ as their
  own π_old, so at equal weights every ratio is exactly 1.
- ``"fp32"``, ``"bf16"``, ``"bf16_noisy"``, ``"moe"``: the logit simulators of ``trustregion_lab.mismatch``
  (``ENGINE_PRESETS``, run by ``RolloutEngine``): rounding, kernel noise and routing flips applied to the
  trainer's logits, drawn afresh on every call and independent of the weights.
- ``"model-bf16"``, ``"model-fp16"``, ``"model-fp32"`` (sequence trainer): a second implementation of the same
  transformer, its weights cast to that precision at each weight sync and decoded with its own KV-cache
  forward in that precision; μ = the log-softmax of its logits. The mismatch then depends on the weights.
- ``"model-fp8"`` (W8A8 FP8 e4m3), ``"model-fp8-e5m2"`` (the same in e5m2), ``"model-int4"`` (weight-only INT4,
  groups of 32): the bf16 model engine with the blocks' linear layers quantized at each weight sync
  (``trustregion_lab.policies.decoding``, "Quantized engines"); the deployed engines of docs/design.md §9.

``TokenSampler`` draws one token per row: ``begin_step(step)`` re-seeds all randomness from (seed, step), so a
checkpoint needs no engine state to resume bit for bit; ``sample(logits [N, V])`` returns an ``EngineSample``.
Top-K reports follow ``topk_rule`` (``trustregion_lab.mismatch.apply_set_rule``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from trustregion_lab.mismatch import ENGINE_PRESETS, RolloutEngine, apply_set_rule, sample_categorical

__all__ = ["ENGINE_NAMES", "MODEL_ENGINES", "EngineSample", "TokenSampler"]

MODEL_ENGINES = {
    "model-bf16": "bf16",
    "model-fp16": "fp16",
    "model-fp32": "fp32",
    "model-fp8": "fp8-e4m3",
    "model-fp8-e5m2": "fp8-e5m2",
    "model-int4": "int4-g32",
}
ENGINE_NAMES = ("none", *ENGINE_PRESETS, *MODEL_ENGINES)


@dataclass
class EngineSample:
    """tokens `[N]` int64; logprob `[N]` log μ(a); engine_logits `[N, V]` log μ; topk_ids / topk_logprobs `[N, K']`."""

    tokens: torch.Tensor
    logprob: torch.Tensor
    engine_logits: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor


class TokenSampler:
    """Draws one token per row from the engine's μ (module docstring).

    engine: a name of ENGINE_NAMES; topk, topk_rule: the reported set; seed: plain int.
    For ``"none"`` and the model engines, ``sample`` takes the engine's own logits (μ = their softmax); for the
    simulators it takes the trainer's logits and applies the preset's numeric model.
    """

    def __init__(self, engine: str, topk: int, topk_rule: str, seed: int) -> None:
        if engine not in ENGINE_NAMES:
            raise ValueError(f"engine must be one of {list(ENGINE_NAMES)}, got {engine!r}")
        self.engine = engine
        self.topk = topk
        self.topk_rule = topk_rule
        self.seed = seed
        self.simulator = None
        if engine in ENGINE_PRESETS:
            self.simulator = dataclasses.replace(ENGINE_PRESETS[engine], topk=topk, topk_rule=topk_rule)
        self.begin_step(0)

    def begin_step(self, step: int) -> None:
        """Re-seed all sampling randomness from (seed, step)."""
        self._step_seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1, dtype=np.uint32)[0])
        self._generators: dict[str, torch.Generator] = {}
        self._rollout_engine = (
            None if self.simulator is None else RolloutEngine(self.simulator, self._step_seed)
        )

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._step_seed)
        return self._generators[key]

    @torch.no_grad()
    def sample(self, logits: torch.Tensor) -> EngineSample:
        """One token per row: logits `[N, V]` (any float dtype, any device) → EngineSample (float32 log-probs)."""
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape [N, vocab], got {tuple(logits.shape)}")
        if self._rollout_engine is not None:
            out = self._rollout_engine.sample(logits.detach().float())
            return EngineSample(out.tokens, out.logprob, out.engine_logits, out.topk_ids, out.topk_logprobs)
        log_mu = torch.log_softmax(logits.detach().float(), dim=-1)
        u = torch.rand(
            log_mu.shape[0],
            generator=self._generator(log_mu.device),
            dtype=torch.float64,
            device=log_mu.device,
        )
        tokens = sample_categorical(log_mu.double().exp(), u)
        if self.topk > log_mu.shape[-1]:
            raise ValueError(f"topk (K = {self.topk}) must be <= the vocabulary size V = {log_mu.shape[-1]}")
        ids = apply_set_rule(log_mu.topk(self.topk, dim=-1).indices, tokens, self.topk_rule)
        topk_logprobs = torch.where(ids >= 0, log_mu.gather(-1, ids.clamp(min=0)), -torch.inf)
        logprob = log_mu.gather(-1, tokens[:, None])[:, 0]
        return EngineSample(tokens, logprob, log_mu, ids, topk_logprobs)
