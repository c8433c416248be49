"""Engine configuration: `EngineConfig` (which numeric models an engine runs) and the calibrated presets.

`EngineConfig()` (the defaults) models bf16 rounding and a bf16 softmax only; the presets add the logit noise and
routing flips that reach the reported mismatch magnitudes ("Calibration" below).

Raw vs processed log-probs (vLLM's `logprobs_mode` semantics): the engine always samples from the processed
distribution μ. `logprob_mode = "processed"` reports log μ (the renormalised, tempered, top-p log-probs: the
true behaviour-policy log-probs; for a token excluded by top-p this is EXCLUDED_LOGIT). `"raw"` reports the
log-softmax of the model's rounded logits before temperature and top-p (step 3, renormalised in float32 the same
way). With T = 1 and top_p = 1 the two coincide; otherwise a trainer that takes raw log-probs as μ sees a biased
importance ratio π/μ_raw ≠ π/μ.

Calibration of `ENGINE_PRESETS` (test: tests/test_mismatch.py::test_preset_calibration_band): logits from the
environments' logit model `trustregion_lab.envs.logit_model.llm_like_logits(family="mixed")` (normalised
log-probs, 80 % confident and 20 % forking states), V = 32,000, one token sampled per state; measured
m = mean |log π(a) − log μ(a)| with log π = float64 log-softmax of the trainer's logits and log μ(a) the engine's
processed log-prob (`mean_abs_logprob_gap`). Over 12 draws of 2,048 states (numpy seeds 200–211, engine seed =
the same): "fp32" ≈ 5e-6 (float32 rounding), "bf16" 0.0103 (draws 0.0094–0.0110), "bf16_noisy" 0.0217
(0.0207–0.0233), "moe" 0.043 (0.039–0.047) — the ≈ 0.01 (bf16-like) to ≈ 0.04 (noisy kernels, MoE routing)
per-token magnitudes reported for training–inference mismatch. `PRESET_MISMATCH_BANDS` holds the band each
preset must stay in for 2,048 fresh states; each band contains the 0.1–99.9 % bootstrap range of a 2,048-state
mean (bf16 0.0085–0.0121, bf16_noisy 0.018–0.027, moe 0.031–0.050).
Most sampled tokens have μ(a) ≈ 1, where log μ(a) barely moves, so m is far smaller than the logit noise σ
(m ≈ 0.12 σ for this family). bf16 rounding alone gives m ≈ 0.0005 here: it moves each logit by at most half an
ulp (2**-9 relative), so its effect scales with the logits' magnitude; the presets add the logit noise (kernel
differences) and routing flips that bring this logit model to the target.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from trustregion_lab._validate import check_choice, check_int, check_probability, check_real

__all__ = [
    "ENGINE_PRESETS",
    "EXCLUDED_LOGIT",
    "LOGPROB_MODES",
    "PRECISIONS",
    "PRESET_MISMATCH_BANDS",
    "TOPK_RULES",
    "EngineConfig",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGPROB_MODES = ("raw", "processed")
TOPK_RULES = ("topk", "topk_plus_sampled", "topk_replace_last")
EXCLUDED_LOGIT = -1.0e4
"""Value of `engine_logits` for tokens that top-p excludes: finite, and exp of it underflows to exactly 0."""


@dataclass(frozen=True)
class EngineConfig:
    """The rollout engine's models (see the module docstring for the pipeline).

    precision: "fp32" | "bf16" | "fp16": logits rounded to that dtype and the log-softmax computed in it.
    logit_noise: σ ≥ 0 of additive Gaussian logit noise, z_v += σ · N(0, 1) (kernel differences).
    routing_flip_prob: probability in [0, 1] that a row comes from a perturbed "expert" (MoE routing flip).
    routing_noise: σ_route ≥ 0 of that expert's logit perturbation, z_v += σ_route · N(0, 1) on flipped rows.
    temperature: T > 0; the sampler uses logits / T.
    top_p: nucleus mass in (0, 1]; 1 keeps every token.
    logprob_mode: "processed" (log μ, after temperature and top-p) or "raw" (before them); vLLM's semantics.
    topk: K ≥ 1 ids reported per row (must be ≤ V at call time).
    topk_rule: "topk" | "topk_plus_sampled" | "topk_replace_last" (docs/design.md §2).
    """

    precision: str = "bf16"
    logit_noise: float = 0.0
    routing_flip_prob: float = 0.0
    routing_noise: float = 0.55
    temperature: float = 1.0
    top_p: float = 1.0
    logprob_mode: str = "processed"
    topk: int = 20
    topk_rule: str = "topk_plus_sampled"

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("logprob_mode", self.logprob_mode, LOGPROB_MODES)
        check_choice("topk_rule", self.topk_rule, TOPK_RULES)
        check_real("logit_noise", self.logit_noise, minimum=0.0)
        check_real("routing_noise", self.routing_noise, minimum=0.0)
        check_probability("routing_flip_prob", self.routing_flip_prob)
        check_real("temperature", self.temperature, positive=True)
        check_real("top_p", self.top_p, positive=True, maximum=1.0)
        check_int("topk", self.topk, minimum=1)
        # store plain Python numbers so configs compare and hash by value
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.integer):
                object.__setattr__(self, f.name, int(value))
            elif isinstance(value, np.floating | int) and f.type == "float":
                object.__setattr__(self, f.name, float(value))


ENGINE_PRESETS: dict[str, EngineConfig] = {
    "fp32": EngineConfig(precision="fp32"),
    "bf16": EngineConfig(precision="bf16", logit_noise=0.085),
    "bf16_noisy": EngineConfig(precision="bf16", logit_noise=0.18),
    "moe": EngineConfig(precision="bf16", logit_noise=0.085, routing_flip_prob=0.5, routing_noise=0.55),
}
"""Calibrated engines (module docstring, "Calibration"); mean |log π − log μ| per sampled token ≈ 0 / 0.01 /
0.02 / 0.04 on the environments' mixed LLM-like logits."""

PRESET_MISMATCH_BANDS: dict[str, tuple[float, float]] = {
    "fp32": (0.0, 1e-4),
    "bf16": (0.007, 0.014),
    "bf16_noisy": (0.016, 0.03),
    "moe": (0.029, 0.056),
}
"""Inclusive band of mean |log π(a) − log μ(a)| each preset is calibrated to (measurement in the docstring)."""
