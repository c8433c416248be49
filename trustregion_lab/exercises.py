"""Self-checks for the notebooks' exercises: ``check(name, fn)`` compares a student's function with the package.

Each exercise fixes a plain-numpy signature (probabilities, not log-probs, so a first implementation can be
written straight from the formula). ``check`` calls ``fn`` on seeded random cases and on extreme ones (rare and
near-certain tokens, π = μ, moves on the threshold's both sides), compares the result with the package's float64
reference (``trustregion_lab.divergence`` and ``trustregion_lab.masks``), prints "passed" or the first failing
case with a hint, and returns True or False. When the answer matches a known mistake (sides swapped, |r − 1|
instead of |π − μ|, KL in the wrong direction, the sampled token left out of the Top-K set) the hint names it.

Exercises (inputs are float64 numpy arrays; ``N`` cases per call):
    binary_tv(mu, pi) -> [N]              |π(a) − μ(a)|  (paper Eq. 13); mu, pi: μ(a), π(a) `[N]`
    binary_kl(mu, pi) -> [N]              μ log(μ/π) + (1 − μ) log((1 − μ)/(1 − π))  (Eq. 14, KL(μ‖π))
    ppo_mask(mu, pi, adv, eps) -> [N]     bool, True = keep: drop if (Â > 0 and r − 1 > ε) or (Â < 0 and 1 − r > ε),
                                          r = π(a)/μ(a)  (PPO / GRPO ratio clip as a mask, Eq. 11)
    dppo_tv_mask(mu, pi, adv, delta) -> [N]  bool, True = keep: drop if (Â > 0 and π(a) − μ(a) > δ) or
                                          (Â < 0 and μ(a) − π(a) > δ)  (DPPO Binary-TV mask, Eq. 12–13)
    topk_tv(mu, pi, token, k) -> [N]      ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|) with S = the k most likely
                                          ids under μ plus the sampled token (Eq. 15, the "topk_plus_sampled" set);
                                          mu, pi: full distributions `[N, V]`; token: sampled ids `[N]` int

Usage in a notebook::

    from trustregion_lab.exercises import check
    def my_binary_tv(mu, pi):
        return np.abs(pi - mu)
    check("binary_tv", my_binary_tv)   # prints "binary_tv: passed (… cases, seed …)" and returns True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustregion_lab import divergence, masks

__all__ = ["EXERCISES", "Exercise", "check", "reference"]

_RTOL = 1e-6
_ATOL = 1e-10
_BOUNDARY_GAP = 1e-6  # masks: cases whose critical value is this close to the threshold are left out


@dataclass(frozen=True)
class Exercise:
    """One exercise: its signature (one line), case generator, float64 reference and known mistakes.

    cases(rng) -> list of argument tuples (each tuple one call of fn); reference(*args) -> expected `[N]`;
    mistakes: (description, wrong implementation) pairs whose output identifies a typical error.
    """

    signature: str
    cases: Callable[[np.random.Generator], list[tuple[Any, ...]]]
    reference: Callable[..., np.ndarray]
    mistakes: tuple[tuple[str, Callable[..., np.ndarray]], ...]
    hint: str
    arg_names: tuple[str, ...] = ("mu", "pi")
    boolean: bool = False


# --- references (the package, float64) ------------------------------------------------------------------


def _ref_binary_tv(mu: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.asarray(divergence.binary_tv(np.log(mu), np.log(pi)), dtype=np.float64)


def _ref_binary_kl(mu: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.asarray(divergence.binary_kl(np.log(mu), np.log(pi)), dtype=np.float64)


def _ref_mask(method: str) -> Callable[..., np.ndarray]:
    def reference(mu: np.ndarray, pi: np.ndarray, adv: np.ndarray, threshold: float) -> np.ndarray:
        keep = masks.trust_region_mask(
            method,
            logprob=np.log(pi),
            rollout_logprob=np.log(mu),
            advantages=adv,
            low=threshold,
            high=threshold,
        )
        return np.asarray(keep, dtype=bool)

    return reference


def _plus_sampled_set(mu: np.ndarray, token: np.ndarray, k: int) -> np.ndarray:
    """ids `[N, k + 1]`: the k most likely ids under μ, then the sampled token (−1 if it is already among them)."""
    top = np.argsort(-mu, axis=-1, kind="stable")[:, :k]
    extra = np.where((top == token[:, None]).any(-1), -1, token)
    return np.concatenate([top, extra[:, None]], axis=-1)


def _ref_topk_tv(mu: np.ndarray, pi: np.ndarray, token: np.ndarray, k: int) -> np.ndarray:
    ids = _plus_sampled_set(mu, token, k)
    log_mu = np.log(mu)
    lps = np.where(ids >= 0, np.take_along_axis(log_mu, np.maximum(ids, 0), axis=-1), -np.inf)
    return np.asarray(divergence.topk_tv(lps, ids, np.log(pi)), dtype=np.float64)


# --- typical mistakes --------------------------------------------------------------------------------------


def _partition_tv(mu: np.ndarray, pi: np.ndarray, ids: np.ndarray) -> np.ndarray:
    valid = ids >= 0
    safe = np.maximum(ids, 0)
    mu_s = np.where(valid, np.take_along_axis(mu, safe, -1), 0.0)
    pi_s = np.where(valid, np.take_along_axis(pi, safe, -1), 0.0)
    rest = np.abs((1.0 - mu_s.sum(-1)) - (1.0 - pi_s.sum(-1)))
    return 0.5 * (np.abs(mu_s - pi_s).sum(-1) + rest)


def _topk_without_sampled(mu: np.ndarray, pi: np.ndarray, token: np.ndarray, k: int) -> np.ndarray:
    return _partition_tv(mu, pi, np.argsort(-mu, axis=-1, kind="stable")[:, :k])


def _topk_no_rest(mu: np.ndarray, pi: np.ndarray, token: np.ndarray, k: int) -> np.ndarray:
    ids = _plus_sampled_set(mu, token, k)
    valid = ids >= 0
    safe = np.maximum(ids, 0)
    diff = np.abs(np.take_along_axis(mu, safe, -1) - np.take_along_axis(pi, safe, -1))
    return 0.5 * np.where(valid, diff, 0.0).sum(-1)


def _ratio_keep(mu: np.ndarray, pi: np.ndarray, adv: np.ndarray, eps: float, swap: bool) -> np.ndarray:
    r = pi / mu
    up, down = r - 1.0 > eps, 1.0 - r > eps
    if swap:
        up, down = down, up
    return ~(((adv > 0) & up) | ((adv < 0) & down))


def _tv_keep(mu: np.ndarray, pi: np.ndarray, adv: np.ndarray, delta: float, swap: bool) -> np.ndarray:
    up, down = pi - mu > delta, mu - pi > delta
    if swap:
        up, down = down, up
    return ~(((adv > 0) & up) | ((adv < 0) & down))


def _kl_bin(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return p * np.log(p / q) + (1.0 - p) * np.log((1.0 - p) / (1.0 - q))


# --- cases -------------------------------------------------------------------------------------------------


def _token_pairs(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """μ(a), π(a) `[n]`: log-uniform over [1e-6, 1) with moves of every size, plus extreme hand-picked pairs."""
    mu = np.exp(rng.uniform(np.log(1e-6), np.log(0.999), n))
    kind = rng.integers(0, 3, n)
    factor = np.exp(rng.normal(0.0, 0.5, n))  # relative moves
    absolute = rng.uniform(-0.5, 0.5, n)  # absolute moves of mass
    pi = np.where(kind == 0, mu * factor, np.where(kind == 1, mu + absolute, rng.uniform(1e-6, 0.999, n)))
    pi = np.clip(pi, 1e-7, 0.9999)
    extreme_mu = np.array([1e-6, 1e-6, 0.999999, 0.999999, 0.5, 0.3, 0.99, 1e-4, 0.001, 0.2])
    extreme_pi = np.array([1e-6, 0.9, 0.5, 0.999999, 0.5, 0.3000001, 0.8, 1e-2, 0.002, 0.6])
    return np.concatenate([extreme_mu, mu]), np.concatenate([extreme_pi, pi])


def _pair_cases(rng: np.random.Generator) -> list[tuple[Any, ...]]:
    return [_token_pairs(rng)]


def _mask_cases(threshold_kind: str) -> Callable[[np.random.Generator], list[tuple[Any, ...]]]:
    def cases(rng: np.random.Generator) -> list[tuple[Any, ...]]:
        out = []
        for threshold in (0.2, 0.05, 0.3):
            mu, pi = _token_pairs(rng)
            adv = rng.choice([-1.5, -1.0, 0.0, 0.7, 2.0], size=mu.size)
            critical = np.abs(pi / mu - 1.0) if threshold_kind == "ratio" else np.abs(pi - mu)
            away = np.abs(critical - threshold) > _BOUNDARY_GAP
            out.append((mu[away], pi[away], adv[away], threshold))
        return out

    return cases


def _topk_cases(rng: np.random.Generator) -> list[tuple[Any, ...]]:
    out = []
    for vocab, k, temperature in ((12, 3, 1.0), (50, 5, 2.0), (8, 1, 0.3), (6, 6, 1.0)):
        n = 120
        logits = rng.normal(0.0, 3.0, (n, vocab)) / temperature
        mu = np.exp(logits - logits.max(-1, keepdims=True))
        mu /= mu.sum(-1, keepdims=True)
        pi_logits = logits + rng.normal(0.0, 1.0, (n, vocab)) * rng.uniform(0.0, 2.0, (n, 1))
        pi = np.exp(pi_logits - pi_logits.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        # sampled tokens: half drawn from μ, half uniform (often outside the top K)
        cdf = np.cumsum(mu, -1)
        drawn = np.minimum((cdf < rng.uniform(size=(n, 1))).sum(-1), vocab - 1)
        token = np.where(np.arange(n) % 2 == 0, drawn, rng.integers(0, vocab, n))
        floor = 1e-12
        mu, pi = np.maximum(mu, floor), np.maximum(pi, floor)
        mu /= mu.sum(-1, keepdims=True)
        pi /= pi.sum(-1, keepdims=True)
        out.append((mu, pi, token.astype(np.int64), k))
    return out


EXERCISES: dict[str, Exercise] = {
    "binary_tv": Exercise(
        signature="binary_tv(mu, pi) -> |π(a) − μ(a)| `[N]`  (mu, pi: probabilities of the sampled token)",
        cases=_pair_cases,
        reference=_ref_binary_tv,
        mistakes=(
            (
                "you returned |r − 1| (the ratio's deviation), not the mass |π − μ| that moved",
                lambda m, p: np.abs(p / m - 1),
            ),
            ("you returned the signed difference π − μ; the TV is its absolute value", lambda m, p: p - m),
            (
                "you halved the difference: Binary TV has two buckets {a, rest} that each move |π − μ|",
                lambda m, p: 0.5 * np.abs(p - m),
            ),
        ),
        hint="Binary TV = ½ (|π(a) − μ(a)| + |(1 − π(a)) − (1 − μ(a))|) = |π(a) − μ(a)|",
    ),
    "binary_kl": Exercise(
        signature="binary_kl(mu, pi) -> KL(μ‖π) of the two buckets {a, rest} `[N]`",
        cases=_pair_cases,
        reference=_ref_binary_kl,
        mistakes=(
            (
                "KL in the wrong direction: you computed KL(π‖μ); the masks use KL(μ‖π) (weights μ)",
                lambda m, p: _kl_bin(p, m),
            ),
            ("you left out the rest bucket (1 − μ) log((1 − μ)/(1 − π))", lambda m, p: m * np.log(m / p)),
            ("you returned only the single-sample estimate −log r = log(μ/π)", lambda m, p: np.log(m / p)),
        ),
        hint="KL_bin = μ log(μ/π) + (1 − μ) log((1 − μ)/(1 − π)), with μ = μ(a), π = π(a)",
    ),
    "ppo_mask": Exercise(
        signature="ppo_mask(mu, pi, adv, eps) -> keep `[N]` bool (True = the token keeps its gradient)",
        cases=_mask_cases("ratio"),
        reference=_ref_mask("ppo"),
        mistakes=(
            (
                "sides swapped: an Â > 0 token is dropped when r is too *high* (r > 1 + ε), an Â < 0 one when r < 1 − ε",
                lambda m, p, a, e: _ratio_keep(m, p, a, e, swap=True),
            ),
            (
                "you dropped every token with |r − 1| > ε whatever Â: the clip only binds on the side Â pushes to",
                lambda m, p, a, e: np.abs(p / m - 1) <= e,
            ),
            (
                "you read |π − μ| > ε (a TV mask), not the ratio r = π/μ",
                lambda m, p, a, e: _tv_keep(m, p, a, e, swap=False),
            ),
        ),
        hint="drop if (Â > 0 and r > 1 + ε) or (Â < 0 and r < 1 − ε), r = π/μ; Â = 0 is always kept",
        arg_names=("mu", "pi", "adv", "eps"),
        boolean=True,
    ),
    "dppo_tv_mask": Exercise(
        signature="dppo_tv_mask(mu, pi, adv, delta) -> keep `[N]` bool (True = the token keeps its gradient)",
        cases=_mask_cases("tv"),
        reference=_ref_mask("dppo_binary_tv"),
        mistakes=(
            (
                "you used |r − 1| > δ (the ratio) instead of |π − μ| > δ (the mass that moved)",
                lambda m, p, a, e: _ratio_keep(m, p, a, e, swap=False),
            ),
            (
                "sides swapped: an Â > 0 token is dropped when π rose by more than δ, an Â < 0 one when it fell",
                lambda m, p, a, e: _tv_keep(m, p, a, e, swap=True),
            ),
            (
                "you dropped every token with |π − μ| > δ whatever Â: the mask only binds on the side Â pushes to",
                lambda m, p, a, e: np.abs(p - m) <= e,
            ),
        ),
        hint="drop if (Â > 0 and π − μ > δ) or (Â < 0 and μ − π > δ); Â = 0 is always kept",
        arg_names=("mu", "pi", "adv", "delta"),
        boolean=True,
    ),
    "topk_tv": Exercise(
        signature="topk_tv(mu, pi, token, k) -> Top-K TV `[N]`  (mu, pi: `[N, V]`; token: `[N]`; S = top-k of μ ∪ {a})",
        cases=_topk_cases,
        reference=_ref_topk_tv,
        mistakes=(
            (
                "the sampled token is left out of the set: S must be the top-k ids of μ *plus* the sampled token a",
                _topk_without_sampled,
            ),
            ("you left out the rest bucket |μ_rest − π_rest|", _topk_no_rest),
        ),
        hint="TV_K = ½ (Σ_{v∈S} |μ_v − π_v| + |μ_rest − π_rest|), S = top-k ids of μ plus a, μ_rest = 1 − Σ_S μ_v",
        arg_names=("mu", "pi", "token", "k"),
    ),
}


def reference(name: str) -> Callable[..., np.ndarray]:
    """The float64 reference implementation of exercise ``name`` (same signature as the student's fn)."""
    return _exercise(name).reference


def _exercise(name: str) -> Exercise:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(EXERCISES)}; got {name!r}")
    if name not in EXERCISES:
        raise ValueError(f"name must be one of {sorted(EXERCISES)}, got {name!r}")
    return EXERCISES[name]


def _matches(got: np.ndarray, want: np.ndarray, boolean: bool) -> np.ndarray:
    if boolean:
        return got.astype(bool) == want
    with np.errstate(invalid="ignore"):
        return np.isclose(got, want, rtol=_RTOL, atol=_ATOL)


def _describe_case(names: tuple[str, ...], args: tuple[Any, ...], i: int) -> str:
    parts = []
    for name, value in zip(names, args):
        if isinstance(value, np.ndarray) and value.ndim == 2:
            parts.append(f"{name}[{i}]={np.array2string(value[i], precision=4, max_line_width=200)}")
        elif isinstance(value, np.ndarray):
            parts.append(f"{name}[{i}]={value[i].item()!r}")
        else:
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


def check(name: str, fn: Callable[..., Any], *, seed: int = 0, verbose: bool = True) -> bool:
    """Compare ``fn`` with the float64 reference of exercise ``name``; print the verdict; True iff all match.

    name: one of ``EXERCISES`` (binary_tv, binary_kl, ppo_mask, dppo_tv_mask, topk_tv); fn: the student's
    implementation with the exercise's signature (module docstring), called on numpy arrays of N cases at once;
    seed: the cases' random seed (printed). Values match within rtol 1e-6, atol 1e-10; masks must match exactly
    (cases within 1e-6 of the threshold are left out). A fn that raises, or returns the wrong shape, fails.
    """
    exercise = _exercise(name)
    if not callable(fn):
        raise TypeError(
            f"fn must be a callable with the signature {exercise.signature}, got {type(fn).__name__}"
        )
    say = print if verbose else (lambda *a, **k: None)
    rng = np.random.default_rng(seed)
    total = 0
    for args in exercise.cases(rng):
        want = exercise.reference(*args)
        try:
            got = np.asarray(fn(*(a.copy() if isinstance(a, np.ndarray) else a for a in args)))
        except Exception as error:  # the student's code: report any failure as a failed check
            say(
                f"{name}: FAILED — fn raised {type(error).__name__}: {error}\n  expected: {exercise.signature}"
            )
            return False
        if got.shape != want.shape:
            say(
                f"{name}: FAILED — fn returned shape {got.shape}, expected {want.shape}"
                f"\n  expected: {exercise.signature}"
            )
            return False
        ok = _matches(got, want, exercise.boolean)
        total += ok.size
        if ok.all():
            continue
        i = int(np.argmin(ok))
        hint = exercise.hint
        for description, wrong in exercise.mistakes:
            with np.errstate(all="ignore"):
                guess = np.asarray(wrong(*args))
            if guess.shape == got.shape and _matches(got, guess, exercise.boolean).all():
                hint = f"{description}. ({exercise.hint})"
                break
        say(
            f"{name}: FAILED on case {_describe_case(exercise.arg_names, args, i)} (seed {seed})\n"
            f"  expected {want[i].item()!r}, got {got[i].item()!r}\n  hint: {hint}"
        )
        return False
    say(f"{name}: passed ({total} cases, seed {seed})")
    return True
