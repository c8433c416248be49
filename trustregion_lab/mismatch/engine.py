"""`RolloutEngine`: the trainer's logits in, the engine's μ and its report (sampled token, log-prob, top-K) out.

A rollout engine (vLLM, SGLang, ...) and the trainer run the same weights through different kernels, precisions
and MoE routings, so at equal weights the engine samples from μ ≠ π (docs/design.md §1). `RolloutEngine` turns the
trainer's logits `[..., V]` into the engine's logits μ and an engine's report: one sampled token per row, its
log-prob, and top-K ids with their log-probs. One frozen `EngineConfig` selects the composable models; one call
runs them. Named, calibrated configurations live in `ENGINE_PRESETS`.

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

Sampling is exact for μ and cheap: with H = the internal top-k' tokens of μ (k' = max(K, 32)) and
m_H = Σ_{v∈H} μ_v, a row draws u₁, u₂ ~ U[0, 1) (float64); if u₁ < m_H the token is the inverse-CDF draw of u₂ over
μ restricted to H, else over μ restricted to the complement of H. P(v) = m_H · μ_v / m_H = μ_v for v ∈ H and
(1 − m_H) · μ_v / (1 − m_H) = μ_v otherwise. Only rows that fall in the tail (≈ 1 − top-k' mass, a few per cent
for LLM-like rows) pay an extra pass over the vocabulary.

Randomness: two torch.Generators per device, seeded from the engine's int seed (one for the perturbations of
steps 1–2, one for sampling), so `RolloutEngine(c, s).engine_logits(x)` equals
`RolloutEngine(c, s).sample(x).engine_logits` bit for bit, and replays with the same seed, config, input shape,
device and torch thread count are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from trustregion_lab.mismatch.config import PRECISIONS, EngineConfig
from trustregion_lab.mismatch.kernels import (
    apply_set_rule,
    apply_top_p,
    log_softmax_,
    sample_categorical,
    topk_rows,
)

ArrayLike = np.ndarray | torch.Tensor

__all__ = ["EngineOutput", "RolloutEngine", "mean_abs_logprob_gap"]

_SAMPLING_HEAD = 32  # the internal top-k' of μ used by the two-level sampler
# Rows are processed in chunks of at most this many elements. The chunk's large intermediates live in buffers the
# engine keeps between calls (32 MiB in bf16, 64 MiB in float32 at most), so a call neither faults in fresh pages
# for them nor runs more than a few vocabulary-wide passes per chunk (each pass is a synchronisation of torch's
# worker threads, which is what costs most on a busy machine).
_CPU_CHUNK_ELEMENTS = 1 << 24
_CUDA_CHUNK_ELEMENTS = 1 << 27
_GAP_CHUNK_ELEMENTS = 1 << 21  # float64 rows of `mean_abs_logprob_gap`


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
                log_softmax_(raw.copy_(rounded))
                self._check_finite(raw, z, rounded)
            if cfg.temperature != 1.0:
                log_softmax_(torch.div(rounded, cfg.temperature, out=out))
            else:
                log_softmax_(out.copy_(rounded))
        else:
            rounded = self._buffer("rounded", n, v, dtype, x.device).copy_(z)
            if raw is not None:
                in_precision = self._buffer("in_precision", n, v, dtype, x.device)
                log_softmax_(raw.copy_(log_softmax_(in_precision.copy_(rounded))))
                self._check_finite(raw, z, rounded)
            if cfg.temperature != 1.0:  # the division is also done in the engine's precision
                in_precision = self._buffer("in_precision", n, v, dtype, x.device)
                log_softmax_(out.copy_(log_softmax_(torch.div(rounded, cfg.temperature, out=in_precision))))
            else:  # the last use of `rounded`: normalise it in place
                log_softmax_(out.copy_(log_softmax_(rounded)))
        self._check_finite(out, z, rounded)
        if cfg.top_p < 1.0:
            apply_top_p(out, cfg.top_p)
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
                head_values, head_ids = topk_rows(log_mu, head)
                token = self._draw(log_mu, head_values, head_ids, uniforms[start:stop])
                tokens[start:stop] = token
                reported = raw if raw is not None else log_mu
                logprob[start:stop] = reported.gather(-1, token.unsqueeze(-1)).squeeze(-1)
                ids = apply_set_rule(head_ids[:, :k], token, cfg.topk_rule)
                topk_ids[start:stop] = ids
                topk_logprobs[start:stop] = torch.where(
                    ids >= 0, reported.gather(-1, ids.clamp(min=0)), -math.inf
                )

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
        token = head_ids.gather(-1, sample_categorical(head_probs, u_pick).unsqueeze(-1)).squeeze(-1)
        if head_ids.shape[-1] < log_mu.shape[-1] and bool(in_tail.any()):
            rows = in_tail.nonzero().squeeze(-1)
            tail = log_mu.index_select(0, rows).exp_()
            tail.scatter_(-1, head_ids.index_select(0, rows), 0.0)
            has_tail = tail.sum(-1) > 0  # rounding can send a row here whose tail mass is exactly 0
            if bool(has_tail.any()):
                rows, tail = rows[has_tail], tail[has_tail]
                token[rows] = sample_categorical(tail, u_pick.index_select(0, rows))
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
