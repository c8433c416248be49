"""Generate the conformance cases (``cases_v<N>.json``) with an independent float64 numpy/scipy reference.

``python -m trustregion_lab.conformance.generate [--out PATH] [--check]`` writes the data file (default: the one
shipped next to this module) or, with --check, verifies that the shipped file equals a regeneration. This module
does not import the project's numerics: the expected values are the definitions of docs/design.md §2 written
out directly, with μ = rollout, π = trainer, a = the sampled token:
    Binary:  TV = |π(a) − μ(a)|;  KL = μ(a) log(μ(a)/π(a)) + (1 − μ(a)) log((1 − μ(a))/(1 − π(a)))
    Top-K:   S = reported ids, rest = 1 − Σ_S;  TV = ½ (Σ_S |μ_v − π_v| + |μ_rest − π_rest|),
             KL = Σ_S μ_v log(μ_v/π_v) + μ_rest log(μ_rest/π_rest)  (a term with zero mass is 0)
    Exact:   TV = ½ Σ_v |μ_v − π_v|;  KL = Σ_v μ_v log(μ_v/π_v)
    Masks:   ppo drops (Â > 0, r > 1 + high) or (Â < 0, r < 1 − low); ppo_relaxed the same, except tokens with
             μ(a) < 0.1 (the paper's §6, α = 0.1), which it never drops; dppo_binary_tv drops (Â > 0, π − μ > high)
             or (Â < 0, π − μ < −low); the other DPPO methods drop (Â > 0, D > high, π(a) > μ(a)) or
             (Â < 0, D > low, π(a) < μ(a)); none keeps all; padded and Â = 0 tokens are kept. With old_logprob
             (the recompute anchor) π_old replaces μ in the rule.
1 − p is computed as −expm1(log p) and log(1 − p) as log(−expm1(log p)) (or log1p(−p) for small p). Every
case is checked for ties: no critical value lies within 1e-7 (relative) of a threshold, so an implementation
in float32 decides every token the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, logsumexp

from trustregion_lab.conformance.data import DATA_FILE, VERSION

MASKS: tuple[tuple[str, float, float], ...] = (
    ("ppo", 0.2, 0.2),
    ("ppo", 0.2, 0.28),
    ("ppo_relaxed", 0.2, 0.2),
    ("dppo_binary_tv", 0.15, 0.15),
    ("dppo_binary_tv", 0.1, 0.25),
    ("dppo_binary_kl", 0.05, 0.05),
    ("dppo_binary_kl", 0.02, 0.08),
    ("dppo_topk_tv", 0.15, 0.15),
    ("dppo_topk_kl", 0.05, 0.05),
    ("dppo_exact_tv", 0.15, 0.15),
    ("dppo_exact_kl", 0.05, 0.05),
    ("none", 0.0, 0.0),
)
RELAXED_BELOW = 0.1  # ppo_relaxed: tokens whose anchor probability is below this are never clipped (paper §6)
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
    lmu, lpi = log_softmax(rollout_logits, axis=-1), log_softmax(logits, axis=-1)
    return 0.5 * np.abs(np.exp(lmu) - np.exp(lpi)).sum(-1), (np.exp(lmu) * (lmu - lpi)).sum(-1)


def critical(method: str, anchor: np.ndarray, lpi: np.ndarray, adv: np.ndarray, d: np.ndarray | None):
    """Per-token critical value c (drop iff c > the threshold of the token's side); −inf = never dropped."""
    if method == "none":
        return np.full(lpi.shape, -np.inf)
    if method in ("ppo", "ppo_relaxed"):
        r = np.exp(lpi - anchor)
        c = np.where(adv > 0, r - 1.0, 1.0 - r)
        if method == "ppo_relaxed":
            c = np.where(np.exp(anchor) < RELAXED_BELOW, -np.inf, c)
    else:
        outward = ((adv > 0) & (lpi > anchor)) | ((adv < 0) & (lpi < anchor))
        c = np.where(outward, d, -np.inf)
    return np.where(adv == 0, -np.inf, c)


def keep_mask(c: np.ndarray, adv: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    threshold = np.where(adv > 0, high, low)
    return ~((c > threshold) & mask)


def _tie_free(c: np.ndarray, adv: np.ndarray, mask: np.ndarray, low: float, high: float) -> bool:
    threshold = np.where(adv > 0, high, low)
    live = mask & np.isfinite(c) & (adv != 0)
    return not np.any(
        np.abs(c[live] - threshold[live]) <= TIE_MARGIN * np.maximum(1.0, np.abs(threshold[live]))
    )


# ------------------------------------------------------------------------------------------ case builders


def _topk_sets(lmu_full: np.ndarray, token: np.ndarray, k: int, rule: str) -> np.ndarray:
    """Reported ids `[B, T, K(+1)]`: "topk" = the K largest μ; "topk_plus_sampled" adds a when missing (−1 else)."""
    order = np.argsort(-lmu_full, axis=-1, kind="stable")[..., :k]
    if rule == "topk":
        return order
    missing = ~(order == token[..., None]).any(-1)
    extra = np.where(missing, token, -1)[..., None]
    return np.concatenate([order, extra], axis=-1)


def _case(
    name: str, description: str, rollout_logits, logits, token, adv, mask, k, rule, old_logits=None
) -> dict:
    lmu_full, lpi_full = log_softmax(rollout_logits, -1), log_softmax(logits, -1)
    lmu = np.take_along_axis(lmu_full, token[..., None], -1)[..., 0]
    lpi = np.take_along_axis(lpi_full, token[..., None], -1)[..., 0]
    ids = _topk_sets(lmu_full, token, k, rule)
    used = ids >= 0
    safe = np.where(used, ids, 0)
    lmu_set = np.where(used, np.take_along_axis(lmu_full, safe, -1), -np.inf)
    lpi_set = np.where(used, np.take_along_axis(lpi_full, safe, -1), -np.inf)
    in_set = (np.arange(lpi_full.shape[-1]) == ids[..., :, None]).any(-2)  # [B, T, V]; −1 matches no id
    lpi_rest = logsumexp(np.where(in_set, -np.inf, lpi_full), axis=-1)
    full = in_set.all(-1)
    d = {}
    d["binary_tv"], d["binary_kl"] = binary(lmu, lpi)
    d["topk_tv"], d["topk_kl"] = topk(lmu_set, lpi_set, lpi_rest, full)
    d["tv"], d["kl"] = exact(rollout_logits, logits)
    estimate = {
        "dppo_binary_tv": d["binary_tv"],
        "dppo_binary_kl": d["binary_kl"],
        "dppo_topk_tv": d["topk_tv"],
        "dppo_topk_kl": d["topk_kl"],
        "dppo_exact_tv": d["tv"],
        "dppo_exact_kl": d["kl"],
        "ppo": None,
        "ppo_relaxed": None,
        "none": None,
    }
    expectations = []
    ties = False
    anchors = [("rollout", lmu, estimate)]
    old = None
    if old_logits is not None:
        old = np.take_along_axis(log_softmax(old_logits, -1), token[..., None], -1)[..., 0]
        b_tv, b_kl = binary(old, lpi)
        anchors.append(
            (
                "recompute",
                old,
                {
                    "dppo_binary_tv": b_tv,
                    "dppo_binary_kl": b_kl,
                    "ppo": None,
                    "ppo_relaxed": None,
                    "none": None,
                },
            )
        )
    for anchor_name, anchor_lp, estimates in anchors:
        for method, low, high in MASKS:
            if method not in estimates:
                continue
            c = critical(method, anchor_lp, lpi, adv, estimates[method])
            ties |= not _tie_free(c, adv, mask, low, high)
            if method == "ppo_relaxed":  # the anchor probability must not sit on α either
                ties |= bool(np.any(np.abs(np.exp(anchor_lp) - RELAXED_BELOW) <= TIE_MARGIN))
            keep = keep_mask(c, adv, mask, low, high)
            expectations.append(
                {"method": method, "low": low, "high": high, "anchor": anchor_name, "keep": keep.tolist()}
            )
    inputs = {
        "token": token.tolist(),
        "rollout_logprob": lmu.tolist(),
        "logprob": lpi.tolist(),
        "advantages": adv.tolist(),
        "response_mask": mask.tolist(),
        "topk_ids": ids.tolist(),
        "rollout_topk_logprobs": np.where(used, lmu_set, 0.0).tolist(),
        "topk_logprobs": np.where(used, lpi_set, 0.0).tolist(),
        "rollout_logits": rollout_logits.tolist(),
        "logits": logits.tolist(),
    }
    if old is not None:
        inputs["old_logprob"] = old.tolist()
    return {
        "name": name,
        "description": description,
        "set_rule": rule,
        "inputs": inputs,
        "expected": {key: value.tolist() for key, value in d.items()},
        "masks": expectations,
        "_ties": ties,
    }


def _tie_free_case(name: str, description: str, build, seed: int) -> dict:
    """Build a case from `build(rng)`, redrawing (seed + 1000 n) until no decision sits on a threshold."""
    for attempt in range(50):
        case = _case(name, description, *build(np.random.default_rng(seed + 1000 * attempt)))
        if not case.pop("_ties"):
            case["seed"] = seed + 1000 * attempt
            return case
    raise RuntimeError(f"case {name!r}: could not draw a tie-free case")


def _random(b: int, t: int, v: int, scale: float, move: float, k: int, rule: str, old: bool = False):
    def build(rng: np.random.Generator):
        rollout = rng.normal(0.0, scale, (b, t, v))
        logits = rollout + rng.normal(0.0, move, (b, t, v))
        token = np.array(
            [[rng.choice(v, p=np.exp(log_softmax(rollout[i, j]))) for j in range(t)] for i in range(b)]
        )
        adv = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(b, t))
        pad = rng.integers(0, t // 2 + 1, b)
        pad[0] = 0
        mask = np.arange(t)[None, :] < (t - pad)[:, None]  # right padding: the last pad[i] tokens of row i
        old_logits = rollout + rng.normal(0.0, move, (b, t, v)) if old else None
        return rollout, logits, token, adv, mask, k, rule, old_logits

    return build


def _pinned(target_lmu: np.ndarray, shift: np.ndarray, v: int, k: int, rule: str, adv: np.ndarray):
    """Logits where the sampled token 0 has log μ = target and π's logit for it is moved by `shift`."""

    def build(rng: np.random.Generator):
        b, t = target_lmu.shape
        others = rng.normal(0.0, 1.0, (b, t, v - 1))
        rest = logsumexp(others, axis=-1)
        # choose the sampled token's logit x so that x − logsumexp([x, others]) = target
        x = target_lmu - _log1mexp(target_lmu) + rest
        rollout = np.concatenate([x[..., None], others], -1)
        logits = rollout.copy()
        logits[..., 0] += shift
        logits[..., 1:] += rng.normal(0.0, 0.05, (b, t, v - 1))
        token = np.zeros((b, t), np.int64)
        return rollout, logits, token, adv, np.ones((b, t), bool), k, rule, None

    return build


def build_cases() -> dict:
    """All cases, as the JSON-ready document (inputs and expected values as nested lists)."""
    grid = np.array([[-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]])
    lmu_small = np.log(np.array([[1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 1e-2]]))
    lmu_big = np.repeat(np.array([[-1e-12, -1e-9, -1e-6, -1e-4, -1e-2, -0.05]]), 2, axis=0)
    big_shift = np.array([[-3.0, -5.0, -8.0, -9.0, -4.0, -2.0], [-28.0, -21.0, -14.0, -9.5, -5.5, -3.5]])
    cases = [
        _tie_free_case(
            "random",
            "moderate logits, mixed advantages (Â = 0 included), right padding",
            _random(4, 12, 16, 2.0, 0.4, 4, "topk"),
            11,
        ),
        _tie_free_case(
            "random_sharp",
            "peaked logits (most μ(a) near 1) and larger moves",
            _random(4, 12, 16, 5.0, 0.8, 4, "topk"),
            12,
        ),
        _tie_free_case(
            "mu_to_zero_up",
            "μ(a) → 0, π(a) pushed up ×e² (ratio ≈ 7.4, tiny mass)",
            _pinned(lmu_small, np.full((1, 6), 2.0), 12, 4, "topk", grid),
            13,
        ),
        _tie_free_case(
            "mu_to_zero_down",
            "μ(a) → 0, π(a) pushed down",
            _pinned(lmu_small, np.full((1, 6), -3.0), 12, 4, "topk", grid),
            14,
        ),
        _tie_free_case(
            "mu_to_one",
            "μ(a) → 1 (1 − μ from 1e-12 to 0.05), π(a) lowered",
            _pinned(lmu_big, big_shift, 12, 4, "topk", np.concatenate([grid, -grid])),
            15,
        ),
        _tie_free_case(
            "paper_4_2",
            "the paper's §4.2 tokens: μ = 1e-4 → π ≈ 1e-2 and μ = 0.99 → π ≈ 0.80",
            _pinned(
                np.log(np.array([[1e-4, 0.99, 1e-4, 0.99]])),
                np.array([[4.62, -3.21, 4.62, -3.21]]),
                12,
                4,
                "topk",
                np.array([[1.0, -1.0, -1.0, 1.0]]),
            ),
            16,
        ),
        _tie_free_case(
            "zero_advantage",
            "Â = 0 everywhere with large moves: every mask keeps every token",
            _pinned(
                np.log(np.full((1, 4), 0.3)),
                np.array([[3.0, -3.0, 5.0, -5.0]]),
                12,
                4,
                "topk",
                np.zeros((1, 4)),
            ),
            17,
        ),
        _tie_free_case(
            "topk_plus_sampled",
            "top-K plus the sampled token when missing (K + 1 ids, −1 when present)",
            _random(3, 10, 16, 2.0, 0.5, 3, "topk_plus_sampled"),
            18,
        ),
        _tie_free_case(
            "empty_rest",
            "K = V: the set holds every id, the rest bucket is empty",
            _random(2, 8, 6, 2.0, 0.5, 6, "topk"),
            19,
        ),
        _tie_free_case(
            "recompute_anchor",
            "old_logprob given: ppo and binary masks anchored on π_old",
            _random(3, 10, 16, 2.0, 0.4, 4, "topk", old=True),
            20,
        ),
    ]
    return {
        "version": VERSION,
        "definitions": "docs/design.md §2 (μ = rollout, π = trainer; KL means KL(μ‖π)); generator: "
        "trustregion_lab/conformance/generate.py",
        "tie_margin": TIE_MARGIN,
        "cases": cases,
    }


def dumps(document: dict) -> str:
    return json.dumps(document, indent=None, separators=(",", ":"), allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trustregion_lab.conformance.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=DATA_FILE, help=f"output file (default {DATA_FILE.name} in the package)"
    )
    parser.add_argument("--check", action="store_true", help="only check that the file equals a regeneration")
    args = parser.parse_args(argv)
    text = dumps(build_cases())
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from a regeneration'}")
        return 0 if same else 1
    from trustregion_lab._io import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
