"""A generated prime-rl-format token export (``schema_version`` 1) with an LLM-like mismatch, for demos,
tests and the benchmark.

Per response token: with probability 0.7 a confident token, log μ(a) = −Exponential(0.02) (μ near 1), else
μ(a) log-uniform in [1e-4, 0.9]; the trainer's π(a) = sigmoid(logit μ(a) + ε), ε ~ Normal(0, σ_step) with
σ growing linearly from `sigma_start` to `sigma_end` over the steps (so the mismatch rises over the run),
and σ = `outlier_sigma` for a share `outlier_share` of tokens (the rare large moves that masks drop).
Advantages: one ±value per sequence (a GRPO-like group baseline), a share `zero_adv` of sequences at 0.
Prompt tokens (loss_mask false) precede each response; `null_share` of the log-probs are written as null.
Values pass through float32 like prime-rl's export. Fields follow prime-rl's ``token_export.py`` (the
per-token arrays it writes, absent columns as lists of nulls).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from trustregion_lab._io import atomic_open, atomic_write_text

__all__ = ["write_prime_rl_export"]


def _floats(values: np.ndarray) -> list[float | None]:
    out = values.astype(np.float32).astype(np.float64)
    return [None if not np.isfinite(v) else v for v in out.tolist()]


def _record(rng: np.random.Generator, step: int, rank: int, index: int, sigma: float, cfg: dict) -> dict:
    n_prompt, n_resp = cfg["prompt_length"], int(rng.integers(cfg["min_length"], cfg["max_length"] + 1))
    confident = rng.random(n_resp) < 0.7
    lmu = np.where(confident, -rng.exponential(0.02, n_resp), rng.uniform(np.log(1e-4), np.log(0.9), n_resp))
    lmu = np.minimum(lmu, -1e-7)
    logit = lmu - np.log(-np.expm1(lmu))
    noise = np.where(rng.random(n_resp) < cfg["outlier_share"], cfg["outlier_sigma"], sigma)
    shifted = logit + rng.normal(0.0, 1.0, n_resp) * noise
    lpi = -np.logaddexp(0.0, -shifted)  # log sigmoid
    adv = 0.0 if rng.random() < cfg["zero_adv"] else float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0))
    null = rng.random((2, n_resp)) < cfg["null_share"]
    lmu, lpi = np.where(null[0], np.nan, lmu), np.where(null[1], np.nan, lpi)
    length = n_prompt + n_resp
    pad = np.zeros(n_prompt)
    trainer = np.concatenate([-rng.exponential(1.0, n_prompt), lpi])
    inference = np.concatenate([pad, lmu])
    log_r = trainer - inference
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(log_r)
        delta = np.exp(trainer) - np.exp(inference)
    mask = [False] * n_prompt + [True] * n_resp
    return {
        "schema_version": 1,
        "step": step,
        "rank": rank,
        "micro_step": 0,
        "micro_sequence_idx": index,
        "export_sequence_idx": index,
        "env_name": "synthetic",
        "token_ids": rng.integers(0, 151_000, length).tolist(),
        "position_ids": list(range(length)),
        "loss_mask": mask,
        "advantages": _floats(np.concatenate([pad, np.full(n_resp, adv)])),
        "inference_logprobs": _floats(inference),
        "trainer_logprobs": _floats(trainer),
        "entropy": _floats(rng.exponential(0.6, length)),
        "mismatch_kl": _floats(ratio - log_r - 1.0),
        "log_importance_ratio": _floats(log_r),
        "importance_ratio": _floats(ratio),
        "prob_delta": _floats(delta),
        "is_masked": [
            bool(m and ((adv > 0 and d > 0.2) or (adv <= 0 and d < -0.2))) for m, d in zip(mask, delta)
        ],
        "is_masked_high": [bool(m and adv > 0 and d > 0.2) for m, d in zip(mask, delta)],
        "is_masked_low": [bool(m and adv < 0 and d < -0.2) for m, d in zip(mask, delta)],
        "rl_weights": [None] * length,
        "ce_weights": [None] * length,
        "ref_kl_weights": [None] * length,
    }


def write_prime_rl_export(
    root: str | os.PathLike,
    *,
    steps: int = 10,
    ranks: int = 2,
    sequences_per_rank: int = 16,
    min_length: int = 64,
    max_length: int = 512,
    prompt_length: int = 32,
    sigma_start: float = 0.05,
    sigma_end: float = 0.15,
    zero_adv: float = 0.1,
    null_share: float = 0.0,
    outlier_share: float = 0.005,
    outlier_sigma: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write ``root/token_exports/step_<n>/rank_<r>.jsonl`` for steps 1..`steps` → the token_exports folder."""
    rng = np.random.default_rng(seed)
    cfg = {
        "prompt_length": prompt_length,
        "min_length": min_length,
        "max_length": max_length,
        "zero_adv": zero_adv,
        "null_share": null_share,
        "outlier_share": outlier_share,
        "outlier_sigma": outlier_sigma,
    }
    exports = Path(root) / "token_exports"
    for step in range(1, steps + 1):
        sigma = sigma_start + (sigma_end - sigma_start) * (step - 1) / max(steps - 1, 1)
        folder = exports / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for rank in range(ranks):
            with atomic_open(folder / f"rank_{rank}.jsonl", "w") as handle:
                for index in range(sequences_per_rank):
                    record = _record(rng, step, rank, index, sigma, cfg)
                    handle.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        atomic_write_text(folder / "STABLE", "")
    return exports
