"""Float64 numpy references of every rule the conformance kit checks. No project numerics are imported here:
the values are the definitions written out directly (μ = rollout, π = trainer, a = the sampled token,
r = π(a)/μ(a); "anchor" is μ, or π_old for the recompute cases; shapes `[B, T]`, one row = one sequence, its
tokens those with response_mask True).

Divergences (docs/design.md §2):
    Binary:  TV = |π(a) − μ(a)|;  KL = μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a)))   (Eq. 14)
    Top-K:   S = reported ids, rest = 1 − Σ_S;  TV = ½ (Σ_S |μ_v − π_v| + |μ_rest − π_rest|),
             KL = Σ_S μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest)  (a term with zero mass is 0)   (Eq. 15–16)
    Exact:   TV = ½ Σ_v |μ_v − π_v|;  KL = Σ_v μ_v log(μ_v/π_v)
1 − p is computed as −expm1(log p) and log(1 − p) as log(−expm1(log p)) (or log1p(−p) for small p).

Mask rules (True = keep). Padded tokens and Â = 0 tokens are always kept (they carry no gradient).
The registry's methods (`trustregion_lab.masks.METHODS`) are read from their registry fields, never by name:
    rule "ratio":       drop (Â > 0, r − 1 > high) or (Â < 0, 1 − r > low)
    rule "divergence":  drop (Â > 0, D > high, π(a) > anchor(a)) or (Â < 0, D > low, π(a) < anchor(a)); D is
                        the reference estimate chosen by the entry's `divergence` family ("tv"/"kl") and what it
                        `needs` (nothing more: Binary; top-K fields: Top-K; anchor logits: exact)
    rule "none":        keep all
    min_anchor_prob:    tokens with anchor(a) below it are never dropped (paper §6)
The rules frameworks ship beyond the registry (`FRAMEWORK_RULES`; parameters in brackets). A bound on a ratio
is a deviation from 1, as in the registry (`trustregion_lab.masks.METHODS` and `CORRECTION_METHODS`): a
framework's absolute band [a, b] on r, R or G is low = 1 − a, high = b − 1 (IcePop's [0.5, 5] is low 0.5,
high 4). The rules named like a key of `masks.CORRECTION_METHODS` (icepop, seq_mis, seq_geo_mis, gspo) are that
rule, at the same low/high:
    dual_clip     PPO clip plus a bound on the Â < 0 side: also drop (Â < 0, r > c)  [clip_ratio_c = c > 1,
                  absolute] (verl clip_ratio_c, SkyRL dual_clip, slime eps_clip_c; TRL's delta caps r on both
                  sides)
    ipo           advantage-independent: drop if π(a) − μ(a) > high or μ(a) − π(a) > low  (prime-rl, 0.1)
    icepop        advantage-independent: drop if r < 1 − low or r > 1 + high  ([0.5, 5] → (0.5, 4), verl
                  decoupled_token_icepop)
    token_mask    the same band on r with prime-rl's token_mask_low/high ([0.125, 8] → (0.875, 7))
    opsm          off-policy sequence masking: drop every token of a sequence when its Â < 0 and the sequence's
                  mean over its tokens of log μ(a) − log π(a) exceeds δ (= low = high)
    seq_mis       sequence masked IS: drop the whole sequence when R = Π_t r_t lies outside [1 − low, 1 + high]
                  ([0.5, 2] → (0.5, 1))
    seq_geo_mis   the same with the geometric mean G = exp(mean_t log r_t) ([0.99, 1.01] → (0.01, 0.01));
                  ``seq_geo_mask`` is an alias of it (`ALIASES`)
    gspo          GSPO's sequence clip as a mask: the PPO rule on G, per sequence: drop its tokens when
                  (Â > 0, G − 1 > high) or (Â < 0, 1 − G > low)  ((3e-4, 4e-4), GSPO's ε)
IS weights (`WEIGHTS`, capped at C, stop-gradient in a loss), `[B, T]`, the sequence forms broadcast over the
sequence's tokens:  tis = min(r, C);  seq_is = min(Π_t r_t, C);  seq_geo_is = min(exp(mean_t log r_t), C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_softmax, logsumexp

__all__ = [
    "ALIASES",
    "FRAMEWORK_RULES",
    "WEIGHTS",
    "FrameworkRule",
    "binary",
    "divergences",
    "exact",
    "keep_decisions",
    "registry_estimate",
    "registry_rules",
    "rule_names",
    "topk",
    "weights",
]

TIE_MARGIN = 1e-7


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − eˣ), x ≤ 0 (−inf at 0)."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(x > -np.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _xlogy_ratio(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """p (log p − log q), 0 where p = 0."""
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), 0.0)


def binary(lmu: np.ndarray, lpi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary TV and KL `[...]`."""
    mu, pi = np.exp(lmu), np.exp(lpi)
    tv = np.abs(pi - mu)
    lmu_rest, lpi_rest = _log1mexp(lmu), _log1mexp(lpi)
    kl = _xlogy_ratio(mu, lmu, lpi) + _xlogy_ratio(np.exp(lmu_rest), lmu_rest, lpi_rest)
    return tv, kl


def topk(lmu_set: np.ndarray, lpi_set: np.ndarray, lpi_rest: np.ndarray, full: np.ndarray) -> tuple:
    """Top-K TV, KL `[...]` from log-probs at the set `[..., K]` (−inf = unused slot), π's exact rest mass."""
    mu_set, pi_set = np.exp(lmu_set), np.exp(lpi_set)
    lmu_rest = np.where(full, -np.inf, _log1mexp(np.minimum(logsumexp(lmu_set, axis=-1), 0.0)))
    lpi_rest = np.where(full, -np.inf, lpi_rest)
    mu_rest, pi_rest = np.exp(lmu_rest), np.exp(lpi_rest)
    tv = 0.5 * (np.abs(mu_set - pi_set).sum(-1) + np.abs(mu_rest - pi_rest))
    kl = _xlogy_ratio(mu_set, lmu_set, lpi_set).sum(-1) + _xlogy_ratio(mu_rest, lmu_rest, lpi_rest)
    return tv, kl


def exact(rollout_logits: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact TV and KL(μ‖π) `[...]` from full logits `[..., V]`."""
    lmu, lpi = log_softmax(rollout_logits, axis=-1), log_softmax(logits, axis=-1)
    return 0.5 * np.abs(np.exp(lmu) - np.exp(lpi)).sum(-1), (np.exp(lmu) * (lmu - lpi)).sum(-1)


def divergences(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Binary, Top-K and exact TV/KL `[B, T]` of a case's inputs (μ = rollout, π = trainer)."""
    lmu, lpi = inputs["rollout_logprob"], inputs["logprob"]
    ids = inputs["topk_ids"]
    used = ids >= 0
    lpi_full = log_softmax(inputs["logits"], -1)
    in_set = (np.arange(lpi_full.shape[-1]) == ids[..., :, None]).any(-2)  # [B, T, V]; −1 matches no id
    lpi_rest = logsumexp(np.where(in_set, -np.inf, lpi_full), axis=-1)
    lmu_set = np.where(used, inputs["rollout_topk_logprobs"], -np.inf)
    lpi_set = np.where(used, np.take_along_axis(lpi_full, np.where(used, ids, 0), -1), -np.inf)
    out = {}
    out["binary_tv"], out["binary_kl"] = binary(lmu, lpi)
    out["topk_tv"], out["topk_kl"] = topk(lmu_set, lpi_set, lpi_rest, in_set.all(-1))
    out["tv"], out["kl"] = exact(inputs["rollout_logits"], inputs["logits"])
    return out


# ---------------------------------------------------------------------------------- the registry's methods


def registry_rules() -> dict[str, dict]:
    """The fields of `trustregion_lab.masks.METHODS` this module reads: rule, divergence, needs, min_anchor_prob."""
    from trustregion_lab.masks import METHODS

    return {
        name: {
            "rule": entry.rule,
            "divergence": entry.divergence,
            "needs": tuple(entry.needs),
            "min_anchor_prob": float(entry.min_anchor_prob),
        }
        for name, entry in METHODS.items()
    }


def registry_estimate(fields: dict) -> str | None:
    """Which reference divergence a registry entry's estimate is, from its fields (None: no divergence rule)."""
    if fields["rule"] != "divergence":
        return None
    family = fields["divergence"]
    if family not in ("tv", "kl"):
        raise ValueError(f"no float64 reference for a divergence of family {family!r}")
    needs = set(fields["needs"])
    if "anchor_logits" in needs:
        return family
    if "topk_ids" in needs:
        return f"topk_{family}"
    return f"binary_{family}"


# ------------------------------------------------------------------------------ rules frameworks ship


@dataclass(frozen=True)
class FrameworkRule:
    """A rule frameworks ship beyond the registry. kind: "anchored" (by Â's side, against the anchor),
    "token" (advantage-independent, per token) or "sequence" (decided per sequence); thresholds: the
    (low, high) pairs the reference cases hold; params: extra parameters and their case values."""

    kind: str
    thresholds: tuple[tuple[float, float], ...]
    params: dict[str, float] = field(default_factory=dict)
    description: str = ""
    source: str = ""


FRAMEWORK_RULES: dict[str, FrameworkRule] = {
    "dual_clip": FrameworkRule(
        "anchored",
        ((0.2, 0.2), (0.2, 0.28)),
        {"clip_ratio_c": 3.0},
        "PPO clip plus: drop (Â < 0, r > c)",
        "verl clip_ratio_c, SkyRL dual_clip, slime eps_clip_c",
    ),
    "ipo": FrameworkRule(
        "token", ((0.1, 0.1),), {}, "drop if π(a) − μ(a) > high or μ(a) − π(a) > low", "prime-rl IPO"
    ),
    "icepop": FrameworkRule(
        "token", ((0.5, 4.0),), {}, "drop if r < 1 − low or r > 1 + high", "verl decoupled_token_icepop"
    ),
    "token_mask": FrameworkRule(
        "token", ((0.875, 7.0),), {}, "drop if r < 1 − low or r > 1 + high", "prime-rl token_mask_low/high"
    ),
    "opsm": FrameworkRule(
        "sequence",
        ((0.001, 0.001), (0.05, 0.05)),
        {},
        "drop a sequence with Â < 0 and mean(log μ − log π) > δ (low = high = δ)",
        "off-policy sequence masking",
    ),
    "seq_mis": FrameworkRule(
        "sequence",
        ((0.5, 1.0),),
        {},
        "drop a sequence with Π r outside [1 − low, 1 + high]",
        "sequence masked IS",
    ),
    "seq_geo_mis": FrameworkRule(
        "sequence",
        ((0.01, 0.01),),
        {},
        "drop a sequence with exp(mean log r) outside [1 − low, 1 + high]",
        "geometric-mean sequence mask",
    ),
    "gspo": FrameworkRule(
        "sequence",
        ((3e-4, 4e-4), (0.02, 0.02)),
        {},
        "drop a sequence's tokens when (Â > 0, G > 1 + high) or (Â < 0, G < 1 − low), G = exp(mean log r)",
        "GSPO sequence-ratio clip",
    ),
}
ALIASES: dict[str, str] = {"seq_geo_mask": "seq_geo_mis"}
"""Former names of rules, each mapped to its name now (the name of the same rule in `masks.CORRECTION_METHODS`)."""
WEIGHTS: dict[str, str] = {
    "tis": "min(r, C) per token",
    "seq_is": "min(Π_t r_t, C) per sequence",
    "seq_geo_is": "min(exp(mean_t log r_t), C) per sequence",
}
WEIGHT_CAPS = (2.0, 3.0)


def _sequence_stats(lmu: np.ndarray, lpi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_t log r_t, mean_t log r_t) `[B]` over each row's response tokens (mean 0 for an empty row)."""
    log_r = np.where(mask, lpi - lmu, 0.0)
    total = log_r.sum(-1)
    return total, total / np.maximum(mask.sum(-1), 1)


def weights(kind: str, lmu: np.ndarray, lpi: np.ndarray, mask: np.ndarray, cap: float) -> np.ndarray:
    """IS weights `[B, T]` (module docstring); padded tokens get the sequence's weight too."""
    if kind == "tis":
        return np.minimum(np.exp(lpi - lmu), cap)
    total, mean = _sequence_stats(lmu, lpi, mask)
    log_w = total if kind == "seq_is" else mean
    return np.broadcast_to(np.minimum(np.exp(log_w), cap)[:, None], lpi.shape).copy()


def keep_decisions(
    method: str,
    *,
    anchor: np.ndarray,
    lpi: np.ndarray,
    adv: np.ndarray,
    mask: np.ndarray,
    low: float,
    high: float,
    params: dict[str, float] | None = None,
    estimates: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, bool]:
    """(keep `[B, T]`, tie) for `method` (a registry method or a key of FRAMEWORK_RULES) at (low, high).

    anchor: log anchor(a) (μ, or π_old for the recompute anchor); lpi: log π(a); adv: Â; mask: response mask;
    estimates: the reference divergences anchored on `anchor` (`divergences`), needed by the divergence rule.
    tie is True when a deciding statistic lies within TIE_MARGIN (relative) of its bound.
    """
    method = ALIASES.get(method, method)
    params = params or {}
    comparisons: list[
        tuple[np.ndarray, np.ndarray, np.ndarray]
    ] = []  # (value, bound, where) drop if value > bound
    r = np.exp(lpi - anchor)
    pos, neg = adv > 0, adv < 0
    live = mask & (adv != 0)
    full = np.ones(lpi.shape, bool)
    registry = registry_rules()
    if method in registry and has_reference(method, registry[method]):
        fields = registry[method]
        exempt = np.exp(anchor) < fields["min_anchor_prob"] if fields["min_anchor_prob"] > 0 else ~full
        if fields["rule"] == "ratio":
            comparisons += [(r - 1.0, np.full(r.shape, high), pos), (1.0 - r, np.full(r.shape, low), neg)]
        elif fields["rule"] == "divergence":
            d = estimates[registry_estimate(fields)]
            comparisons += [
                (d, np.full(d.shape, high), pos & (lpi > anchor)),
                (d, np.full(d.shape, low), neg & (lpi < anchor)),
            ]
        comparisons = [(v, b, w & ~exempt) for v, b, w in comparisons]
        tie = False
        if fields["min_anchor_prob"] > 0:
            tie = bool(np.any(np.abs(np.exp(anchor) - fields["min_anchor_prob"])[live] <= TIE_MARGIN))
        return _decide(comparisons, live, tie)
    rule = FRAMEWORK_RULES[method]
    if method == "dual_clip":
        c = params.get("clip_ratio_c", rule.params["clip_ratio_c"])
        comparisons += [
            (r - 1.0, np.full(r.shape, high), pos),
            (1.0 - r, np.full(r.shape, low), neg),
            (r, np.full(r.shape, c), neg),
        ]
    elif method == "ipo":
        diff = np.exp(lpi) - np.exp(anchor)
        comparisons += [(diff, np.full(r.shape, high), full), (-diff, np.full(r.shape, low), full)]
    elif method in ("icepop", "token_mask"):
        comparisons += [(r - 1.0, np.full(r.shape, high), full), (1.0 - r, np.full(r.shape, low), full)]
    else:
        total, mean = _sequence_stats(anchor, lpi, mask)
        if method == "opsm":
            stat = np.broadcast_to((-mean)[:, None], r.shape)
            comparisons += [(stat, np.full(r.shape, low), neg)]
        else:
            log_stat = total if method == "seq_mis" else mean
            stat = np.broadcast_to(np.exp(log_stat)[:, None], r.shape)
            up, down = (pos, neg) if method == "gspo" else (full, full)
            comparisons += [
                (stat - 1.0, np.full(r.shape, high), up),
                (1.0 - stat, np.full(r.shape, low), down),
            ]
    return _decide(comparisons, live, False)


def _decide(comparisons, live: np.ndarray, tie: bool) -> tuple[np.ndarray, bool]:
    drop = np.zeros(live.shape, bool)
    for value, bound, where in comparisons:
        on = live & where
        drop |= on & (value > bound)
        close = np.abs(value - bound) <= TIE_MARGIN * np.maximum(1.0, np.abs(bound))
        tie |= bool(np.any(on & close))
    return ~drop, tie


def has_reference(method: str, fields: dict) -> bool:
    """Whether a registry entry's rule has a reference here ("ratio", "divergence", "none"). A registry method
    with another rule is checked by the framework rule of the same name, and is an error without one."""
    if fields["rule"] in ("ratio", "divergence", "none"):
        return True
    if method in FRAMEWORK_RULES:
        return False
    raise ValueError(
        f"masks.METHODS[{method!r}] has rule {fields['rule']!r}, which the conformance reference does not "
        "know: add its float64 reference to trustregion_lab/conformance/reference.py and regenerate the cases"
    )


def rule_names() -> list[str]:
    """Every method the kit has references for: the registry's, then FRAMEWORK_RULES (each name once)."""
    registry = registry_rules()
    for name, fields in registry.items():
        has_reference(name, fields)
    return [*registry, *(name for name in FRAMEWORK_RULES if name not in registry)]
