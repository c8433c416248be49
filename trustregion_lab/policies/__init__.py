"""Policies: a tabular softmax policy (bandit) and a small decoder-only transformer (token sequences), plus the
transformer's second implementation for rollout engines (``decoding``: KV-cache decode in fp32, bf16 or fp16).

The policies are ``torch.nn.Module`` s that return logits; devices are chosen with one flag ``cpu | cuda | auto``.
"""

from trustregion_lab.policies.decoding import (
    DECODE_PRECISIONS,
    KVCacheDecoder,
    decode_answers,
    log_softmax_in,
)
from trustregion_lab.policies.device import DEVICE_CHOICES, autocast, resolve_device
from trustregion_lab.policies.tabular import TabularSoftmaxPolicy
from trustregion_lab.policies.transformer import DecoderTransformer, TransformerConfig

__all__ = [
    "DECODE_PRECISIONS",
    "DEVICE_CHOICES",
    "DecoderTransformer",
    "KVCacheDecoder",
    "TabularSoftmaxPolicy",
    "TransformerConfig",
    "autocast",
    "decode_answers",
    "log_softmax_in",
    "resolve_device",
]
