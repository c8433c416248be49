"""Policies: device selection, the tabular softmax policy, the causal decoder transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from trustregion_lab.policies import (
    DecoderTransformer,
    TabularSoftmaxPolicy,
    TransformerConfig,
    autocast,
    resolve_device,
)


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
