"""Training loops: GRPO-style trainers for the bandit (tabular policy) and the token-sequence task (transformer).

Both run one step the same way (``trustregion_lab.train.base``: engine sync, rollout, π_old, update) with
``trustregion_lab.losses.policy_loss`` and the masks unchanged, a rollout engine in the loop
(``trustregion_lab.train.engine``), several optimiser mini-batches per rollout batch
(``trustregion_lab.train.step.update``), and log one tidy row per step.
``python -m trustregion_lab.train {bandit,sequence} --help`` lists every config field.
"""

from trustregion_lab.train.bandit import BanditTrainer
from trustregion_lab.train.config import BanditConfig, SequenceConfig, TrainConfig
from trustregion_lab.train.sequence import SequenceTrainer
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
]
