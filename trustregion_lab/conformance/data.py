"""The reference cases: where they live (the data file of the current version, shipped inside the package),
how they are read (`Case`, `load_cases`) and how a case's inputs are handed to a function (`case_inputs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

VERSION = 2
DATA_FILE = Path(__file__).with_name(f"cases_v{VERSION}.json")
V1_FILE = Path(__file__).with_name("cases_v1.json")  # the previous version, still readable by load_cases
SENTINEL_LOGIT = -1e4
TOPK_FIELDS = ("topk_ids", "rollout_topk_logprobs", "topk_logprobs", "logits", "rollout_logits")


@dataclass(frozen=True)
class Case:
    """One reference case: inputs (numpy arrays), expected divergences `[B, T]`, mask expectations (method,
    low, high, anchor, params, keep `[B, T]`) and IS-weight expectations (kind, cap, value `[B, T]`)."""

    name: str
    description: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    masks: tuple[dict, ...]
    weights: tuple[dict, ...] = ()


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[int, tuple[Case, ...]]:
    try:
        document = json.loads(Path(path).read_text())
        version = int(document["version"])
        raws = document["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a conformance cases file ({exc})") from None
    cases = []
    for raw in raws:
        inputs = {}
        for key, value in raw["inputs"].items():
            dtype = (
                bool if key == "response_mask" else np.int64 if key in ("token", "topk_ids") else np.float64
            )
            inputs[key] = np.array(value, dtype=dtype)
        expected = {key: np.array(value, np.float64) for key, value in raw["expected"].items()}
        masks = tuple(
            {**m, "params": dict(m.get("params", {})), "keep": np.array(m["keep"], bool)}
            for m in raw["masks"]
        )
        weights = tuple({**w, "value": np.array(w["value"], np.float64)} for w in raw.get("weights", ()))
        cases.append(Case(raw["name"], raw["description"], inputs, expected, masks, weights))
    return version, tuple(cases)


def load_cases(path: str | Path | None = None) -> list[Case]:
    """The shipped reference cases (version `VERSION`), or those of another cases file (cases_v1.json too)."""
    if path is not None and not isinstance(path, str | Path):
        raise TypeError(f"path must be None, a str or a Path, got {type(path).__name__}")
    version, cases = _load(str(path or DATA_FILE))
    if path is None and version != VERSION:
        raise ValueError(f"{DATA_FILE} holds version {version}, expected {VERSION}")
    return list(cases)


def _sentinel(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unused top-K slots (id −1) mapped to an appended vocabulary column with probability 0."""
    from scipy.special import log_softmax

    x = dict(inputs)
    vocab = x["logits"].shape[-1]
    unused = x["topk_ids"] < 0
    for key, lp_key in (("logits", "topk_logprobs"), ("rollout_logits", "rollout_topk_logprobs")):
        pad = np.full((*x[key].shape[:-1], 1), SENTINEL_LOGIT)
        x[key] = np.concatenate([x[key], pad], -1)
        column = log_softmax(x[key], -1)[..., vocab]
        x[lp_key] = np.where(unused, column[..., None], x[lp_key])
    x["topk_ids"] = np.where(unused, vocab, x["topk_ids"])
    return x


def case_inputs(case: Case, topk_unused: str) -> dict[str, np.ndarray]:
    """The case's inputs; with ``topk_unused="sentinel"`` unused top-K slots point to a sentinel column."""
    return _sentinel(case.inputs) if topk_unused == "sentinel" else case.inputs
