"""The step's speed-ups change no trajectory: each log-softmax computed once per step (``RolloutBatch.rollout_logp``,
``old_logp``) and ``dose_every``.

- The optimisation is checked bit for bit against a reference update written here the way ``step.update`` was
  before the reuse (its own log-softmax, no diagnostics): sampled tokens, rewards, loss and the weights after
  every step must be identical.
- The reorganised diagnostics (exact TV/KL from log-probs, entropy from the stored log-softmax) are checked
  against a float64 numpy computation from the batch's logits.
- ``dose_every``: rows off the schedule carry NaN dose/tv_after and skip the forward; everything else is identical.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax

from tests.test_train import _tiny_sequence
from trustregion_lab.losses import policy_loss
from trustregion_lab.train import SequenceConfig, SequenceTrainer
from trustregion_lab.train import step as step_lib
from trustregion_lab.train.base import TIMING_COLUMNS, Trainer, keep_freed_memory
from trustregion_lab.train.step import AFTER_METRICS, UPDATE_METRICS


def _tiny(tmp_path, **overrides) -> SequenceConfig:
    """test_train's tiny sequence config with the bf16 model engine, 3 steps, no checkpoints."""
    return _tiny_sequence(
        tmp_path, **{"engine": "model-bf16", "steps": 3, "checkpoint_every": 0, **overrides}
    )


def _reference_update(policy_logits, batch, *, optimizer, parameters, config, variant, rng):
    """The optimisation of ``step.update`` as it was before the log-softmax reuse; metrics: the loss only."""
    losses = []
    for _ in range(config.epochs):
        for chunk in np.array_split(rng.permutation(batch.num_rows), config.num_minibatches):
            rows = torch.from_numpy(np.sort(chunk))
            mb = batch.rows(rows)
            logits = policy_logits(rows).float()
            logprob = torch.log_softmax(logits, -1).gather(-1, mb.tokens.unsqueeze(-1)).squeeze(-1)
            loss, _ = policy_loss(
                variant.method,
                logprob=logprob,
                rollout_logprob=mb.old_logprob if variant.ratio == "recompute" else mb.rollout_logprob,
                advantages=mb.advantages,
                response_mask=mb.response_mask,
                low=variant.low,
                high=variant.high,
                ratio_cap=variant.ratio_cap,
                agg=variant.agg or config.agg,
                log_ratio_penalty=variant.log_ratio_penalty,
                logits=logits,
                topk_ids=mb.topk_ids,
                rollout_topk_logprobs=mb.topk_logprobs,
                rollout_logits=mb.rollout_logits,
                **(
                    {"old_logprob": mb.old_logprob, "old_logits": mb.old_logits}
                    if variant.anchor == "recompute"
                    else {}
                ),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return {**dict.fromkeys(UPDATE_METRICS, math.nan), "loss": sum(losses) / len(losses)}


def _trajectory(trainer: SequenceTrainer) -> list[tuple]:
    """(tokens, rewards, loss, weights) after every step of a run."""
    out = []
    for _ in range(trainer.config.steps):
        batch_tokens = []
        original = trainer.collect

        def collect(original=original, store=batch_tokens):
            batch = original()
            store.append(batch)
            return batch

        trainer.collect = collect
        row = trainer.train_step()
        trainer.collect = original
        batch = batch_tokens[0]
        weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        out.append((batch.tokens.clone(), batch.rewards.clone(), row["loss"], weights))
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        dict(variant="dppo_binary_tv"),
        dict(variant="dppo_topk_tv", epochs=2, engine="bf16"),
        dict(variant="minirl", engine="none", staleness=1),
        dict(variant="pg_is", engine="model-fp8", num_minibatches=3),
    ],
)
def test_training_is_bit_identical_to_the_recomputing_update(overrides, tmp_path, monkeypatch):
    config = _tiny(tmp_path, **overrides)
    new = _trajectory(SequenceTrainer(config))
    monkeypatch.setattr(step_lib, "update", _reference_update)
    old = _trajectory(SequenceTrainer(config))
    for step, ((t_new, r_new, l_new, w_new), (t_old, r_old, l_old, w_old)) in enumerate(zip(new, old)):
        assert torch.equal(t_new, t_old) and torch.equal(r_new, r_old), step
        assert l_new == l_old, step
        for name in w_old:
            assert torch.equal(w_new[name], w_old[name]), (step, name)


@pytest.mark.parametrize("engine", ["model-bf16", "bf16", "none"])
@pytest.mark.parametrize("seed", [0, 5])
def test_start_diagnostics_match_float64(engine, seed, tmp_path):
    """tv_exact_start, kl_exact_start and entropy against float64 numpy from the batch's own logits."""
    print(f"seed={seed}")
    trainer = SequenceTrainer(
        _tiny(tmp_path, engine=engine, seed=seed, staleness=1 if engine == "none" else 0)
    )
    trainer.train_step()  # the stale engine then serves other weights than π_old
    trainer.engine.begin_step(trainer.step)
    batch = trainer.collect()
    metrics = trainer.prepare(batch)
    mask = batch.response_mask.numpy()
    lmu = log_softmax(batch.rollout_logits.double().numpy()[mask], axis=-1)
    lpi = log_softmax(batch.old_logits.double().numpy()[mask], axis=-1)
    tv = 0.5 * np.abs(np.exp(lmu) - np.exp(lpi)).sum(-1).mean()
    kl = (np.exp(lmu) * (lmu - lpi)).sum(-1).mean()
    entropy = -(np.exp(lpi) * lpi).sum(-1).mean()
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-5)
    # float32 log-probs carry ~1e-7 of rounding each: that is the absolute floor of a float32 TV or KL
    assert metrics["tv_exact_start"] == pytest.approx(tv, rel=1e-4, abs=1e-7)
    assert metrics["kl_exact_start"] == pytest.approx(kl, rel=1e-3, abs=1e-7)
    assert tv > 1e-4 or engine == "model-bf16"  # the stale exact engine and the simulator move μ off π_old
    np.testing.assert_array_equal(batch.old_logp.numpy(), torch.log_softmax(batch.old_logits, -1).numpy())


def test_dose_every_skips_the_forward_and_changes_nothing_else(tmp_path, monkeypatch):
    every = _tiny(tmp_path, steps=5, variant="dppo_binary_tv")
    measured = SequenceTrainer(every).train()
    calls = []
    original = Trainer.after_metrics

    def counting(self, batch):
        calls.append(self.step + 1)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "after_metrics", counting)
    sparse = SequenceTrainer(_tiny(tmp_path, steps=5, variant="dppo_binary_tv", dose_every=2)).train()
    assert calls == [2, 4]
    due = sparse["step"] % 2 == 0
    assert sparse.loc[~due, list(AFTER_METRICS)].isna().all().all()
    after = list(AFTER_METRICS)
    np.testing.assert_array_equal(sparse.loc[due, after].to_numpy(), measured.loc[due, after].to_numpy())
    rest = [c for c in measured.columns if c not in TIMING_COLUMNS and c not in AFTER_METRICS]
    pd.testing.assert_frame_equal(sparse[rest], measured[rest], check_exact=True)


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_dose_every_is_validated(value, error, tmp_path):
    with pytest.raises(error, match="dose_every"):
        _tiny(tmp_path, dose_every=value)


def test_a_checkpoint_from_before_dose_every_resumes(tmp_path):
    config = _tiny(tmp_path, steps=3, checkpoint_every=1)
    uninterrupted = SequenceTrainer(config).train()
    run = tmp_path / "run"
    SequenceTrainer(config).train(run, stop_after=2)
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["dose_every"]  # as written before the field existed
    torch.save(state, path)
    resumed = SequenceTrainer(config).train(run)
    keep = [c for c in uninterrupted.columns if c not in TIMING_COLUMNS]
    pd.testing.assert_frame_equal(resumed[keep], uninterrupted[keep], check_exact=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings apply on Linux only")
def test_freed_step_memory_is_reused_without_page_faults():
    """After ``keep_freed_memory`` (every trainer calls it) a 20 MB block freed and allocated again is not
    faulted in again each time: 20 rounds cost about one round's pages (5,120), not 20 × 5,120."""
    assert keep_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = torch.empty(5 * 1024 * 1024)  # 20 MiB, below the 32 MiB mmap threshold
        block.fill_(1.0)
        del block
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print("minor page faults:", faults)
    assert faults < 3 * 5120


def test_the_malloc_settings_can_be_turned_off_by_the_environment():
    """TRUSTREGION_LAB_KEEP_FREED_MEMORY=0: a process that must hand memory back keeps glibc's defaults."""
    code = "from trustregion_lab.train.base import keep_freed_memory; print(keep_freed_memory())"
    env = {"TRUSTREGION_LAB_KEEP_FREED_MEMORY": "0", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
