"""The measured off-policy dose (docs/design.md §7): ``dose`` and ``tv_after`` against a float64 numpy computation
from the trained policy after the step, zero at lr = 0 with the fp32 engine, rising with lr, and no change to the
rest of a seeded run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from tests.test_train import TINY_BANDIT, _tiny_sequence
from trustregion_lab.train import BanditConfig, BanditTrainer, SequenceTrainer
from trustregion_lab.train.base import ROW_COLUMNS, TIMING_COLUMNS, Trainer
from trustregion_lab.train.step import AFTER_METRICS, DOSE_BAND


def _bandit(**overrides) -> BanditTrainer:
    return BanditTrainer(BanditConfig(**{**TINY_BANDIT, "steps": 3, **overrides}))


def _sequence(tmp_path, **overrides) -> SequenceTrainer:
    return SequenceTrainer(_tiny_sequence(tmp_path, **{"steps": 2, **overrides}))


def _capture(trainer: Trainer) -> list:
    """Record each step's batch as ``after_metrics`` sees it (right after the step's last update)."""
    seen = []
    original = trainer.after_metrics

    def recording(batch):
        seen.append(batch)
        return original(batch)

    trainer.after_metrics = recording
    return seen


def _reference_logits(trainer: Trainer, batch) -> np.ndarray:
    """π after the step at the batch's response positions `[B, T, V]`, in float64, by an independent path."""
    if isinstance(trainer, BanditTrainer):
        table = trainer.policy.logits.detach().double().cpu().numpy()
        return table[batch.inputs.cpu().numpy()][:, None, :]
    model = copy.deepcopy(trainer.policy).double()
    with torch.no_grad():  # the full forward over every position, then the answer's
        full = model(batch.inputs)
    return full[:, trainer.task.prompt_length - 1 :].cpu().numpy()


def _reference(trainer: Trainer, batch) -> tuple[np.ndarray, float]:
    """(ratios π(a)/μ(a) `[n]`, mean exact TV) over response tokens, float64 numpy."""
    mask = batch.response_mask.cpu().numpy()
    logits = _reference_logits(trainer, batch)[mask]
    tokens = batch.tokens.cpu().numpy()[mask]
    log_pi = log_softmax(logits, axis=-1)[np.arange(len(tokens)), tokens]
    ratio = np.exp(log_pi - batch.rollout_logprob.double().cpu().numpy()[mask])
    mu = softmax(batch.rollout_logits.double().cpu().numpy()[mask], axis=-1)
    tv = 0.5 * np.abs(softmax(logits, axis=-1) - mu).sum(-1)
    return ratio, float(tv.mean())


@pytest.mark.parametrize("kind", ["bandit", "sequence"])
@pytest.mark.parametrize("seed", [0, 3])
def test_dose_and_tv_after_match_float64_reference(kind, seed, tmp_path):
    print(f"seed={seed}")
    if kind == "bandit":
        trainer = _bandit(seed=seed, engine="bf16", lr=0.3, epochs=2, num_minibatches=2)
    else:
        trainer = _sequence(tmp_path, seed=seed, lr=3e-2, epochs=2)
    seen = _capture(trainer)
    doses = []
    for _ in range(2):
        row = trainer.train_step()
        ratio, tv = _reference(trainer, seen[-1])
        low, high = DOSE_BAND
        tol = 1e-5  # float32 logits in the trainer: a ratio this close to an edge may fall either way
        surely_out = ((ratio < low - tol) | (ratio > high + tol)).sum()
        maybe_out = ((ratio < low + tol) | (ratio > high - tol)).sum()
        assert surely_out <= row["dose"] * ratio.size + 1e-9 and row["dose"] * ratio.size <= maybe_out + 1e-9
        assert row["dose"] == pytest.approx(((ratio < low) | (ratio > high)).mean(), abs=1.0 / ratio.size)
        assert row["tv_after"] == pytest.approx(tv, rel=1e-4, abs=1e-7)
        doses.append(row["dose"])
    assert max(doses) > 0  # the settings move π out of the band: the comparison above is not vacuous


@pytest.mark.parametrize("kind", ["bandit", "sequence"])
def test_dose_zero_at_lr_zero_with_fp32_engine(kind, tmp_path):
    if kind == "bandit":
        trainer = _bandit(engine="fp32", epochs=2, num_minibatches=2)
    else:
        trainer = _sequence(tmp_path, engine="model-fp32")
    for group in trainer.optimizer.param_groups:  # the config asks lr > 0; lr = 0 leaves π = μ's weights
        group["lr"] = 0.0
    for _ in range(2):
        row = trainer.train_step()
        assert row["dose"] == 0.0
        assert 0.0 <= row["tv_after"] < 1e-4
        assert row["tv_after"] == pytest.approx(row["tv_exact_start"], abs=1e-6)


def test_dose_rises_with_lr():
    means, tvs = [], []
    for lr in (1e-2, 6e-2, 1e-1, 3e-1):
        table = _bandit(seed=1, engine="fp32", lr=lr, epochs=2, num_minibatches=2, steps=4).train()
        means.append(float(table["dose"].mean()))
        tvs.append(float(table["tv_after"].mean()))
    print("mean dose by lr:", means, "mean tv_after:", tvs)
    assert means[0] < means[1] < means[2] < means[3] and means[3] > 0.5
    assert tvs[0] < tvs[1] < tvs[2] < tvs[3]


def test_rows_carry_the_dose_and_nothing_else_changes(monkeypatch):
    assert set(AFTER_METRICS) <= set(ROW_COLUMNS)
    config = dict(seed=2, engine="bf16", lr=0.2, epochs=2, num_minibatches=2, steps=3)
    measured = _bandit(**config).train()
    again = _bandit(**config).train()
    monkeypatch.setattr(Trainer, "after_metrics", lambda self, batch: dict.fromkeys(AFTER_METRICS, 0.0))
    without = _bandit(**config).train()
    keep = [c for c in measured.columns if c not in TIMING_COLUMNS]
    rest = [c for c in keep if c not in AFTER_METRICS]
    assert measured[list(AFTER_METRICS)].notna().all().all()
    np.testing.assert_array_equal(measured[keep].to_numpy(), again[keep].to_numpy())  # bit for bit
    np.testing.assert_array_equal(measured[rest].to_numpy(), without[rest].to_numpy())


def test_dose_every_measures_on_its_steps_only_and_trains_the_same():
    config = dict(seed=3, engine="bf16", lr=0.2, epochs=2, num_minibatches=2, steps=6)
    every = _bandit(**config).train()
    sparse = _bandit(**config, dose_every=3).train()
    measured = sparse["step"] % 3 == 0
    assert sparse.loc[measured, "step"].tolist() == [3, 6]
    assert sparse.loc[~measured, list(AFTER_METRICS)].isna().all().all()
    np.testing.assert_array_equal(
        sparse.loc[measured, list(AFTER_METRICS)].to_numpy(),
        every.loc[measured, list(AFTER_METRICS)].to_numpy(),
    )
    rest = [c for c in every.columns if c not in (*TIMING_COLUMNS, *AFTER_METRICS)]
    np.testing.assert_array_equal(every[rest].to_numpy(), sparse[rest].to_numpy())
    with pytest.raises(ValueError, match="dose_every"):
        BanditConfig(**TINY_BANDIT, dose_every=0)


def test_the_dose_forward_builds_no_autograd_graph(monkeypatch, tmp_path):
    """The after-step forward only measures: it runs without gradient (no activations kept for a backward)."""
    from trustregion_lab.train import step as step_lib

    seen = []
    original = step_lib.after_metrics

    def spy(batch, logits):
        seen.append((torch.is_grad_enabled(), logits.requires_grad))
        return original(batch, logits)

    monkeypatch.setattr(step_lib, "after_metrics", spy)
    _sequence(tmp_path, steps=1).train()
    _bandit(steps=1).train()
    assert seen == [(False, False), (False, False)]
