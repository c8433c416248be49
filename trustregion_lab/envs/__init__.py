"""Gymnasium environments of trustregion_lab (imported as ``trustregion_lab.envs``); registered on import.

- ``trustregion_lab/LargeVocabBandit-v0``: one-step contextual bandit over a vocabulary of up to ``MAX_VOCAB_SIZE``
  = 262,144 tokens (problem arrays up to ``MAX_PROBLEM_BYTES`` = 4 GiB) with LLM-like initial logits and exact
  ground truth (``large_vocab_bandit``); ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`` gives
  the numpy-batched ``LargeVocabBanditVectorEnv``.
- ``trustregion_lab/TokenSequence-v0``: autoregressive copy / reverse / sort / digit-sum answers with a verifier
  (``token_sequence_env``); trainers use the batched ``TokenSequenceTask`` (``token_sequence``) directly.
- ``llm_like_logits`` and ``choose_tokens_by_rank`` (``logit_model``): the LLM-like initial distributions.
"""

from gymnasium.envs.registration import register, registry

from trustregion_lab.envs.bandit_problem import (
    MAX_PROBLEM_BYTES,
    MAX_VOCAB_SIZE,
    BanditProblem,
    make_bandit_problem,
)
from trustregion_lab.envs.large_vocab_bandit import LargeVocabBanditEnv, LargeVocabBanditVectorEnv
from trustregion_lab.envs.logit_model import LOGIT_FAMILIES, choose_tokens_by_rank, llm_like_logits
from trustregion_lab.envs.token_sequence import TokenSequenceTask
from trustregion_lab.envs.token_sequence_env import TokenSequenceEnv

BANDIT_ID = "trustregion_lab/LargeVocabBandit-v0"
TOKEN_SEQUENCE_ID = "trustregion_lab/TokenSequence-v0"

if BANDIT_ID not in registry:
    register(
        id=BANDIT_ID,
        entry_point="trustregion_lab.envs.large_vocab_bandit:LargeVocabBanditEnv",
        vector_entry_point="trustregion_lab.envs.large_vocab_bandit:LargeVocabBanditVectorEnv",
    )
if TOKEN_SEQUENCE_ID not in registry:
    register(id=TOKEN_SEQUENCE_ID, entry_point="trustregion_lab.envs.token_sequence_env:TokenSequenceEnv")

__all__ = [
    "BANDIT_ID",
    "LOGIT_FAMILIES",
    "MAX_PROBLEM_BYTES",
    "MAX_VOCAB_SIZE",
    "TOKEN_SEQUENCE_ID",
    "BanditProblem",
    "LargeVocabBanditEnv",
    "LargeVocabBanditVectorEnv",
    "TokenSequenceEnv",
    "TokenSequenceTask",
    "choose_tokens_by_rank",
    "llm_like_logits",
    "make_bandit_problem",
]
