"""The engine's numeric building blocks: precision rounding, in-place log-softmax, block top-k, top-p, the
exact inverse-CDF categorical draw, and the Top-K set rules. Plain torch functions on `[n, V]` tensors.

Top-K reports (docs/design.md §2; K = `topk`): ids are the K largest μ (ties broken deterministically but otherwise
arbitrarily: a bf16 softmax produces many tied log-probs), reported with their log-probs under `logprob_mode`.
The set rule decides what happens to the sampled token a:
- "topk": the K largest only (a may be missing); shape [..., K].
- "topk_plus_sampled" (the paper's §4.4): K largest plus a when it is missing; shape [..., K + 1], and the last
  slot is padding (id −1, log-prob −inf) when a is already among the K.
- "topk_replace_last" (the authors' code): when a is missing it overwrites slot K (index K − 1); shape [..., K].
`divergence.topk_tv/topk_kl` accept these reports as they are (id −1 marks an unused slot).

Cost (benchmarks/bench_mismatch.py: N = 256 rows, V = 151,936, float32, 2 CPU cores, medians of 9 interleaved
rounds, relative to one `torch.log_softmax` over the same logits; measured on an otherwise idle machine):
default config 1.5×, temperature 0.7 1.6×, top_p = 0.95 2.4–2.5×, preset "bf16" 3.9–4.1×, preset "moe"
5.1–5.2× (two runs; goal ≤ 3× for the default). Per chunk the default makes one rounding copy into a bf16 workspace, an in-place bf16
log-softmax, one conversion into the float32 output and an in-place float32 log-softmax there (step 5), a row
sum (the finiteness check) and a block-maximum top-k (`topk_rows`: one max-reduction over blocks of 64 entries
instead of a selection over V); sampling touches the vocabulary only for rows that fall in the tail. Logit noise
and routing flips draw one Gaussian per perturbed entry, and torch's CPU normal generator costs about four
log-softmaxes per entry drawn: that is the presets' extra cost. top_p < 1 needs the nucleus of each row: a
top-64, widened ×8 for the rows whose nucleus is larger, up to a full O(V log V) selection only for rows whose
nucleus exceeds V / 8; LLM-like rows rarely need more than the first round. On a machine shared with other
busy processes every vocabulary-wide pass also waits for torch's worker threads, so the ratios grow (default
≈ 3.7× measured with two other busy processes on the 2 cores); the baseline is a single pass.
"""

from __future__ import annotations

import numpy as np
import torch

from trustregion_lab._validate import check_choice
from trustregion_lab.mismatch.config import EXCLUDED_LOGIT, PRECISIONS, TOPK_RULES

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "apply_set_rule",
    "apply_top_p",
    "log_softmax_",
    "round_to_precision",
    "sample_categorical",
    "topk_rows",
]

_TOP_P_FIRST_K = 64  # first nucleus search width; escalated ×8 per round
_TOPK_BLOCK = 64  # block size of the block-maximum top-k (CPU)


def _inplace_log_softmax_available() -> bool:
    try:
        probe = torch.tensor([[0.0, 1.0]])
        torch.ops.aten._log_softmax.out(probe, -1, False, out=probe)
        return bool(torch.allclose(probe, torch.log_softmax(torch.tensor([[0.0, 1.0]]), -1)))
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - other torch builds
        return False


_INPLACE_LOG_SOFTMAX = _inplace_log_softmax_available()


def log_softmax_(t: torch.Tensor) -> torch.Tensor:
    """In-place log-softmax over the last axis of a contiguous tensor [n, V] (any float dtype); returns t.

    On the CPU this is aten's `_log_softmax.out` with out = input (each row is read for its max and its sum of
    exponentials before any entry is written, so aliasing is safe; `tests/test_mismatch.py` checks the result
    against a float64 reference). Elsewhere it is `t.copy_(torch.log_softmax(t))`.
    """
    if t.device.type == "cpu" and _INPLACE_LOG_SOFTMAX:
        return torch.ops.aten._log_softmax.out(t, -1, False, out=t)
    return t.copy_(torch.log_softmax(t, dim=-1))


def topk_rows(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row, descending, with their ids. [n, V] → ([n, k], [n, k] int64).

    On the CPU with V ≥ 4·64·k: block maxima over blocks of 64 entries, the k blocks with the largest maxima,
    then `torch.topk` over their 64·k entries (plus the < 64 entries of an incomplete last block). Exact: the
    k blocks with the largest maxima hold k entries ≥ their smallest maximum t, and every entry outside them is
    ≤ t, so the top k lies in those blocks (ties may be broken differently from `torch.topk`). One cheap
    reduction over the row instead of a selection over V.
    """
    n, v = values.shape
    block = _TOPK_BLOCK
    if values.device.type != "cpu" or v < 4 * block * k or not values.is_contiguous():
        return torch.topk(values, k, dim=-1, sorted=True)
    num_blocks = v // block
    block_max = values.as_strided((n, num_blocks, block), (v, block, 1)).amax(dim=-1)
    top_blocks = torch.topk(block_max, k, dim=-1, sorted=False).indices
    candidates = (top_blocks.unsqueeze(-1) * block + torch.arange(block)).reshape(n, k * block)
    if num_blocks * block < v:
        remainder = torch.arange(num_blocks * block, v).expand(n, -1)
        candidates = torch.cat((candidates, remainder), dim=-1)
    top_values, position = torch.topk(values.gather(-1, candidates), k, dim=-1, sorted=True)
    return top_values, candidates.gather(-1, position)


def round_to_precision(logits: ArrayLike, precision: str) -> ArrayLike:
    """Round logits [..., V] to `precision` ("fp32" | "bf16" | "fp16") and return them as float32, same kind.

    Exactly torch's own cast `logits.to(dtype).float()` (round to nearest, ties to even; bf16 keeps 8 significant
    bits, fp16 11 bits and overflows to ±inf from |x| ≥ 65,520 on). The engine's step 3 applies this rounding.
    """
    check_choice("precision", precision, PRECISIONS)
    if isinstance(logits, np.ndarray):
        if not np.issubdtype(logits.dtype, np.floating):
            raise TypeError(f"logits must be a float array, got dtype {logits.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(logits)).reshape(logits.shape)
        return t.to(torch.float32).to(PRECISIONS[precision]).to(torch.float32).numpy()
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor or numpy.ndarray, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    return logits.detach().to(torch.float32).to(PRECISIONS[precision]).to(torch.float32)


def sample_categorical(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws per row: index i with C_{i−1} ≤ u·C_M < C_i, C = cumsum(weights) in float64.

    weights [m, M] ≥ 0 with a positive total per row; u [m] (one draw per row) or [m, n] (n draws per row) in
    [0, 1), float64 → int64 of u's shape. A draw pushed past the last positive weight by rounding goes to the
    last positive weight: a zero weight is never drawn. The one categorical sampler of the package (engines,
    trainers' exact engine, evaluations and analyses).
    """
    weights = weights.to(torch.float64)
    single = u.ndim == 1
    u2 = u.to(torch.float64).reshape(u.shape[0], -1)
    cdf = weights.cumsum(-1)
    target = u2 * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=weights.shape[-1] - 1)
    zero = weights.gather(-1, idx) <= 0
    if bool(zero.any()):
        rows = zero.any(-1).nonzero().squeeze(-1)
        positive = weights.index_select(0, rows) > 0
        last = weights.shape[-1] - 1 - positive.flip(-1).to(torch.uint8).argmax(-1)
        idx[rows] = torch.where(zero[rows], last[:, None], idx[rows])
    return idx[:, 0] if single else idx


def apply_top_p(log_probs: torch.Tensor, top_p: float) -> None:
    """Restrict each row of normalised log-probs [n, V] (float32) to its top-p nucleus, in place.

    The nucleus is the smallest prefix of the descending order with mass ≥ top_p, extended by every token tied
    with its last one. Kept tokens get log μ_v = log p_v − log Σ_kept p (float64 sum), the others EXCLUDED_LOGIT.
    Search: the top 64 of each row (`topk_rows`); a row is resolved when its list reaches mass top_p and its
    last entry is below the threshold (so no tie continues past the list); other rows widen ×8 per round, up
    to a full sort of the row. Writing a resolved row costs a fill and a scatter of the list, no pass over V.
    """
    n, v = log_probs.shape
    device = log_probs.device
    todo: torch.Tensor | None = None  # None: every row
    k = min(v, _TOP_P_FIRST_K)
    while True:
        rows = torch.arange(n, device=device) if todo is None else todo
        values, ids = topk_rows(log_probs if todo is None else log_probs.index_select(0, todo), k)
        probs = values.to(torch.float64).exp()
        cum = probs.cumsum(-1)
        last = (cum < top_p).sum(-1, keepdim=True).clamp(max=k - 1)
        threshold = values.gather(-1, last)
        kept = values >= threshold
        if k < v:
            resolved = (cum[:, -1] >= top_p) & (values[:, -1] < threshold.squeeze(-1))
        else:
            resolved = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
        log_kept_mass = torch.where(kept, probs, 0.0).sum(-1, keepdim=True).log().to(torch.float32)
        new_values = torch.where(kept, values - log_kept_mass, EXCLUDED_LOGIT)
        if todo is None and bool(resolved.all()):
            log_probs.fill_(EXCLUDED_LOGIT).scatter_(-1, ids, new_values)
            return
        done = resolved.nonzero().squeeze(-1)
        if done.numel():
            block = torch.full((done.numel(), v), EXCLUDED_LOGIT, dtype=log_probs.dtype, device=device)
            block.scatter_(-1, ids.index_select(0, done), new_values.index_select(0, done))
            log_probs.index_copy_(0, rows.index_select(0, done), block)
        todo = rows[~resolved]
        if todo.numel() == 0:
            return
        k = min(v, k * 8)


def apply_set_rule(top_ids: torch.Tensor, token: torch.Tensor, rule: str) -> torch.Tensor:
    """The ids an engine reports under a Top-K set rule (docs/design.md §2): top_ids `[n, K]` (the K largest μ,
    largest first), token `[n]` (the sampled ids) → int64 `[n, K]` or `[n, K + 1]`.

    "topk": top_ids itself; "topk_plus_sampled": the sampled token appended where it is missing, −1 (an unused
    slot) where it is present; "topk_replace_last": the sampled token overwrites the K-th id where missing.
    The one definition of the set rules: the engine, the trainers' exact engine and the analyses all call it.
    """
    check_choice("rule", rule, TOPK_RULES)
    top_ids = top_ids.long()
    token = token.long()
    missing = (top_ids != token.unsqueeze(-1)).all(-1)
    if rule == "topk":
        return top_ids
    if rule == "topk_plus_sampled":
        extra = torch.where(missing, token, torch.full_like(token, -1))
        return torch.cat([top_ids, extra.unsqueeze(-1)], dim=-1)
    ids = top_ids.clone()
    ids[:, -1] = torch.where(missing, token, ids[:, -1])
    return ids
