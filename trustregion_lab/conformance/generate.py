"""Generate the conformance cases (``cases_v<N>.json``) with an independent float64 numpy/scipy reference.

``python -m trustregion_lab.conformance.generate [--out PATH] [--check]`` writes the data file (default: the one
shipped next to this module) or, with --check, verifies that the file equals a regeneration. The expected values
are the definitions of `trustregion_lab.conformance.reference` (docs/design.md §2 written out in numpy; the
project's own numerics are not imported). The methods checked are those of the mask registry
(`trustregion_lab.masks.METHODS`, read through its fields: rule, divergence family, needs, min_anchor_prob) and
the framework rules of `reference.FRAMEWORK_RULES` (bounds on a ratio as deviations from 1, as in the registry);
adding a method to the registry adds its decisions here.
Thresholds: the ratio rule at (0.2, 0.2) and (0.2, 0.28), TV estimates at (0.15, 0.15) and (0.1, 0.25), KL
estimates at (0.05, 0.05) and (0.02, 0.08); a framework rule at its own pairs. Every case is drawn again
(seed + 1000 n) until no deciding statistic lies within 1e-7 (relative) of its bound, so an implementation in
float32 decides every token the same way. The output is deterministic: the same file on every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, logsumexp

from trustregion_lab.conformance import reference as ref
from trustregion_lab.conformance.data import DATA_FILE, VERSION

TIE_MARGIN = ref.TIE_MARGIN
THRESHOLDS = {
    "ratio": ((0.2, 0.2), (0.2, 0.28)),
    "tv": ((0.15, 0.15), (0.1, 0.25)),
    "kl": ((0.05, 0.05), (0.02, 0.08)),
    "none": ((0.0, 0.0),),
}


def method_table() -> list[tuple[str, float, float, dict]]:
    """(method, low, high, params) of every expectation a case holds (rollout anchor)."""
    table = []
    for name, fields in ref.registry_rules().items():
        if not ref.has_reference(name, fields):
            continue  # a registry method decided per sequence: its framework rule below holds it
        key = fields["rule"] if fields["rule"] != "divergence" else fields["divergence"]
        table += [(name, low, high, {}) for low, high in THRESHOLDS[key]]
    for name, rule in ref.FRAMEWORK_RULES.items():
        table += [(name, low, high, dict(rule.params)) for low, high in rule.thresholds]
    return table


def _recompute_ok(method: str) -> bool:
    """Whether a method's recompute-anchored decisions can be derived from sampled-token log-probs alone."""
    registry = ref.registry_rules()
    if method in registry and ref.has_reference(method, registry[method]):
        estimate = ref.registry_estimate(registry[method])
        return estimate is None or estimate.startswith("binary_")
    return ref.FRAMEWORK_RULES[method].kind == "anchored"


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
    inputs = {
        "token": token,
        "rollout_logprob": lmu,
        "logprob": lpi,
        "advantages": adv,
        "response_mask": mask,
        "topk_ids": ids,
        "rollout_topk_logprobs": np.where(used, lmu_set, 0.0),
        "topk_logprobs": np.where(used, lpi_set, 0.0),
        "rollout_logits": rollout_logits,
        "logits": logits,
    }
    d = ref.divergences(inputs)
    anchors = [("rollout", lmu, d)]
    if old_logits is not None:
        old = np.take_along_axis(log_softmax(old_logits, -1), token[..., None], -1)[..., 0]
        inputs["old_logprob"] = old
        b_tv, b_kl = ref.binary(old, lpi)
        anchors.append(("recompute", old, {"binary_tv": b_tv, "binary_kl": b_kl}))
    expectations = []
    ties = False
    for anchor_name, anchor_lp, estimates in anchors:
        for method, low, high, params in method_table():
            if anchor_name == "recompute" and not _recompute_ok(method):
                continue
            keep, tie = ref.keep_decisions(
                method,
                anchor=anchor_lp,
                lpi=lpi,
                adv=adv,
                mask=mask,
                low=low,
                high=high,
                params=params,
                estimates=estimates,
            )
            ties |= tie
            entry = {"method": method, "low": low, "high": high, "anchor": anchor_name}
            expectations.append({**entry, "params": params, "keep": keep.tolist()})
    weights = [
        {"kind": kind, "cap": cap, "value": ref.weights(kind, lmu, lpi, mask, cap).tolist()}
        for kind in ref.WEIGHTS
        for cap in ref.WEIGHT_CAPS
    ]
    return {
        "name": name,
        "description": description,
        "set_rule": rule,
        "inputs": {key: np.asarray(value).tolist() for key, value in inputs.items()},
        "expected": {key: value.tolist() for key, value in d.items()},
        "masks": expectations,
        "weights": weights,
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


def _sequences(moves: np.ndarray, t: int, v: int, scale: float, k: int):
    """Rows = sequences with their own logit move and one advantage each (GRPO-like), right padding."""

    def build(rng: np.random.Generator):
        b = len(moves)
        rollout = rng.normal(0.0, scale, (b, t, v))
        logits = rollout + rng.normal(0.0, 1.0, (b, t, v)) * moves[:, None, None]
        token = np.array(
            [[rng.choice(v, p=np.exp(log_softmax(rollout[i, j]))) for j in range(t)] for i in range(b)]
        )
        adv = np.repeat(np.resize([-1.0, 1.0, -0.5, -1.0, -1.0, 0.5, -1.0, 0.0], b)[:, None], t, axis=1)
        pad = rng.integers(0, t // 2 + 1, b)
        pad[0] = 0
        mask = np.arange(t)[None, :] < (t - pad)[:, None]
        return rollout, logits, token, adv, mask, k, "topk", None

    return build


def _pinned(target_lmu: np.ndarray, shift: np.ndarray, v: int, k: int, rule: str, adv: np.ndarray):
    """Logits where the sampled token 0 has log μ = target and π's logit for it is moved by `shift`."""

    def build(rng: np.random.Generator):
        b, t = target_lmu.shape
        others = rng.normal(0.0, 1.0, (b, t, v - 1))
        rest = logsumexp(others, axis=-1)
        # choose the sampled token's logit x so that x − logsumexp([x, others]) = target
        x = target_lmu - ref._log1mexp(target_lmu) + rest
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
            "old_logprob given: ratio, dual-clip and Binary masks anchored on π_old",
            _random(3, 10, 16, 2.0, 0.4, 4, "topk", old=True),
            20,
        ),
        _tie_free_case(
            "near_on_policy",
            "one advantage per sequence, per-sequence moves from 0.005 to 0.3: sequence rules on both sides",
            _sequences(np.array([0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.01]), 16, 16, 2.0, 4),
            21,
        ),
        _tie_free_case(
            "band_edges",
            "ratios just past the bands' bounds: r ≈ 5.5 and 0.45, R = Π r ≈ 2.5 and 0.45 (so IcePop's bound "
            "5 differs from 6 and sequence MIS's 2 from 3)",
            _pinned(
                np.log(np.full((4, 4), 1e-3)),
                np.log(np.array([[5.5, 1, 1, 1], [2.5**0.25] * 4, [0.45, 1, 1, 1], [0.45**0.25] * 4])),
                12,
                4,
                "topk",
                np.repeat(np.array([[1.0], [1.0], [-1.0], [-1.0]]), 4, axis=1),
            ),
            22,
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
        try:
            same = args.out.read_text() == text
        except OSError as exc:
            print(f"error: --out {args.out}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            return 2
        except UnicodeDecodeError:
            same = False
        print(f"{args.out}: {'up to date' if same else 'differs from a regeneration'}")
        return 0 if same else 1
    from trustregion_lab._io import atomic_write_text, check_writable_folder

    if args.out.is_dir():
        print(f"error: --out {args.out} is a folder, expected a file path", file=sys.stderr)
        return 2
    try:
        check_writable_folder(args.out.parent, "--out's folder")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        atomic_write_text(args.out, text)
    except OSError as exc:  # a full disk, a quota, a vanished folder: nothing is left half-written
        print(f"error: --out {args.out}: writing failed ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
