"""The rollout engine as the trainers use it: one interface, resolved from its name in one place (``ENGINES``).

An engine (``Engine``) gets the served weights at each step (``sync``, at the staleness the trainer chose),
decodes with them where the trainer has a decode path (``prefill`` / ``decode_step``: logits `[N, V]` for the
next token) and draws one token per row from its μ (``sample(logits [N, V])`` → ``EngineSample``: the tokens,
log μ(a), the engine's log μ `[N, V]` and the reported top-K). ``begin_step(step)`` re-seeds all randomness
from (seed, step), so a checkpoint needs no engine state to resume bit for bit. Top-K reports follow
``topk_rule`` (``trustregion_lab.mismatch.apply_set_rule``).

Engines (``ENGINES``, name → ``EngineSpec``; docs/design.md §3.1):
- ``"none"`` (``ExactEngine``): exact. μ = softmax of the logits handed over, drawn exactly; the trainers then
  report μ as their own π_old (``Engine.exact``), so at equal weights every ratio is exactly 1.
- ``"fp32"``, ``"bf16"``, ``"bf16_noisy"``, ``"moe"`` (``SimulatorEngine``): the logit simulators of
  ``trustregion_lab.mismatch`` (``ENGINE_PRESETS``, run by ``RolloutEngine``): rounding, kernel noise and
  routing flips applied to the trainer's logits, drawn afresh on every call and independent of the weights.
- ``"model-bf16"``, ``"model-fp16"``, ``"model-fp32"`` (``ModelEngine``, sequence trainer): a second
  implementation of the same transformer, its weights cast to that precision at each weight sync and decoded
  with its own KV-cache forward in that precision; μ = the log-softmax of its logits. The mismatch then
  depends on the weights.
- ``"model-fp8"`` (W8A8 FP8 e4m3), ``"model-fp8-e5m2"`` (the same in e5m2), ``"model-int4"`` (weight-only INT4,
  groups of 32): the bf16 model engine with the blocks' linear layers quantized at each weight sync
  (``trustregion_lab.policies.decoding``, "Quantized engines"); the deployed engines of docs/design.md §9.

Adding an engine: subclass ``Engine`` (override ``sample`` and/or ``decode_precision``) and add one line
``ENGINES["name"] = EngineSpec(MyEngine, trainers=(...), description="...")``; the config validation, the CLI
help, the trainers' refusals and the exact-engine case all read the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from trustregion_lab.mismatch import ENGINE_PRESETS, RolloutEngine, apply_set_rule, sample_categorical
from trustregion_lab.policies.decoding import KVCacheDecoder

__all__ = [
    "ENGINES",
    "ENGINE_NAMES",
    "MODEL_ENGINES",
    "Engine",
    "EngineSample",
    "EngineSpec",
    "ExactEngine",
    "ModelEngine",
    "SimulatorEngine",
    "TokenSampler",
    "engines_for",
    "make_engine",
]

TRAINERS = ("bandit", "sequence")


@dataclass
class EngineSample:
    """tokens `[N]` int64; logprob `[N]` log μ(a); engine_logits `[N, V]` log μ; topk_ids / topk_logprobs `[N, K']`."""

    tokens: torch.Tensor
    logprob: torch.Tensor
    engine_logits: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor


class Engine:
    """The rollout engine's interface (module docstring). Built by ``make_engine(name, ...)``.

    name: its registry name; topk, topk_rule: the reported set; seed: plain int; ``**options``: the
    ``EngineSpec.options`` of its registry entry. ``exact``: True when the trainers replace the engine's report
    by their own forward at the served weights (``"none"``). ``decode_precision``: the precision of the
    KV-cache decode the sequence trainer runs for this engine (``KVCacheDecoder`` precisions).

    The base ``sample`` draws exactly from μ = softmax(logits): u ~ U[0, 1) per row in float64 from a generator
    seeded by (seed, step), then the categorical inverse CDF (``sample_categorical``).
    """

    exact: bool = False

    def __init__(self, name: str, topk: int, topk_rule: str, seed: int) -> None:
        self.name = name
        self.topk = topk
        self.topk_rule = topk_rule
        self.seed = seed
        self._decoder: KVCacheDecoder | None = None
        self.begin_step(0)

    @property
    def decode_precision(self) -> str:
        return "fp32"

    # ---- weights and decoding (the sequence trainer) -----------------------------------------------------
    def sync(self, model: torch.nn.Module) -> None:
        """Hand the engine the served weights (``model``, a ``DecoderTransformer``); the first call builds the
        KV-cache decoder in ``decode_precision``, later calls reload its weights (quantizing again)."""
        if self._decoder is None:
            self._decoder = KVCacheDecoder(model, self.decode_precision)
        else:
            self._decoder.load_weights(model)

    def _decoder_or_raise(self) -> KVCacheDecoder:
        if self._decoder is None:
            raise RuntimeError(f"engine {self.name!r} has no weights: call sync(model) before decoding")
        return self._decoder

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Prompts `[N, P]` int64 → float32 logits `[N, V]` for the first answer token."""
        return self._decoder_or_raise().prefill(prompt_ids)

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens `[N]` → float32 logits `[N, V]` for the next token."""
        return self._decoder_or_raise().step(tokens)

    # ---- sampling -------------------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Re-seed all sampling randomness from (seed, step)."""
        self._step_seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1, dtype=np.uint32)[0])
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._step_seed)
        return self._generators[key]

    @staticmethod
    def _check_logits(logits: torch.Tensor) -> None:
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape [N, vocab], got {tuple(logits.shape)}")

    @torch.no_grad()
    def sample(self, logits: torch.Tensor) -> EngineSample:
        """One token per row: logits `[N, V]` (any float dtype, any device) → EngineSample (float32 log-probs)."""
        self._check_logits(logits)
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


class ExactEngine(Engine):
    """``"none"``: μ = softmax of the logits handed over (fp32 decode); the trainers report their own π_old."""

    exact = True


class SimulatorEngine(Engine):
    """A logit simulator of ``trustregion_lab.mismatch`` (``preset``: a key of ``ENGINE_PRESETS``), applied to the
    trainer's logits (fp32 decode) by a ``RolloutEngine`` re-seeded at every ``begin_step``."""

    def __init__(self, name: str, topk: int, topk_rule: str, seed: int, *, preset: str) -> None:
        self.simulator = dataclasses.replace(ENGINE_PRESETS[preset], topk=topk, topk_rule=topk_rule)
        super().__init__(name, topk, topk_rule, seed)

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self._rollout_engine = RolloutEngine(self.simulator, self._step_seed)

    @torch.no_grad()
    def sample(self, logits: torch.Tensor) -> EngineSample:
        self._check_logits(logits)
        out = self._rollout_engine.sample(logits.detach().float())
        return EngineSample(out.tokens, out.logprob, out.engine_logits, out.topk_ids, out.topk_logprobs)


class ModelEngine(Engine):
    """A model engine: the KV-cache decoder in ``precision`` (``KVCacheDecoder``: a cast or a quantized engine);
    μ = the softmax of its own logits, drawn exactly."""

    def __init__(self, name: str, topk: int, topk_rule: str, seed: int, *, precision: str) -> None:
        self.precision = precision
        super().__init__(name, topk, topk_rule, seed)

    @property
    def decode_precision(self) -> str:
        return self.precision


@dataclass(frozen=True)
class EngineSpec:
    """One registry entry: ``cls(name, topk, topk_rule, seed, **options)`` builds the engine; ``trainers``: the
    trainers that support it (of ``"bandit"``, ``"sequence"``); ``description``: one line for the CLI help."""

    cls: type[Engine]
    trainers: tuple[str, ...] = TRAINERS
    description: str = ""
    options: dict[str, str] = dataclasses.field(default_factory=dict)


_MODEL_PRECISIONS = {
    "model-bf16": ("bf16", "the transformer decoded in bf16"),
    "model-fp16": ("fp16", "the transformer decoded in fp16"),
    "model-fp32": ("fp32", "the transformer decoded in fp32 (matches the trainer up to kernels)"),
    "model-fp8": ("fp8-e4m3", "W8A8 FP8 e4m3 linears, bf16 elsewhere"),
    "model-fp8-e5m2": ("fp8-e5m2", "W8A8 FP8 e5m2 linears, bf16 elsewhere"),
    "model-int4": ("int4-g32", "weight-only INT4 linears (groups of 32), bf16 activations"),
}

ENGINES: dict[str, EngineSpec] = {
    "none": EngineSpec(ExactEngine, TRAINERS, "exact: mu = pi at the served weights"),
    **{
        preset: EngineSpec(SimulatorEngine, TRAINERS, f"logit simulator {preset!r}", {"preset": preset})
        for preset in ENGINE_PRESETS
    },
    **{
        name: EngineSpec(ModelEngine, ("sequence",), text, {"precision": precision})
        for name, (precision, text) in _MODEL_PRECISIONS.items()
    },
}
# the names at import; code that must see engines registered later reads ENGINES itself
ENGINE_NAMES = tuple(ENGINES)
MODEL_ENGINES = {name: spec.options["precision"] for name, spec in ENGINES.items() if spec.cls is ModelEngine}


def engines_for(trainer: str) -> tuple[str, ...]:
    """The registered engine names that ``trainer`` (``"bandit"`` or ``"sequence"``) supports."""
    return tuple(name for name, spec in ENGINES.items() if trainer in spec.trainers)


def make_engine(name: str, topk: int, topk_rule: str, seed: int, *, trainer: str | None = None) -> Engine:
    """The one place an engine name is resolved: ``ENGINES[name]`` built with the reported set (topk,
    topk_rule) and the seed. With ``trainer`` given, an engine that trainer does not support is refused."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {name!r}")
    spec = ENGINES[name]
    if trainer is not None and trainer not in spec.trainers:
        raise ValueError(
            f"engine={name!r} is not supported by the {trainer} trainer (it runs with the "
            f"{'/'.join(spec.trainers)} trainer); the {trainer} trainer's engines are {list(engines_for(trainer))}"
        )
    return spec.cls(name, topk, topk_rule, seed, **spec.options)


def TokenSampler(engine: str, topk: int, topk_rule: str, seed: int) -> Engine:
    """The engine ``engine`` as a token sampler (``make_engine``; kept for the name's earlier users)."""
    return make_engine(engine, topk, topk_rule, seed)
