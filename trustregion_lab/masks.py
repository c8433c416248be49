"""Trust-region masks: which tokens keep their policy gradient (True = keep). docs/design.md §2, paper Eq. 11–12.

One registry, ``METHODS``: each entry (a ``MaskMethod``) is one definition of a method, consumed unchanged by
``trust_region_mask``, by ``losses.policy_loss``'s diagnostics and by ``analysis.calibration``. An entry holds
    estimate   the quantity the rule reads per token: D, a divergence estimate between the anchor and π, for the
               DPPO methods (computed in float64); the ratio r = π(a)/anchor(a) for the ratio rule;
    rule       how D becomes a *critical threshold* per side: the value c at which the token flips, so that it
               lies outside the region on the side an Â > 0 update pushes it to iff c_up > high, and on the
               side an Â < 0 update pushes it to iff c_down > low (c = −∞: never outside);
                 "ratio":       c_up = r − 1,  c_down = 1 − r
                 "divergence":  c_up = D if π(a) > anchor(a) else −∞,  c_down = D if π(a) < anchor(a) else −∞
                 "none":        c_up = c_down = −∞
    min_anchor_prob  tokens with anchor(a) below it are never outside (the paper's §6 relaxation);
and the drop rule every method shares: drop = (Â > 0 and c_up > high) or (Â < 0 and c_down > low).
Padded tokens (``response_mask`` False) and Â = 0 tokens are always kept (they carry no gradient anyway).
Critical thresholds are float64, so a divergence is compared with its threshold in float64 whatever the input
dtype.

Methods (thresholds ``low``/``high`` are arguments: ratio ε for the ratio rule, δ for the DPPO methods):
    ppo              ratio rule on r = π(a)/anchor(a) (GRPO; clip-higher when high > low)
    ppo_relaxed      ppo, but tokens with anchor(a) < 0.1 are never clipped (paper §6, α = 0.1)
    dppo_binary_tv   D = |π(a) − anchor(a)|   (so: drop if Â > 0 and π(a) − anchor(a) > high, or Â < 0 and
                     π(a) − anchor(a) < −low)
    dppo_binary_kl   D = Binary KL (Eq. 14);  dppo_topk_tv / dppo_topk_kl: Top-K TV / KL (Eq. 15–16);
    dppo_exact_tv / dppo_exact_kl: exact TV / KL(anchor‖π) from full logits
    none             keep everything (PG with importance sampling; CISPO-like)

Anchor (docs/design.md §2 "Anchor"; paper §5.2): by default the mask compares π with the rollout μ. Passing
``old_logprob`` (the trainer's recomputed π_old, the MiniRL / verl-default "recompute" variant) anchors the mask
there instead; the Top-K and exact methods then need ``old_logits`` (π_old's full logits) for the anchor.

Adding a method is one entry: ``METHODS["my_method"] = MaskMethod("divergence", estimate=my_estimate)`` with
``my_estimate(x: MaskInputs) -> D`` (float64, shape of ``x.logprob``).

The field's remedies for the mismatch (docs/design.md §9) are rules ``METHODS``' signed per-token rule cannot
express; they live in a second registry, ``CORRECTION_METHODS``, of ``MaskMethod`` entries with rule "ratio" and
two more fields: ``level`` — "token" (the statistic is the token's ratio r_t = π(a_t)/anchor(a_t)) or "sequence"
(one statistic per sequence over its valid tokens, shared by all of them: the product R = Π_t r_t, or the
geometric mean G = (Π_t r_t)^(1/n), n = valid tokens, by ``sequence_stat``); and ``sides`` — "advantage" (the
shared drop rule: drop if Â > 0 and stat > 1 + high, or Â < 0 and stat < 1 − low) or "both" (drop if stat lies
outside [1 − low, 1 + high] whatever the sign of Â: a band, not a trust region). Thresholds are deviations from 1
as for the ratio rule (a band [a, b] is low = 1 − a, high = b − 1). Entries:
    icepop       token band: keep r_t ∈ [1 − low, 1 + high]  (IcePop: [0.5, 5] → low 0.5, high 4)
    seq_mis      sequence band on R = Π_t r_t  (sequence-level masked IS: [0.5, 2] → low 0.5, high 1)
    seq_geo_mis  sequence band on G = (Π_t r_t)^(1/n)  ([0.99, 1.01] → low = high = 0.01)
    gspo         signed rule on G (GSPO's sequence ratio, clipped at 1 − 3e-4 / 1 + 4e-4)
Each also names the importance weight its loss uses (``weight``: "token" r_t, "sequence" R, "geometric" G; the
surrogate caps it at C). ``correction_mask`` is the keep mask (layout `[..., time]`: the last axis is time,
leading axes index sequences; a 1-D input is one sequence); ``sequence_statistic`` the per-token view of R or G.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trustregion_lab import divergence as div
from trustregion_lab._arrays import ArrayLike, Converter, check_finite, check_logprobs, check_same_shape
from trustregion_lab._validate import check_choice, check_threshold

__all__ = [
    "CORRECTION_METHODS",
    "METHODS",
    "RULES",
    "MaskInputs",
    "MaskMethod",
    "broadcast_advantages",
    "check_any_method",
    "check_method",
    "correction_mask",
    "critical_thresholds",
    "outside_region",
    "sequence_statistic",
    "trust_region_mask",
]

RULES = ("ratio", "divergence", "none")
LEVELS = ("token", "sequence")
SIDES = ("advantage", "both")
SEQUENCE_STATS = ("product", "geometric")
WEIGHTS = ("token", "sequence", "geometric")


@dataclass(frozen=True)
class MaskInputs:
    """Inputs of one mask evaluation, as tensors on one device (shapes `[...]` per token)."""

    logprob: torch.Tensor  # log π(a) `[...]`
    anchor_logprob: torch.Tensor  # log anchor(a) `[...]` (rollout μ, or recomputed π_old)
    topk_ids: torch.Tensor | None = None  # `[..., K]`
    anchor_topk_logprobs: torch.Tensor | None = None  # `[..., K]`
    logits: torch.Tensor | None = None  # π's logits `[..., vocab]`
    anchor_logits: torch.Tensor | None = None  # anchor's logits `[..., vocab]`
    anchor_name: str = "rollout"  # "rollout" or "old": names the arguments in error messages

    def require(self, field: str, method: str) -> torch.Tensor:
        value = getattr(self, field)
        if value is None:
            rollout = {
                "topk_ids": "topk_ids",
                "anchor_topk_logprobs": "rollout_topk_logprobs",
                "logits": "logits",
                "anchor_logits": "rollout_logits",
            }[field]
            if self.anchor_name == "old" and field.startswith("anchor"):
                needs = "old_logits (the anchor's full logits) together with old_logprob"
                if field == "anchor_topk_logprobs":
                    needs += " and topk_ids"
            else:
                needs = f"{rollout}=..."
            raise ValueError(f"method {method!r} needs {needs}")
        return value


Estimate = Callable[[MaskInputs], torch.Tensor]


@dataclass(frozen=True)
class MaskMethod:
    """One mask method: its estimate, its rule (→ critical thresholds) and what it needs (module docstring).

    rule: "ratio" | "divergence" | "none"; estimate: D(x) `[...]` float64 (divergence rule); divergence: "tv",
    "kl" or "" (the family of D, for choosing an exact reference); needs: the MaskInputs fields it reads beyond
    the log-probs; min_anchor_prob: tokens with anchor(a) below it are never outside; description: one line.
    """

    rule: str
    estimate: Estimate | None = None
    divergence: str = ""
    needs: tuple[str, ...] = ()
    min_anchor_prob: float = 0.0
    description: str = ""
    level: str = "token"
    sides: str = "advantage"
    sequence_stat: str = "product"
    weight: str = "token"

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        if self.rule == "divergence" and self.estimate is None:
            raise ValueError("a method with the divergence rule needs an estimate")
        check_choice("level", self.level, LEVELS)
        check_choice("sides", self.sides, SIDES)
        check_choice("sequence_stat", self.sequence_stat, SEQUENCE_STATS)
        check_choice("weight", self.weight, WEIGHTS)
        if (self.level != "token" or self.sides != "advantage") and self.rule != "ratio":
            raise ValueError("sequence-level and two-sided (sides='both') methods take the ratio rule")

    def critical(
        self, x: MaskInputs, estimate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_up, c_down) float64 `[...]` (module docstring); ``estimate`` may pass a precomputed D."""
        lp, alp = x.logprob.double(), x.anchor_logprob.double()
        never = torch.full(lp.shape, -math.inf, dtype=torch.float64, device=lp.device)
        if self.rule == "none":
            return never, never.clone()
        if self.rule == "ratio":
            ratio = torch.exp(lp - alp)
            up, down = ratio - 1.0, 1.0 - ratio
        else:
            d = (self.estimate(x) if estimate is None else estimate).double()
            up, down = torch.where(lp > alp, d, never), torch.where(lp < alp, d, never)
        if self.min_anchor_prob > 0:
            exempt = alp < math.log(self.min_anchor_prob)
            up, down = up.masked_fill(exempt, -math.inf), down.masked_fill(exempt, -math.inf)
        return up, down


def _binary_tv(x: MaskInputs) -> torch.Tensor:
    return div.binary_tv(x.anchor_logprob, x.logprob, dtype=torch.float64)


def _binary_kl(x: MaskInputs) -> torch.Tensor:
    return div.binary_kl(x.anchor_logprob, x.logprob, dtype=torch.float64)


def _topk(fn: Callable[..., torch.Tensor], method: str) -> Estimate:
    def estimate(x: MaskInputs) -> torch.Tensor:
        ids = x.require("topk_ids", method)
        lmu = x.require("anchor_topk_logprobs", method)
        names = (
            {"rollout_topk_logprobs": "log_softmax(old_logits) at topk_ids"}
            if x.anchor_name == "old"
            else None
        )
        return fn(lmu, ids, x.require("logits", method), dtype=torch.float64, names=names)

    return estimate


def _exact(fn: Callable[..., torch.Tensor], method: str) -> Estimate:
    def estimate(x: MaskInputs) -> torch.Tensor:
        names = {"rollout_logits": "old_logits"} if x.anchor_name == "old" else None
        anchor = x.require("anchor_logits", method)
        return fn(anchor, x.require("logits", method), dtype=torch.float64, names=names)

    return estimate


METHODS: dict[str, MaskMethod] = {
    "ppo": MaskMethod("ratio", description="PPO/GRPO ratio clip"),
    "ppo_relaxed": MaskMethod(
        "ratio", min_anchor_prob=0.1, description="ratio clip lifted for tokens with anchor(a) < 0.1 (§6)"
    ),
    "dppo_binary_tv": MaskMethod("divergence", _binary_tv, "tv", description="Binary TV |π(a) − μ(a)|"),
    "dppo_binary_kl": MaskMethod("divergence", _binary_kl, "kl", description="Binary KL (Eq. 14)"),
    "dppo_topk_tv": MaskMethod(
        "divergence",
        _topk(div.topk_tv, "dppo_topk_tv"),
        "tv",
        needs=("topk_ids", "anchor_topk_logprobs", "logits"),
        description="Top-K TV (Eq. 15)",
    ),
    "dppo_topk_kl": MaskMethod(
        "divergence",
        _topk(div.topk_kl, "dppo_topk_kl"),
        "kl",
        needs=("topk_ids", "anchor_topk_logprobs", "logits"),
        description="Top-K KL (Eq. 16)",
    ),
    "dppo_exact_tv": MaskMethod(
        "divergence",
        _exact(div.tv, "dppo_exact_tv"),
        "tv",
        needs=("anchor_logits", "logits"),
        description="exact TV",
    ),
    "dppo_exact_kl": MaskMethod(
        "divergence",
        _exact(div.kl, "dppo_exact_kl"),
        "kl",
        needs=("anchor_logits", "logits"),
        description="exact KL",
    ),
    "none": MaskMethod("none", description="no mask (PG-IS)"),
}

CORRECTION_METHODS: dict[str, MaskMethod] = {
    "icepop": MaskMethod(
        "ratio", sides="both", description="IcePop: drop tokens with r outside [1 − low, 1 + high]"
    ),
    "seq_mis": MaskMethod(
        "ratio",
        level="sequence",
        sides="both",
        sequence_stat="product",
        weight="sequence",
        description="sequence masked IS: drop sequences with Π r outside [1 − low, 1 + high]; weight Π r",
    ),
    "seq_geo_mis": MaskMethod(
        "ratio",
        level="sequence",
        sides="both",
        sequence_stat="geometric",
        description="geometric sequence mask: drop sequences with (Π r)^(1/n) outside [1 − low, 1 + high]",
    ),
    "gspo": MaskMethod(
        "ratio",
        level="sequence",
        sequence_stat="geometric",
        weight="geometric",
        description="GSPO: clip rule on the sequence ratio (Π r)^(1/n); weight (Π r)^(1/n)",
    ),
}


def check_method(method: object) -> str:
    return check_choice("method", method, METHODS)


def check_any_method(method: object) -> str:
    """A key of ``METHODS`` or of ``CORRECTION_METHODS`` (read at call time, so later registrations count)."""
    return check_choice("method", method, [*METHODS, *CORRECTION_METHODS])


def _sequence_log_stat(log_r: torch.Tensor, valid: torch.Tensor, stat: str) -> torch.Tensor:
    """log R (Σ_t log r_t) or log G (its mean) of each sequence over valid tokens, broadcast back to every token.

    log_r float64 `[..., time]`, valid bool `[..., time]`; a sequence without valid tokens gets 0 (R = G = 1).
    """
    total = torch.where(valid, log_r, 0.0).sum(-1, keepdim=True)
    if stat == "geometric":
        total = total / valid.sum(-1, keepdim=True).clamp(min=1).to(total.dtype)
    return total.expand_as(log_r)


def correction_log_stat(entry: MaskMethod, log_r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log of the statistic ``entry``'s rule reads, per token (float64 `[..., time]`; module docstring)."""
    if entry.level == "token":
        return log_r
    return _sequence_log_stat(log_r, valid, entry.sequence_stat)


def correction_log_weight(entry: MaskMethod, log_r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log of ``entry``'s importance weight per token: log r_t, log R or log G (float64 `[..., time]`)."""
    if entry.weight == "token":
        return log_r
    return _sequence_log_stat(log_r, valid, "product" if entry.weight == "sequence" else "geometric")


def correction_outside(
    entry: MaskMethod, log_stat: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_up, out_down) bool from the log statistic: stat > 1 + high, stat < 1 − low; for sides "both" each is
    their union (outside whatever the advantage's sign). Compared in log space: log stat > log1p(high)."""
    up = log_stat > math.log1p(high)
    down = log_stat < (math.log1p(-low) if low < 1 else -math.inf)
    if entry.sides == "both":
        up = down = up | down
    return up, down


def sequence_statistic(
    method: str, *, logprob: ArrayLike, rollout_logprob: ArrayLike, response_mask: ArrayLike | None = None
) -> ArrayLike:
    """The statistic a correction method reads, per token `[..., time]` float64: r_t (token level), or the
    sequence's R = Π_t r_t / G = (Π_t r_t)^(1/n) over its valid tokens, repeated on each of its tokens."""
    entry = CORRECTION_METHODS[check_choice("method", method, CORRECTION_METHODS)]
    conv = Converter()
    lp, lmu, valid = _correction_inputs(conv, logprob, rollout_logprob, response_mask)
    return conv.out_raw(torch.exp(correction_log_stat(entry, lp.double() - lmu.double(), valid)))


def _correction_inputs(
    conv: Converter, logprob: ArrayLike, anchor_logprob: ArrayLike, response_mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lp = conv.place(conv.tensor(logprob, "logprob"))
    lmu = conv.place(conv.tensor(anchor_logprob, "rollout_logprob"))
    check_same_shape(lp, "logprob", lmu, "rollout_logprob")
    if lp.ndim < 1:
        raise ValueError(f"logprob must have shape [..., time], got a scalar {tuple(lp.shape)}")
    lp, lmu = check_logprobs(lp, "logprob"), check_logprobs(lmu, "rollout_logprob")
    if response_mask is None:
        valid = torch.ones(lp.shape, dtype=torch.bool, device=lp.device)
    else:
        valid = conv.place(conv.tensor(response_mask, "response_mask", kind="bool"))
        check_same_shape(valid, "response_mask", lp, "logprob")
    return lp, lmu, valid


def correction_mask(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    advantages: ArrayLike,
    low: float,
    high: float,
    response_mask: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
) -> ArrayLike:
    """Keep mask `[..., time]` of a ``CORRECTION_METHODS`` rule (True = the token keeps its gradient).

    keep = not ((Â > 0 and out_up) or (Â < 0 and out_down)) with out_up / out_down from the method's statistic
    (module docstring); for sides "both" that is: drop every Â ≠ 0 token whose statistic lies outside
    [1 − low, 1 + high]. Padded (``response_mask`` False) and Â = 0 tokens are kept. Sequence statistics are
    taken over the valid tokens of each sequence (the last axis is time). ``old_logprob`` moves the anchor from μ
    to the recomputed π_old. advantages: `[..., time]` or `[batch]` for `[batch, time]`.
    """
    entry = CORRECTION_METHODS[check_choice("method", method, CORRECTION_METHODS)]
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    conv = Converter()
    conv.adopt_device(old_logprob)
    anchor = rollout_logprob if old_logprob is None else old_logprob
    lp, alp, valid = _correction_inputs(conv, logprob, anchor, response_mask)
    adv = broadcast_advantages(conv.place(conv.tensor(advantages, "advantages")), lp.shape)
    up, down = correction_outside(
        entry, correction_log_stat(entry, lp.double() - alp.double(), valid), low, high
    )
    drop = ((adv > 0) & up) | ((adv < 0) & down)
    return conv.out_raw(~(drop & valid))


def _mask_inputs(
    conv: Converter,
    entry: MaskMethod,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    topk_ids: ArrayLike | None,
    rollout_topk_logprobs: ArrayLike | None,
    logits: ArrayLike | None,
    rollout_logits: ArrayLike | None,
    old_logprob: ArrayLike | None,
    old_logits: ArrayLike | None,
) -> MaskInputs:
    """Validate every input under its own argument name and build the MaskInputs of the chosen anchor."""
    lp = conv.place(conv.tensor(logprob, "logprob"))
    lmu = conv.place(conv.tensor(rollout_logprob, "rollout_logprob"))
    check_same_shape(lp, "logprob", lmu, "rollout_logprob")
    lp, lmu = check_logprobs(lp, "logprob"), check_logprobs(lmu, "rollout_logprob")
    opt = {
        "topk_ids": (topk_ids, "int"),
        "rollout_topk_logprobs": (rollout_topk_logprobs, "float"),
        "logits": (logits, "float"),
        "rollout_logits": (rollout_logits, "float"),
        "old_logprob": (old_logprob, "float"),
        "old_logits": (old_logits, "float"),
    }
    t = {
        name: None if v is None else conv.place(conv.tensor(v, name, kind=kind))
        for name, (v, kind) in opt.items()
    }
    for name in ("logits", "rollout_logits", "old_logits"):
        if t[name] is not None and t[name].shape[:-1] != lp.shape:
            raise ValueError(f"{name} must have shape {(*lp.shape, 'vocab')}, got {tuple(t[name].shape)}")
    for name in ("topk_ids", "rollout_topk_logprobs"):
        if t[name] is not None and t[name].shape[:-1] != lp.shape:
            raise ValueError(f"{name} must have shape {(*lp.shape, 'K')}, got {tuple(t[name].shape)}")
    if t["old_logprob"] is None:
        if t["old_logits"] is not None:
            raise ValueError("old_logits is only used together with old_logprob (the recompute anchor)")
        return MaskInputs(
            lp, lmu, t["topk_ids"], t["rollout_topk_logprobs"], t["logits"], t["rollout_logits"]
        )
    alp = t["old_logprob"]
    check_same_shape(alp, "old_logprob", lp, "logprob")
    alp = check_logprobs(alp, "old_logprob")
    anchor_topk = None
    if t["old_logits"] is not None and t["topk_ids"] is not None and "anchor_topk_logprobs" in entry.needs:
        anchor_topk = div.token_logprobs(
            t["old_logits"], t["topk_ids"], names={"logits": "old_logits", "ids": "topk_ids"}
        )
    return MaskInputs(lp, alp, t["topk_ids"], anchor_topk, t["logits"], t["old_logits"], anchor_name="old")


def _critical(
    conv: Converter, method: str, *inputs: ArrayLike | None
) -> tuple[MaskInputs, torch.Tensor, torch.Tensor]:
    """Validate the inputs (``_mask_inputs`` order) for ``method``; return them and the critical thresholds."""
    entry = METHODS[check_method(method)]
    conv.adopt_device(*inputs[2:])
    x = _mask_inputs(conv, entry, *inputs)
    up, down = entry.critical(x)
    return x, up, down


def critical_thresholds(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """(c_up, c_down) float64 `[...]`: the threshold at which each token flips on each side (module docstring).

    A token is outside the region on the up side iff c_up > high, on the down side iff c_down > low. Arguments
    as in ``trust_region_mask``.
    """
    conv = Converter()
    _, up, down = _critical(
        conv,
        method,
        logprob,
        rollout_logprob,
        topk_ids,
        rollout_topk_logprobs,
        logits,
        rollout_logits,
        old_logprob,
        old_logits,
    )
    return conv.out_raw(up), conv.out_raw(down)


def outside_region(
    method: str, *, low: float, high: float, **inputs: ArrayLike | None
) -> tuple[ArrayLike, ArrayLike]:
    """(out_up, out_down) bool `[...]`: whether each token lies outside the region on the up / down side.

    out_up = c_up > high, out_down = c_down > low (``critical_thresholds``); the building block of
    ``trust_region_mask``, exposed for analysis ("would PPO clip this token if its advantage were positive?").
    """
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    up, down = critical_thresholds(method, **inputs)
    return up > high, down > low


def trust_region_mask(
    method: str,
    *,
    logprob: ArrayLike,
    rollout_logprob: ArrayLike,
    advantages: ArrayLike,
    low: float,
    high: float,
    topk_ids: ArrayLike | None = None,
    rollout_topk_logprobs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    rollout_logits: ArrayLike | None = None,
    old_logprob: ArrayLike | None = None,
    old_logits: ArrayLike | None = None,
    response_mask: ArrayLike | None = None,
) -> ArrayLike:
    """Bool mask `[...]`, True = the token keeps its gradient (docs/design.md §2; paper Eq. 11–12).

    keep = not ((Â > 0 and c_up > high) or (Â < 0 and c_down > low)); padded (``response_mask`` False) and
    Â = 0 tokens are always True.

    logprob, rollout_logprob: log π(a), log μ(a) `[...]`; advantages: Â `[...]` (or `[batch]` broadcast over a
    trailing time dim); low, high: thresholds ≥ 0 (ratio ε for the ratio rule, δ for the DPPO methods);
    topk_ids, rollout_topk_logprobs `[..., K]` for the Top-K methods; logits, rollout_logits `[..., vocab]` for
    the exact methods (logits also for Top-K); old_logprob `[...]` (and old_logits `[..., vocab]` for Top-K and
    exact) moves the anchor to the recomputed π_old; response_mask bool `[...]`.
    """
    low = check_threshold("low", low)
    high = check_threshold("high", high)
    conv = Converter()
    x, up, down = _critical(
        conv,
        method,
        logprob,
        rollout_logprob,
        topk_ids,
        rollout_topk_logprobs,
        logits,
        rollout_logits,
        old_logprob,
        old_logits,
    )
    adv = broadcast_advantages(conv.place(conv.tensor(advantages, "advantages")), x.logprob.shape)
    drop = ((adv > 0) & (up > high)) | ((adv < 0) & (down > low))
    if response_mask is not None:
        valid = conv.place(conv.tensor(response_mask, "response_mask", kind="bool"))
        check_same_shape(valid, "response_mask", x.logprob, "logprob")
        drop &= valid
    return conv.out_raw(~drop)


def broadcast_advantages(adv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Advantages `[...]` of the token shape, or `[batch]` broadcast over `[batch, time]`."""
    if adv.shape == shape:
        check_finite(adv, "advantages")
        return adv
    if adv.ndim == 1 and len(shape) == 2 and adv.shape[0] == shape[0]:
        check_finite(adv, "advantages")
        return adv[:, None].expand(shape)
    raise ValueError(
        f"advantages must have the shape of logprob {tuple(shape)} (or [batch] for [batch, time]), "
        f"got {tuple(adv.shape)}"
    )
