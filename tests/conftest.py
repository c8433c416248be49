import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# "ci" is the default; HYPOTHESIS_PROFILE=thorough runs many more examples when changing core numerics.
settings.register_profile("ci", deadline=None, max_examples=60, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tests on fresh random inputs draw their seed from OS entropy, or take it from this variable to replay a
# failure. The seed a test used is recorded in its user_properties and printed with its failure.
SEED_ENV = "TRUSTREGION_TEST_SEED"
_SEED_KEY = "seed"


def _draw_seed() -> int:
    text = os.environ.get(SEED_ENV, "").strip()
    if text:
        try:
            seed = int(text)
        except ValueError:
            raise pytest.UsageError(f"{SEED_ENV} must be a non-negative integer, got {text!r}") from None
        if seed < 0:
            raise pytest.UsageError(f"{SEED_ENV} must be a non-negative integer, got {text!r}")
        return seed
    return int(np.random.SeedSequence().entropy % 2**31)


_SESSION_SEED = _draw_seed()


def pytest_report_header(config):
    return f"fresh random inputs: session seed {_SESSION_SEED} (replay with {SEED_ENV}={_SESSION_SEED})"


@pytest.fixture(scope="session")
def session_seed() -> int:
    """One fresh seed for module- and session-scoped fixtures; printed with the failure of every test using it."""
    return _SESSION_SEED


@pytest.fixture
def fresh_seed(request) -> int:
    """A fresh seed for this test (or the one in TRUSTREGION_TEST_SEED), recorded and printed on failure."""
    seed = _draw_seed()
    request.node.user_properties.append((_SEED_KEY, seed))
    return seed


@pytest.fixture
def rng(fresh_seed) -> np.random.Generator:
    """A numpy generator seeded with this test's recorded seed."""
    return np.random.default_rng(fresh_seed)


def seeds_of(item) -> list[int]:
    """The fresh seeds a test used: its own and, when it depends on session_seed, the session's."""
    seeds = [value for key, value in item.user_properties if key == _SEED_KEY]
    if "session_seed" in getattr(item, "fixturenames", ()) and _SESSION_SEED not in seeds:
        seeds.append(_SESSION_SEED)
    return seeds


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for seed in seeds_of(item):
            report.sections.append(("fresh random seed", f"seed={seed}; rerun with {SEED_ENV}={seed}"))
    return report


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
