"""Rollout-engine models: the engine's distribution μ and what an engine reports, given the trainer's logits.

A rollout engine (vLLM, SGLang, ...) and the trainer run the same weights through different kernels, precisions
and MoE routings, so at equal weights the engine samples from μ ≠ π (docs/design.md §1). `RolloutEngine` turns the
trainer's logits `[..., V]` into the engine's logits μ and an engine's report: one sampled token per row, its
log-prob, and top-K ids with their log-probs. One frozen `EngineConfig` selects the composable models; one call
runs them. Named, calibrated configurations live in `ENGINE_PRESETS`.

`EngineConfig()` (the defaults) models bf16 rounding and a bf16 softmax only; the presets add the logit noise and
routing flips that reach the reported mismatch magnitudes ("Calibration" below).

Modules: `config` (EngineConfig, ENGINE_PRESETS and their calibration), `kernels` (rounding, top-k, top-p, the
categorical draw, the Top-K set rules), `engine` (RolloutEngine), `staleness` (StalePolicy).
"""

from trustregion_lab.mismatch.config import (
    ENGINE_PRESETS,
    EXCLUDED_LOGIT,
    LOGPROB_MODES,
    PRECISIONS,
    PRESET_MISMATCH_BANDS,
    TOPK_RULES,
    EngineConfig,
)
from trustregion_lab.mismatch.engine import EngineOutput, RolloutEngine, mean_abs_logprob_gap
from trustregion_lab.mismatch.kernels import apply_set_rule, round_to_precision, sample_categorical
from trustregion_lab.mismatch.staleness import StalePolicy

__all__ = [
    "ENGINE_PRESETS",
    "EXCLUDED_LOGIT",
    "LOGPROB_MODES",
    "PRECISIONS",
    "PRESET_MISMATCH_BANDS",
    "TOPK_RULES",
    "EngineConfig",
    "EngineOutput",
    "RolloutEngine",
    "StalePolicy",
    "apply_set_rule",
    "mean_abs_logprob_gap",
    "round_to_precision",
    "sample_categorical",
]
