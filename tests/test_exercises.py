"""exercises.check: a correct implementation passes, typical mistakes fail with a hint naming the mistake.

The "student" implementations below are written independently in plain float64 numpy (no package code), so a
pass means the package's reference and the textbook formula agree on the check's random and extreme cases.
"""

from __future__ import annotations

import numpy as np
import pytest

from trustregion_lab.exercises import EXERCISES, check, reference

SEEDS = (0, 1, 7)


def binary_tv(mu, pi):
    return np.abs(pi - mu)


def binary_kl(mu, pi):
    return mu * np.log(mu / pi) + (1 - mu) * np.log((1 - mu) / (1 - pi))


def ppo_mask(mu, pi, adv, eps):
    r = pi / mu
    return ~(((adv > 0) & (r > 1 + eps)) | ((adv < 0) & (r < 1 - eps)))


def dppo_tv_mask(mu, pi, adv, delta):
    return ~(((adv > 0) & (pi - mu > delta)) | ((adv < 0) & (mu - pi > delta)))


def _partition_tv(mu, pi, sets):
    out = np.empty(len(mu))
    for row, ids in enumerate(sets):
        ids = sorted(ids)
        inside = np.abs(mu[row, ids] - pi[row, ids]).sum()
        rest = abs((1 - mu[row, ids].sum()) - (1 - pi[row, ids].sum()))
        out[row] = 0.5 * (inside + rest)
    return out


def topk_tv(mu, pi, token, k):
    sets = [set(np.argsort(-m)[:k].tolist()) | {int(t)} for m, t in zip(mu, token)]
    return _partition_tv(mu, pi, sets)


CORRECT = {
    "binary_tv": binary_tv,
    "binary_kl": binary_kl,
    "ppo_mask": ppo_mask,
    "dppo_tv_mask": dppo_tv_mask,
    "topk_tv": topk_tv,
}


def _ratio_dev(mu, pi):
    return np.abs(pi / mu - 1)


def _kl_reversed(mu, pi):
    return binary_kl(pi, mu)


def _ppo_swapped(mu, pi, adv, eps):
    return ppo_mask(mu, pi, -adv, eps)


def _dppo_swapped(mu, pi, adv, delta):
    return dppo_tv_mask(mu, pi, -adv, delta)


def _dppo_ratio(mu, pi, adv, delta):
    return ppo_mask(mu, pi, adv, delta)


def _dppo_ignores_adv(mu, pi, adv, delta):
    return np.abs(pi - mu) <= delta


def _topk_without_sampled(mu, pi, token, k):
    return _partition_tv(mu, pi, [set(np.argsort(-m)[:k].tolist()) for m in mu])


def _topk_no_rest(mu, pi, token, k):
    sets = [sorted(set(np.argsort(-m)[:k].tolist()) | {int(t)}) for m, t in zip(mu, token)]
    return np.array([0.5 * np.abs(mu[r, s] - pi[r, s]).sum() for r, s in enumerate(sets)])


MISTAKES = [
    ("binary_tv", _ratio_dev, "|r − 1|"),
    ("binary_tv", lambda mu, pi: pi - mu, "signed"),
    ("binary_kl", _kl_reversed, "wrong direction"),
    ("binary_kl", lambda mu, pi: mu * np.log(mu / pi), "rest bucket"),
    ("ppo_mask", _ppo_swapped, "sides swapped"),
    ("ppo_mask", lambda mu, pi, adv, eps: np.abs(pi / mu - 1) <= eps, "whatever Â"),
    ("dppo_tv_mask", _dppo_ratio, "|r − 1|"),
    ("dppo_tv_mask", _dppo_swapped, "sides swapped"),
    ("dppo_tv_mask", _dppo_ignores_adv, "whatever Â"),
    ("topk_tv", _topk_without_sampled, "sampled token is left out"),
    ("topk_tv", _topk_no_rest, "rest bucket"),
]


def test_every_exercise_has_a_correct_implementation_here() -> None:
    assert set(CORRECT) == set(EXERCISES) >= {"binary_tv", "binary_kl", "ppo_mask", "dppo_tv_mask", "topk_tv"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementation_passes(name: str, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(name, CORRECT[name], seed=seed) is True
    out = capsys.readouterr().out
    assert "passed" in out and f"seed {seed}" in out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("name", "wrong", "named"), MISTAKES, ids=[f"{m[0]}-{m[2]}" for m in MISTAKES])
def test_typical_mistake_fails_with_its_hint(
    name: str, wrong, named: str, seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.errstate(all="ignore"):
        assert check(name, wrong, seed=seed) is False
    out = capsys.readouterr().out
    assert "FAILED" in out and "expected" in out and "hint:" in out
    assert named in out, out


def test_reference_matches_the_formula_on_extremes() -> None:
    # the reference is the package; on extreme but representable inputs it agrees with the float64 formula
    mu = np.array([1e-12, 1e-6, 0.5, 0.999999, 0.3])
    pi = np.array([0.9, 1e-6, 0.5 + 1e-9, 0.5, 1e-9])
    np.testing.assert_allclose(reference("binary_tv")(mu, pi), binary_tv(mu, pi), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(reference("binary_kl")(mu, pi), binary_kl(mu, pi), rtol=1e-6, atol=1e-12)


def test_a_raising_or_misshapen_fn_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(mu, pi):
        raise ZeroDivisionError("oops")

    assert check("binary_tv", broken) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert check("binary_tv", lambda mu, pi: np.abs(pi - mu)[:-1]) is False
    assert "shape" in capsys.readouterr().out


def test_quiet_mode_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("binary_tv", binary_tv, verbose=False) is True
    assert check("binary_tv", _ratio_dev, verbose=False) is False
    assert capsys.readouterr().out == ""


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        check("binary_js", binary_tv)
    with pytest.raises(TypeError, match="name must be a str"):
        check(3, binary_tv)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be a callable"):
        check("binary_tv", 0.5)  # type: ignore[arg-type]
