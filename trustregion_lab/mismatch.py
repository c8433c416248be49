"""Rollout-engine models: the engine's distribution μ and what an engine reports, given the trainer's logits.

A rollout engine (vLLM, SGLang, ...) and the trainer run the same weights through different kernels, precisions
and MoE routings, so at equal weights the engine samples from μ ≠ π (DESIGN §1). `RolloutEngine` turns the
trainer's logits `[..., V]` into the engine's logits μ and an engine's report: one sampled token per row, its
log-prob, and top-K ids with their log-probs. One frozen `EngineConfig` selects the composable models; one call
runs them. Named, calibrated configurations live in `ENGINE_PRESETS`.

`EngineConfig()` (the defaults) models bf16 rounding and a bf16 softmax only; the presets add the logit noise and
routing flips that reach the reported mismatch magnitudes ("Calibration" below).

Pipeline per row (x = the trainer's logits; rows are processed in chunks of at most 2**24 elements):

1. Routing flip (MoE): with probability `routing_flip_prob` a row is routed to a perturbed "expert":
   z = x + routing_noise · ε_route, ε_route ~ N(0, 1) per vocabulary entry (fresh per row and call).
2. Logit noise (kernel differences): z = z + logit_noise · ε, ε ~ N(0, 1) per entry.
   Steps 1–2 run in float32 ("float32 or better"; float64 inputs are first cast to float32).
3. Precision: z is rounded to `precision` (bf16 / fp16: exactly torch's own `.to(dtype)` cast, round to nearest
   even; fp32: no further rounding) and the log-softmax is computed by torch in that dtype, so its output is
   rounded to that dtype as well. This is what makes μ ≠ π at equal weights: raw = log_softmax_dtype(round(z)).
4. Processing (what the sampler sees): temperature T, then top-p:
       processed = log_softmax_dtype(round(z) / T)            (the division also in `precision`; T = 1 skips it)
   top-p keeps the smallest set of most likely tokens whose processed mass reaches `top_p` (every token tied
   with the last kept one is kept too) and renormalises over that kept set: log μ_v = processed_v − log Σ_kept
   exp(processed) for kept v. `top_p = 1` keeps every token and skips this step.
5. μ is the distribution the engine samples from. Its log-probs are renormalised in float32 (a log-softmax of
   the rounded log-probs, which removes the tiny normalisation error of a low-precision softmax), so
   `engine_logits` = log μ exactly up to float32 rounding: exp(engine_logits) sums to 1 over each row.
   Tokens excluded by top-p get the finite value EXCLUDED_LOGIT = −1e4 (the `divergence` module rejects
   non-finite logits). A row's largest log-prob is ≥ log(1/V) > −13 (V ≤ 262,144), so an excluded token sits
   more than 9,900 nats below the row's maximum and exp of it underflows to exactly 0 in float32 and float64
   (threshold ≈ −745), also inside a log-sum-exp.

Raw vs processed log-probs (vLLM's `logprobs_mode` semantics): the engine always samples from the processed
distribution μ. `logprob_mode = "processed"` reports log μ (the renormalised, tempered, top-p log-probs: the
true behaviour-policy log-probs; for a token excluded by top-p this is EXCLUDED_LOGIT). `"raw"` reports the
log-softmax of the model's rounded logits before temperature and top-p (step 3, renormalised in float32 the same
way). With T = 1 and top_p = 1 the two coincide; otherwise a trainer that takes raw log-probs as μ sees a biased
importance ratio π/μ_raw ≠ π/μ.

Top-K reports (DESIGN §2; K = `topk`): ids are the K largest μ (ties broken deterministically but otherwise
arbitrarily: a bf16 softmax produces many tied log-probs), reported with their log-probs under `logprob_mode`.
The set rule decides what happens to the sampled token a:
- "topk": the K largest only (a may be missing); shape [..., K].
- "topk_plus_sampled" (the paper's §4.4): K largest plus a when it is missing; shape [..., K + 1], and the last
  slot is padding (id −1, log-prob −inf) when a is already among the K.
- "topk_replace_last" (the authors' code): when a is missing it overwrites slot K (index K − 1); shape [..., K].
`divergence.topk_tv/topk_kl` accept these reports as they are (id −1 marks an unused slot).

Sampling is exact for μ and cheap: with H = the internal top-k' tokens of μ (k' = max(K, 32)) and
m_H = Σ_{v∈H} μ_v, a row draws u₁, u₂ ~ U[0, 1) (float64); if u₁ < m_H the token is the inverse-CDF draw of u₂ over
μ restricted to H, else over μ restricted to the complement of H. P(v) = m_H · μ_v / m_H = μ_v for v ∈ H and
(1 − m_H) · μ_v / (1 − m_H) = μ_v otherwise. Only rows that fall in the tail (≈ 1 − top-k' mass, a few per cent
for LLM-like rows) pay an extra pass over the vocabulary.

Cost (benchmarks/bench_mismatch.py: N = 256 rows, V = 151,936, float32, 2 CPU cores, medians of 9 interleaved
rounds, relative to one `torch.log_softmax` over the same logits; measured on an otherwise idle machine):
default config 1.5×, temperature 0.7 1.6×, top_p = 0.95 2.4–2.5×, preset "bf16" 3.9–4.1×, preset "moe"
5.1–5.2× (two runs; goal ≤ 3× for the default). Per chunk the default makes one rounding copy into a bf16 workspace, an in-place bf16
log-softmax, one conversion into the float32 output and an in-place float32 log-softmax there (step 5), a row
sum (the finiteness check) and a block-maximum top-k (`_topk_rows`: one max-reduction over blocks of 64 entries
instead of a selection over V); sampling touches the vocabulary only for rows that fall in the tail. Logit noise
and routing flips draw one Gaussian per perturbed entry, and torch's CPU normal generator costs about four
log-softmaxes per entry drawn: that is the presets' extra cost. top_p < 1 needs the nucleus of each row: a
top-64, widened ×8 for the rows whose nucleus is larger, up to a full O(V log V) selection only for rows whose
nucleus exceeds V / 8; LLM-like rows rarely need more than the first round. On a machine shared with other
busy processes every vocabulary-wide pass also waits for torch's worker threads, so the ratios grow (default
≈ 3.7× measured with two other busy processes on the 2 cores); the baseline is a single pass.

Calibration of `ENGINE_PRESETS` (test: tests/test_mismatch.py::test_preset_calibration_band): logits from the
environments' logit model `trustregion_lab.envs.logit_model.llm_like_logits(family="mixed")` (normalised
log-probs, 80 % confident and 20 % forking states), V = 32,000, one token sampled per state; measured
m = mean |log π(a) − log μ(a)| with log π = float64 log-softmax of the trainer's logits and log μ(a) the engine's
processed log-prob (`mean_abs_logprob_gap`). Over 12 draws of 2,048 states (numpy seeds 200–211, engine seed =
the same): "exact" ≈ 5e-6 (float32 rounding), "bf16" 0.0103 (draws 0.0094–0.0110), "bf16_noisy" 0.0217
(0.0207–0.0233), "moe" 0.043 (0.039–0.047) — the ≈ 0.01 (bf16-like) to ≈ 0.04 (noisy kernels, MoE routing)
per-token magnitudes reported for training–inference mismatch. `PRESET_MISMATCH_BANDS` holds the band each
preset must stay in for 2,048 fresh states; each band contains the 0.1–99.9 % bootstrap range of a 2,048-state
mean (bf16 0.0085–0.0121, bf16_noisy 0.018–0.027, moe 0.031–0.050).
Most sampled tokens have μ(a) ≈ 1, where log μ(a) barely moves, so m is far smaller than the logit noise σ
(m ≈ 0.12 σ for this family). bf16 rounding alone gives m ≈ 0.0005 here: it moves each logit by at most half an
ulp (2**-9 relative), so its effect scales with the logits' magnitude; the presets add the logit noise (kernel
differences) and routing flips that bring this logit model to the target.

Staleness (μ is the policy from k updates ago) is a property of the weights, not of the engine: `StalePolicy(k)`
keeps parameter snapshots and returns the one from k updates back; the trainer computes logits with those
parameters and passes them to the engine.

Randomness: two torch.Generators per device, seeded from the engine's int seed (one for the perturbations of
steps 1–2, one for sampling), so `RolloutEngine(c, s).engine_logits(x)` equals
`RolloutEngine(c, s).sample(x).engine_logits` bit for bit, and replays with the same seed, config, input shape,
device and torch thread count are bit-identical.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

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
    "mean_abs_logprob_gap",
    "round_to_precision",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGPROB_MODES = ("raw", "processed")
TOPK_RULES = ("topk", "topk_plus_sampled", "topk_replace_last")
EXCLUDED_LOGIT = -1.0e4
"""Value of `engine_logits` for tokens that top-p excludes: finite, and exp of it underflows to exactly 0."""

_SAMPLING_HEAD = 32  # the internal top-k' of μ used by the two-level sampler
_TOP_P_FIRST_K = 64  # first nucleus search width; escalated ×8 per round
_TOPK_BLOCK = 64  # block size of the block-maximum top-k (CPU)
# Rows are processed in chunks of at most this many elements. The chunk's large intermediates live in buffers the
# engine keeps between calls (32 MiB in bf16, 64 MiB in float32 at most), so a call neither faults in fresh pages
# for them nor runs more than a few vocabulary-wide passes per chunk (each pass is a synchronisation of torch's
# worker threads, which is what costs most on a busy machine).
_CPU_CHUNK_ELEMENTS = 1 << 24
_CUDA_CHUNK_ELEMENTS = 1 << 27
_GAP_CHUNK_ELEMENTS = 1 << 21  # float64 rows of `mean_abs_logprob_gap`


def _inplace_log_softmax_available() -> bool:
    try:
        probe = torch.tensor([[0.0, 1.0]])
        torch.ops.aten._log_softmax.out(probe, -1, False, out=probe)
        return bool(torch.allclose(probe, torch.log_softmax(torch.tensor([[0.0, 1.0]]), -1)))
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - other torch builds
        return False


_INPLACE_LOG_SOFTMAX = _inplace_log_softmax_available()


def _log_softmax_(t: torch.Tensor) -> torch.Tensor:
    """In-place log-softmax over the last axis of a contiguous tensor [n, V] (any float dtype); returns t.

    On the CPU this is aten's `_log_softmax.out` with out = input (each row is read for its max and its sum of
    exponentials before any entry is written, so aliasing is safe; `tests/test_mismatch.py` checks the result
    against a float64 reference). Elsewhere it is `t.copy_(torch.log_softmax(t))`.
    """
    if t.device.type == "cpu" and _INPLACE_LOG_SOFTMAX:
        return torch.ops.aten._log_softmax.out(t, -1, False, out=t)
    return t.copy_(torch.log_softmax(t, dim=-1))


def _topk_rows(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row, descending, with their ids. [n, V] → ([n, k], [n, k] int64).

    On the CPU with V ≥ 4·64·k: block maxima over blocks of 64 entries, the k blocks with the largest maxima,
    then `torch.topk` over their 64·k entries (plus the < 64 entries of an incomplete last block). Exact: the
    k blocks with the largest maxima hold k entries ≥ their smallest maximum t, and every entry outside them is
    ≤ t, so the top k lies in those blocks (ties may be broken differently from `torch.topk`). One cheap
    reduction over the row instead of a selection over V.
    """
    n, v = values.shape
    block = _TOPK_BLOCK
    if values.device.type != "cpu" or v < 4 * block * k or not values.is_contiguous():
        return torch.topk(values, k, dim=-1, sorted=True)
    num_blocks = v // block
    block_max = values.as_strided((n, num_blocks, block), (v, block, 1)).amax(dim=-1)
    top_blocks = torch.topk(block_max, k, dim=-1, sorted=False).indices
    candidates = (top_blocks.unsqueeze(-1) * block + torch.arange(block)).reshape(n, k * block)
    if num_blocks * block < v:
        remainder = torch.arange(num_blocks * block, v).expand(n, -1)
        candidates = torch.cat((candidates, remainder), dim=-1)
    top_values, position = torch.topk(values.gather(-1, candidates), k, dim=-1, sorted=True)
    return top_values, candidates.gather(-1, position)


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


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
    topk_rule: "topk" | "topk_plus_sampled" | "topk_replace_last" (DESIGN §2).
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
        _check_choice(self.precision, "precision", list(PRECISIONS))
        _check_choice(self.logprob_mode, "logprob_mode", LOGPROB_MODES)
        _check_choice(self.topk_rule, "topk_rule", TOPK_RULES)
        for name in ("logit_noise", "routing_noise"):
            if _check_real(getattr(self, name), name) < 0:
                raise ValueError(
                    f"{name} must be a float >= 0 (a standard deviation), got {getattr(self, name)!r}"
                )
        p = _check_real(self.routing_flip_prob, "routing_flip_prob")
        if not 0.0 <= p <= 1.0:
            raise ValueError(
                f"routing_flip_prob must be a probability in [0, 1], got {self.routing_flip_prob!r}"
            )
        if _check_real(self.temperature, "temperature") <= 0:
            raise ValueError(f"temperature must be a float > 0, got {self.temperature!r}")
        top_p = _check_real(self.top_p, "top_p")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int | np.integer):
            raise TypeError(f"topk must be an int >= 1, got {type(self.topk).__name__}")
        if self.topk < 1:
            raise ValueError(f"topk must be an int >= 1, got {self.topk!r}")
        # store plain Python numbers so configs compare and hash by value
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.integer):
                object.__setattr__(self, f.name, int(value))
            elif isinstance(value, np.floating | int) and f.type == "float":
                object.__setattr__(self, f.name, float(value))


ENGINE_PRESETS: dict[str, EngineConfig] = {
    "exact": EngineConfig(precision="fp32"),
    "bf16": EngineConfig(precision="bf16", logit_noise=0.085),
    "bf16_noisy": EngineConfig(precision="bf16", logit_noise=0.18),
    "moe": EngineConfig(precision="bf16", logit_noise=0.085, routing_flip_prob=0.5, routing_noise=0.55),
}
"""Calibrated engines (module docstring, "Calibration"); mean |log π − log μ| per sampled token ≈ 0 / 0.01 /
0.02 / 0.04 on the environments' mixed LLM-like logits."""

PRESET_MISMATCH_BANDS: dict[str, tuple[float, float]] = {
    "exact": (0.0, 1e-4),
    "bf16": (0.007, 0.014),
    "bf16_noisy": (0.016, 0.03),
    "moe": (0.029, 0.056),
}
"""Inclusive band of mean |log π(a) − log μ(a)| each preset is calibrated to (measurement in the docstring)."""


@dataclass
class EngineOutput:
    """What the engine returns for logits [..., V] (numpy in → numpy out, torch in → torch on the input's device).

    engine_logits: [..., V] float32, log μ (normalised; EXCLUDED_LOGIT for tokens top-p excludes).
    tokens: [...] int64 sampled token ids, a ~ μ.
    logprob: [...] float32 reported log-prob of the sampled token (log μ(a) or the raw log-prob, per
        `logprob_mode`).
    topk_ids: [..., K] or [..., K + 1] int64; −1 marks an unused slot ("topk_plus_sampled" when a is in the K).
    topk_logprobs: same shape, float32 reported log-probs of those ids; −inf in unused slots.
    """

    engine_logits: ArrayLike
    tokens: ArrayLike
    logprob: ArrayLike
    topk_ids: ArrayLike
    topk_logprobs: ArrayLike


def round_to_precision(logits: ArrayLike, precision: str) -> ArrayLike:
    """Round logits [..., V] to `precision` ("fp32" | "bf16" | "fp16") and return them as float32, same kind.

    Exactly torch's own cast `logits.to(dtype).float()` (round to nearest, ties to even; bf16 keeps 8 significant
    bits, fp16 11 bits and overflows to ±inf from |x| ≥ 65,520 on). The engine's step 3 applies this rounding.
    """
    _check_choice(precision, "precision", list(PRECISIONS))
    if isinstance(logits, np.ndarray):
        if not np.issubdtype(logits.dtype, np.floating):
            raise TypeError(f"logits must be a float array, got dtype {logits.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(logits)).reshape(logits.shape)
        return t.to(torch.float32).to(PRECISIONS[precision]).to(torch.float32).numpy()
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor or numpy.ndarray, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    return logits.detach().to(torch.float32).to(PRECISIONS[precision]).to(torch.float32)


def _categorical(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: index i with C_{i−1} ≤ u·C_M < C_i, C = cumsum(weights) in float64.

    weights [m, M] ≥ 0 with a positive total per row, u [m] in [0, 1) (float64) → [m] int64. A draw pushed past
    the last positive weight by rounding goes to the last positive weight: a zero weight is never drawn.
    """
    weights = weights.to(torch.float64)
    cdf = weights.cumsum(-1)
    target = (u.to(torch.float64) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=weights.shape[-1] - 1)
    zero = (weights.gather(-1, idx) <= 0).squeeze(-1)
    idx = idx.squeeze(-1)
    if bool(zero.any()):
        rows = zero.nonzero().squeeze(-1)
        positive = weights.index_select(0, rows) > 0
        idx[rows] = weights.shape[-1] - 1 - positive.flip(-1).to(torch.uint8).argmax(-1)
    return idx


def _apply_top_p(log_probs: torch.Tensor, top_p: float) -> None:
    """Restrict each row of normalised log-probs [n, V] (float32) to its top-p nucleus, in place.

    The nucleus is the smallest prefix of the descending order with mass ≥ top_p, extended by every token tied
    with its last one. Kept tokens get log μ_v = log p_v − log Σ_kept p (float64 sum), the others EXCLUDED_LOGIT.
    Search: the top 64 of each row (`_topk_rows`); a row is resolved when its list reaches mass top_p and its
    last entry is below the threshold (so no tie continues past the list); other rows widen ×8 per round, up
    to a full sort of the row. Writing a resolved row costs a fill and a scatter of the list, no pass over V.
    """
    n, v = log_probs.shape
    device = log_probs.device
    todo: torch.Tensor | None = None  # None: every row
    k = min(v, _TOP_P_FIRST_K)
    while True:
        rows = torch.arange(n, device=device) if todo is None else todo
        values, ids = _topk_rows(log_probs if todo is None else log_probs.index_select(0, todo), k)
        probs = values.to(torch.float64).exp()
        cum = probs.cumsum(-1)
        last = (cum < top_p).sum(-1, keepdim=True).clamp(max=k - 1)
        threshold = values.gather(-1, last)
        kept = values >= threshold
        if k < v:
            resolved = (cum[:, -1] >= top_p) & (values[:, -1] < threshold.squeeze(-1))
        else:
            resolved = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
        log_kept_mass = torch.where(kept, probs, 0.0).sum(-1, keepdim=True).log().to(torch.float32)
        new_values = torch.where(kept, values - log_kept_mass, EXCLUDED_LOGIT)
        if todo is None and bool(resolved.all()):
            log_probs.fill_(EXCLUDED_LOGIT).scatter_(-1, ids, new_values)
            return
        done = resolved.nonzero().squeeze(-1)
        if done.numel():
            block = torch.full((done.numel(), v), EXCLUDED_LOGIT, dtype=log_probs.dtype, device=device)
            block.scatter_(-1, ids.index_select(0, done), new_values.index_select(0, done))
            log_probs.index_copy_(0, rows.index_select(0, done), block)
        todo = rows[~resolved]
        if todo.numel() == 0:
            return
        k = min(v, k * 8)


class RolloutEngine:
    """A simulated rollout engine: `sample(logits)` → EngineOutput, `engine_logits(logits)` → log μ.

    config: the models (EngineConfig, e.g. `ENGINE_PRESETS["bf16"]`); seed: plain int seed of all randomness.
    Inputs: the trainer's logits [..., V], a float torch tensor (any device) or numpy array, finite.
    """

    def __init__(self, config: EngineConfig, seed: int) -> None:
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.config = config
        self.seed = int(seed)
        perturb_seed, sample_seed = np.random.SeedSequence(self.seed).generate_state(2, dtype=np.uint64)
        self._seeds = {"perturb": int(perturb_seed) >> 1, "sample": int(sample_seed) >> 1}
        self._generators: dict[tuple[str, str], torch.Generator] = {}
        self._workspace: dict[tuple[str, str], torch.Tensor] = {}

    def _generator(self, role: str, device: torch.device) -> torch.Generator:
        key = (role, str(device))
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seeds[role])
            self._generators[key] = gen
        return gen

    # ------------------------------------------------------------------ input handling
    def _prepare(self, logits: Any) -> tuple[torch.Tensor, bool, tuple[int, ...]]:
        """Validate the logits; return them as a [N, V] torch tensor, whether the caller passed numpy, lead shape."""
        if isinstance(logits, torch.Tensor):
            x, was_numpy = logits.detach(), False
        elif isinstance(logits, np.ndarray):
            if not np.issubdtype(logits.dtype, np.floating):
                raise TypeError(f"logits must be a float array [..., vocab], got dtype {logits.dtype}")
            if logits.ndim < 1:
                raise ValueError(f"logits must have shape [..., vocab], got a scalar of shape {logits.shape}")
            x, was_numpy = torch.from_numpy(np.ascontiguousarray(logits)), True
        else:
            raise TypeError(
                f"logits must be a torch.Tensor or numpy.ndarray [..., vocab], got {type(logits).__name__}"
            )
        if not x.dtype.is_floating_point:
            raise TypeError(f"logits must have a floating dtype [..., vocab], got {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"logits must have shape [..., vocab], got a scalar of shape {tuple(x.shape)}")
        v = x.shape[-1]
        if v < 1:
            raise ValueError(f"logits must have a non-empty vocabulary axis, got shape {tuple(x.shape)}")
        if self.config.topk > v:
            raise ValueError(f"topk (K = {self.config.topk}) must be <= the vocabulary size V = {v}")
        lead = tuple(x.shape[:-1])
        return x.reshape(-1, v), was_numpy, lead

    def _chunk_rows(self, x: torch.Tensor) -> int:
        budget = _CUDA_CHUNK_ELEMENTS if x.device.type == "cuda" else _CPU_CHUNK_ELEMENTS
        return max(1, budget // x.shape[-1])

    # ------------------------------------------------------------------ the model of μ
    def _buffer(self, role: str, rows: int, v: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A workspace [rows, V] kept between calls (one per role and device; grown when too small)."""
        key = (role, str(device))
        buffer = self._workspace.get(key)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < rows * v:
            buffer = torch.empty(rows * v, dtype=dtype, device=device)
            self._workspace[key] = buffer
        return buffer[: rows * v].view(rows, v)

    def _perturbed(self, x: torch.Tensor, flipped: torch.Tensor | None, start: int) -> torch.Tensor:
        """Steps 1–2: float32 logits of the chunk [n, V] with routing flips and logit noise applied.

        Without perturbations this is x itself when x is float32 (never written to)."""
        cfg = self.config
        n, v = x.shape
        rows = None
        if flipped is not None:
            rows = flipped[start : start + n].nonzero().squeeze(-1)
        if cfg.logit_noise == 0 and (rows is None or rows.numel() == 0):
            return x.to(torch.float32)
        gen = self._generator("perturb", x.device)
        z = self._buffer("perturbed", n, v, torch.float32, x.device).copy_(x)
        if rows is not None and rows.numel():
            noise = self._buffer("noise", rows.numel(), v, torch.float32, x.device).normal_(generator=gen)
            z.index_add_(0, rows, noise, alpha=cfg.routing_noise)
        if cfg.logit_noise > 0:
            noise = self._buffer("noise", n, v, torch.float32, x.device).normal_(generator=gen)
            z.add_(noise, alpha=cfg.logit_noise)
        return z

    def _chunk_logprobs(
        self, x: torch.Tensor, flipped: torch.Tensor | None, start: int, out: torch.Tensor, need_raw: bool
    ) -> torch.Tensor | None:
        """Steps 1–5 for one chunk: writes log μ [n, V] float32 into `out`; returns the raw log-probs [n, V]
        float32 when `need_raw` (raw differs from processed), else None.

        Low precision: round into a workspace, log-softmax in place in that dtype, copy into float32 and
        log-softmax in place again (the renormalisation of step 5). Each step is one pass over the chunk."""
        cfg = self.config
        dtype = PRECISIONS[cfg.precision]
        n, v = x.shape
        z = self._perturbed(x, flipped, start)
        raw = self._buffer("raw", n, v, torch.float32, x.device) if need_raw else None
        if dtype == torch.float32:
            rounded = z
            if raw is not None:
                _log_softmax_(raw.copy_(rounded))
                self._check_finite(raw, z, rounded)
            if cfg.temperature != 1.0:
                _log_softmax_(torch.div(rounded, cfg.temperature, out=out))
            else:
                _log_softmax_(out.copy_(rounded))
        else:
            rounded = self._buffer("rounded", n, v, dtype, x.device).copy_(z)
            if raw is not None:
                in_precision = self._buffer("in_precision", n, v, dtype, x.device)
                _log_softmax_(raw.copy_(_log_softmax_(in_precision.copy_(rounded))))
                self._check_finite(raw, z, rounded)
            if cfg.temperature != 1.0:  # the division is also done in the engine's precision
                in_precision = self._buffer("in_precision", n, v, dtype, x.device)
                _log_softmax_(out.copy_(_log_softmax_(torch.div(rounded, cfg.temperature, out=in_precision))))
            else:  # the last use of `rounded`: normalise it in place
                _log_softmax_(out.copy_(_log_softmax_(rounded)))
        self._check_finite(out, z, rounded)
        if cfg.top_p < 1.0:
            _apply_top_p(out, cfg.top_p)
        return raw

    def _check_finite(self, log_probs: torch.Tensor, z: torch.Tensor, rounded: torch.Tensor) -> None:
        """Reject NaN/inf logits and logits that overflow the precision, from one cheap row sum of the output.

        A NaN or ±inf logit (or one that rounds to ±inf) makes the log-softmax row NaN or −inf, hence its sum; a
        non-finite sum of finite log-probs (an overflow) is a false alarm and passes after the exact checks.
        """
        if bool(torch.isfinite(log_probs.sum(dim=-1)).all()):
            return
        if not bool(torch.isfinite(z).all()):
            raise ValueError("logits must be finite; found NaN/inf values")
        if not bool(torch.isfinite(rounded).all()):
            raise ValueError(
                f"logits exceed the range of precision={self.config.precision!r} (|logit| too large to round)"
            )
        if not bool(torch.isfinite(log_probs).all()):
            raise ValueError(
                f"logits (divided by temperature={self.config.temperature}) overflow the log-softmax in "
                f"precision={self.config.precision!r}; pass logits of moderate magnitude"
            )

    def _routing_flags(self, n: int, device: torch.device) -> torch.Tensor | None:
        cfg = self.config
        if cfg.routing_flip_prob <= 0 or cfg.routing_noise <= 0:
            return None
        u = torch.rand(n, generator=self._generator("perturb", device), device=device)
        return u < cfg.routing_flip_prob

    # ------------------------------------------------------------------ public API
    def engine_logits(self, logits: ArrayLike) -> ArrayLike:
        """log μ for the trainer's logits [..., V] → [..., V] float32, without sampling (for exact divergences).

        Same models and same perturbation draws as `sample` on a fresh engine with the same seed.
        """
        x, was_numpy, lead = self._prepare(logits)
        n, v = x.shape
        out = torch.empty((n, v), dtype=torch.float32, device=x.device)
        with torch.no_grad():
            flipped = self._routing_flags(n, x.device)
            step = self._chunk_rows(x)
            for start in range(0, n, step):
                stop = min(start + step, n)
                self._chunk_logprobs(x[start:stop], flipped, start, out[start:stop], need_raw=False)
        out = out.reshape(*lead, v)
        return out.cpu().numpy() if was_numpy else out

    def sample(self, logits: ArrayLike) -> EngineOutput:
        """Sample one token per row of the trainer's logits [..., V] from μ and return the engine's report.

        Returns EngineOutput(engine_logits [..., V], tokens [...], logprob [...], topk_ids [..., K or K + 1],
        topk_logprobs [..., K or K + 1]); see EngineOutput and the module docstring for the semantics.
        """
        cfg = self.config
        x, was_numpy, lead = self._prepare(logits)
        n, v = x.shape
        device = x.device
        k = cfg.topk
        head = min(v, max(k, _SAMPLING_HEAD))
        need_raw = cfg.logprob_mode == "raw" and (cfg.temperature != 1.0 or cfg.top_p < 1.0)
        width = k + 1 if cfg.topk_rule == "topk_plus_sampled" else k

        engine = torch.empty((n, v), dtype=torch.float32, device=device)
        tokens = torch.empty(n, dtype=torch.int64, device=device)
        logprob = torch.empty(n, dtype=torch.float32, device=device)
        topk_ids = torch.full((n, width), -1, dtype=torch.int64, device=device)
        topk_logprobs = torch.full((n, width), -math.inf, dtype=torch.float32, device=device)
        with torch.no_grad():
            flipped = self._routing_flags(n, device)
            uniforms = torch.rand(
                (n, 2), generator=self._generator("sample", device), device=device, dtype=torch.float64
            )
            step = self._chunk_rows(x)
            for start in range(0, n, step):
                stop = min(start + step, n)
                log_mu = engine[start:stop]
                raw = self._chunk_logprobs(x[start:stop], flipped, start, log_mu, need_raw)
                head_values, head_ids = _topk_rows(log_mu, head)
                token = self._draw(log_mu, head_values, head_ids, uniforms[start:stop])
                tokens[start:stop] = token
                reported = raw if raw is not None else log_mu
                logprob[start:stop] = reported.gather(-1, token.unsqueeze(-1)).squeeze(-1)
                ids = head_ids[:, :k]
                missing = (ids != token.unsqueeze(-1)).all(-1)
                if cfg.topk_rule == "topk_replace_last":
                    ids = ids.clone()
                    ids[:, k - 1] = torch.where(missing, token, ids[:, k - 1])
                topk_ids[start:stop, :k] = ids
                topk_logprobs[start:stop, :k] = reported.gather(-1, ids)
                if cfg.topk_rule == "topk_plus_sampled":
                    topk_ids[start:stop, k] = torch.where(missing, token, -1)
                    sampled_lp = logprob[start:stop]
                    topk_logprobs[start:stop, k] = torch.where(missing, sampled_lp, -math.inf)

        result = EngineOutput(
            engine_logits=engine.reshape(*lead, v),
            tokens=tokens.reshape(lead),
            logprob=logprob.reshape(lead),
            topk_ids=topk_ids.reshape(*lead, width),
            topk_logprobs=topk_logprobs.reshape(*lead, width),
        )
        if was_numpy:
            for f in fields(result):
                setattr(result, f.name, getattr(result, f.name).cpu().numpy())
        return result

    @staticmethod
    def _draw(
        log_mu: torch.Tensor, head_values: torch.Tensor, head_ids: torch.Tensor, uniforms: torch.Tensor
    ) -> torch.Tensor:
        """Exact two-level draw from μ (module docstring, "Sampling"). [n, V], [n, k'], [n, k'], [n, 2] → [n]."""
        head_probs = head_values.to(torch.float64).exp()
        head_mass = head_probs.sum(-1)
        u_level, u_pick = uniforms[:, 0], uniforms[:, 1]
        in_tail = u_level >= head_mass
        token = head_ids.gather(-1, _categorical(head_probs, u_pick).unsqueeze(-1)).squeeze(-1)
        if head_ids.shape[-1] < log_mu.shape[-1] and bool(in_tail.any()):
            rows = in_tail.nonzero().squeeze(-1)
            tail = log_mu.index_select(0, rows).exp_()
            tail.scatter_(-1, head_ids.index_select(0, rows), 0.0)
            has_tail = tail.sum(-1) > 0  # rounding can send a row here whose tail mass is exactly 0
            if bool(has_tail.any()):
                rows, tail = rows[has_tail], tail[has_tail]
                token[rows] = _categorical(tail, u_pick.index_select(0, rows))
        return token


def mean_abs_logprob_gap(trainer_logits: ArrayLike, tokens: ArrayLike, engine_logprob: ArrayLike) -> float:
    """Mean over rows of |log π(a) − log μ(a)|, log π = float64 log-softmax of the trainer's logits [..., V].

    tokens: [...] sampled ids a; engine_logprob: [...] the engine's reported log μ(a). The calibration measure of
    `ENGINE_PRESETS` (a float).
    """
    x = torch.as_tensor(trainer_logits)
    if not x.dtype.is_floating_point or x.ndim < 1:
        raise TypeError(f"trainer_logits must be float logits [..., vocab], got {x.dtype} {tuple(x.shape)}")
    x = x.reshape(-1, x.shape[-1])
    a = torch.as_tensor(tokens).to(x.device).reshape(-1)
    if a.dtype.is_floating_point or a.dtype == torch.bool:
        raise TypeError(f"tokens must be integer token ids, got {a.dtype}")
    lmu = torch.as_tensor(engine_logprob).to(x.device).reshape(-1).double()
    if a.shape[0] != x.shape[0] or lmu.shape[0] != x.shape[0]:
        raise ValueError("tokens and engine_logprob must have one entry per row of trainer_logits")
    total = 0.0
    step = max(1, _GAP_CHUNK_ELEMENTS // x.shape[-1])
    for start in range(0, x.shape[0], step):
        rows = x[start : start + step].double()
        picked = rows.gather(-1, a[start : start + step].long().unsqueeze(-1)).squeeze(-1)
        log_pi = picked - torch.logsumexp(rows, dim=-1)
        total += float((log_pi - lmu[start : start + step]).abs().sum())
    return total / max(1, x.shape[0])


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
