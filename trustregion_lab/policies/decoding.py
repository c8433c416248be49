"""A second implementation of ``DecoderTransformer`` for rollout engines: KV-cache decoding in a precision.

``KVCacheDecoder`` holds a copy of a ``DecoderTransformer``'s weights cast to ``precision`` ("fp32", "bf16" or
"fp16") and decodes incrementally: ``prefill(prompts [B, P])`` runs the prompt once and stores every layer's
keys and values in a preallocated cache ``[n_layers, B, n_heads, max_seq_len, head_dim]``; each
``step(tokens [B])`` appends one token per row and runs only that position (attention against the cache).
Both return the next-token logits ``[B, vocab]`` of the last position as float32 (an exact upcast of the
engine's values), so with ``μ = log_softmax(z)``::

    prefill(prompts)[b]           = z(prompts[b])                         (next-token logits after the prompt)
    step(t)[b] after n tokens     = z(prompts[b] ++ t_1[b] .. t_n[b])     (t_n = this call's tokens)

In fp32 this equals ``DecoderTransformer.forward(sequence)[:, -1]`` up to the summation order of the kernels
(|Δ logit| ≲ 1e-6 for the toy sizes). Sampling is the caller's: decode with ``prefill`` then one ``step`` per
drawn token (``decode_answers`` is the loop), drawing tokens from the returned logits with its own generator.

What a "bf16 engine" (or fp16) computes: every op takes its inputs in the precision p and rounds its output to
p once; inside an op, torch's kernel in dtype p decides (for the ops below it computes in fp32):
- weights: each parameter rounded to p (round-to-nearest-even) at every ``load_weights``;
- embeddings: rows of the p weights; token + position embedding added in p; residual additions in p;
- LayerNorm (eps 1e-5), GELU (erf) and log-softmax: torch's ops on p tensors (statistics and the function in
  fp32, output rounded to p; measured within a few ulp of the fp32 result rounded to p);
- attention: ``scaled_dot_product_attention`` on p tensors; on CPU this is torch's flash-attention kernel
  (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp): q·kᵀ with fp32 accumulation, softmax in fp32, the
  softmax weights rounded to p before the product with v, fp32 accumulation, output rounded to p. Keys and
  values are kept in the cache in p;
- linear layers (q|k|v, attention output, MLP, head): y = round_p(x Wᵀ + b) with x, W, b in p and products and
  sums in fp32. For bf16 this is torch's native CPU bf16 GEMM (oneDNN). torch's native CPU fp16 GEMM runs
  about 10× slower than fp32 on CPUs without fp16 matrix units, so with ``matmul="auto"`` fp16 linears on CPU
  run as an fp32 GEMM of the fp16 values followed by one rounding to fp16. The product of two fp16 (or bf16)
  numbers is exact in fp32, so this differs from a native kernel only in the fp32 summation order. Measured
  (AMD EPYC, torch 2.13, shapes [256, 128] × [128, 2000] and [256, 512] × [512, 128]), native vs
  fp32-accumulate: bf16 99.99 % of outputs bit-identical, the rest 1 ulp apart; fp16 99.8–99.9 %
  bit-identical, the rest ≤ 8 ulp apart; both equally close to the exact (float64) product rounded to p.
  ``matmul="native"`` forces torch's kernel in p, ``"fp32-accumulate"`` the emulation (no effect in fp32);
- output: the head's logits in p, returned as float32 (an exact upcast). ``log_probs=True`` returns instead
  the log-softmax computed on the p logits (rounded to p) as float32; ``log_softmax_in`` does the same for
  stored logits. A caller that wants μ's log-probabilities in fp32 applies ``torch.log_softmax`` to the
  returned float32 logits.

Quantized engines (precision names of ``QUANTIZED_ENGINES``: "fp8-e4m3", "fp8-e5m2", "int4-g32"; quantizers in
``trustregion_lab.policies.quantize``): everything is the bf16 engine above (embeddings, LayerNorms, attention,
the KV cache and the LM head in bf16) except the four linear layers of every block (q|k|v, attention output,
MLP in and out), whose weights are quantized from the model's float32 weights at every ``load_weights``:
- "fp8-e4m3" (W8A8; "fp8-e5m2" the same in e5m2): W → FP8 with one scale per output channel,
  s_W = amax_row / 448 (57,344 for e5m2); the bf16 input x → FP8 with one dynamic scale per token,
  s_x = amax_token / 448; y = round_bf16(((q_x q_Wᵀ) · s_x) · s_W + b), the product q_x q_Wᵀ and everything after
  it in float32 (each product of two FP8 values is exact in float32), b the bf16 bias;
- "int4-g32" (weight-only): W → symmetric INT4 in groups of 32 input columns per row (scale amax_group / 7), the
  dequantized weight q · s rounded to bf16 once, then the ordinary bf16 linear (bf16 activations).
``precision`` is then "bf16" and ``quant`` names the quantization (the name above; "none" for the plain
precisions).

Shapes: prompts [B, P] int64 (1 ≤ P ≤ max_seq_len), tokens [B] int64, returned logits [B, vocab] float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from trustregion_lab._validate import check_bool, check_choice, check_int
from trustregion_lab.policies.quantize import fp8_quantize, int4_dequantize, int4_quantize
from trustregion_lab.policies.transformer import DecoderTransformer, TransformerConfig

__all__ = [
    "DECODE_PRECISIONS",
    "MATMUL_MODES",
    "KVCacheDecoder",
    "decode_answers",
    "log_softmax_in",
    "precision_dtype",
]

DECODE_PRECISIONS = ("fp32", "bf16", "fp16")
MATMUL_MODES = ("auto", "native", "fp32-accumulate")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LN_EPS = 1e-5  # nn.LayerNorm's default, used by DecoderTransformer
# quantized engines: name -> (precision of everything else, quantization of the blocks' linear layers)
QUANTIZED_ENGINES = {
    "fp8-e4m3": ("bf16", "fp8-e4m3"),
    "fp8-e5m2": ("bf16", "fp8-e5m2"),
    "int4-g32": ("bf16", "int4-g32"),
}
INT4_GROUP_SIZE = 32
_BLOCK_LINEARS = (("qkv", "qkv"), ("out", "attn_out"), ("ff_in", "ff_in"), ("ff_out", "ff_out"))


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of ``precision``: fp32 -> float32, bf16 -> bfloat16, fp16 -> float16."""
    return _DTYPES[check_choice("precision", precision, DECODE_PRECISIONS)]


def log_softmax_in(logits: torch.Tensor, precision: str) -> torch.Tensor:
    """log_softmax(z)_i = z_i − log Σ_j exp z_j computed in ``precision`` on logits [..., vocab]; float32 out.

    ``logits`` are cast to the precision first (exact for logits returned by a ``KVCacheDecoder`` of that
    precision) and the result, rounded to the precision, is upcast to float32.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(
            f"logits must be a floating-point torch.Tensor [..., vocab], got {type(logits).__name__}"
        )
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., vocab] with vocab >= 1, got {tuple(logits.shape)}")
    dtype = precision_dtype(precision)
    return torch.log_softmax(logits.to(dtype), dim=-1).float()


class _Layer:
    """One block's weights in the engine precision (and, for fp32-accumulate linears, their fp32 upcasts)."""

    __slots__ = ("ff_in", "ff_out", "norm1", "norm2", "out", "qkv")

    def __init__(self) -> None:
        self.norm1: tuple[torch.Tensor, torch.Tensor]
        self.norm2: tuple[torch.Tensor, torch.Tensor]
        self.qkv: tuple[torch.Tensor, torch.Tensor]
        self.out: tuple[torch.Tensor, torch.Tensor]
        self.ff_in: tuple[torch.Tensor, torch.Tensor]
        self.ff_out: tuple[torch.Tensor, torch.Tensor]


class _Fp8Pair(tuple):
    """(weight, bias) buffers of a W8A8 linear, plus its FP8 weight ``qweight`` `[out, in]` (float32 holding FP8
    values) and per-output-channel ``scale`` `[out]`, both set at every weight load."""

    qweight: torch.Tensor
    scale: torch.Tensor

    @staticmethod
    def fmt_of(quant: str) -> str:
        return quant.removeprefix("fp8-")


def _split_quantized(precision: object) -> tuple[object, str]:
    """(precision of the unquantized parts, quantization) of a decoder precision name (``QUANTIZED_ENGINES``)."""
    if isinstance(precision, str) and precision in QUANTIZED_ENGINES:
        return QUANTIZED_ENGINES[precision]
    return precision, "none"


class KVCacheDecoder:
    """Incremental decoding of a ``DecoderTransformer``'s weights in ``precision``, with a KV cache.

    ``KVCacheDecoder(model, precision="fp32", matmul="auto")`` copies the weights (see ``load_weights``);
    later changes to ``model`` are seen only after the next ``load_weights(model)`` (the engine's weight
    sync). Use: ``z = prefill(prompts)`` then ``z = step(tokens)`` once per appended token; each returns
    float32 logits [B, vocab] for the next token. The cache is allocated once per batch size and reused by
    later prefills. Calls are deterministic: the same weights and tokens give bit-identical logits.
    """

    def __init__(self, model: DecoderTransformer, precision: str = "fp32", *, matmul: str = "auto") -> None:
        precision, self.quant = _split_quantized(precision)
        if not isinstance(model, DecoderTransformer):
            raise TypeError(f"model must be a DecoderTransformer, got {type(model).__name__}")
        self.precision = check_choice("precision", precision, DECODE_PRECISIONS)
        self.matmul = check_choice("matmul", matmul, MATMUL_MODES)
        self.dtype = _DTYPES[self.precision]
        self.config: TransformerConfig = model.config
        self.device = model.token_embedding.weight.device
        # auto: fp32-accumulate where torch's native kernel is the slow one (fp16 GEMM on CPU)
        slow_native = self.precision == "fp16" and self.device.type == "cpu"
        resolved = ("fp32-accumulate" if slow_native else "native") if matmul == "auto" else matmul
        self._upcast_linears = resolved == "fp32-accumulate" and self.precision != "fp32"
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._length = 0
        self._batch = 0
        self._allocate_weights(model)
        if self.quant.startswith("fp8"):  # the blocks' linears become W8A8 (quantized at every load_weights)
            for layer in self._layers:
                for name, _ in _BLOCK_LINEARS:
                    setattr(layer, name, _Fp8Pair(getattr(layer, name)))
        self.load_weights(model)

    # ---- weights ------------------------------------------------------------------------------------------

    def _empty(self, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(param.shape, dtype=dtype, device=self.device)

    def _allocate_weights(self, model: DecoderTransformer) -> None:
        p, linear_dtype = self.dtype, torch.float32 if self._upcast_linears else self.dtype
        self._token_embedding = self._empty(model.token_embedding.weight, p)
        self._position_embedding = self._empty(model.position_embedding.weight, p)
        self._final_norm = (self._empty(model.final_norm.weight, p), self._empty(model.final_norm.bias, p))
        self._head = self._empty(model.head.weight, linear_dtype)
        self._layers: list[_Layer] = []
        for block in model.blocks:
            layer = _Layer()
            layer.norm1 = (self._empty(block.norm1.weight, p), self._empty(block.norm1.bias, p))
            layer.norm2 = (self._empty(block.norm2.weight, p), self._empty(block.norm2.bias, p))
            for name in ("qkv", "out", "ff_in", "ff_out"):
                module = getattr(block, "attn_out" if name == "out" else name)
                weights = (self._empty(module.weight, linear_dtype), self._empty(module.bias, linear_dtype))
                setattr(layer, name, weights)
            self._layers.append(layer)

    def _pairs(self, model: DecoderTransformer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(decoder buffer, model parameter) for every weight, in a fixed order."""
        pairs = [
            (self._token_embedding, model.token_embedding.weight),
            (self._position_embedding, model.position_embedding.weight),
            (self._final_norm[0], model.final_norm.weight),
            (self._final_norm[1], model.final_norm.bias),
            (self._head, model.head.weight),
        ]
        for layer, block in zip(self._layers, model.blocks, strict=True):
            pairs += [
                (layer.norm1[0], block.norm1.weight),
                (layer.norm1[1], block.norm1.bias),
                (layer.norm2[0], block.norm2.weight),
                (layer.norm2[1], block.norm2.bias),
            ]
            for name, module in (
                ("qkv", block.qkv),
                ("out", block.attn_out),
                ("ff_in", block.ff_in),
                ("ff_out", block.ff_out),
            ):
                weight, bias = getattr(layer, name)
                pairs += [(weight, module.weight), (bias, module.bias)]
        return pairs

    @torch.no_grad()
    def load_weights(self, model: DecoderTransformer) -> None:
        """Copy ``model``'s current weights, each rounded to the precision (round-to-nearest-even).

        ``model.config`` must equal this decoder's config. Linear weights kept for fp32-accumulate are the
        rounded values upcast to float32 (exact). The KV cache is left as it is: call ``prefill`` next.
        """
        if not isinstance(model, DecoderTransformer):
            raise TypeError(f"model must be a DecoderTransformer, got {type(model).__name__}")
        if model.config != self.config:
            raise ValueError(
                f"model.config must equal the decoder's config {self.config}, got {model.config}"
            )
        for buffer, param in self._pairs(model):
            if buffer.dtype == self.dtype:
                buffer.copy_(param.detach())
            else:  # float32 holder of a p-rounded weight
                buffer.copy_(param.detach().to(self.dtype))
        if self.quant != "none":
            self._quantize_linears(model)

    @torch.no_grad()
    def _quantize_linears(self, model: DecoderTransformer) -> None:
        """Quantize the blocks' linear weights from the model's float32 values (module docstring, "Quantized")."""
        for layer, block in zip(self._layers, model.blocks, strict=True):
            for name, attr in _BLOCK_LINEARS:
                weight = getattr(block, attr).weight.detach().float()
                pair = getattr(layer, name)
                if isinstance(pair, _Fp8Pair):
                    pair.qweight, pair.scale = fp8_quantize(weight, pair.fmt_of(self.quant), dim=-1)
                    pair.scale = pair.scale[:, 0]
                else:  # int4-g32: the dequantized weight, rounded to p, in the ordinary linear's buffer
                    q, scale = int4_quantize(weight, INT4_GROUP_SIZE)
                    pair[0].copy_(int4_dequantize(q, scale, INT4_GROUP_SIZE).to(self.dtype))

    # ---- ops in the engine precision ---------------------------------------------------------------------

    def _linear(
        self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | torch.Tensor
    ) -> torch.Tensor:
        """round_p(x W^T + b): x [..., d_in] in p -> [..., d_out] in p."""
        if isinstance(weights, _Fp8Pair):
            return self._fp8_linear(x, weights)
        weight, bias = weights if isinstance(weights, tuple) else (weights, None)
        if self._upcast_linears:
            return F.linear(x.float(), weight, bias).to(self.dtype)
        return F.linear(x, weight, bias)

    def _fp8_linear(self, x: torch.Tensor, pair: _Fp8Pair) -> torch.Tensor:
        """round_p(((q_x q_Wᵀ) · s_x) · s_W + b): W8A8 with per-token activation scales, fp32 accumulation."""
        q_x, s_x = fp8_quantize(x.float(), pair.fmt_of(self.quant), dim=-1)
        y = F.linear(q_x, pair.qweight) * s_x * pair.scale
        return (y + pair[1].float()).to(self.dtype)

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.config.d_model,), weights[0], weights[1], _LN_EPS)

    def _mlp(self, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        return x + self._linear(F.gelu(self._linear(self._norm(x, layer.norm2), layer.ff_in)), layer.ff_out)

    def _logits(self, x: torch.Tensor, log_probs: bool) -> torch.Tensor:
        """Head on the last hidden state x [B, d] (p) -> float32 [B, vocab] (logits or log-probabilities)."""
        logits = self._linear(self._norm(x, self._final_norm), self._head)
        if log_probs:
            logits = torch.log_softmax(logits, dim=-1)
        return logits.float()

    # ---- input checks --------------------------------------------------------------------------------------

    def _check_ids(self, name: str, ids: object, ndim: int, form: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor {form} of integer token ids, got {type(ids).__name__}"
            )
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise TypeError(f"{name} must hold integer token ids {form}, got dtype {ids.dtype}")
        if ids.ndim != ndim:
            raise ValueError(f"{name} must have shape {form}, got {tuple(ids.shape)}")
        if ids.device != self.device:
            raise ValueError(f"{name} is on {ids.device}, the decoder's weights are on {self.device}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{name} must hold token ids in [0, {self.config.vocab_size}), "
                f"got values in [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids.long()

    # ---- decoding ------------------------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Tokens per row in the cache (prompt + appended); 0 before the first prefill."""
        return self._length

    @property
    def batch_size(self) -> int:
        """Rows of the current cache; 0 before the first prefill."""
        return self._batch

    @torch.no_grad()
    def prefill(self, prompts: torch.Tensor, *, log_probs: bool = False) -> torch.Tensor:
        """Run prompts [B, P] (1 ≤ P ≤ max_seq_len), fill the cache; next-token logits [B, vocab] float32.

        Replaces whatever the cache held. ``log_probs=True``: the log-softmax of the logits, computed in the
        precision.
        """
        prompts = self._check_ids("prompts", prompts, 2, "[batch, prompt_len]")
        log_probs = check_bool("log_probs", log_probs)
        batch, length = prompts.shape
        cfg = self.config
        check_int("prompts.shape[0] (batch)", batch, minimum=1)
        if not 1 <= length <= cfg.max_seq_len:
            raise ValueError(
                f"prompts length (prompts.shape[1]) must be in [1, max_seq_len={cfg.max_seq_len}], "
                f"got {length}"
            )
        heads, head_dim, d_model = cfg.n_heads, cfg.head_dim, cfg.d_model
        shape = (cfg.n_layers, batch, heads, cfg.max_seq_len, head_dim)
        if self._keys is None or self._keys.shape != shape:
            self._keys = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._values = torch.empty(shape, dtype=self.dtype, device=self.device)
        assert self._values is not None
        self._batch = self._length = 0  # an error below leaves the cache marked empty

        x = F.embedding(prompts, self._token_embedding) + self._position_embedding[:length]
        last = cfg.n_layers - 1
        for index, layer in enumerate(self._layers):
            qkv = self._linear(self._norm(x, layer.norm1), layer.qkv).view(batch, length, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, P, head_dim]
            self._keys[index, :, :, :length] = k
            self._values[index, :, :, :length] = v
            if index == last:  # only the last position feeds the logits: attend from it alone
                x = x[:, -1]
                attended = F.scaled_dot_product_attention(q[:, :, -1:], k, v)
                attended = attended.reshape(batch, d_model)
            else:
                attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                attended = attended.transpose(1, 2).reshape(batch, length, d_model)
            x = self._mlp(x + self._linear(attended, layer.out), layer)
        self._batch, self._length = batch, length
        return self._logits(x, log_probs)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, *, log_probs: bool = False) -> torch.Tensor:
        """Append tokens [B] (one per row) and return the next-token logits [B, vocab] float32.

        Needs a prefill first, B equal to its batch, and length < max_seq_len.
        """
        if self._batch == 0:
            raise RuntimeError("step() needs a prefill(prompts) first")
        tokens = self._check_ids("tokens", tokens, 1, f"[batch] with batch = {self._batch}")
        log_probs = check_bool("log_probs", log_probs)
        if tokens.shape[0] != self._batch:
            raise ValueError(
                f"tokens must have shape [{self._batch}] (the prefill's batch), got {tuple(tokens.shape)}"
            )
        cfg = self.config
        position = self._length
        if position >= cfg.max_seq_len:
            raise ValueError(f"tokens would make the sequence longer than max_seq_len={cfg.max_seq_len}")
        assert self._keys is not None and self._values is not None
        batch, heads, head_dim, d_model = self._batch, cfg.n_heads, cfg.head_dim, cfg.d_model
        x = F.embedding(tokens, self._token_embedding) + self._position_embedding[position]
        for index, layer in enumerate(self._layers):
            qkv = self._linear(self._norm(x, layer.norm1), layer.qkv).view(batch, 3, heads, head_dim)
            self._keys[index, :, :, position] = qkv[:, 1]
            self._values[index, :, :, position] = qkv[:, 2]
            attended = F.scaled_dot_product_attention(
                qkv[:, 0, :, None],  # [B, heads, 1, head_dim]
                self._keys[index, :, :, : position + 1],
                self._values[index, :, :, : position + 1],
            )
            x = self._mlp(x + self._linear(attended.reshape(batch, d_model), layer.out), layer)
        self._length = position + 1
        return self._logits(x, log_probs)


def decode_answers(
    decoder: KVCacheDecoder,
    prompts: torch.Tensor,
    answer_length: int,
    choose: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    log_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``answer_length`` tokens per prompt: the prefill, then one step per chosen token but the last.

    ``choose(z [B, vocab] float32, t) -> tokens [B]`` picks answer token t from the decoder's output at t (it
    samples with the caller's generator, or takes the argmax). Returns (tokens [B, T] int64, outputs
    [B, T, vocab] float32) where outputs[:, t] is what ``choose`` saw at t (logits, or log-probabilities with
    ``log_probs=True``). Needs prompt_len + answer_length − 1 ≤ max_seq_len.
    """
    if not isinstance(decoder, KVCacheDecoder):
        raise TypeError(f"decoder must be a KVCacheDecoder, got {type(decoder).__name__}")
    answer_length = check_int("answer_length", answer_length, minimum=1)
    if not callable(choose):
        raise TypeError(f"choose must be callable (logits [B, vocab], t) -> tokens [B], got {choose!r}")
    if isinstance(prompts, torch.Tensor) and prompts.ndim == 2:
        needed = prompts.shape[1] + answer_length - 1
        if needed > decoder.config.max_seq_len:
            raise ValueError(
                f"prompt_len + answer_length - 1 = {needed} exceeds max_seq_len={decoder.config.max_seq_len}"
            )
    outputs = [decoder.prefill(prompts, log_probs=log_probs)]
    chosen: list[torch.Tensor] = []
    for t in range(answer_length):
        token = choose(outputs[-1], t)
        if not isinstance(token, torch.Tensor) or token.shape != (decoder.batch_size,):
            raise ValueError(f"choose must return tokens of shape [{decoder.batch_size}], got {token!r}")
        chosen.append(token.long())
        if t + 1 < answer_length:
            outputs.append(decoder.step(chosen[-1], log_probs=log_probs))
    return torch.stack(chosen, dim=1), torch.stack(outputs, dim=1)
