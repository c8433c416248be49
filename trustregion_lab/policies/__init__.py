"""Policies: a tabular softmax policy (bandit) and a small decoder-only transformer (token sequences).

Both are ``torch.nn.Module`` s that return logits; devices are chosen with one flag ``cpu | cuda | auto``.
"""

from trustregion_lab.policies.device import DEVICE_CHOICES, autocast, resolve_device
from trustregion_lab.policies.tabular import TabularSoftmaxPolicy
from trustregion_lab.policies.transformer import DecoderTransformer, TransformerConfig

__all__ = [
    "DEVICE_CHOICES",
    "DecoderTransformer",
    "TabularSoftmaxPolicy",
    "TransformerConfig",
    "autocast",
    "resolve_device",
]
