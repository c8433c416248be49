"""A small decoder-only transformer over the token-sequence vocabulary, in plain torch.

Architecture: token embedding + learned position embedding -> ``n_layers`` pre-norm
``torch.nn.TransformerEncoderLayer`` blocks run with a causal mask (so each position attends to itself and the
past only) -> final LayerNorm -> linear head to ``vocab_size`` logits. Attention is torch's own
(scaled_dot_product_attention inside ``nn.MultiheadAttention``); nothing here re-implements it.

Shapes: tokens [batch, seq] (int64) -> logits [batch, seq, vocab] (float32, or bf16 under autocast on CUDA).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["DecoderTransformer", "TransformerConfig"]


@dataclass(frozen=True)
class TransformerConfig:
    """Size of the decoder. Parameters ≈ 2·vocab·d_model + n_layers·(4·d_model² + 2·d_model·d_ff)."""

    vocab_size: int
    max_seq_len: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DecoderTransformer(nn.Module):
    """Causal transformer language model; ``forward(tokens [batch, seq]) -> logits [batch, seq, vocab]``.

    Dropout is zero, so train and eval modes compute the same function; the module is kept in train mode by the
    trainers (this also keeps torch's inference fast path, which rounds differently, out of the way).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
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
        """Logits for the next token at every position: tokens [batch, seq] -> [batch, seq, vocab]."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, seq], got {tuple(tokens.shape)}")
        seq_len = tokens.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.config.max_seq_len}")
        positions = torch.arange(seq_len, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)[None]
        causal = nn.Transformer.generate_square_subsequent_mask(
            seq_len, device=tokens.device, dtype=hidden.dtype
        )
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.head(self.final_norm(hidden))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
