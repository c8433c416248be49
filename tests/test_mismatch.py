"""Tests of trustregion_lab.mismatch against float64 numpy references written here."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from trustregion_lab.envs.logit_model import llm_like_logits
from trustregion_lab.mismatch import (
    ENGINE_PRESETS,
    EXCLUDED_LOGIT,
    PRESET_MISMATCH_BANDS,
    EngineConfig,
    RolloutEngine,
    StalePolicy,
    mean_abs_logprob_gap,
    round_to_precision,
)


# ---------------------------------------------------------------- references (float64 numpy)
def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def round_bits_reference(x: np.ndarray, precision: str) -> np.ndarray:
    """IEEE round-to-nearest-even of float32 values to bf16 (bit arithmetic) or fp16 (numpy), as float64."""
    x = np.asarray(x, dtype=np.float32)
    if precision == "fp16":
        return x.astype(np.float16).astype(np.float64)
    bits = x.view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32).astype(np.float64)


def ulp(values: np.ndarray, precision: str) -> np.ndarray:
    """Spacing of the `precision` grid at |values| (8 significant bits for bf16, 11 for fp16)."""
    bits = {"bf16": 8, "fp16": 11, "fp32": 24}[precision]
    exponent = np.floor(np.log2(np.maximum(np.abs(values), 2.0**-14)))
    return 2.0 ** (exponent - bits + 1)


def fresh_logits(rng: np.random.Generator, rows: int, vocab: int, scale: float = 3.0) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * scale + rng.uniform(-5, 5, size=(rows, 1))).astype(
        np.float32
    )


# `rng` (tests/conftest.py): a fresh generator whose seed is printed with a failure.


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_rounding_matches_torch_cast_and_bit_reference(rng, precision):
    x = fresh_logits(rng, 16, 1000, scale=20.0)
    # include exact ties between two grid points (round half to even) and tiny values
    x[0, :8] = np.array(
        [1 + 2**-8, 1 + 3 * 2**-8, 2 + 2**-7, -(1 + 2**-8), 1e-30, -0.0, 0.0, 3.0], np.float32
    )
    if precision == "fp16":
        x[0, :8] = np.array([1 + 2**-11, 1 + 3 * 2**-11, 2 + 2**-10, -(1 + 2**-11), 1e-9, -0.0, 0.0, 3.0])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ours = round_to_precision(torch.from_numpy(x), precision)
    torch_cast = torch.from_numpy(x).to(dtype).to(torch.float32)
    assert ours.dtype == torch.float32
    assert torch.equal(ours.view(torch.int32), torch_cast.view(torch.int32))  # bit for bit, signed zeros too
    np.testing.assert_array_equal(round_to_precision(x, precision), round_bits_reference(x, precision))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_engine_logits_are_low_precision_log_softmax_of_rounded_logits(rng, precision):
    x = fresh_logits(rng, 32, 3000, scale=4.0)
    engine = RolloutEngine(EngineConfig(precision=precision), seed=int(rng.integers(2**31)))
    out = engine.sample(x)
    # reference: round the logits, log-softmax in float64, round that to the precision, renormalise in float64.
    # A low-precision log-softmax computes (x − max) − lse with lse = log Σ exp(x − max) itself held in that
    # precision, so each entry may be off by a few ulps of its value and of the row's lse (measured: < 2.7).
    rounded = round_bits_reference(x, precision)
    shifted = rounded - rounded.max(axis=-1, keepdims=True)
    row_lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    reference = log_softmax64(round_bits_reference(shifted - row_lse, precision))
    # the ulp of the next binade where a value sits just below a power of two
    tolerance = 3 * (ulp(np.abs(reference) * (1 + 2.0**-7), precision) + ulp(row_lse, precision)) + 1e-5
    assert np.all(np.abs(out.engine_logits - reference) <= tolerance)
    exact = log_softmax64(x)
    # the rounding is real: μ differs from π by more than float32 noise at equal weights
    assert np.abs(out.engine_logits - exact).max() > 1e-3


def test_fp32_engine_without_noise_is_exact(rng):
    x = fresh_logits(rng, 8, 500)
    out = RolloutEngine(ENGINE_PRESETS["fp32"], seed=1).sample(x)
    np.testing.assert_allclose(out.engine_logits, log_softmax64(x), atol=2e-5, rtol=0)


# ---------------------------------------------------------------- noise models
def test_logit_noise_has_its_sigma(rng):
    sigma = float(rng.uniform(0.05, 0.5))
    x = fresh_logits(rng, 64, 4096)
    out = RolloutEngine(EngineConfig(precision="fp32", logit_noise=sigma), seed=3).sample(x)
    diff = out.engine_logits.astype(np.float64) - log_softmax64(x)
    centred = diff - diff.mean(axis=-1, keepdims=True)  # the per-row log-normaliser shift is not noise
    n = centred.size
    measured = centred.std() * math.sqrt(n / (n - 64))
    assert abs(measured / sigma - 1) < 0.015  # the standard error of the std is 0.14 % here
    assert abs(np.mean(np.abs(centred) < sigma) - 0.6827) < 0.006  # Gaussian: P(|ε| < σ) = 0.6827
    # noise is independent of the row's logits
    assert abs(np.corrcoef(centred.ravel(), x.ravel())[0, 1]) < 0.01


def test_routing_flips_perturb_a_share_of_rows(rng):
    prob, sigma = float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.3, 1.0))
    rows = 600
    x = fresh_logits(rng, rows, 512)
    config = EngineConfig(precision="fp32", routing_flip_prob=prob, routing_noise=sigma)
    out = RolloutEngine(config, seed=5).sample(x)
    diff = out.engine_logits.astype(np.float64) - log_softmax64(x)
    centred = diff - diff.mean(axis=-1, keepdims=True)
    row_std = centred.std(axis=-1)
    flipped = row_std > 1e-3
    assert np.all(row_std[~flipped] < 2e-5)  # untouched rows are exact
    share_se = math.sqrt(prob * (1 - prob) / rows)
    assert abs(flipped.mean() - prob) < 5 * share_se
    assert abs(centred[flipped].std() / sigma - 1) < 0.03


# ---------------------------------------------------------------- reported log-probs
CONSISTENCY_CONFIGS = [
    EngineConfig(),
    EngineConfig(precision="fp16", logit_noise=0.2, routing_flip_prob=0.3, routing_noise=0.5),
    EngineConfig(temperature=0.7, topk_rule="topk"),
    EngineConfig(top_p=0.8, temperature=1.3, topk_rule="topk_replace_last"),
    EngineConfig(precision="fp32", top_p=0.5, topk=3),
]


@pytest.mark.parametrize("config", CONSISTENCY_CONFIGS, ids=range(len(CONSISTENCY_CONFIGS)))
def test_processed_logprobs_equal_log_softmax_of_engine_logits(rng, config):
    x = fresh_logits(rng, 40, 2000)
    out = RolloutEngine(config, seed=int(rng.integers(2**31))).sample(torch.from_numpy(x))
    engine_logits = out.engine_logits.numpy()
    reference = log_softmax64(engine_logits)
    np.testing.assert_allclose(np.exp(reference).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(engine_logits, reference, atol=3e-5, rtol=0)  # log μ, already normalised
    tokens = out.tokens.numpy()
    np.testing.assert_allclose(out.logprob.numpy(), reference[np.arange(40), tokens], atol=3e-5, rtol=0)
    ids, lps = out.topk_ids.numpy(), out.topk_logprobs.numpy()
    used = ids >= 0
    expected = np.take_along_axis(reference, np.where(used, ids, 0), axis=-1)
    np.testing.assert_allclose(lps[used], expected[used], atol=3e-5, rtol=0)
    assert np.all(np.isneginf(lps[~used]))
    assert np.all(engine_logits[np.arange(40), tokens] > EXCLUDED_LOGIT)  # never samples an excluded token
    assert out.engine_logits.dtype == torch.float32 and out.tokens.dtype == torch.int64


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_top_p_renormalises_over_the_nucleus(rng, temperature):
    top_p = float(rng.uniform(0.5, 0.95))
    x = fresh_logits(rng, 50, 1500, scale=2.0)
    config = EngineConfig(precision="fp32", temperature=temperature, top_p=top_p)
    out = RolloutEngine(config, seed=11).sample(x)
    log_mu = out.engine_logits.astype(np.float64)
    kept = log_mu > EXCLUDED_LOGIT
    assert np.all(log_mu[~kept] == EXCLUDED_LOGIT) and np.all(np.exp(log_mu[~kept]) == 0.0)
    np.testing.assert_allclose(np.where(kept, np.exp(log_mu), 0.0).sum(-1), 1.0, atol=1e-5)
    tempered = log_softmax64(x.astype(np.float64) / temperature)
    for row in range(50):
        p = np.exp(tempered[row])
        kept_mass = p[kept[row]].sum()
        # the kept set is the most likely tokens, reaches top_p, and is minimal
        assert p[kept[row]].min() >= p[~kept[row]].max(initial=0.0) - 1e-7
        assert kept_mass >= top_p - 1e-5
        assert kept_mass - p[kept[row]].min() < top_p + 1e-5
        np.testing.assert_allclose(
            log_mu[row, kept[row]], tempered[row, kept[row]] - np.log(kept_mass), atol=2e-5
        )
    assert np.all(kept[np.arange(50), out.tokens])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_top_p_keeps_whole_ties_in_low_precision(rng, precision):
    # low-precision log-probs tie often; the nucleus keeps every token tied with its last one
    top_p = float(rng.uniform(0.3, 0.95))
    x = fresh_logits(rng, 64, 3000, scale=1.0)
    seed = int(rng.integers(2**31))
    full = RolloutEngine(EngineConfig(precision=precision), seed).engine_logits(x).astype(np.float64)
    nucleus = RolloutEngine(EngineConfig(precision=precision, top_p=top_p), seed).engine_logits(x)
    kept = nucleus > EXCLUDED_LOGIT
    ties_seen = 0
    for row in range(64):
        p = np.exp(full[row])
        threshold = full[row, kept[row]].min()
        np.testing.assert_array_equal(kept[row], full[row] >= threshold)
        assert p[full[row] > threshold].sum() < top_p + 1e-6 <= p[full[row] >= threshold].sum() + 2e-6
        np.testing.assert_allclose(
            nucleus[row, kept[row]], full[row, kept[row]] - np.log(p[kept[row]].sum()), atol=2e-5
        )
        ties_seen += int((full[row] == threshold).sum() > 1)
    assert ties_seen > 0


def test_raw_and_processed_logprobs(rng):
    x = fresh_logits(rng, 60, 800)
    seed = int(rng.integers(2**31))
    tempered = dict(precision="fp32", temperature=0.7, top_p=0.9)
    raw = RolloutEngine(EngineConfig(logprob_mode="raw", **tempered), seed).sample(x)
    processed = RolloutEngine(EngineConfig(logprob_mode="processed", **tempered), seed).sample(x)
    np.testing.assert_array_equal(raw.tokens, processed.tokens)  # always sampled from the processed μ
    np.testing.assert_array_equal(raw.engine_logits, processed.engine_logits)
    rows = np.arange(60)
    np.testing.assert_allclose(raw.logprob, log_softmax64(x)[rows, raw.tokens], atol=2e-5)
    np.testing.assert_allclose(processed.logprob, processed.engine_logits[rows, processed.tokens], atol=1e-6)
    assert np.abs(raw.logprob - processed.logprob).max() > 0.05  # a trainer using raw as μ is biased
    raw_ids = np.where(raw.topk_ids >= 0, raw.topk_ids, 0)
    used = raw.topk_ids >= 0
    expected_raw = np.take_along_axis(log_softmax64(x), raw_ids, axis=-1)
    np.testing.assert_allclose(raw.topk_logprobs[used], expected_raw[used], atol=2e-5)
    # at T = 1 and top_p = 1 the two coincide exactly
    plain_raw = RolloutEngine(EngineConfig(logprob_mode="raw"), seed).sample(x)
    plain_processed = RolloutEngine(EngineConfig(logprob_mode="processed"), seed).sample(x)
    np.testing.assert_array_equal(plain_raw.logprob, plain_processed.logprob)
    np.testing.assert_array_equal(plain_raw.topk_logprobs, plain_processed.topk_logprobs)


# ---------------------------------------------------------------- sampling and top-K sets
@pytest.mark.parametrize("vocab", [20, 300])  # 300 > the sampler's internal head: exercises the tail draw
def test_sampling_frequencies_match_mu(rng, vocab):
    draws = 30_000
    row = rng.standard_normal(vocab).astype(np.float32) * 1.5
    x = np.broadcast_to(row, (draws, vocab)).copy()
    out = RolloutEngine(EngineConfig(precision="fp32", topk=min(20, vocab)), seed=7).sample(x)
    mu = np.exp(log_softmax64(out.engine_logits[0]))
    counts = np.bincount(out.tokens, minlength=vocab)
    # merge rare tokens into one bucket so every expected count is >= 5
    order = np.argsort(-mu)
    common = order[mu[order] * draws >= 5]
    rare = np.setdiff1d(np.arange(vocab), common)
    observed = np.append(counts[common], counts[rare].sum())
    expected = np.append(mu[common], mu[rare].sum()) * draws
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1] * observed[:-1].sum() / expected[:-1].sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def _topk_reference(log_mu: np.ndarray, k: int) -> np.ndarray:
    """Values of the K largest entries per row, descending (ties make the ids ambiguous, not the values)."""
    return -np.sort(-log_mu, axis=-1)[:, :k]


@pytest.mark.parametrize("rule", ["topk", "topk_plus_sampled", "topk_replace_last"])
def test_topk_rules_produce_the_right_sets(rng, rule):
    k, rows = 4, 400
    x = fresh_logits(rng, rows, 64, scale=0.7)  # flat rows: the sampled token is often outside the top K
    out = RolloutEngine(EngineConfig(topk=k, topk_rule=rule), seed=int(rng.integers(2**31))).sample(x)
    log_mu = out.engine_logits.astype(np.float64)
    tokens, ids, lps = out.tokens, out.topk_ids, out.topk_logprobs
    top_values = _topk_reference(log_mu, k)
    reported_top = np.take_along_axis(log_mu, np.maximum(ids[:, :k], 0), axis=-1)
    in_top = (np.take_along_axis(log_mu, tokens[:, None], axis=-1)[:, 0] >= top_values[:, -1]) & np.any(
        ids[:, :k] == tokens[:, None], axis=-1
    )
    assert 20 <= in_top.sum() <= rows - 20  # both cases occur
    assert ids.shape == (rows, k + 1 if rule == "topk_plus_sampled" else k)
    assert np.all(ids >= -1)
    for row in range(rows):
        valid = ids[row][ids[row] >= 0]
        assert len(set(valid.tolist())) == len(valid)  # no repeated id
    if rule == "topk":
        np.testing.assert_array_equal(reported_top, top_values)
    elif rule == "topk_plus_sampled":
        np.testing.assert_array_equal(reported_top, top_values)
        np.testing.assert_array_equal(ids[in_top, k], -1)
        assert np.all(np.isneginf(lps[in_top, k]))
        np.testing.assert_array_equal(ids[~in_top, k], tokens[~in_top])
        np.testing.assert_array_equal(lps[~in_top, k], out.logprob[~in_top])
    else:
        np.testing.assert_array_equal(reported_top[in_top], top_values[in_top])
        np.testing.assert_array_equal(reported_top[~in_top, : k - 1], top_values[~in_top, : k - 1])
        np.testing.assert_array_equal(ids[~in_top, k - 1], tokens[~in_top])  # overwrites slot K
    if rule != "topk":
        assert np.all(np.any(ids == tokens[:, None], axis=-1))  # the sampled token is always reported


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_topk_and_nucleus_at_a_large_vocabulary(rng, top_p):
    vocab, rows, k = 20_011, 12, 20  # large enough for the block search; 20,011 = 312·64 + 43 (partial block)
    x = fresh_logits(rng, rows, vocab, scale=2.0)
    x[0, -3:] = x[0].max() + np.array([1.0, 2.0, 3.0], np.float32)  # the top three in the partial last block
    x[1, :64] = x[1].max() + np.arange(1, 65, dtype=np.float32)  # one block holds the whole top 64
    config = EngineConfig(precision="fp32", topk=k, topk_rule="topk", top_p=top_p)
    out = RolloutEngine(config, seed=int(rng.integers(2**31))).sample(x)
    log_mu = out.engine_logits.astype(np.float64)
    reported = np.take_along_axis(log_mu, out.topk_ids, axis=-1)
    np.testing.assert_array_equal(reported, _topk_reference(log_mu, k))
    tempered = log_softmax64(x)
    kept = log_mu > EXCLUDED_LOGIT
    for row in range(rows):
        p = np.exp(tempered[row])
        kept_mass = p[kept[row]].sum()
        assert p[kept[row]].min() >= p[~kept[row]].max(initial=0.0) - 1e-7
        assert kept_mass >= top_p - 1e-5
        assert kept_mass - p[kept[row]].min() < top_p + 1e-5


# ---------------------------------------------------------------- reproducibility, shapes, kinds
def test_seeded_replays_are_bit_identical(rng):
    x = torch.from_numpy(fresh_logits(rng, 30, 700))
    config = ENGINE_PRESETS["moe"]
    first = RolloutEngine(config, seed=123).sample(x)
    second = RolloutEngine(config, seed=123).sample(x)
    other = RolloutEngine(config, seed=124).sample(x)
    for f in dataclasses.fields(first):
        assert torch.equal(getattr(first, f.name), getattr(second, f.name)), f.name
    assert not torch.equal(first.engine_logits, other.engine_logits)
    # engine_logits() draws the same perturbations as sample() on a fresh engine
    assert torch.equal(RolloutEngine(config, seed=123).engine_logits(x), first.engine_logits)
    # numpy in, numpy out, same numbers
    from_numpy = RolloutEngine(config, seed=123).sample(x.numpy())
    assert isinstance(from_numpy.tokens, np.ndarray) and from_numpy.tokens.dtype == np.int64
    np.testing.assert_array_equal(from_numpy.engine_logits, first.engine_logits.numpy())
    np.testing.assert_array_equal(from_numpy.topk_ids, first.topk_ids.numpy())


def test_leading_dims_and_input_is_untouched(rng):
    x = torch.from_numpy(fresh_logits(rng, 12, 100)).reshape(3, 4, 100).double().requires_grad_()
    before = x.detach().clone()
    out = RolloutEngine(EngineConfig(logit_noise=0.1, routing_flip_prob=1.0), seed=0).sample(x)
    assert torch.equal(x.detach(), before)
    assert out.engine_logits.shape == (3, 4, 100) and out.engine_logits.dtype == torch.float32
    assert out.tokens.shape == (3, 4) and out.logprob.shape == (3, 4)
    assert out.topk_ids.shape == (3, 4, 21) and out.topk_logprobs.shape == (3, 4, 21)
    assert not out.engine_logits.requires_grad
    single = RolloutEngine(EngineConfig(), seed=0).sample(x[0, 0].detach().numpy())
    assert single.tokens.shape == () and single.engine_logits.shape == (100,)


# ---------------------------------------------------------------- calibration
def test_preset_calibration_band(fresh_seed):
    seed = fresh_seed
    logits = llm_like_logits(np.random.default_rng(seed), 2048, 32_000, family="mixed")
    assert isinstance(logits, np.ndarray)
    x = torch.from_numpy(logits)
    measured = {}
    for name, config in ENGINE_PRESETS.items():
        out = RolloutEngine(config, seed=seed).sample(x)
        measured[name] = mean_abs_logprob_gap(x, out.tokens, out.logprob)
    for name, (low, high) in PRESET_MISMATCH_BANDS.items():
        assert low <= measured[name] <= high, (name, measured, seed)


def test_mean_abs_logprob_gap_reference(rng):
    x = fresh_logits(rng, 20, 50)
    tokens = rng.integers(0, 50, size=20)
    lmu = rng.uniform(-5, 0, size=20).astype(np.float32)
    expected = np.abs(log_softmax64(x)[np.arange(20), tokens] - lmu).mean()
    assert mean_abs_logprob_gap(x, tokens, lmu) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- staleness
def test_stale_policy_returns_the_snapshot_from_k_updates_back():
    stale = StalePolicy(2)
    with pytest.raises(ValueError, match="push"):
        stale.rollout_params()
    params = {"w": torch.zeros(3), "b": np.zeros(2), "step": [0]}
    history = []
    for step in range(6):
        params["w"] += 1.0
        params["b"] += 1.0
        params["step"][0] = step
        stale.push(params)
        history.append(step)
        expected = history[max(0, len(history) - 3)]
        snapshot = stale.rollout_params()
        assert snapshot["step"][0] == expected
        assert torch.equal(snapshot["w"], torch.full((3,), expected + 1.0))
        np.testing.assert_array_equal(snapshot["b"], np.full(2, expected + 1.0))
        assert stale.lag == min(2, step)
    fresh = StalePolicy(0)
    fresh.push(params)
    params["w"] += 5.0
    assert not torch.equal(fresh.rollout_params()["w"], params["w"])  # a copy, not a reference


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"precision": "int8"}, ValueError, "precision"),
        ({"precision": 16}, TypeError, "precision"),
        ({"topk_rule": "top"}, ValueError, "topk_rule"),
        ({"logprob_mode": "logits"}, ValueError, "logprob_mode"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": "1"}, TypeError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"routing_flip_prob": 1.2}, ValueError, "routing_flip_prob"),
        ({"routing_flip_prob": -0.1}, ValueError, "routing_flip_prob"),
        ({"logit_noise": -0.1}, ValueError, "logit_noise"),
        ({"logit_noise": float("nan")}, ValueError, "logit_noise"),
        ({"routing_noise": -1.0}, ValueError, "routing_noise"),
        ({"topk": 0}, ValueError, "topk"),
        ({"topk": 2.0}, TypeError, "topk"),
        ({"topk": True}, TypeError, "topk"),
    ],
)
def test_bad_config_raises_naming_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name):
        EngineConfig(**kwargs)


def test_bad_call_input_raises_naming_the_argument(rng):
    engine = RolloutEngine(EngineConfig(topk=5), seed=0)
    x = fresh_logits(rng, 4, 10)
    with pytest.raises(ValueError, match="topk"):
        engine.sample(x[:, :4])
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = x.copy()
        bad[2, 3] = bad_value
        with pytest.raises(ValueError, match="logits"):
            engine.sample(bad)
        with pytest.raises(ValueError, match="logits"):
            engine.engine_logits(torch.from_numpy(bad))
    with pytest.raises(TypeError, match="logits"):
        engine.sample(x.astype(np.int64))
    with pytest.raises(TypeError, match="logits"):
        engine.sample(torch.ones(3, 10, dtype=torch.int32))
    with pytest.raises(TypeError, match="logits"):
        engine.sample(x.tolist())
    with pytest.raises(ValueError, match="logits"):
        engine.sample(np.array(1.0, dtype=np.float32))
    with pytest.raises(ValueError, match="precision"):
        RolloutEngine(EngineConfig(precision="fp16", topk=5), seed=0).sample(x * 1e5)
    with pytest.raises(TypeError, match="config"):
        RolloutEngine({"precision": "bf16"}, seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        RolloutEngine(EngineConfig(), seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        round_to_precision(x, "fp8")
    with pytest.raises(TypeError, match="staleness"):
        StalePolicy(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="staleness"):
        StalePolicy(-1)


# ---------------------------------------------------------------- device
@pytest.mark.gpu
def test_cuda_input_stays_on_device_and_is_consistent():
    x = torch.randn(64, 5000, device="cuda") * 3
    out = RolloutEngine(ENGINE_PRESETS["moe"], seed=0).sample(x)
    for f in dataclasses.fields(out):
        assert getattr(out, f.name).device.type == "cuda", f.name
    log_mu = out.engine_logits.double().cpu().numpy()
    reference = log_softmax64(log_mu)
    np.testing.assert_allclose(
        out.logprob.cpu().numpy(), reference[np.arange(64), out.tokens.cpu().numpy()], atol=3e-5
    )
    again = RolloutEngine(ENGINE_PRESETS["moe"], seed=0).sample(x)
    assert torch.equal(out.tokens, again.tokens) and torch.equal(out.engine_logits, again.engine_logits)
