"""The analysis presets of ``python -m trustregion_lab.sweep``: one run = one synthetic batch, one analysis.

`run_analysis(config, seed)` builds a batch with `make_token_batch` and runs the analysis named by
``config["analysis"]``:
    "estimators"     estimator report card (`estimator_report`)
    "masks"          mask confusion against the exact masks (`mask_confusion`)
    "calibration"    mask-rate curves and matched thresholds (`calibration_table`)
    "vocab-scaling"  the estimator report (stratum "all") for each vocabulary size in ``scaling_vocab_sizes``,
                     with num_states capped at 2**23 / V (at least 64) so the largest vocabularies stay cheap
Every row carries ``analysis``; list-valued parameters are strings joined by "+" (e.g. ``topk_sizes="5+20"``),
so that one command-line value holds them (``--grid topk_sizes=5+20,50``). `validate_analysis` checks a
configuration without computing anything (the sweep calls it for every configuration before the first run);
a run reports its progress on `trustregion_lab.progress` (the batch's parts as "batch V=<V>", then "estimators",
"masks" or "calibration" steps, and "vocab scaling" after each vocabulary size), so the sweep's bar moves within it;
the figure function of each preset is ``trustregion_lab.plots.PRESET_FIGURES[name]`` (attached by the sweep).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trustregion_lab import progress
from trustregion_lab._validate import check_choice, check_int, check_real
from trustregion_lab.analysis.calibration import (
    batch_critical_thresholds,
    calibration_table,
    matched_threshold,
)
from trustregion_lab.analysis.confusion import BatchMaskSpec, mask_confusion
from trustregion_lab.analysis.estimators import estimator_report
from trustregion_lab.analysis.states import PERTURBATIONS, make_token_batch
from trustregion_lab.analysis.tokens import SET_RULES, TokenBatch
from trustregion_lab.envs.logit_model import LOGIT_FAMILIES
from trustregion_lab.experiment import Preset
from trustregion_lab.mismatch import ENGINE_PRESETS

__all__ = [
    "ANALYSES",
    "ANALYSIS_DEFAULTS",
    "PRESETS",
    "matched_ppo_reference",
    "run_analysis",
    "validate_analysis",
]

SCALING_ELEMENTS = 1 << 23  # "vocab-scaling": states × vocabulary per batch at most (see _scaled_num_states)
ANALYSES = ("estimators", "masks", "calibration", "vocab-scaling")

ANALYSIS_DEFAULTS: dict[str, object] = {
    "analysis": "estimators",
    "vocab_size": 16384,
    "num_states": 256,
    "samples_per_state": 32,
    "family": "mixed",
    "engine": "bf16",
    "perturbation": "update",
    "step_size": 4.0,
    "step_decades": 2.0,
    "topk_sizes": "5+20",
    "set_rules": "+".join(SET_RULES),
    "ppo_low": 0.2,
    "ppo_high": 0.2,
    "delta_tv": 0.15,
    "delta_kl": 0.05,
    "ppo_reference": "matched",
    "ratio_cap": 10.0,
    "scaling_vocab_sizes": "1024+8192+65536",
}


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(piece) for piece in str(text).split("+") if piece.strip()]
    except ValueError:
        raise ValueError(f"{name} must be integers joined by '+', e.g. '5+20', got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers joined by '+', got {text!r}")
    return values


def _str_list(text: str, name: str, choices: tuple[str, ...]) -> list[str]:
    values = [piece.strip() for piece in str(text).split("+") if piece.strip()]
    bad = [v for v in values if v not in choices]
    if not values or bad:
        raise ValueError(f"{name} must be names from {choices} joined by '+', got {text!r}")
    return values


def _ppo_reference(text: object) -> float | None:
    """``ppo_reference``: None for "matched", else the fixed exact-TV threshold it names."""
    if str(text) == "matched":
        return None
    try:
        return check_real("ppo_reference", float(str(text)), minimum=0.0)
    except ValueError:
        raise ValueError(
            f"ppo_reference must be 'matched' or a TV threshold >= 0 such as '0.15', got {text!r}"
        ) from None


def validate_analysis(config: dict) -> None:
    """Check every parameter of one analysis run (ValueError/TypeError naming it); computes nothing."""
    missing = sorted(set(ANALYSIS_DEFAULTS) - set(config))
    if missing:
        raise ValueError(f"config is missing parameters {missing}")
    unknown = sorted(set(config) - set(ANALYSIS_DEFAULTS))
    if unknown:
        raise ValueError(f"config has unknown parameters {unknown}; expected {sorted(ANALYSIS_DEFAULTS)}")
    analysis = check_choice("analysis", config["analysis"], ANALYSES)
    vocab_size = check_int("vocab_size", config["vocab_size"], 2)
    check_int("num_states", config["num_states"], 1)
    check_int("samples_per_state", config["samples_per_state"], 1)
    check_choice("family", config["family"], LOGIT_FAMILIES)
    check_choice("engine", config["engine"], ENGINE_PRESETS)
    check_choice("perturbation", config["perturbation"], PERTURBATIONS)
    check_real("step_size", config["step_size"], positive=True)
    check_real("step_decades", config["step_decades"], minimum=0.0)
    _str_list(config["set_rules"], "set_rules", SET_RULES)
    for name in ("ppo_low", "ppo_high", "delta_tv", "delta_kl"):
        check_real(name, config[name], minimum=0.0)  # a finite threshold: an analysis needs a region
    _ppo_reference(config["ppo_reference"])
    check_real("ratio_cap", config["ratio_cap"], positive=True, allow_inf=True)
    scaling_sizes = _int_list(config["scaling_vocab_sizes"], "scaling_vocab_sizes")
    if min(scaling_sizes) < 2:
        raise ValueError(f"scaling_vocab_sizes must be integers >= 2, got {config['scaling_vocab_sizes']!r}")
    smallest = min(scaling_sizes) if analysis == "vocab-scaling" else vocab_size
    k = max(_int_list(config["topk_sizes"], "topk_sizes"))
    if k > smallest:
        where = "the smallest of scaling_vocab_sizes" if analysis == "vocab-scaling" else "vocab_size"
        raise ValueError(f"topk_sizes must be <= {where} ({smallest}), got {config['topk_sizes']!r}")


def matched_ppo_reference(batch: TokenBatch, ppo_low: float, ppo_high: float) -> tuple[float, float]:
    """Exact-TV thresholds (low, high) that drop as many tokens as PPO at (ppo_low, ppo_high), per side.

    high is matched on the Â > 0 tokens (where PPO's high threshold acts), low on the Â < 0 tokens.
    """
    ppo = batch_critical_thresholds(batch, BatchMaskSpec("ppo", ppo_low, ppo_high))
    exact = batch_critical_thresholds(batch, BatchMaskSpec("dppo_exact_tv", 0.0, 0.0))
    matched = []
    for side, eps in ((batch.advantages < 0, ppo_low), (batch.advantages > 0, ppo_high)):
        w = np.where(side, batch.weight, 0.0)
        if w.sum() == 0:
            matched.append(0.0)
            continue
        target = w[ppo > eps].sum() / w.sum()
        matched.append(matched_threshold(exact, w, target)[0])
    return matched[0], matched[1]


def _scaled_num_states(num_states: int, vocab_size: int) -> int:
    """States used at one vocabulary size of "vocab-scaling": num_states, capped so that a batch holds at most
    SCALING_ELEMENTS logits per distribution (at least 64 states)."""
    return min(num_states, max(64, SCALING_ELEMENTS // vocab_size))


def _batch(
    config: dict, seed: int, vocab_size: int | None = None, num_states: int | None = None
) -> TokenBatch:
    return make_token_batch(
        seed,
        num_states=int(num_states if num_states is not None else config["num_states"]),
        vocab_size=int(vocab_size if vocab_size is not None else config["vocab_size"]),
        samples_per_state=int(config["samples_per_state"]),
        family=str(config["family"]),
        engine=str(config["engine"]),
        perturbation=str(config["perturbation"]),
        step_size=float(config["step_size"]),
        step_decades=float(config["step_decades"]),
        topk_sizes=_int_list(config["topk_sizes"], "topk_sizes"),
        set_rules=_str_list(config["set_rules"], "set_rules", SET_RULES),
    )


def _mask_specs(config: dict) -> list[BatchMaskSpec]:
    k = max(_int_list(config["topk_sizes"], "topk_sizes"))
    rules = _str_list(config["set_rules"], "set_rules", SET_RULES)
    rule = "topk_plus_sampled" if "topk_plus_sampled" in rules else rules[0]
    d_tv, d_kl = float(config["delta_tv"]), float(config["delta_kl"])
    return [
        BatchMaskSpec("ppo", float(config["ppo_low"]), float(config["ppo_high"])),
        BatchMaskSpec("dppo_binary_tv", d_tv, d_tv),
        BatchMaskSpec("dppo_binary_kl", d_kl, d_kl),
        BatchMaskSpec("dppo_topk_tv", d_tv, d_tv, rule, k),
        BatchMaskSpec("dppo_topk_kl", d_kl, d_kl, rule, k),
    ]


def run_analysis(config: dict, seed: int) -> pd.DataFrame:
    """One analysis run (see the module docstring); ``config`` holds every key of ANALYSIS_DEFAULTS."""
    validate_analysis(config)
    analysis = config["analysis"]
    if analysis == "vocab-scaling":
        tables = []
        sizes = _int_list(config["scaling_vocab_sizes"], "scaling_vocab_sizes")
        for vocab_size in sizes:
            states = _scaled_num_states(int(config["num_states"]), vocab_size)
            table = estimator_report(_batch(config, seed, vocab_size, states))
            table = table[table["stratum"] == "all"].assign(
                analysis="vocab-scaling", vocab_size=vocab_size, num_states=states
            )
            tables.append(table)
            progress.report("vocab scaling", len(tables), len(sizes))
        return pd.concat(tables, ignore_index=True)
    batch = _batch(config, seed)
    if analysis == "estimators":
        return estimator_report(batch)
    if analysis == "masks":
        fixed = _ppo_reference(config["ppo_reference"])
        if fixed is None:
            reference = matched_ppo_reference(batch, float(config["ppo_low"]), float(config["ppo_high"]))
        else:
            reference = (fixed, fixed)
        return mask_confusion(
            batch, _mask_specs(config), ppo_reference=reference, ratio_cap=float(config["ratio_cap"])
        )
    return calibration_table(batch)


def _preset(name: str, help_text: str, grid: dict, seeds: int = 1, **overrides: object) -> Preset:
    return Preset(
        name=name,
        help=help_text,
        run=run_analysis,
        defaults={**ANALYSIS_DEFAULTS, **overrides},
        grid=grid,
        seeds=seeds,
        validate=validate_analysis,
    )


PRESETS: list[Preset] = [
    _preset(
        "default",
        "The main job: estimator report card, mask confusion, ε↔δ calibration and vocabulary scaling on "
        "LLM-like states after a simulated policy-gradient step (one run each, under a minute on 2 idle cores).",
        {"analysis": list(ANALYSES)},
    ),
    _preset(
        "estimators",
        "Estimator report card (|r−1|/2, k1/k2/k3, Binary, Top-K × set rules) by μ(a) and entropy bucket, "
        "under the engine mismatch alone and after a simulated update.",
        {"perturbation": ["mismatch", "update"]},
        seeds=2,
        analysis="estimators",
    ),
    _preset(
        "masks",
        "False and missed masks of PPO clipping and the DPPO masks against the exact-divergence masks, "
        "by μ(a) bucket and advantage sign, with the gradient mass wrongly dropped / let through.",
        {},
        seeds=2,
        analysis="masks",
    ),
    _preset(
        "calibration",
        "Mask-rate curves and the δ that matches PPO's mask rate at each ε, over vocabulary sizes and "
        "entropy buckets (why δ = 0.15 and δ = 0.2 are both in use).",
        {"vocab_size": [2048, 16384, 65536]},
        analysis="calibration",
    ),
    _preset(
        "vocab-scaling",
        "Estimator error (bias, RMSE) against the vocabulary size (scaling_vocab_sizes), three seeds.",
        {},
        seeds=3,
        analysis="vocab-scaling",
    ),
]
