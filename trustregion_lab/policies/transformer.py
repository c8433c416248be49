"""A small decoder-only transformer over the token-sequence vocabulary, in plain torch.

Architecture (pre-norm, GELU, causal, learned positions, no dropout, separate output head)::

    x_0 = E_tok[tokens] + E_pos[0 .. seq-1]                                   [batch, seq, d_model]
    for each block l = 1 .. n_layers:
        h   = LayerNorm_1(x);  [q | k | v] = h W_qkv^T + b_qkv                 [batch, seq, 3·d_model]
        a   = softmax(q_h k_h^T / sqrt(head_dim) + causal) v_h  per head h     [batch, heads, seq, head_dim]
        x   = x + concat_h(a) W_o^T + b_o
        x   = x + GELU(LayerNorm_2(x) W_1^T + b_1) W_2^T + b_2             (GELU with erf; W_1: [d_ff, d])
    logits = LayerNorm_f(x) W_head^T                                           [batch, seq, vocab]

Attention is ``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``; the columns of
``q``/``k``/``v`` of head ``h`` are ``h·head_dim .. (h+1)·head_dim − 1``. LayerNorm eps is 1e-5.

Parameters (biases everywhere except the head): ``vocab·d + max_seq_len·d + n_layers·(4·d² + 2·d·d_ff +
9·d + d_ff) + 2·d + vocab·d`` — the same count and the same functions as torch's
``nn.TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0)`` stack this module replaces.

Initialisation (the draws, in order, from torch's global generator, as that stack made them): token and
position embeddings; one block — ``W_o`` and ``b_o`` as ``nn.Linear`` draws them, then ``b_o = 0``,
``W_qkv`` Xavier-uniform over the whole [3·d, d] matrix, ``b_qkv = 0``, then ``W_1, b_1`` and ``W_2, b_2`` as
``nn.Linear`` draws them; the other blocks start as copies of that one; LayerNorms weight 1 and bias 0; the
head as ``nn.Linear``; finally the embeddings and the head are redrawn from N(0, 0.02²). With the same seed
the weights are bit-identical to the replaced stack's.

The incremental (KV-cache) forward of the same weights, in fp32, bf16 or fp16, lives in
``trustregion_lab.policies.decoding``.

Shapes: tokens [batch, seq] (int64) -> logits [batch, seq, vocab] (float32, or bf16 under autocast on CUDA).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

__all__ = ["DecoderBlock", "DecoderTransformer", "TransformerConfig"]


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

    @property
    def head_dim(self) -> int:
        """d_model // n_heads."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DecoderBlock(nn.Module):
    """One pre-norm block: ``x + Attn(LN_1(x))``, then ``x + MLP(LN_2(x))``; [batch, seq, d] -> same.

    Parameters: ``norm1``, ``qkv`` (Linear d -> 3·d, rows q | k | v), ``attn_out`` (Linear d -> d), ``norm2``,
    ``ff_in`` (Linear d -> d_ff), ``ff_out`` (Linear d_ff -> d). ``forward`` is causal.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = skip_init(nn.Linear, d_model, 3 * d_model)
        self.attn_out = skip_init(nn.Linear, d_model, d_model)
        self.ff_in = skip_init(nn.Linear, d_model, d_ff)
        self.ff_out = skip_init(nn.Linear, d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the weights in the order documented in the module docstring."""
        self.attn_out.reset_parameters()
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.attn_out.bias)
        self.ff_in.reset_parameters()
        self.ff_out.reset_parameters()
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        heads = self.n_heads
        qkv = self.qkv(self.norm1(x)).view(batch, seq, 3, heads, d_model // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, seq, d_model))
        return x + self.ff_out(F.gelu(self.ff_in(self.norm2(x))))


class DecoderTransformer(nn.Module):
    """Causal transformer language model; ``forward(tokens [batch, seq]) -> logits [batch, seq, vocab]``.

    Dropout is zero and there is no inference fast path, so train and eval modes compute the same function.
    Parameter names: ``token_embedding``, ``position_embedding``, ``blocks.<l>.{norm1, qkv, attn_out, norm2,
    ff_in, ff_out}``, ``final_norm``, ``head``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        first = DecoderBlock(config.d_model, config.n_heads, config.d_ff)
        self.blocks = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(config.n_layers - 1)])
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, *, start: int = 0) -> torch.Tensor:
        """Logits for the next token at positions start .. seq − 1: tokens [batch, seq] -> [batch, seq − start,
        vocab] (every position by default). The blocks see the whole sequence; only the final LayerNorm and the
        head skip the positions before ``start``, which a caller that reads only the answer's logits never uses."""
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(
                f"tokens must be a torch.Tensor [batch, seq] of int64 ids, got {type(tokens).__name__}"
            )
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, seq], got {tuple(tokens.shape)}")
        seq_len = tokens.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.config.max_seq_len}")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < max(seq_len, 1):
            raise ValueError(f"start must be an int in [0, seq) = [0, {seq_len}), got {start!r}")
        positions = torch.arange(seq_len, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)[None]
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(self.final_norm(hidden[:, start:] if start else hidden))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
