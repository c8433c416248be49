"""Training loops: GRPO-style trainers for the bandit (tabular policy) and the token-sequence task (transformer).

Both use ``trustregion_lab.losses.policy_loss`` and ``trustregion_lab.masks`` unchanged, a rollout engine from
``trustregion_lab.mismatch`` in the loop, several optimiser mini-batches per rollout batch, and log one tidy row
per step. ``python -m trustregion_lab.train {bandit,sequence} --help`` lists every config field.
"""

from trustregion_lab.train.bandit import BanditTrainer, train_bandit
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig
from trustregion_lab.train.sequence import SequenceTrainer, train_sequence
from trustregion_lab.train.variants import VARIANTS, Variant, resolve_variant

__all__ = [
    "VARIANTS",
    "BanditConfig",
    "BanditTrainer",
    "SequenceConfig",
    "SequenceTrainer",
    "TrainConfig",
    "Variant",
    "resolve_variant",
    "train_bandit",
    "train_sequence",
]
