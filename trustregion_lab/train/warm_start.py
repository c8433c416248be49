"""Supervised warm start of the transformer, cached by configuration.

RL on an LLM starts from a pretrained model, competent but imperfect; the toy does the same (docs/design.md §5). The warm
start is teacher forcing on *noisy* demonstrations: the task's correct answer with each token replaced, with
probability ``noise``, by a uniformly random token. Cross-entropy on the answer positions,
    loss = −mean_{rows, t} log π(y_t | prompt, y_<t)   (y = the noisy demonstration),
drives the greedy answer towards the correct one while leaving a spread of mass on other tokens, so sampling at
temperature 1 starts with a modest reward (stated in the returned stats).

Checkpoints are cached under ``cache_dir`` (default ``$TRUSTREGION_LAB_CACHE`` or ``~/.cache/trustregion_lab``)
as ``warm_start-<sha256 of the config>.pt``, written to a temp file and renamed, so a sweep pays once. A cache
file holds tensors and plain types only and is read with ``torch.load(weights_only=True)``
(``trustregion_lab.train.safe_load``); one that is unreadable, of an older format or holds anything else is
rebuilt with a warning. Each step is reported on the progress channel (``report("warm start", step, steps,
{"loss": ...})``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
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

# bumped whenever DecoderTransformer's parameters change meaning, so older cache files are never loaded
ARCHITECTURE = "decoder-transformer/2"
# /2: tensors and plain types only (read with weights_only=True); files without a format are rebuilt
CACHE_FORMAT = "trustregion_lab.warm_start/2"

__all__ = ["cache_folder", "evaluate_answers", "warm_start", "warm_start_cached"]


def cache_folder(cache_dir: str = "") -> Path:
    """``cache_dir`` when given, else ``$TRUSTREGION_LAB_CACHE``, else ``~/.cache/trustregion_lab``."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("TRUSTREGION_LAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trustregion_lab"


@torch.no_grad()
def evaluate_answers(
    model: DecoderTransformer, task: TokenSequenceTask, prompts: np.ndarray, *, greedy: bool, seed: int = 0
) -> float:
    """Mean verifier reward of answers decoded from ``model`` in fp32 (greedy, or sampled at temperature 1).

    Decoded with the fp32 KV-cache decoder; sampling draws u ~ U[0, 1) per row from a generator seeded by
    ``seed`` and takes the inverse-CDF token (``trustregion_lab.mismatch.sample_categorical``).
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = KVCacheDecoder(model, "fp32")
    prompt_ids = torch.as_tensor(prompts, dtype=torch.int64, device=device)

    def choose(logits: torch.Tensor, t: int) -> torch.Tensor:
        if greedy:
            return logits.argmax(-1)
        u = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64, device=device)
        return sample_categorical(torch.softmax(logits.double(), -1), u)

    answers, _ = decode_answers(decoder, prompt_ids, task.answer_length, choose)
    return float(np.mean(task.score(prompts, answers.cpu().numpy())))


def warm_start(
    model: DecoderTransformer,
    task: TokenSequenceTask,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    noise: float,
    seed: int,
) -> dict[str, float]:
    """Teacher-force ``model`` on noisy demonstrations for ``steps`` Adam steps; return start-reward stats."""
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, 0x3A])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    prompt_length = task.prompt_length
    loss_value = float("nan")
    for step in range(steps):
        prompts = task.sample_prompts(rng, batch_size)
        targets = task.demonstrations(rng, prompts)  # scratchpad (if any), the correct answer, EOS, PAD
        random_ids = rng.integers(task.symbol_offset, task.vocab_size, targets.shape)
        noisy = np.where(rng.random(targets.shape) < noise, random_ids, targets)
        # positions after the target's EOS are padding: no loss there (the scratchpad holds no EOS)
        is_eos = targets == task.eos_id
        after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
        inputs = torch.as_tensor(np.concatenate([prompts, noisy[:, :-1]], axis=1), device=device)
        labels = torch.as_tensor(np.where(after_eos, -100, noisy), dtype=torch.int64, device=device)
        logits = model(inputs)[:, prompt_length - 1 :].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        progress.report("warm start", step + 1, steps, {"loss": loss_value})
    eval_prompts = task.sample_prompts(np.random.default_rng([seed, 0xE7]), 256)
    return {
        "warm_start_loss": loss_value,
        "start_reward_greedy": evaluate_answers(model, task, eval_prompts, greedy=True),
        "start_reward_sampled": evaluate_answers(model, task, eval_prompts, greedy=False, seed=seed),
    }


def warm_start_cached(
    model: DecoderTransformer,
    task: TokenSequenceTask,
    *,
    key: dict[str, Any],
    steps: int,
    lr: float,
    batch_size: int,
    noise: float,
    seed: int,
    cache_dir: str = "",
) -> dict[str, float]:
    """``warm_start`` with a cache: ``key`` (a JSON-able dict of everything that shapes the result) is hashed;
    a hit loads the weights into ``model``, a miss trains and stores them. Returns the stats (with ``cached``)."""
    full_key = {**key, "steps": steps, "lr": lr, "batch_size": batch_size, "noise": noise, "seed": seed}
    full_key["torch"] = str(torch.__version__)  # a plain str (TorchVersion is not weights-only loadable)
    full_key["architecture"] = ARCHITECTURE
    full_key["threads"] = torch.get_num_threads()  # kernels sum in another order with another thread count
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_folder(cache_dir) / f"warm_start-{digest}.pt"
    if path.exists():
        try:
            stored = safe_torch_load(path, what="warm-start cache")
            if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
                raise ValueError(f"warm-start cache {path} has an older format")
            model.load_state_dict(stored["model"])
            progress.report("warm start", steps, steps, {"cached": 1.0})
            return {**stored["stats"], "cached": 1.0}
        except Exception as exc:  # truncated, foreign, older or unsafe file: rebuild it
            warnings.warn(f"unreadable warm-start cache, rebuilding it: {exc}", RuntimeWarning, stacklevel=2)
    stats = warm_start(model, task, steps=steps, lr=lr, batch_size=batch_size, noise=noise, seed=seed)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    stored = {"format": CACHE_FORMAT, "model": state, "stats": stats, "key": full_key}
    try:
        atomic_torch_save(stored, path)
    except OSError as exc:
        warnings.warn(
            f"cannot write the warm-start cache {path} ({exc.strerror or exc}); continuing without it",
            RuntimeWarning,
            stacklevel=2,
        )
    return {**stats, "cached": 0.0}
