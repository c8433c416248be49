from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf, softmax
from torch import nn

from trustregion_lab.policies import (
    DecoderTransformer,
    TabularSoftmaxPolicy,
    TransformerConfig,
    autocast,
    resolve_device,
)
from trustregion_lab.policies.decoding import KVCacheDecoder, decode_answers, log_softmax_in, precision_dtype

SMALL = {"vocab_size": 64, "max_seq_len": 16, "d_model": 32, "n_heads": 4, "d_ff": 64}


def test_auto_picks_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")


def test_auto_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("bad", ["graphics", "tpu", ""])
def test_unknown_device_names_the_argument(bad):
    with pytest.raises(ValueError, match="device"):
        resolve_device(bad)
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)  # type: ignore[arg-type]


def test_tabular_policy_is_softmax_of_its_table():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(5, 17)).astype(np.float32)
    policy = TabularSoftmaxPolicy(table)
    contexts = torch.as_tensor(rng.integers(0, 5, size=9))
    probs = torch.softmax(policy(contexts), -1).detach().double().numpy()
    expected = softmax(table.astype(np.float64)[contexts.numpy()], axis=-1)
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    table[0, 0] = 123.0  # the policy holds a copy
    assert float(policy.logits.detach()[0, 0]) != 123.0


@pytest.mark.parametrize("shape", [(3,), (4, 1), (1, 2, 3)])
def test_tabular_policy_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="initial_logits"):
        TabularSoftmaxPolicy(np.zeros(shape, dtype=np.float32))


# ---- the transformer ---------------------------------------------------------------------------------------


def make_model(seed: int, *, perturb: float = 0.0, **overrides: int) -> DecoderTransformer:
    """A freshly initialised model (seeded); ``perturb`` > 0 adds N(0, perturb²) to every weight."""
    torch.manual_seed(seed)
    model = DecoderTransformer(TransformerConfig(**{**SMALL, **overrides}))
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(perturb * torch.randn(param.shape, generator=generator))
    return model


def reference_logits(model: DecoderTransformer, tokens: torch.Tensor) -> np.ndarray:
    """float64 numpy forward of the architecture in transformer.py's docstring: tokens [B, S] -> [B, S, V]."""
    w = {name: value.detach().double().numpy() for name, value in model.state_dict().items()}
    cfg = model.config
    ids = tokens.numpy()
    batch, seq = ids.shape
    heads, head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ w[f"{prefix}.weight"].T + w.get(f"{prefix}.bias", 0.0)

    x = w["token_embedding.weight"][ids] + w["position_embedding.weight"][:seq][None]
    future = np.triu(np.ones((seq, seq), dtype=bool), k=1)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}"
        qkv = linear(layer_norm(x, f"{p}.norm1"), f"{p}.qkv").reshape(batch, seq, 3, heads, head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, heads, S, head_dim]
        scores = np.where(future, -np.inf, q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim))
        attended = (softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, cfg.d_model)
        x = x + linear(attended, f"{p}.attn_out")
        hidden = linear(layer_norm(x, f"{p}.norm2"), f"{p}.ff_in")
        x = x + linear(0.5 * hidden * (1.0 + erf(hidden / np.sqrt(2.0))), f"{p}.ff_out")
    return linear(layer_norm(x, "final_norm"), "head")


class _TorchEncoderStack(nn.Module):
    """The stack DecoderTransformer replaced: torch's pre-norm encoder layers with a causal mask."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.n_heads,
            dim_feedforward=config.d_ff,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers=config.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        hidden = self.token_embedding(tokens) + self.position_embedding(torch.arange(seq))[None]
        causal = nn.Transformer.generate_square_subsequent_mask(seq, dtype=hidden.dtype)
        return self.head(self.final_norm(self.blocks(hidden, mask=causal, is_causal=True)))


@pytest.mark.parametrize("n_layers", [1, 3])
def test_transformer_matches_torch_encoder_stack_bit_for_bit_at_init(n_layers):
    config = TransformerConfig(**{**SMALL, "n_layers": n_layers})
    torch.manual_seed(7)
    old = _TorchEncoderStack(config)
    torch.manual_seed(7)
    new = DecoderTransformer(config)
    assert new.num_parameters() == sum(p.numel() for p in old.parameters())
    # same parameters in the same order (names differ: blocks.layers.<l>.self_attn.in_proj_weight -> qkv ...)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert len(old_state) == len(new_state)
    for (old_name, a), (new_name, b) in zip(old_state.items(), new_state.items(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b), (old_name, new_name)
    tokens = torch.randint(
        0, config.vocab_size, (5, config.max_seq_len), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        torch.testing.assert_close(new(tokens), old(tokens), rtol=0, atol=1e-6)


@pytest.mark.parametrize("perturb", [0.0, 0.1])
def test_transformer_equals_float64_reference(perturb):
    model = make_model(11, perturb=perturb)
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(tokens).double().numpy()
    expected = reference_logits(model, tokens)
    assert np.abs(expected).max() > (1.0 if perturb else 0.05)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)


def test_transformer_is_causal_and_shaped():
    torch.manual_seed(0)
    model = DecoderTransformer(
        TransformerConfig(vocab_size=50, max_seq_len=12, d_model=32, n_heads=4, d_ff=64)
    )
    tokens = torch.randint(0, 50, (3, 10))
    logits = model(tokens)
    assert logits.shape == (3, 10, 50) and logits.dtype == torch.float32
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 50
    other = model(changed)
    # positions 0..5 see only tokens 0..5: unchanged; position 6 onwards sees the change
    torch.testing.assert_close(logits[:, :6], other[:, :6], rtol=1e-5, atol=1e-5)
    assert (logits[:, 6:] - other[:, 6:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 13, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(13, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens"):
        model([[1, 2]])  # type: ignore[arg-type]


def test_train_and_eval_modes_compute_the_same_function():
    model = make_model(2, perturb=0.05)
    tokens = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        train_logits = model.train()(tokens)
        eval_logits = model.eval()(tokens)
    assert torch.equal(train_logits, eval_logits)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_model": 30, "n_heads": 4}, "d_model"),
        ({"n_layers": 0}, "n_layers"),
        ({"vocab_size": 1}, "vocab_size"),
    ],
)
def test_transformer_config_errors_name_the_field(kwargs, field):
    base = {"vocab_size": 10, "max_seq_len": 4}
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{**base, **kwargs})


def test_autocast_is_a_no_op_on_cpu():
    model = DecoderTransformer(
        TransformerConfig(vocab_size=20, max_seq_len=4, d_model=16, n_heads=2, d_ff=32)
    )
    with autocast(torch.device("cpu"), bf16=True):
        out = model(torch.zeros(2, 4, dtype=torch.int64))
    assert out.dtype == torch.float32


@pytest.mark.gpu
def test_transformer_runs_on_cuda_with_bf16_autocast():
    device = resolve_device("cuda")
    model = DecoderTransformer(
        TransformerConfig(vocab_size=64, max_seq_len=8, d_model=32, n_heads=4, d_ff=64)
    )
    model = model.to(device)
    tokens = torch.randint(0, 64, (4, 8), device=device)
    with autocast(device, bf16=True):
        out = model(tokens)
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), model(tokens), rtol=0.05, atol=0.05)


# ---- the KV-cache decoder ----------------------------------------------------------------------------------


def teacher_forced(
    decoder: KVCacheDecoder, sequence: torch.Tensor, prompt_len: int, **kwargs
) -> torch.Tensor:
    """Decoder outputs at positions prompt_len − 1 .. S − 1 of sequence [B, S]: [B, S − prompt_len + 1, V]."""
    answer = sequence.shape[1] - prompt_len + 1
    _, outputs = decode_answers(
        decoder,
        sequence[:, :prompt_len],
        answer,
        lambda z, t: sequence[:, min(prompt_len + t, sequence.shape[1] - 1)],
        **kwargs,
    )
    return outputs


@pytest.mark.parametrize(
    ("seed", "batch", "prompt_len", "seq_len", "perturb"),
    [
        (0, 1, 1, 16, 0.0),  # a one-token prompt, decoded to max_seq_len
        (1, 3, 4, 16, 0.0),
        (2, 8, 7, 12, 0.05),
        (3, 5, 1, 9, 0.1),
        (4, 2, 16, 16, 0.05),  # the prompt fills the context: prefill only
        (5, 33, 9, 16, 0.1),
    ],
)
def test_fp32_kv_decode_equals_full_forward_at_every_position(seed, batch, prompt_len, seq_len, perturb):
    model = make_model(seed, perturb=perturb)
    sequence = torch.randint(0, 64, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(sequence)
    decoded = teacher_forced(KVCacheDecoder(model, "fp32"), sequence, prompt_len)
    assert decoded.dtype == torch.float32 and decoded.shape == (batch, seq_len - prompt_len + 1, 64)
    assert full.abs().max() > 0.05
    torch.testing.assert_close(decoded, full[:, prompt_len - 1 :], rtol=0, atol=1e-5)


def test_fp32_kv_decode_at_extreme_logits_is_fp32_accurate():
    # the head scaled ×30 gives logits up to |z| ≈ 60; fp32 rounding then scales with |z| (measured with the
    # head ×100, seeds 0-5: max |Δ z| ≤ 6.5e-7 of the row's largest |z|); bound: 4e-6 of it
    model = make_model(6, perturb=0.1)
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    sequence = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(sequence)[:, 2:]
    decoded = teacher_forced(KVCacheDecoder(model, "fp32"), sequence, 3)
    row_scale = full.abs().amax(-1, keepdim=True)
    assert row_scale.max() > 30
    assert ((decoded - full).abs() <= 4e-6 * row_scale).all()


def test_kv_decode_samples_the_same_tokens_as_the_full_forward_loop():
    model = make_model(8, perturb=0.3)
    prompts = torch.randint(0, 64, (7, 4), generator=torch.Generator().manual_seed(8))
    sequence = prompts
    with torch.no_grad():
        for _ in range(10):
            sequence = torch.cat([sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    seen: list[int] = []

    def greedy(z: torch.Tensor, t: int) -> torch.Tensor:
        seen.append(t)
        return z.argmax(-1)

    tokens, logits = decode_answers(KVCacheDecoder(model, "fp32"), prompts, 10, greedy)
    assert seen == list(range(10)) and logits.shape == (7, 10, 64) and tokens.dtype == torch.int64
    assert torch.equal(tokens, sequence[:, 4:])


# Precision bands. Measured with this test's setting (SMALL config, fresh init and N(0, 0.05²)-perturbed
# weights, batch 16, prompts of 5, teacher-forced to max_seq_len; seeds 0-9, 20 cases) as
# r = mean |z_p − z_fp32| / mean |z_fp32| over all decoded positions, in units of the unit roundoff u
# (bf16 2^-8, fp16 2^-11). Fresh init: bf16 r = 1.34u–2.13u (mean |Δ z| 4.9e-4–7.5e-4 at mean |z| ≈ 0.09),
# fp16 r = 1.36u–1.99u (6.2e-5–8.7e-5); perturbed: bf16 1.78u–2.29u, fp16 1.81u–2.39u. The bf16 / fp16 ratio
# of mean |Δ z| was 7.5–8.6 (2^3 = 8 expected: bf16 keeps 3 mantissa bits fewer than fp16). The default size
# (V 2,000, d_model 128, fresh init) gives r ≈ 2u for both (mean |Δ z| 1.4e-3 bf16, 1.7e-4 fp16 at mean
# |z| ≈ 0.18). Bands with margin: 0.5u ≤ r ≤ 8u, ratio within [4, 16].
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}


def relative_error(
    model: DecoderTransformer, precision: str, seed: int, **decoder_kwargs
) -> tuple[float, float]:
    sequence = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(seed))
    exact = teacher_forced(KVCacheDecoder(model, "fp32"), sequence, 5)
    approx = teacher_forced(KVCacheDecoder(model, precision, **decoder_kwargs), sequence, 5)
    delta = float((approx - exact).abs().mean())
    return delta, delta / float(exact.abs().mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_reduced_precision_decoders_differ_by_their_precision(seed, perturb):
    model = make_model(seed, perturb=perturb)
    deltas = {}
    for precision, u in UNIT_ROUNDOFF.items():
        deltas[precision], r = relative_error(model, precision, seed)
        assert 0.5 * u <= r <= 8 * u, (precision, r / u)
    assert 4 <= deltas["bf16"] / deltas["fp16"] <= 16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fp32_accumulate_linears_are_as_accurate_as_native_kernels(precision):
    # Two equally accurate kernels that round a few outputs differently still decorrelate downstream, so the
    # two decodes differ by up to the size of the rounding noise itself (measured: fp16 native vs
    # fp32-accumulate 12 % of the fp16 error at this size, 50 % at d_model 128; bf16 0-3 %). What must agree
    # is the accuracy.
    model = make_model(4, perturb=0.05)
    native, _ = relative_error(model, precision, 4, matmul="native")
    emulated, _ = relative_error(model, precision, 4, matmul="fp32-accumulate")
    assert abs(native - emulated) <= 0.2 * native


def test_returned_values_are_exact_upcasts_and_log_probs_are_in_the_precision():
    model = make_model(3, perturb=0.1)
    prompts = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(3))
    for precision in ("fp32", "bf16", "fp16"):
        dtype = precision_dtype(precision)
        decoder = KVCacheDecoder(model, precision)
        logits = decoder.prefill(prompts)
        log_probs = decoder.prefill(prompts, log_probs=True)
        assert logits.dtype == log_probs.dtype == torch.float32 and logits.shape == (4, 64)
        assert torch.equal(logits.to(dtype).float(), logits)
        assert torch.equal(log_probs.to(dtype).float(), log_probs)
        assert torch.equal(log_probs, log_softmax_in(logits, precision))
        assert torch.equal(log_probs, torch.log_softmax(logits.to(dtype), -1).float())
        step_logits = decoder.step(prompts[:, 0])
        decoder.prefill(prompts)
        assert torch.equal(
            decoder.step(prompts[:, 0], log_probs=True), log_softmax_in(step_logits, precision)
        )
    z = np.random.default_rng(3).normal(scale=20.0, size=(5, 64))
    expected = (
        z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    )
    got = log_softmax_in(torch.as_tensor(z, dtype=torch.float32), "fp32")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_decode_is_bit_identical_on_two_runs(precision):
    model = make_model(9, perturb=0.05)
    sequence = torch.randint(0, 64, (6, 14), generator=torch.Generator().manual_seed(9))
    decoder = KVCacheDecoder(model, precision)
    first = teacher_forced(decoder, sequence, 3)
    again = teacher_forced(decoder, sequence, 3)  # the same decoder, cache reused
    fresh = teacher_forced(KVCacheDecoder(model, precision), sequence, 3)
    assert torch.equal(first, again) and torch.equal(first, fresh)


def test_a_shorter_prefill_after_a_long_decode_sees_no_stale_cache():
    model = make_model(10, perturb=0.05)
    long_run = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(10))
    short = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(11))
    decoder = KVCacheDecoder(model, "bf16")
    teacher_forced(decoder, long_run, 2)
    assert decoder.length == 16 and decoder.batch_size == 4
    assert torch.equal(
        teacher_forced(decoder, short, 3), teacher_forced(KVCacheDecoder(model, "bf16"), short, 3)
    )
    decoder.prefill(short[:2, :3])  # a new batch size reallocates
    assert decoder.batch_size == 2 and decoder.length == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_load_weights_picks_up_a_weight_change(precision):
    model = make_model(12, perturb=0.05)
    prompts = torch.randint(0, 64, (5, 4), generator=torch.Generator().manual_seed(12))
    decoder = KVCacheDecoder(model, precision)
    before = decoder.prefill(prompts)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)
    assert torch.equal(decoder.prefill(prompts), before)  # the decoder holds a copy until the next sync
    decoder.load_weights(model)
    after = decoder.prefill(prompts)
    assert (after - before).abs().max() > 1e-2
    assert torch.equal(after, KVCacheDecoder(model, precision).prefill(prompts))
    with torch.no_grad():
        expected = model(prompts)[:, -1]
    tolerance = 1e-5 if precision == "fp32" else 0.05
    torch.testing.assert_close(after, expected, rtol=0, atol=tolerance)


def test_decoder_rejects_bad_arguments():
    model = make_model(13)
    with pytest.raises(ValueError, match="precision"):
        KVCacheDecoder(model, "fp8")
    with pytest.raises(TypeError, match="precision"):
        KVCacheDecoder(model, torch.bfloat16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="matmul"):
        KVCacheDecoder(model, "bf16", matmul="fast")
    with pytest.raises(TypeError, match="model"):
        KVCacheDecoder(nn.Linear(2, 2), "fp32")  # type: ignore[arg-type]
    decoder = KVCacheDecoder(model, "fp32")
    with pytest.raises(RuntimeError, match="prefill"):
        decoder.step(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="prompts"):
        decoder.prefill(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="prompts"):
        decoder.prefill(np.zeros((2, 3), dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompts"):
        decoder.prefill(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="prompts"):
        decoder.prefill(torch.zeros(2, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="prompts"):
        decoder.prefill(torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_seq_len"):
        decoder.prefill(torch.zeros(2, 17, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"prompts.*\[0, 64\)"):
        decoder.prefill(torch.full((2, 3), 64))
    with pytest.raises(ValueError, match="prompts"):
        decoder.prefill(torch.full((2, 3), -1))
    with pytest.raises(TypeError, match="log_probs"):
        decoder.prefill(torch.zeros(2, 3, dtype=torch.int64), log_probs=1)  # type: ignore[arg-type]
    decoder.prefill(torch.zeros(2, 15, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens"):
        decoder.step(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens"):
        decoder.step(torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens"):
        decoder.step(torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="tokens"):
        decoder.step(torch.tensor([0, 99]))
    decoder.step(torch.zeros(2, dtype=torch.int64))  # position 15: the last one
    with pytest.raises(ValueError, match="max_seq_len"):
        decoder.step(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"model\.config"):
        decoder.load_weights(make_model(13, vocab_size=65))
    with pytest.raises(TypeError, match="model"):
        decoder.load_weights(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_seq_len"):
        decode_answers(decoder, torch.zeros(2, 8, dtype=torch.int64), 10, lambda z, t: z.argmax(-1))
    with pytest.raises(ValueError, match="answer_length"):
        decode_answers(decoder, torch.zeros(2, 8, dtype=torch.int64), 0, lambda z, t: z.argmax(-1))
    with pytest.raises(ValueError, match="choose"):
        decode_answers(decoder, torch.zeros(2, 8, dtype=torch.int64), 3, lambda z, t: z.argmax(-1)[:1])
    with pytest.raises(ValueError, match="precision"):
        log_softmax_in(torch.zeros(2, 3), "fp64")
    with pytest.raises(TypeError, match="logits"):
        log_softmax_in(torch.zeros(2, 3, dtype=torch.int64), "fp32")
