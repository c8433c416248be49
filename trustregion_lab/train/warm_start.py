"""Supervised warm start of the transformer, cached by configuration.

RL on an LLM starts from a pretrained model, competent but imperfect; the toy does the same (DESIGN §5). The warm
start is teacher forcing on *noisy* demonstrations: the task's correct answer with each token replaced, with
probability ``noise``, by a uniformly random token. Cross-entropy on the answer positions,
    loss = −mean_{rows, t} log π(y_t | prompt, y_<t)   (y = the noisy demonstration),
drives the greedy answer towards the correct one while leaving a spread of mass on other tokens, so sampling at
temperature 1 starts with a modest reward (stated in the returned stats).

Checkpoints are cached under ``cache_dir`` (default ``$TRUSTREGION_LAB_CACHE`` or ``~/.cache/trustregion_lab``)
as ``warm_start-<sha256 of the config>.pt``, written to a temp file and renamed, so a sweep pays once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustregion_lab.envs.token_sequence import TokenSequenceTask
from trustregion_lab.policies import DecoderTransformer
from trustregion_lab.train.common import atomic_torch_save

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
    """Mean verifier reward of answers decoded from ``model`` (greedy, or sampled at temperature 1)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sequence = torch.as_tensor(prompts, dtype=torch.int64, device=device)
    for _ in range(task.answer_length):
        logits = model(sequence)[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator)[:, 0].to(device)
        sequence = torch.cat([sequence, nxt[:, None]], dim=1)
    answers = sequence[:, task.prompt_length :].cpu().numpy()
    return float(np.mean(task.score(prompts, answers)))


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
    for _ in range(steps):
        prompts = task.sample_prompts(rng, batch_size)
        targets = task.targets(prompts)
        random_ids = rng.integers(task.symbol_offset, task.vocab_size, targets.shape)
        noisy = np.where(rng.random(targets.shape) < noise, random_ids, targets)
        # positions after the target's EOS are padding: no loss there
        after_eos = np.cumsum(targets == task.eos_id, axis=1) - (targets == task.eos_id) > 0
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
    full_key["torch"] = torch.__version__
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_folder(cache_dir) / f"warm_start-{digest}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(stored["model"])
        return {**stored["stats"], "cached": 1.0}
    stats = warm_start(model, task, steps=steps, lr=lr, batch_size=batch_size, noise=noise, seed=seed)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"model": state, "stats": stats, "key": full_key}, path)
    return {**stats, "cached": 0.0}
