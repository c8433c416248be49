"""A fixed prompt pool at intermediate success, as in the paper's sanity test (docs/design.md §7).

The paper trains on MATH problems that the starting model solves 20–80 % of the time. The toy does the same:
after the warm start, ``candidates`` prompts are drawn (duplicates dropped), each is answered ``samples`` times by the fp32 model at
temperature 1, and its success rate s = mean verifier reward is estimated. The pool is the first ``size``
candidates with low ≤ s ≤ high; the next ``eval_size`` in-band candidates are the held-out evaluation prompts
(same distribution, never trained on). Pools are cached next to the warm start, keyed by everything that shapes
them, so a sweep pays once; a cache file holds tensors and plain types only and is read with
``torch.load(weights_only=True)`` (one that is unreadable, of an older format or holds anything else is rebuilt
with a warning). Scoring reports its progress (``report("prompt pool", rows done, rows)``).

Too few candidates in the band is a run-time failure (``PromptPoolError``, a RuntimeError): the request was
valid, the warm-started model just does not have enough prompts at intermediate success.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trustregion_lab import progress
from trustregion_lab._io import atomic_torch_save
from trustregion_lab.envs.token_sequence import TokenSequenceTask
from trustregion_lab.mismatch import sample_categorical
from trustregion_lab.policies import DecoderTransformer
from trustregion_lab.policies.decoding import KVCacheDecoder, decode_answers
from trustregion_lab.train.safe_load import safe_torch_load
from trustregion_lab.train.warm_start import cache_folder

__all__ = ["PromptPool", "PromptPoolError", "build_prompt_pool", "prompt_pool_cached", "success_rates"]

_CHUNK_ROWS = 2048
CACHE_FORMAT = "trustregion_lab.prompt_pool/2"  # tensors and plain types only (read with weights_only=True)


class PromptPoolError(RuntimeError):
    """Too few candidate prompts have a warm-start success in the band (a run-time failure, not a bad request)."""


@dataclass(frozen=True)
class PromptPool:
    """prompts `[size, prompt_length]` and their estimated success `[size]`; eval_prompts `[eval_size, ...]`."""

    prompts: np.ndarray
    success: np.ndarray
    eval_prompts: np.ndarray
    candidates_in_band: int
    candidates: int


@torch.no_grad()
def success_rates(
    model: DecoderTransformer, task: TokenSequenceTask, prompts: np.ndarray, *, samples: int, seed: int
) -> np.ndarray:
    """Mean reward of ``samples`` answers per prompt (fp32 KV-cache decode, temperature 1) → float64 `[n]`."""
    device = next(model.parameters()).device
    decoder = KVCacheDecoder(model, "fp32")
    generator = torch.Generator(device=device).manual_seed(seed)

    def choose(logits: torch.Tensor, t: int) -> torch.Tensor:
        u = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64, device=device)
        return sample_categorical(torch.softmax(logits.double(), -1), u)

    repeated = np.repeat(prompts, samples, axis=0)
    rewards = np.empty(len(repeated))
    progress.report("prompt pool", 0, len(repeated), {})
    for start in range(0, len(repeated), _CHUNK_ROWS):
        chunk = repeated[start : start + _CHUNK_ROWS]
        answers, _ = decode_answers(
            decoder, torch.as_tensor(chunk, device=device), task.answer_length, choose
        )
        rewards[start : start + len(chunk)] = task.score(chunk, answers.cpu().numpy())
        progress.report("prompt pool", start + len(chunk), len(repeated), {})
    return rewards.reshape(len(prompts), samples).mean(axis=1)


def build_prompt_pool(
    model: DecoderTransformer,
    task: TokenSequenceTask,
    *,
    size: int,
    eval_size: int,
    candidates: int,
    samples: int,
    low: float,
    high: float,
    seed: int,
) -> PromptPool:
    """The pool of the module docstring; ``PromptPoolError`` when fewer than ``size + eval_size`` candidates are
    in band."""
    drawn = task.sample_prompts(np.random.default_rng([seed, 0x9001]), candidates)
    _, first = np.unique(drawn, axis=0, return_index=True)
    drawn = drawn[np.sort(first)]  # distinct prompts, in the order drawn: pool and held-out never share one
    success = success_rates(model, task, drawn, samples=samples, seed=seed)
    in_band = np.flatnonzero((success >= low) & (success <= high))
    if len(in_band) < size + eval_size:
        raise PromptPoolError(
            f"only {len(in_band)} of {len(drawn)} distinct candidate prompts (of {candidates} drawn) have a "
            f"warm-start success in [{low}, {high}] "
            f"(the pool needs {size} + {eval_size} held out); raise pool_candidates, widen the band or change "
            "the warm start"
        )
    pool, held_out = in_band[:size], in_band[size : size + eval_size]
    return PromptPool(drawn[pool], success[pool], drawn[held_out], len(in_band), int(candidates))


def prompt_pool_cached(
    model: DecoderTransformer,
    task: TokenSequenceTask,
    *,
    key: dict[str, Any],
    cache_dir: str = "",
    **kwargs: Any,
) -> PromptPool:
    """``build_prompt_pool`` with a cache file ``prompt_pool-<sha256>.pt`` keyed by ``key`` (the warm start's
    identity) and the pool's own arguments; an unreadable cache file is rebuilt with a warning."""
    full_key = {**key, **kwargs}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_folder(cache_dir) / f"prompt_pool-{digest}.pt"
    if path.exists():
        try:
            stored = safe_torch_load(path, what="prompt-pool cache")
            if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
                raise ValueError(f"prompt-pool cache {path} has an older format")
            pool = stored["pool"]
            return PromptPool(
                prompts=pool["prompts"].numpy(),
                success=pool["success"].numpy(),
                eval_prompts=pool["eval_prompts"].numpy(),
                candidates_in_band=int(pool["candidates_in_band"]),
                candidates=int(pool["candidates"]),
            )
        except Exception as exc:  # truncated, foreign, older or unsafe file: rebuild it
            warnings.warn(f"unreadable prompt-pool cache, rebuilding it: {exc}", RuntimeWarning, stacklevel=2)
    pool = build_prompt_pool(model, task, **kwargs)
    plain = {
        "prompts": torch.from_numpy(np.ascontiguousarray(pool.prompts)),
        "success": torch.from_numpy(np.ascontiguousarray(pool.success)),
        "eval_prompts": torch.from_numpy(np.ascontiguousarray(pool.eval_prompts)),
        "candidates_in_band": int(pool.candidates_in_band),
        "candidates": int(pool.candidates),
    }
    try:
        atomic_torch_save({"format": CACHE_FORMAT, "pool": plain, "key": full_key}, path)
    except OSError as exc:
        warnings.warn(
            f"cannot write the prompt-pool cache {path} ({exc.strerror or exc}); continuing without it",
            RuntimeWarning,
            stacklevel=2,
        )
    return pool
