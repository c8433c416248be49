"""Divergences between the rollout policy μ and the trainer's policy π: exact, Binary, Top-K, single-sample.

Conventions (docs/design.md §2): μ = rollout engine, π = current trainer policy, KL means KL(μ‖π). Exact divergences take
logits `[..., vocab]`; Binary ones take the sampled token's log-probs `[...]`; Top-K ones take the engine's reported
log-probs and ids `[..., K]` plus the trainer's logits `[..., vocab]`. Every function accepts torch tensors or numpy
arrays and returns the same kind, on the input's device, in the input's float dtype (the wider of two), computing in
float32 or float64 (float64 in → float64 out; the per-token maths of Binary/Top-K/single-sample estimates always
runs in float64, which costs nothing next to a vocabulary pass).

Exact (full vocabulary; `exact`):
    TV(μ, π) = ½ Σ_v |μ_v − π_v|                 KL(μ‖π) = Σ_v μ_v (log μ_v − log π_v)
Binary (the partition {a, rest}; paper Eq. 13–14; `binary`):
    TV_bin = |π(a) − μ(a)|
    KL_bin = μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a)))
Top-K (the partition {v ∈ S} ∪ {rest}, S = the ids the engine reported; paper Eq. 15–16; `topk`):
    TV_K = ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|)
    KL_K = Σ_{v∈S} μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest)
By the data-processing inequality Binary ≤ Top-K ≤ exact whenever the sampled token a is in S.

Single-sample estimators from the sampled token's ratio r = π(a)/μ(a), a ~ μ (paper Eq. 10; Schulman's k1–k3;
`sample`):
    |r − 1|  (E = 2·TV),  k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r  (E k1 = E k3 = KL(μ‖π)).

Modules (each one's docstring holds its numerics notes):
- `common`: shared helpers (log1mexp, |eᵃ − eᵇ|, the log-mass floors, argument names, chunk size, sampled-token
  input checks).
- `exact`: tv, kl, exact_tv_kl (chunked kernels, the compiled path, the huge-logit path); exact_tv_kl_logp (the
  same from log-probabilities a caller already holds).
- `binary`: binary_tv, binary_kl.
- `topk`: token_logprobs, topk_tv, topk_kl.
- `sample`: abs_ratio_dev, kl_k1, kl_k2, kl_k3.

Keywords shared by the public functions:
- `dtype` (every divergence and estimator): the float dtype of the result, default the inputs' (the wider of two).
  dtype=torch.float64 returns the float64 value of the estimate from the given inputs, never a value rounded to a
  narrower input dtype first: exact TV/KL then run their vocabulary pass in float64 (about 2x the float32 time);
  Top-K likewise runs its vocabulary pass (π's log-sum-exp) in float64; Binary and single-sample estimates and
  Top-K's per-token maths compute in float64 anyway. Masks use it to compare an estimate with its threshold in
  float64.
- `chunk_elements` (exact and Top-K, `token_logprobs`): an int ≥ 1, elements per chunk of rows (default 2**18).
- `names` (exact and Top-K, `token_logprobs`): a mapping from this function's argument names to the names its
  error messages should use, e.g. names={"rollout_logits": "old_logits"} when the caller passes its own π_old.

Building blocks for other modules:
- `token_logprobs(logits, ids)`: log_softmax(logits) at ids `[..., K]` (−inf at −1 slots), float64, chunked over
  rows; the ids are validated.
- `resolution_log_floor(dtype)`: log(eps/2) of a dtype, the floor `binary_kl` puts under its rest buckets
  (callers need not apply it: `binary_kl` picks it from its inputs' dtype).
- `log1mexp(x)` = log(1 − eˣ); `LOG_MASS_FLOOR` = log of the smallest normal float64.

Everywhere:
- Results carry no gradient (inputs are detached): these are diagnostics and mask criteria, not loss terms.
- Reported log-probs may exceed 0 by rounding (up to 32 ulps of 1 in their dtype); such values are treated as 0.
  Larger positive values, NaN and ±inf are rejected with a ValueError.
"""

from __future__ import annotations

from trustregion_lab.divergence.binary import binary_kl, binary_tv
from trustregion_lab.divergence.common import (
    DEFAULT_CHUNK_ELEMENTS,
    LOG_MASS_FLOOR,
    log1mexp,
    resolution_log_floor,
)
from trustregion_lab.divergence.exact import exact_tv_kl, exact_tv_kl_logp, kl, tv
from trustregion_lab.divergence.sample import abs_ratio_dev, kl_k1, kl_k2, kl_k3
from trustregion_lab.divergence.topk import token_logprobs, topk_kl, topk_tv

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "LOG_MASS_FLOOR",
    "abs_ratio_dev",
    "binary_kl",
    "binary_tv",
    "exact_tv_kl",
    "exact_tv_kl_logp",
    "kl",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "log1mexp",
    "resolution_log_floor",
    "token_logprobs",
    "topk_kl",
    "topk_tv",
    "tv",
]
