"""The engine seam: every engine is one ``Engine`` class resolved from ``ENGINES``; registering a new one (one class,
one registry entry) is enough for config validation, the trainers and the exact-engine case to accept it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from trustregion_lab.mismatch import ENGINE_PRESETS
from trustregion_lab.train import BanditConfig, BanditTrainer, SequenceConfig
from trustregion_lab.train.engine import (
    ENGINE_NAMES,
    ENGINES,
    MODEL_ENGINES,
    Engine,
    EngineSample,
    EngineSpec,
    ExactEngine,
    ModelEngine,
    SimulatorEngine,
    TokenSampler,
    engines_for,
    make_engine,
)

TEMPERATURE = 2.0


class HotEngine(Engine):
    """A dummy engine: μ = softmax(logits / 2), drawn exactly (the base class's sampler)."""

    def sample(self, logits: torch.Tensor) -> EngineSample:
        return super().sample(logits / TEMPERATURE)


class ExactCopy(ExactEngine):
    """The exact engine under another name: the trainers must key the exact case on the class, not the name."""


def _bandit(**overrides: object) -> BanditConfig:
    common = dict(
        steps=1, vocab_size=200, num_contexts=8, contexts_per_step=4, group_size=8, correct_rank_max=4
    )
    return BanditConfig(**{**common, "seed": 3, **overrides})


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENGINES, "hot", EngineSpec(HotEngine, ("bandit", "sequence"), "mu at temperature 2"))
    monkeypatch.setitem(ENGINES, "exact-copy", EngineSpec(ExactCopy, ("bandit",), "exact, another name"))
    monkeypatch.setitem(ENGINES, "hot-seq", EngineSpec(HotEngine, ("sequence",), "sequence trainer only"))


def test_registry_names_derive_from_engines() -> None:
    assert ENGINE_NAMES == tuple(ENGINES)
    assert set(ENGINE_NAMES) == {"none", *ENGINE_PRESETS, *MODEL_ENGINES}
    for name, spec in ENGINES.items():
        engine = make_engine(name, 5, "topk_plus_sampled", 0)
        assert isinstance(engine, spec.cls) and engine.name == name
        assert engine.exact == (name == "none")
        if name in MODEL_ENGINES:
            assert isinstance(engine, ModelEngine) and engine.decode_precision == MODEL_ENGINES[name]
            assert spec.trainers == ("sequence",)
        else:
            assert engine.decode_precision == "fp32" and "bandit" in spec.trainers
    assert all(isinstance(make_engine(p, 5, "topk", 0), SimulatorEngine) for p in ENGINE_PRESETS)
    assert set(engines_for("bandit")) == set(ENGINE_NAMES) - set(MODEL_ENGINES)
    assert set(engines_for("sequence")) == set(ENGINE_NAMES)
    assert type(TokenSampler("none", 5, "topk", 0)) is ExactEngine


def test_unknown_and_unsupported_engines_are_refused() -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        make_engine("model-fp4", 5, "topk", 0)
    with pytest.raises(ValueError, match="engine must be one of"):
        BanditConfig(engine="hot")  # not registered here
    for name in MODEL_ENGINES:
        with pytest.raises(ValueError, match=rf"engine={name!r} is not supported by the bandit trainer"):
            BanditTrainer(_bandit(engine=name))


def test_decoding_before_sync_is_refused() -> None:
    engine = make_engine("model-bf16", 5, "topk", 0)
    with pytest.raises(RuntimeError, match="call sync"):
        engine.prefill(torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.usefixtures("registered")
def test_a_registered_engine_trains_a_bandit_step() -> None:
    assert SequenceConfig(engine="hot").engine == "hot"  # config validation reads the registry
    with pytest.raises(ValueError, match="not supported by the bandit trainer"):
        BanditTrainer(_bandit(engine="hot-seq"))
    trainer = BanditTrainer(_bandit(engine="hot", variant="ppo"))
    assert isinstance(trainer.engine, HotEngine) and trainer.sampler is trainer.engine
    trainer.engine.begin_step(0)
    batch = trainer.collect()
    # float64 reference: μ = softmax(table[context] / 2) at the sampled token
    seed = 3
    print("seed", seed)
    table = trainer.served.logits.detach().double().numpy()[batch.inputs.numpy()]
    log_mu = log_softmax(table / TEMPERATURE, axis=-1)
    tokens = batch.tokens[:, 0].numpy()
    np.testing.assert_allclose(
        batch.rollout_logprob[:, 0].numpy(), log_mu[np.arange(len(tokens)), tokens], atol=1e-5
    )
    assert np.abs(log_mu - log_softmax(table, axis=-1)).max() > 0.1  # the dummy engine differs from π
    row = BanditTrainer(_bandit(engine="hot", variant="ppo")).train().iloc[0]
    assert row["engine"] == "hot" and row["mismatch_mean"] > 0 and row["tv_exact"] > 0.01


@pytest.mark.usefixtures("registered")
def test_a_registered_exact_engine_is_exact() -> None:
    common = dict(variant="ppo", num_minibatches=1, epochs=1, steps=2)
    copy = BanditTrainer(_bandit(engine="exact-copy", **common)).train()
    exact = BanditTrainer(_bandit(engine="none", **common)).train()
    assert (copy["mismatch_mean"] == 0.0).all() and (copy["tv_exact"] == 0.0).all()
    skip = {"engine", "time_s"} | {c for c in exact.columns if c.endswith("tokens_per_s")}
    columns = [c for c in exact.columns if c not in skip]
    assert copy[columns].equals(exact[columns])
